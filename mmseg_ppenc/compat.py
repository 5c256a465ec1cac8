"""Compatibility with the dependency stack: the plugin's only environment fixes.

Three problems of mmsegmentation 1.2.2 / mmengine 0.10.7 on current PyTorch are fixed here
without editing installed packages. ``import mmseg_ppenc`` applies 1 and 2 explicitly, before
it imports any mmseg model module (with mmcv-lite, import mmseg_ppenc before
``mmseg.models``: ``custom_imports`` and the tools do); the train tool applies 3.

1. **mmcv-lite has no compiled ops.** mmseg imports ``mmcv.ops`` unconditionally in four
   modules, and ``mmcv/ops/__init__`` loads the compiled ``mmcv._ext``. When (and only
   when) that extension is missing, :func:`install_mmcv_ops_fallback` registers a small
   ``mmcv.ops`` module: ``point_sample`` is mmcv's own pure-PyTorch implementation, any
   other op is a stub that raises ``ModuleNotFoundError`` naming the op and the fix.
   Installing it also adds one ``warnings`` filter, for mmcv's import-time warning
   :data:`MMCV_LITE_WARNING` about that missing op; no other warning is affected.
2. **torch.load(weights_only=True)**, the default since torch 2.6, refuses the objects in
   mmengine checkpoints (``HistoryBuffer``, numpy scalars and arrays).
   :func:`register_safe_globals` allow-lists exactly those types; ``weights_only`` stays on.
3. **Multi-process training without a GPU.** mmengine's ``init_dist`` calls
   ``torch.cuda.set_device`` and the Runner wraps the model with ``device_ids=[rank]``.
   :func:`setup_cpu_distributed` starts a gloo process group first and adapts the config.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from typing import Any

__all__ = ['install_mmcv_ops_fallback', 'register_safe_globals', 'setup_cpu_distributed',
           'replace_syncbn', 'has_compiled_mmcv_ops']

_FALLBACK_ATTR = '__mmseg_ppenc_fallback__'
#: Start of mmcv's import-time warning about its missing compiled deformable attention,
#: the one warning the fallback silences (with ``warnings.filterwarnings``).
MMCV_LITE_WARNING = 'Fail to import ``MultiScaleDeformable'


def has_compiled_mmcv_ops() -> bool:
    """Whether a full mmcv with its compiled ``mmcv._ext`` extension is installed."""
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except (ImportError, ValueError):
        return False


class _MissingOp:
    """Stands in for a compiled mmcv op; raises a helpful error when used."""

    def __init__(self, name: str) -> None:
        self.__name__ = name
        self.__qualname__ = name

    def _fail(self, *args: Any, **kwargs: Any):
        raise ModuleNotFoundError(
            f'mmcv.ops.{self.__name__} is a compiled mmcv op, but the installed mmcv '
            '(mmcv-lite) has no compiled extension (mmcv._ext). SETR and the mmseg_ppenc '
            'models need none; to use this op, install a full mmcv 2.1 built for your '
            'torch and CUDA (`pip install -U openmim && mim install "mmcv==2.1.0"`), then '
            'install mmseg_ppenc with `pip install --no-deps -e .` so it keeps that mmcv.')

    __call__ = _fail

    def __getattr__(self, item: str):
        if item.startswith('__'):
            raise AttributeError(item)
        self._fail()

    def __repr__(self) -> str:
        return f'<missing compiled op mmcv.ops.{self.__name__}>'


def _ops_getattr(name: str):
    if name.startswith('__') and name.endswith('__'):
        raise AttributeError(f"module 'mmcv.ops' has no attribute {name!r}")
    # Import-time `from mmcv.ops import X` in mmseg modules that SETR never uses must
    # succeed, so the error is raised when the op is used, not when it is imported.
    return _MissingOp(name)


def install_mmcv_ops_fallback() -> bool:
    """Register a pure-PyTorch ``mmcv.ops`` when the compiled ops are missing.

    Must run before ``mmseg.utils`` is first imported. Does nothing when a full mmcv with
    compiled ops is installed, or when ``mmcv.ops`` is already importable.

    Returns:
        bool: True if the fallback is (now) in place.
    """
    existing = sys.modules.get('mmcv.ops')
    if existing is not None:
        return bool(getattr(existing, _FALLBACK_ATTR, False))
    if has_compiled_mmcv_ops():
        return False
    import mmcv  # noqa: F401  (the parent package must exist)
    spec = importlib.util.find_spec('mmcv')
    ops_dir = os.path.join(os.path.dirname(spec.origin), 'ops')
    ps_file = os.path.join(ops_dir, 'point_sample.py')
    ps_spec = importlib.util.spec_from_file_location('mmcv.ops.point_sample', ps_file)
    point_sample_mod = importlib.util.module_from_spec(ps_spec)
    ps_spec.loader.exec_module(point_sample_mod)

    ops = types.ModuleType('mmcv.ops', doc='mmseg_ppenc fallback for mmcv-lite: '
                           'pure-PyTorch point_sample; compiled ops are unavailable.')
    ops.__file__ = __file__
    setattr(ops, _FALLBACK_ATTR, True)
    for name in ('point_sample', 'bilinear_grid_sample', 'rel_roi_point_to_rel_img_point'):
        if hasattr(point_sample_mod, name):
            setattr(ops, name, getattr(point_sample_mod, name))
    ops.__getattr__ = _ops_getattr  # PEP 562
    # mmcv's transformer module warns on import that mmcv-lite lacks this compiled op; the
    # fallback raises a clearer error where the op is used. Only this message is silenced.
    warnings.filterwarnings('ignore', message=MMCV_LITE_WARNING)
    sys.modules['mmcv.ops'] = ops
    sys.modules['mmcv.ops.point_sample'] = point_sample_mod
    sys.modules['mmcv'].ops = ops
    return True


def register_safe_globals() -> None:
    """Allow-list the types found in mmengine checkpoints for ``torch.load(weights_only=True)``.

    mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then
    refuses checkpoints holding a message hub (``HistoryBuffer``), numpy scalars or arrays.
    Registering these types keeps the safe unpickler on.
    """
    import numpy as np
    import torch
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return  # torch < 2.4 loads everything anyway
    from mmengine.logging.history_buffer import HistoryBuffer
    safe: list = [HistoryBuffer, np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    safe += [_reconstruct, scalar]
    # numpy >= 1.25 pickles dtypes by their class (numpy.dtypes.Float64DType, ...).
    safe += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64,
                                        np.int32, np.int16, np.int8, np.uint8, np.bool_)]
    # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, 'min');
    # allow exactly those look-ups, not a general getattr.
    safe += [(_history_buffer_getattr, 'builtins.getattr'),
             (_history_buffer_getattr, '__builtin__.getattr')]
    torch.serialization.add_safe_globals(safe)


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    from mmengine.logging.history_buffer import HistoryBuffer
    # mmengine's built-in statistics (a checkpoint names no others).
    allowed = {'min', 'max', 'current', 'mean'}
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise AttributeError(f'getattr({obj!r}, {name!r}) is not allowed while loading a '
                         'checkpoint with weights_only=True.')


def setup_cpu_distributed(cfg, launcher: str) -> None:
    """Start a gloo process group for multi-process runs on machines without CUDA.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally and the Runner
    wraps the model with ``device_ids=[LOCAL_RANK]``. Initialising the process group here
    makes the Runner skip ``init_dist``; ``device_ids=None`` lets DDP run on CPU. SyncBN
    needs CUDA, so its configs fall back to BN (per-process statistics).

    Args:
        cfg (mmengine.Config): The run's config; modified in place.
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
    """
    import torch
    import torch.distributed as dist
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'Launcher {launcher!r} without CUDA is not supported; use '
                           '`tools/dist_train.sh` (torchrun, --launcher pytorch).')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    # Each top-level value of a Config is a ConfigDict (a dict) changed in place.
    n = sum(replace_syncbn(cfg[k]) for k in list(cfg.keys()))
    if n:
        from mmengine.logging import print_log
        print_log(f'No CUDA: replaced {n} SyncBN layer config(s) by BN for CPU '
                  'multi-process training.', logger='current')


def replace_syncbn(node: Any) -> int:
    """Turn every ``type='SyncBN'`` of a (nested) config dict into ``'BN'`` in place.

    Returns:
        int: How many were replaced.
    """
    n = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            n += 1
        for v in node.values():
            n += replace_syncbn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += replace_syncbn(v)
    return n
