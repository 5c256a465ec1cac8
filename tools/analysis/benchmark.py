"""Speed benchmarks behind ``tools/benchmark.py``: cipher cost, training throughput, memory.

Three comparisons, each measured side by side in one run:

1. **Cipher cost** (:func:`bench_cipher`, :func:`bench_pipeline`): ``BlockScramble`` on a
   768x768 crop and a 1024x2048 image against a plain copy of the same array, and its
   share of the stock Cityscapes training pipeline's per-sample time.
2. **Encryption at train time** (:func:`bench_train`): images/s and memory of the
   baseline, conventional 2 and proposed models at the plugin's defaults, same model and
   shapes.
3. **Stock mmseg vs the plugin** (:func:`bench_train`): stock SETR (float32, mmcv
   attention) against fused attention + bf16 mixed precision (where supported), and
   against the opt-in speed switches (see :data:`SWITCHES`).

Timing rules: variants run interleaved on the CPU (one step of each in turn, rotating
the order, so that load from other processes hits all alike) and one after another on a
GPU (so that each one's peak memory is its own); every figure is the median over the
measured repetitions, after warm-up. CPU work is timed in process CPU time (see
:func:`default_timer`). GPU steps are timed with CUDA events recorded between
consecutive steps, without a host synchronisation in between, so that the CPU may queue
work ahead as it does in a real run; every step copies its logged losses to the host as
mmengine's ``RuntimeInfoHook`` does, unless the variant defers that copy.

Memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU, where PyTorch keeps no
allocator statistics, the bytes that autograd saves for the backward pass (the part of
training memory that depends on the attention implementation), counted once per storage.

This module is part of the repository's tools, not of the installed package: it reads
the configs of the checkout it lives in (``configs/ppenc`` two levels above this file)
unless told otherwise.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import os.path as osp
import platform
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmseg_ppenc.compat import replace_syncbn

__all__ = ['SWITCHES', 'TIMERS', 'default_timer', 'time_interleaved', 'time_sequential',
           'summarize', 'bench_cipher', 'bench_pipeline', 'model_configs', 'parse_variant',
           'bench_train', 'throughput_ratio', 'compare', 'format_report', 'write_json',
           'run', 'CONFIG_DIR']

#: The checkout's own configs (this file is tools/analysis/benchmark.py).
CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                      'configs', 'ppenc')
_SETTINGS = ('baseline', 'conventional2', 'proposed')

#: Opt-in speed switches of a variant (``parse_variant('baseline+FCD+B')``): letter ->
#: (name in reports, what the variant does, the config option a training run sets).
SWITCHES = {
    'F': ('fused-opt', 'fused optimizer step',
          'optim_wrapper.optimizer.fused=True'),
    'C': ('channels-last', 'neck and heads in channels-last format',
          "custom_hooks=[dict(type='ChannelsLastHook')]"),
    'D': ('deferred-log', 'logged losses copied to the host once per log interval',
          "default_hooks.runtime_info.type=DeferredLogRuntimeInfoHook"),
    'L': ('fast-loss', "heads' logits resized by matrix products, acc_seg from argmax",
          'default_hooks.fast_loss.type=FastLossHook'),
    'B': ('compile-backbone', 'torch.compile of the backbone',
          'model.backbone.torch_compile=True'),
    'M': ('compile-model', 'torch.compile of the whole segmentor forward + losses',
          'model.compile (no config switch; measured for reference)'),
    'S': ('compile-step', "torch.compile of the whole train_step (mmengine's switch)",
          'compile=True'),
}


# --------------------------------------------------------------------------- timing
#: ``'cpu'``: CPU time of this process; ``'wall'``: wall-clock time.
TIMERS = ('cpu', 'wall')


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def default_timer(device: str) -> str:
    """``'cpu'`` (process CPU time) on the CPU, ``'wall'`` on accelerators.

    On a shared CPU, wall time counts the time other processes hold the cores; the CPU
    time of this process does not, so it is the stable measure of what a step costs
    (about 1 % run-to-run spread here, against 20 % for wall time). A GPU step is
    measured in wall time between synchronisations.
    """
    return 'wall' if device.startswith('cuda') else 'cpu'


def time_interleaved(fns: Dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str = 'cpu') -> Dict[str, Dict[str, List[float]]]:
    """Time several functions in turn, rotating their order every round.

    Args:
        fns (dict[str, callable]): Name -> function without arguments.
        repeats (int): Measured rounds.
        warmup (int): Unmeasured rounds first. Defaults to 1.
        device (str): ``'cuda...'`` synchronises around every call. Defaults to ``'cpu'``.

    Returns:
        dict: Name -> ``{'wall': [...], 'cpu': [...]}``, the ``repeats`` wall-clock and
        process CPU times in milliseconds, in round order.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    names = list(fns)
    samples = {n: {'wall': [], 'cpu': []} for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            _sync(device)
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                samples[name]['wall'].append((w1 - w0) * 1e3)
                samples[name]['cpu'].append((c1 - c0) * 1e3)
    return samples


def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """Median, min and max of timings in milliseconds, and their count."""
    return dict(median_ms=float(statistics.median(samples_ms)),
                min_ms=float(min(samples_ms)), max_ms=float(max(samples_ms)),
                n=len(samples_ms))


def _summary(samples: Dict[str, List[float]], timer: str) -> dict:
    """:func:`summarize` of the ``timer`` samples, plus the other timer's median."""
    if timer not in TIMERS:
        raise ValueError(f'timer must be one of {TIMERS}, got {timer!r}')
    out = summarize(samples[timer])
    out.update(timer=timer, wall_median_ms=float(statistics.median(samples['wall'])),
               cpu_median_ms=float(statistics.median(samples['cpu'])))
    return out


def time_sequential(fn: Callable[[], Any], repeats: int) -> Dict[str, List[float]]:
    """Time ``repeats`` consecutive CUDA steps without synchronising between them.

    A CUDA event is recorded on the current stream before every step and after the last
    one; the host waits once, at the end. The time between two events is what the GPU
    stream spent on one step, including any time it sat idle waiting for the CPU to
    queue work, which is what a training run sees (a host synchronisation between steps
    would hide that).

    Args:
        fn (callable): One training step.
        repeats (int): Number of steps.

    Returns:
        dict: ``{'wall': [...], 'cpu': [...]}`` in milliseconds: per-step event times,
        and the per-step process CPU time.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    events = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
    cpu = []
    torch.cuda.synchronize()
    for i in range(repeats):
        events[i].record()
        c0 = time.process_time()
        fn()
        cpu.append((time.process_time() - c0) * 1e3)
    events[-1].record()
    torch.cuda.synchronize()
    wall = [events[i].elapsed_time(events[i + 1]) for i in range(repeats)]
    return dict(wall=wall, cpu=cpu)


# --------------------------------------------------------------------------- cipher
def _temp_key_file(tmp: str) -> str:
    from mmseg_ppenc.keys import SecretKey
    path = osp.join(tmp, 'benchmark.key')
    SecretKey.generate().save(path)
    return path


def bench_cipher(repeats: int = 50, sizes: Sequence[Tuple[int, int]] = ((768, 768),
                                                                         (1024, 2048)),
                 key_file: Optional[str] = None, seed: int = 0,
                 timer: str = 'cpu') -> dict:
    """``BlockScramble`` vs a plain copy of the same array, per image size.

    The image is BGR uint8, as mmcv's loader yields it, and ``BlockScramble`` runs as in
    the shipped training pipelines (``pad_to_grid=True``, a no-op on the grid). Also
    timed, for reference: the previous implementation's gather with a full-size index
    map.

    Args:
        repeats (int): Measured repetitions per variant. Defaults to 50.
        sizes (Sequence[tuple[int, int]]): (height, width) pairs. Defaults to 768x768
            and 1024x2048.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Image seed. Defaults to 0.
        timer (str): ``'cpu'`` or ``'wall'`` for the headline figures (both are
            recorded). Defaults to ``'cpu'``.

    Returns:
        dict: ``{'HxW': {'copy': {...}, 'scramble': {...}, 'full_map': {...},
        'scramble_over_copy': float}}`` with :func:`summarize` dicts in milliseconds.
    """
    from mmseg_ppenc.transforms import BlockScramble
    rng = np.random.default_rng(seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        scramble = BlockScramble(key_file=key_file or _temp_key_file(tmp),
                                 pad_to_grid=True)
        cipher = scramble.cipher
        for h, w in sizes:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            full = cipher.index_map(h, w, 'hwc-bgr')
            flat = img.reshape(-1)
            fns = {
                'copy': img.copy,
                'scramble': lambda img=img: scramble.transform(dict(img=img)),
                'full_map': lambda flat=flat, full=full: np.take(flat, full),
            }
            samples = time_interleaved(fns, repeats, warmup=2)
            res = {k: _summary(v, timer) for k, v in samples.items()}
            res['scramble_over_copy'] = (res['scramble']['median_ms'] /
                                         res['copy']['median_ms'])
            out[f'{h}x{w}'] = res
            del full
            cipher._maps.pop((h, w, 'hwc-bgr', False), None)  # a 14-50 MB map
    return out


def _stock_setr_config_path(decoder: str) -> str:
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', 'setr',
                    f'setr_vit-l_{decoder}_8xb1-80k_cityscapes-768x768.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Expected the stock mmseg config at {path}; install '
                                'mmsegmentation 1.2.2 from its wheel (it ships .mim).')
    return path


def bench_pipeline(repeats: int = 20, key_file: Optional[str] = None,
                   seed: int = 0, timer: str = 'cpu') -> dict:
    """Per-sample time of the stock Cityscapes training pipeline, plain and encrypted.

    The pipeline is the ``train_pipeline`` of mmseg's
    ``setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py`` (load PNGs, random resize, 768x768
    random crop, flip, photometric distortion, pack) on a synthetic 1024x2048 street
    scene written as PNGs, as Cityscapes stores them. The encrypted pipeline inserts
    ``BlockScramble(pad_to_grid=True)`` before packing, as the shipped configs do; its
    own time is measured inside the pipeline. Both pipelines see the same random
    augmentation in each repetition.

    Args:
        repeats (int): Measured samples per pipeline. Defaults to 20.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Seed of the scene and of the augmentations. Defaults to 0.
        timer (str): ``'cpu'`` or ``'wall'`` for the headline figures. Defaults to
            ``'cpu'``.

    Returns:
        dict: ``plain``, ``encrypted`` and ``scramble`` (:func:`summarize` dicts, ms per
        sample) and ``share`` = median scramble time / median plain pipeline time.
    """
    import cv2
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    # mmseg's runtime (env_cfg.mp_cfg.opencv_num_threads=0) runs the pipeline in
    # dataloader workers with OpenCV's own threads off; do the same.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    # The augmentations draw from the global generators; leave them as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return _bench_pipeline(repeats, key_file, seed, timer)
    finally:
        cv2.setNumThreads(cv2_threads)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _bench_pipeline(repeats: int, key_file: Optional[str], seed: int, timer: str) -> dict:
    import cv2
    from mmengine.config import Config
    from mmseg.registry import TRANSFORMS

    from mmseg_ppenc.datasets.synthetic import render_scene
    cfg = Config.fromfile(_stock_setr_config_path('mla'))
    stock = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    if stock[-1]['type'] != 'PackSegInputs':
        raise RuntimeError(f'Expected the stock pipeline to end in PackSegInputs, got '
                           f'{stock[-1]["type"]}.')
    scramble_time: Dict[str, List[float]] = {'wall': [], 'cpu': []}

    with tempfile.TemporaryDirectory() as tmp:
        img, lab = render_scene(1024, 2048, np.random.default_rng(seed))
        img_path, lab_path = osp.join(tmp, 'img.png'), osp.join(tmp, 'lab.png')
        cv2.imwrite(img_path, np.ascontiguousarray(img[..., ::-1]))
        cv2.imwrite(lab_path, lab)
        plain = [TRANSFORMS.build(t) for t in stock]
        scramble = TRANSFORMS.build(dict(type='BlockScramble', pad_to_grid=True,
                                         key_file=key_file or _temp_key_file(tmp)))

        def timed_scramble(results: dict) -> dict:
            w0, c0 = time.perf_counter(), time.process_time()
            out = scramble(results)
            scramble_time['wall'].append((time.perf_counter() - w0) * 1e3)
            scramble_time['cpu'].append((time.process_time() - c0) * 1e3)
            return out

        encrypted = plain[:-1] + [timed_scramble, plain[-1]]

        def run_pipeline(transforms: list, i: int) -> None:
            # Same augmentation for both pipelines in repetition i.
            random.seed(seed + i)
            np.random.seed(seed + i)
            results = dict(img_path=img_path, seg_map_path=lab_path, reduce_zero_label=False,
                           seg_fields=[], label_map=None)
            for t in transforms:
                results = t(results)

        counter = {'plain': 0, 'encrypted': 0}

        def step(name: str, transforms: list) -> Callable[[], None]:
            def fn() -> None:
                run_pipeline(transforms, counter[name])
                counter[name] += 1
            return fn

        samples = time_interleaved({'plain': step('plain', plain),
                                    'encrypted': step('encrypted', encrypted)},
                                   repeats, warmup=1)
    res = {k: _summary(v, timer) for k, v in samples.items()}
    res['scramble'] = _summary({k: v[-repeats:] for k, v in scramble_time.items()}, timer)
    res['share'] = res['scramble']['median_ms'] / res['plain']['median_ms']
    return res


# --------------------------------------------------------------------------- models
def _prepare(model_cfg: dict, size: int) -> dict:
    """Random init, BN instead of SyncBN (one process), and the input size."""
    model_cfg = copy.deepcopy(model_cfg)
    replace_syncbn(model_cfg)
    model_cfg['pretrained'] = None
    model_cfg['backbone']['init_cfg'] = None
    model_cfg['backbone']['img_size'] = (size, size)
    model_cfg['data_preprocessor']['size'] = (size, size)
    return model_cfg


def model_configs(arch: str = 'tiny', decoder: str = 'mla', size: int = 128,
                  config_dir: Optional[str] = None) -> Dict[str, Tuple[dict, dict]]:
    """``(model_cfg, optim_wrapper_cfg)`` of stock mmseg SETR and the three settings.

    Args:
        arch (str): ``'tiny'`` (the CPU configs in ``configs/ppenc/tiny``), ``'vit-b'`` or
            ``'vit-l'`` (the paper configs). Defaults to ``'tiny'``.
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``. Defaults to ``'mla'``.
        size (int): Square input side, a multiple of 16. Defaults to 128.
        config_dir (str, optional): The ``configs/ppenc`` folder to read. Defaults to
            None (:data:`CONFIG_DIR`, the checkout's own).

    Returns:
        dict: Keys ``'stock'``, ``'baseline'``, ``'conventional2'``, ``'proposed'``. The
        stock model for ViT-L is mmseg's own config; for the other archs it is the
        baseline config with mmseg's ``VisionTransformer`` and ``OptimWrapper`` put back.
        The plugin settings use ``BF16AmpOptimWrapper`` (the shipped full-size default;
        float32 where bf16 is unsupported). Conventional 2 and proposed get
        ``EncryptedSegDataPreProcessor``, so that encrypting the batch is part of the
        timed step (on the step's device); their shipped configs encrypt in the
        dataloader workers with ``BlockScramble`` instead (see :func:`bench_cipher`).
    """
    from mmengine.config import Config
    if arch not in ('tiny', 'vit-b', 'vit-l'):
        raise ValueError(f"arch must be 'tiny', 'vit-b' or 'vit-l', got {arch!r}")
    if decoder not in ('mla', 'pup', 'naive'):
        raise ValueError(f"decoder must be 'mla', 'pup' or 'naive', got {decoder!r}")
    if size % 16:
        raise ValueError(f'size must be a multiple of 16 (the patch size), got {size}')

    config_dir = config_dir or CONFIG_DIR
    if not osp.isdir(config_dir):
        raise FileNotFoundError(f'Config folder {config_dir!r} does not exist; expected '
                                'the configs/ppenc folder of a checkout.')

    def path(setting: str) -> str:
        if arch == 'tiny':
            return osp.join(config_dir, 'tiny', f'setr_tiny_{decoder}_synthetic_{setting}.py')
        return osp.join(config_dir, f'setr_{arch}_{decoder}_cityscapes_{setting}.py')

    out = {}
    for setting in _SETTINGS:
        cfg = Config.fromfile(path(setting))
        model = _prepare(cfg.model.to_dict(), size)
        optim = cfg.optim_wrapper.to_dict()
        optim['type'] = 'BF16AmpOptimWrapper'
        if setting != 'baseline':
            model['data_preprocessor']['type'] = 'EncryptedSegDataPreProcessor'
        out[setting] = (model, optim)
    if arch == 'vit-l':
        stock = Config.fromfile(_stock_setr_config_path(decoder))
        model, optim = _prepare(stock.model.to_dict(), size), stock.optim_wrapper.to_dict()
    else:
        model, optim = copy.deepcopy(out['baseline'][0]), copy.deepcopy(
            Config.fromfile(path('baseline')).optim_wrapper.to_dict())
        model['backbone']['type'] = 'VisionTransformer'
        model['backbone'].pop('attn_impl', None)
        optim['type'] = 'OptimWrapper'
    if model['backbone']['type'] != 'VisionTransformer' or optim['type'] != 'OptimWrapper':
        raise RuntimeError(f'The stock model should use VisionTransformer and '
                           f'OptimWrapper, got {model["backbone"]["type"]} and '
                           f'{optim["type"]}.')
    out['stock'] = (model, optim)
    return {k: out[k] for k in ('stock',) + _SETTINGS}


def _synthetic_batch(batch: int, size: int, num_classes: int, seed: int) -> dict:
    """What the dataloader yields: BGR uint8 images and int64 labels, on the CPU."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                                    generator=g))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size),
                                                    generator=g))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _saved_for_backward_mib(step: Callable[[], Any]) -> float:
    """MiB of distinct storages autograd saves for backward during one ``step``."""
    seen: Dict[Tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[(str(t.device), st.data_ptr())] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2 ** 20


@contextlib.contextmanager
def _quiet_mmengine():
    """Silence mmengine's INFO logs (one line per parameter from ``init_weights``)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def parse_variant(spec: str) -> Tuple[str, str]:
    """Split ``'<setting>[+<switch letters>]'`` (e.g. ``'baseline+FCD+S'``).

    Args:
        spec (str): A setting among ``stock``, ``baseline``, ``conventional2``,
            ``proposed``, then ``+`` and letters of :data:`SWITCHES` (any grouping).

    Returns:
        tuple[str, str]: The setting and the switch letters in :data:`SWITCHES` order.

    Raises:
        ValueError: For an unknown setting or letter, or switches on the stock model.
    """
    setting, _, rest = spec.partition('+')
    if setting not in ('stock',) + _SETTINGS:
        raise ValueError(f'Variant {spec!r}: the setting must be one of stock, baseline, '
                         f'conventional2, proposed; got {setting!r}.')
    letters = rest.replace('+', '')
    bad = sorted(set(letters) - set(SWITCHES))
    if bad:
        raise ValueError(f'Variant {spec!r}: unknown switch letter(s) {bad}; expected '
                         'letters of ' + ', '.join(f'{k} ({v[0]})' for k, v in
                                                   SWITCHES.items()) + '.')
    if setting == 'stock' and letters:
        raise ValueError(f'Variant {spec!r}: the stock model runs as mmseg ships it; '
                         'put switches on baseline, conventional2 or proposed.')
    if 'M' in letters and 'S' in letters:
        raise ValueError(f'Variant {spec!r}: M and S both compile the forward; pick one.')
    return setting, ''.join(k for k in SWITCHES if k in letters)


def variant_name(setting: str, switches: str, batch: int) -> str:
    """Report name, e.g. ``'plugin baseline +fused-opt b8'`` or ``'stock fp32 b2'``."""
    if setting == 'stock':
        return f'stock fp32 b{batch}'
    extra = ''.join(f' +{SWITCHES[k][0]}' for k in switches)
    return f'plugin {setting}{extra} b{batch}'


class _Variant:
    """One model + optimizer wrapper + batch, ready to train."""

    def __init__(self, name: str, setting: str, batch: int, switches: str,
                 cfgs: dict, size: int, device: str, key_file: str, seed: int) -> None:
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        from mmseg_ppenc.hooks.speed import to_channels_last
        from mmseg_ppenc.models.fast_loss import enable_fast_loss
        # mmseg's own config file (ViT-L stock) carries no `_scope_`; without a default
        # scope its data preprocessor would be looked up in mmengine's root registry.
        init_default_scope('mmseg')
        self.name, self.setting, self.batch = name, setting, batch
        self.switches = switches
        self.compile = 'B' in switches or 'M' in switches or 'S' in switches
        self.device = device
        model_cfg, optim_cfg = copy.deepcopy(cfgs[setting])
        if setting in ('conventional2', 'proposed'):
            model_cfg['data_preprocessor']['key_file'] = key_file
        if setting == 'proposed':
            model_cfg['backbone']['key_file'] = key_file
        if 'B' in switches:
            model_cfg['backbone']['torch_compile'] = True
        if 'F' in switches:
            optim_cfg.setdefault('optimizer', {})['fused'] = True
        torch.manual_seed(seed)
        self.model = MODELS.build(model_cfg)
        # Initialise on the device: random init of ViT-L takes seconds on a CPU.
        self.model.to(device)
        from mmseg_ppenc.models.encrypted_vit import bind_normalization
        bind_normalization(self.model)  # what KeyManagementHook does at runner start
        self.model.init_weights()
        self.model.train()
        if 'C' in switches:
            to_channels_last(self.model)
        if 'L' in switches:
            enable_fast_loss(self.model)  # what FastLossHook does at runner start
        self.optim_wrapper = build_optim_wrapper(self.model, optim_cfg)
        if 'M' in switches:
            self.model.compile()
        self._train_step = self.model.train_step
        if 'S' in switches:
            # What mmengine's Runner does for `compile=True`.
            self._train_step = torch.compile(self.model.train_step)
        self.defer_log = 'D' in switches
        self._pending: List[torch.Tensor] = []
        num_classes = self.model.decode_head.num_classes
        self.data = _synthetic_batch(batch, size, num_classes, seed)
        self.backbone = type(self.model.backbone).__name__
        self.attn = getattr(self.model.backbone, 'attn_impl', 'stock')
        dtype = None
        if hasattr(self.optim_wrapper, 'autocast_dtype'):
            dtype = self.optim_wrapper.autocast_dtype(torch.device(device).type)
        self.precision = 'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'
        self.encryption = ('on-device in EncryptedSegDataPreProcessor (timed)'
                           if setting in ('conventional2', 'proposed') else 'none')

    def step(self) -> Dict[str, torch.Tensor]:
        log_vars = self._train_step(self.data, self.optim_wrapper)
        if self.defer_log:
            # One copy every 50 steps, as DeferredLogRuntimeInfoHook does.
            self._pending.extend(v.detach().reshape(()) for v in log_vars.values())
            if len(self._pending) >= 50 * len(log_vars):
                torch.stack(self._pending).tolist()
                self._pending = []
        else:
            # mmengine's RuntimeInfoHook: one .item() per logged value, every step.
            for v in log_vars.values():
                v.item()
        return log_vars

    def describe(self) -> dict:
        return dict(name=self.name, setting=self.setting, backbone=self.backbone,
                    attention=self.attn, precision=self.precision,
                    compile=self.compile, switches=self.switches,
                    switch_names=[SWITCHES[k][0] for k in self.switches],
                    batch=self.batch, encryption=self.encryption)

    def free(self) -> None:
        del self.model, self.optim_wrapper, self.data, self._train_step
        self._pending = []
        gc.collect()
        if self.device.startswith('cuda'):
            torch.cuda.empty_cache()


def _variant_plan(batch: int, stock_batches: Sequence[int], compile_backbone: bool,
                  variants: Optional[Sequence[str]] = None
                  ) -> List[Tuple[str, str, int, str]]:
    """``(name, setting, batch, switches)`` of every variant to run, in order."""
    if variants:
        plan = []
        for spec in variants:
            setting, switches = parse_variant(spec)
            batches = stock_batches if setting == 'stock' else (batch,)
            plan += [(variant_name(setting, switches, b), setting, b, switches)
                     for b in batches]
        names = [p[0] for p in plan]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f'Variants {dup} are listed twice; list each once.')
        return plan
    plan = [(f'stock fp32 b{b}', 'stock', b, '') for b in stock_batches]
    plan += [(f'plugin baseline b{b}', 'baseline', b, '')
             for b in stock_batches if b != batch]
    plan += [(f'plugin {s} b{batch}', s, batch, '') for s in _SETTINGS]
    if compile_backbone:
        plan.append((f'plugin baseline+compile b{batch}', 'baseline', batch, 'B'))
    return plan


class _Timeout(Exception):
    """A variant ran past its time budget."""


@contextlib.contextmanager
def _time_limit(seconds: Optional[float]):
    """Raise :class:`_Timeout` in the main thread after ``seconds`` (None: no limit)."""
    if not seconds or not hasattr(signal, 'SIGALRM'):
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f'ran past its time budget of {seconds:.0f} s')

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def bench_train(arch: str = 'tiny', decoder: str = 'mla', size: int = 128, batch: int = 2,
                stock_batches: Optional[Sequence[int]] = None, device: str = 'cpu',
                steps: int = 10, warmup: int = 2, compile_backbone: bool = False,
                key_file: Optional[str] = None, seed: int = 0,
                cpu_threads: Optional[int] = 1, timer: Optional[str] = None,
                log: Callable[[str], None] = print,
                variants: Optional[Sequence[str]] = None,
                variant_budget_s: Optional[float] = None,
                deadline: Optional[float] = None, config_dir: Optional[str] = None,
                on_result: Optional[Callable[[dict], None]] = None) -> dict:
    """Training-step throughput and memory of stock SETR and the plugin's variants.

    Args:
        arch (str): ``'tiny'``, ``'vit-b'`` or ``'vit-l'``. Defaults to ``'tiny'``.
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``. Defaults to ``'mla'``.
        size (int): Square crop side. Defaults to 128.
        batch (int): Batch of the plugin variants. Defaults to 2.
        stock_batches (Sequence[int], optional): Batches of the stock fp32 model (without
            ``variants``, the plugin baseline also runs at each, for the equal-batch
            memory ratio). Defaults to ``(batch,)``.
        device (str): ``'cpu'`` or ``'cuda'``. Defaults to ``'cpu'``.
        steps (int): Measured steps per variant. Defaults to 10.
        warmup (int): Unmeasured steps first. Defaults to 2.
        compile_backbone (bool): Without ``variants``: add the plugin baseline with
            ``torch_compile=True``. Defaults to False.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Seed of weights and data. Defaults to 0.
        cpu_threads (int, optional): ``torch.set_num_threads`` for CPU runs, restored
            afterwards. One thread keeps step times stable on a shared machine (with
            two threads on two busy cores, waits at every parallel region make steps
            vary tenfold). None keeps PyTorch's setting. Defaults to 1.
        timer (str, optional): ``'cpu'`` or ``'wall'``; None picks
            :func:`default_timer`. Defaults to None.
        log (callable): Progress messages. Defaults to ``print``.
        variants (Sequence[str], optional): Variant specs for :func:`parse_variant`
            (e.g. ``['stock', 'baseline', 'baseline+F', 'proposed+FCD+B']``); stock runs
            at each of ``stock_batches``, the others at ``batch``. Defaults to None (the
            stock model and the three settings at the plugin defaults).
        variant_budget_s (float, optional): On a GPU, seconds one variant (build,
            compilation, warm-up and steps) may take before it is abandoned and
            reported as an error. Defaults to None (no limit).
        deadline (float, optional): ``time.time()`` after which no variant starts (and
            none runs past it on a GPU); skipped ones are reported. Defaults to None.
        config_dir (str, optional): ``configs/ppenc`` folder. Defaults to the
            checkout's.
        on_result (callable, optional): Called with each variant's record as soon as it
            is measured (e.g. to write partial results). Defaults to None.

    Returns:
        dict: ``variants``: a list of dicts (``describe()`` fields, ``step`` timing,
        ``img_per_s``, ``peak_mem_mib`` and ``mem_kind``, or ``error``), and the shapes.
    """
    stock_batches = tuple(stock_batches) if stock_batches else (batch,)
    timer = timer or default_timer(device)
    plan = _variant_plan(batch, stock_batches, compile_backbone, variants)
    cfgs = model_configs(arch, decoder, size, config_dir)
    cuda = device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for, but torch.cuda.is_available() is '
                           'False.')
    if cuda:
        # What mmseg's default runtime (env_cfg.cudnn_benchmark=True) makes the Runner do.
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    if not cuda and cpu_threads:
        torch.set_num_threads(cpu_threads)
    results: List[dict] = []

    def finish(rec: dict) -> None:
        if 'step' in rec:
            rec['img_per_s'] = rec['batch'] / (rec['step']['median_ms'] / 1e3)
        results.append(rec)
        if on_result is not None:
            on_result(rec)

    with tempfile.TemporaryDirectory() as tmp, _quiet_mmengine():
        key_file = key_file or _temp_key_file(tmp)

        def build(entry) -> _Variant:
            name, setting, b, switches = entry
            log(f'  building {name} ...')
            return _Variant(name, setting, b, switches, cfgs, size, device, key_file, seed)

        if cuda:
            # One at a time: each variant's peak memory is its own.
            for entry in plan:
                v = None
                t0 = time.time()
                budget = variant_budget_s
                if deadline is not None:
                    left = deadline - t0
                    budget = left if budget is None else min(budget, left)
                try:
                    if budget is not None and budget < 5:
                        raise _Timeout('skipped: no time left in the run budget')
                    with _time_limit(budget):
                        v = build(entry)
                        for _ in range(warmup):
                            v.step()
                        torch.cuda.synchronize()
                        ready = time.time() - t0
                        torch.cuda.reset_peak_memory_stats()
                        samples = time_sequential(v.step, steps)
                    rec = v.describe()
                    rec.update(step=_summary(samples, timer), samples_ms=samples[timer],
                               peak_mem_mib=torch.cuda.max_memory_allocated() / 2 ** 20,
                               mem_kind='cuda max_memory_allocated',
                               build_and_warmup_s=ready)
                except Exception as e:  # noqa: BLE001  (one failed variant, e.g.
                    # out of memory or a torch.compile failure, must not end the run)
                    err = ('out of memory' if isinstance(e, torch.cuda.OutOfMemoryError)
                           else f'{type(e).__name__}: {str(e)[:300]}')
                    rec = dict(name=entry[0], setting=entry[1], batch=entry[2],
                               switches=entry[3], compile=bool(set(entry[3]) & set('BMS')),
                               error=err)
                rec['elapsed_s'] = time.time() - t0
                finish(rec)
                log(f'  {rec["name"]}: ' + (f'{rec["step"]["median_ms"]:.1f} ms/step, '
                                            f'{rec["img_per_s"]:.2f} img/s, '
                                            f'{rec["peak_mem_mib"]:.0f} MiB'
                                            if 'step' in rec else rec['error']) +
                    f' ({rec["elapsed_s"]:.0f} s)')
                if v is not None:
                    v.free()
                del v
                gc.collect()
                torch.cuda.empty_cache()
                if 'B' in entry[3] or 'M' in entry[3] or 'S' in entry[3]:
                    torch._dynamo.reset()  # compiled graphs hold the freed model
        else:
            built = [build(e) for e in plan]
            for v in built:  # warm-up, and the memory measure, outside the timing
                for _ in range(max(warmup - 1, 0)):
                    v.step()
                v.saved_mib = _saved_for_backward_mib(v.step)
            log(f'  timing {len(built)} variants interleaved, {steps} steps each ...')
            samples = time_interleaved({v.name: v.step for v in built}, steps, 0,
                                       device)
            for v in built:
                rec = v.describe()
                rec.update(step=_summary(samples[v.name], timer),
                           samples_ms=samples[v.name][timer], peak_mem_mib=v.saved_mib,
                           mem_kind='saved for backward (CPU)')
                finish(rec)
                v.free()
            if any(v.compile for v in built):
                torch._dynamo.reset()
    used_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    return dict(arch=arch, decoder=decoder, size=size, batch=batch,
                stock_batches=list(stock_batches), device=device, steps=steps,
                warmup=warmup, interleaved=not cuda, timer=timer,
                torch_threads=used_threads, variants=results)


def throughput_ratio(train: dict, num: dict, den: dict) -> float:
    """images/s of ``num`` over images/s of ``den`` (two variants of :func:`bench_train`).

    Interleaved (CPU) runs give the median of the per-round ratios: both steps of a
    round ran back to back, so a burst of load from other processes hits both, and the
    median drops the rounds where it hit only one. Sequential (GPU) runs give the ratio
    of the medians.
    """
    a, b = num.get('samples_ms'), den.get('samples_ms')
    if train.get('interleaved') and a and b and len(a) == len(b):
        per_round = [(tb / den['batch']) / (ta / num['batch']) for ta, tb in zip(a, b)]
        return float(statistics.median(per_round))
    return num['img_per_s'] / den['img_per_s']


# --------------------------------------------------------------------------- report
def _find(variants: List[dict], **kw) -> Optional[dict]:
    for v in variants:
        if all(v.get(k, '' if k == 'switches' else None) == val for k, val in kw.items()) \
                and 'step' in v:
            return v
    return None


def compare(report: dict) -> List[dict]:
    """The report's headline figures and ratios, each with how it was taken.

    Args:
        report (dict): With optional ``cipher``, ``pipeline`` and ``train`` sections as
            returned by :func:`bench_cipher`, :func:`bench_pipeline`, :func:`bench_train`.

    Returns:
        list[dict]: ``name``, ``value`` (None when a side did not run) and ``note``.
    """
    out = []

    def add(name: str, value: Optional[float], note: str = '') -> None:
        out.append(dict(name=name, value=value, note=note))

    crop = (report.get('cipher') or {}).get('768x768')
    if crop is not None:
        add('BlockScramble ms per 768x768 crop', crop['scramble']['median_ms'],
            f"{crop['scramble']['timer']} time")
    pipe = report.get('pipeline')
    if pipe is not None:
        add('BlockScramble share of the stock train pipeline', pipe['share'],
            'per sample, median')
    train = report.get('train')
    if train is None:
        return out
    vs, b = train['variants'], train['batch']
    how = ('median of per-round ratios' if train.get('interleaved')
           else 'ratio of medians')
    for switches in sorted({v.get('switches', '') for v in vs if 'step' in v}, key=len):
        base = _find(vs, setting='baseline', batch=b, switches=switches)
        extra = ''.join(f' +{SWITCHES[k][0]}' for k in switches)
        for setting, label in (('proposed', 'proposed'), ('conventional2', 'conv. 2')):
            other = _find(vs, setting=setting, batch=b, switches=switches)
            if base and other:
                add(f'{label}/baseline images/s (batch {b}{extra})',
                    throughput_ratio(train, other, base), f'encryption included; {how}')
    # One switch on against off, everything else equal (e.g. FDLM against FDM).
    for v in vs:
        if 'step' not in v or v['setting'] == 'stock':
            continue
        for k in v.get('switches', ''):
            rest = v['switches'].replace(k, '')
            off = _find(vs, setting=v['setting'], batch=v['batch'], switches=rest)
            if off is not None:
                extra = ''.join(f' +{SWITCHES[x][0]}' for x in rest)
                add(f"+{SWITCHES[k][0]} on/off images/s ({v['setting']}{extra} "
                    f"b{v['batch']})", throughput_ratio(train, v, off), how)
    stocks = [v for v in vs if v['setting'] == 'stock' and 'step' in v]
    plugins = [v for v in vs if v['setting'] != 'stock' and 'step' in v]
    if stocks and plugins:
        best_s = max(stocks, key=lambda v: v['img_per_s'])
        best_p = max(plugins, key=lambda v: v['img_per_s'])
        add('best plugin/best stock fp32 images/s', best_p['img_per_s'] /
            best_s['img_per_s'], f"{best_p['name']} vs {best_s['name']}")
        base = _find(vs, setting='baseline', batch=b, switches='')
        if base is not None:
            add('plugin defaults/best stock fp32 images/s',
                base['img_per_s'] / best_s['img_per_s'], f"{base['name']} vs {best_s['name']}")
    for st in stocks:
        p = _find(vs, setting='baseline', batch=st['batch'], switches='')
        if p is not None:
            add('plugin/stock fp32 peak memory (same batch)',
                p['peak_mem_mib'] / st['peak_mem_mib'],
                f"batch {st['batch']}, {st['mem_kind']}")
            break
    return out


def _fmt(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return '-'
    return f'{v:.{digits}f}'


def _table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(row: List[str]) -> str:
        return '| ' + ' | '.join(str(x).ljust(w) for x, w in zip(row, widths)) + ' |'

    return '\n'.join([line(headers), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                     + [line(r) for r in rows])


def format_report(report: dict) -> str:
    """The report as Markdown tables (what ``tools/benchmark.py`` prints)."""
    parts = []
    meta = report.get('meta', {})
    if meta:
        parts.append(f"Device: {meta.get('device_name')}; torch {meta.get('torch')}; "
                     f"Python {meta.get('python')}; {meta.get('cpu_count')} CPU cores")
    cipher = report.get('cipher')
    if cipher:
        rows = []
        for size, r in cipher.items():
            rows.append([size, _fmt(r['copy']['median_ms'], 3),
                         _fmt(r['scramble']['median_ms'], 3),
                         _fmt(r['full_map']['median_ms'], 3),
                         _fmt(r['scramble_over_copy'], 1)])
        timer = next(iter(cipher.values()))['copy']['timer']
        parts.append(f'1. Cipher cost (median ms, {timer} time)\n\n' + _table(
            ['image', 'copy', 'BlockScramble', 'full-size map (previous)',
             'scramble/copy'], rows))
    pipe = report.get('pipeline')
    if pipe:
        parts.append(f"Stock Cityscapes train pipeline, per sample (median ms, "
                     f"{pipe['plain']['timer']} time)\n\n" + _table(
            ['plain pipeline', 'with BlockScramble', 'BlockScramble alone', 'share'],
            [[_fmt(pipe['plain']['median_ms'], 1), _fmt(pipe['encrypted']['median_ms'], 1),
              _fmt(pipe['scramble']['median_ms'], 3), f"{100 * pipe['share']:.2f} %"]]))
    train = report.get('train')
    if train:
        stock = [v['img_per_s'] for v in train['variants']
                 if v['setting'] == 'stock' and 'step' in v]
        best_stock = max(stock) if stock else None
        rows = []
        for v in train['variants']:
            if 'step' in v:
                rows.append([v['name'], v['backbone'], v['attention'], v['precision'],
                             str(v['batch']), _fmt(v['step']['median_ms'], 1),
                             _fmt(v['img_per_s'], 2),
                             _fmt(v['img_per_s'] / best_stock) if best_stock else '-',
                             _fmt(v['peak_mem_mib'], 0)])
            else:
                rows.append([v['name'], '', '', '', str(v['batch']), v.get('error', ''),
                             '', '', ''])
        kind = next((v['mem_kind'] for v in train['variants'] if 'mem_kind' in v), '')
        parts.append(
            f"2./3. Training step: {train['arch']} + {train['decoder']}, "
            f"{train['size']}x{train['size']}, {train['device']}, median of "
            f"{train['steps']} steps after {train['warmup']} warm-up, "
            f"{train['timer']} time, {train['torch_threads']} torch thread(s)"
            f"{', interleaved' if train['interleaved'] else ''}\n\n" + _table(
                ['variant', 'backbone', 'attention', 'precision', 'batch', 'ms/step',
                 'img/s', 'x best stock', f'memory MiB ({kind})'], rows))
    prof = report.get('profile')
    if prof and 'segments' in prof:
        from .profile_step import format_profile
        parts.append(format_profile(prof))
    elif prof:
        parts.append(f"Profile: {prof.get('error')}")
    comparisons = report.get('comparisons')
    if comparisons:
        rows = [[c['name'], _fmt(c['value'], 3), c['note']] for c in comparisons]
        parts.append('Comparisons\n\n' + _table(['figure', 'value', 'how'], rows))
    return '\n\n'.join(parts)


def _meta(argv: Optional[Sequence[str]], device: str) -> dict:
    name = platform.processor() or platform.machine()
    cuda = device.startswith('cuda') and torch.cuda.is_available()
    if cuda:
        name = torch.cuda.get_device_name()
    return dict(device=device, device_name=name, torch=torch.__version__,
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if cuda else None,
                gpu_memory_mib=(torch.cuda.get_device_properties(0).total_memory / 2 ** 20
                                if cuda else None),
                numpy=np.__version__, python=platform.python_version(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                tf32_cudnn=torch.backends.cudnn.allow_tf32,
                command=' '.join(['python', 'tools/benchmark.py', *(argv or [])]),
                time=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


def write_json(report: dict, path: str) -> str:
    """Write ``report`` as indented JSON (directories created); returns the path."""
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    return path


SECTIONS = ('cipher', 'pipeline', 'train', 'profile')


def run(sections: Sequence[str] = ('cipher', 'pipeline', 'train'),
        argv: Optional[Sequence[str]] = None, cipher_repeats: int = 50,
        pipeline_repeats: int = 20, log: Callable[[str], None] = print,
        out: Optional[str] = None, profile_variant: str = 'baseline',
        profile_steps: int = 1, **train_kwargs) -> dict:
    """Run the chosen sections and compare the results.

    Args:
        sections (Sequence[str]): Any of :data:`SECTIONS`.
        argv (Sequence[str], optional): The command-line arguments, recorded in meta.
        cipher_repeats (int): Repetitions of :func:`bench_cipher`. Defaults to 50.
        pipeline_repeats (int): Samples per pipeline in :func:`bench_pipeline`.
            Defaults to 20.
        log (callable): Progress messages. Defaults to ``print``.
        out (str, optional): JSON path rewritten after every section and every variant,
            so that a run cut short keeps what it measured. Defaults to None.
        profile_variant (str): Variant spec the ``'profile'`` section breaks down (see
            :func:`parse_variant`). Defaults to ``'baseline'``.
        profile_steps (int): Profiled steps. Defaults to 1.
        **train_kwargs: Arguments of :func:`bench_train` (``arch``, ``decoder``,
            ``size``, ``batch``, ``device``, ``seed`` and ``config_dir`` also apply to
            the profile); its ``timer`` (if given) also applies to the cipher
            sections, which are timed in CPU time by default.

    Returns:
        dict: ``meta``, the sections' results and ``comparisons``.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f'sections must be among {list(SECTIONS)}; got {sorted(unknown)}')
    report: Dict[str, Any] = dict(meta=_meta(argv, train_kwargs.get('device', 'cpu')))

    def save() -> None:
        if out:
            report['comparisons'] = compare(report)
            write_json(report, out)

    # numpy work runs on the CPU whatever the training device is.
    cipher_timer = train_kwargs.get('timer') or 'cpu'
    if 'cipher' in sections:
        log('Cipher: BlockScramble vs copy ...')
        report['cipher'] = bench_cipher(cipher_repeats, timer=cipher_timer)
        save()
    if 'pipeline' in sections:
        log('Cipher: share of the stock Cityscapes train pipeline ...')
        report['pipeline'] = bench_pipeline(pipeline_repeats, timer=cipher_timer)
        save()
    if 'train' in sections:
        log('Training throughput ...')
        partial: List[dict] = []

        def on_result(rec: dict) -> None:
            partial.append(rec)
            report['train'] = dict(partial=True, variants=partial)
            if out:
                write_json(report, out)

        report['train'] = bench_train(log=log, on_result=on_result, **train_kwargs)
        save()
    if 'profile' in sections:
        from .profile_step import profile_step
        log(f'Profile of one training step ({profile_variant}) ...')
        keys = ('arch', 'decoder', 'size', 'batch', 'device', 'seed', 'config_dir')
        try:
            report['profile'] = profile_step(
                profile_variant, steps=profile_steps, log=log,
                **{k: train_kwargs[k] for k in keys if k in train_kwargs})
        except Exception as e:  # noqa: BLE001  (the other sections' results stay)
            report['profile'] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
            log(f'  profile failed: {report["profile"]["error"]}')
        save()
    report['comparisons'] = compare(report)
    report['meta']['max_rss_mib'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
                                     (2 ** 20 if sys.platform == 'darwin' else 2 ** 10))
    save()
    return report
