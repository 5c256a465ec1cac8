"""Building mmengine Runners from configs, with the checks users need before a long run.

:class:`PPEncRunner` is mmengine's ``Runner`` with every start check
(:mod:`mmseg_ppenc.start_checks`) run in ``from_cfg``, before the Runner creates the
work_dir, the log or the config dump. Configs select it with
``runner_type = 'PPEncRunner'``, which every entry point honours (mmseg's and this
project's ``tools/train.py`` and ``tools/test.py``, ``mim train``, ``dist_train.sh``,
the slurm launchers); this project's tools use it for every config.

``tools/train.py`` and ``tools/test.py`` are thin shells over :func:`train` and
:func:`test`; they accept the same flags as mmsegmentation's tools.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from mmseg_ppenc.compat import setup_cpu_distributed
from mmseg_ppenc.core.checkpoint import unsafe_checkpoint_error
from mmseg_ppenc.core.keyed import BuiltDataloaders
from ppenc.errors import ConfigError

__all__ = ['PPEncRunner', 'load_config', 'check_config_paths',
           'build_runner', 'train', 'test', 'use_tta']

_RUNNER_TYPE = 'PPEncRunner'


@RUNNERS.register_module()
class PPEncRunner(Runner, BuiltDataloaders):
    """mmengine's ``Runner``, refusing a run before it writes anything.

    ``from_cfg`` runs :func:`mmseg_ppenc.start_checks.check_before_start` (no bytes or key
    material in the config, its file name or the work_dir; the key files exist; the run is
    exact and uses one key) and only then builds the Runner, whose ``__init__`` creates
    the work_dir, the log, ``vis_data/config.py`` and the config dump. A refused run
    leaves no file behind. Everything else is the parent's.

    Select it in a config with ``runner_type = 'PPEncRunner'``.
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'PPEncRunner':
        """Check ``cfg`` (:mod:`mmseg_ppenc.start_checks`), then build the Runner.

        Args:
            cfg (mmengine.Config | dict): The run config.

        Raises:
            PpencError: a start check refused the run; nothing was written.
        """
        from mmseg_ppenc.start_checks import check_before_start
        warnings = check_before_start(cfg if isinstance(cfg, Config) else Config(cfg))
        runner = super().from_cfg(cfg)
        _log_warnings(warnings)
        return runner

    def built_dataloaders(self, modes: Tuple[str, ...]) -> Iterator[Tuple[str, Any]]:
        """``(mode, dataset)`` of the loops among ``modes`` that are built (never builds
        one; the keyed-run hooks use it at ``before_run``)."""
        loops = dict(train=self._train_loop, val=self._val_loop, test=self._test_loop)
        for mode in modes:
            loader = getattr(loops.get(mode), 'dataloader', None)
            if loader is not None:
                yield mode, loader.dataset


def _log_warnings(warnings: Sequence[str]) -> None:
    """Log start warnings into the run's log (the Runner just made its logger current)."""
    for warning in warnings:
        print_log(warning, logger='current', level=logging.WARNING)


def load_config(config: str, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None, launcher: str = 'none') -> Config:
    """Read a config the way mmseg's tools do.

    Args:
        config (str): Config file path.
        cfg_options (dict, optional): ``--cfg-options`` overrides. Defaults to None.
        work_dir (str, optional): Overrides ``cfg.work_dir``; when neither is given,
            ``./work_dirs/<config name>``. Defaults to None.
        launcher (str): ``'none'`` or ``'pytorch'`` (``'slurm'``/``'mpi'`` on GPUs).
            Defaults to ``'none'``.
    """
    if not osp.isfile(config):
        raise ConfigError(f'Config file {config!r} not found. The shipped configs are '
                          'under configs/ppenc/ (tiny CPU ones in configs/ppenc/tiny/).')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        from mmseg_ppenc.core.config_overrides import merge_cfg_options
        merge_cfg_options(cfg, cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def _is_remote(path: str) -> bool:
    return '://' in path


def check_config_paths(cfg: Config, modes: Sequence[str] = ('train', 'val')) -> None:
    """Fail early, with the fix, when data or checkpoints named by ``cfg`` are missing.

    Args:
        cfg (Config): The config.
        modes (Sequence[str]): Which dataloaders will be used. Defaults to
            ``('train', 'val')``.

    Raises:
        ConfigError: a dataset directory, pre-trained checkpoint or ``load_from`` file
            does not exist.
    """
    problems: List[str] = []
    for mode in modes:
        loader = cfg.get(f'{mode}_dataloader')
        if not loader:
            continue
        ds = loader.get('dataset', {})
        keyless = ds.get('type') == 'KeylessEncryptedDataset'
        while 'dataset' in ds and 'data_root' not in ds:  # dataset wrappers
            ds = ds['dataset']
        fix = ('On the client, encrypt the dataset with `python tools/encrypt_dataset.py '
               'SRC DST` and upload DST' if keyless else
               'Generate the built-in synthetic set with `python '
               'tools/make_synthetic_cityscapes.py data/cityscapes`')
        root = ds.get('data_root', '') or ''
        prefix = ds.get('data_prefix', {}) or {}
        for what, rel in prefix.items():
            path = osp.join(root, rel) if rel else root
            if path and not osp.isdir(path):
                problems.append(
                    f'{mode}_dataloader: dataset directory {path!r} ({what}) does not '
                    f'exist. {fix}, or point the config at your data (`--cfg-options '
                    f'{mode}_dataloader.dataset.data_root=PATH`, or PPENC_DATA_ROOT for '
                    'the tiny and server configs).')
                break
    model = cfg.get('model', {})
    backbone = model.get('backbone', {}) if isinstance(model, dict) else {}
    init_cfg = backbone.get('init_cfg') if isinstance(backbone, dict) else None
    ckpt = init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None
    if isinstance(ckpt, str) and not _is_remote(ckpt) and not osp.isfile(ckpt) \
            and 'train' in modes and not cfg.get('resume') and not cfg.get('load_from'):
        keyless = any(h.get('type') == 'KeylessServerHook'
                      for h in cfg.get('custom_hooks', []) or [])
        how = ('encrypt the plain pre-trained ViT on the client with `python '
               'tools/encrypt_model.py IN OUT` and upload OUT there' if keyless else
               'convert the timm pre-trained ViT there with `python '
               'tools/convert_timm_vit.py IN OUT`')
        problems.append(
            f'model.backbone.init_cfg.checkpoint {ckpt!r} does not exist: {how}, or pass '
            '`--cfg-options model.backbone.init_cfg=None` to train from scratch.')
    load_from = cfg.get('load_from')
    if isinstance(load_from, str) and not _is_remote(load_from) and \
            not osp.isfile(load_from):
        problems.append(f'load_from={load_from!r} does not exist; check the checkpoint '
                        'path.')
    if problems:
        raise ConfigError('Cannot start the run:\n  - ' + '\n  - '.join(problems))


def _refused_checkpoint(err: BaseException) -> bool:
    import pickle
    return isinstance(err, pickle.UnpicklingError) or (
        isinstance(err, (RuntimeError, AttributeError, TypeError))
        and 'weights_only' in str(err))


def _run_checked(runner, cfg: Config, action: str):
    """``runner.train()`` / ``runner.test()``, with refused checkpoints reported as a
    :class:`ConfigError` that names the file."""
    try:
        return getattr(runner, action)()
    except Exception as e:  # noqa: BLE001 - only refused checkpoints are translated
        if not _refused_checkpoint(e):
            raise
        path = cfg.get('load_from') or (
            'the checkpoint being resumed (work_dir/last_checkpoint)' if cfg.get('resume')
            else 'the pre-trained checkpoint (model.backbone.init_cfg)')
        raise unsafe_checkpoint_error(path, e) from None


def build_runner(cfg: Config):
    """Build the Runner (after starting CPU multi-process groups when needed).

    A config without ``runner_type`` gets :class:`PPEncRunner`, so every start check runs
    before anything is written; a config naming another Runner class gets the same
    checks first, then its own class.

    Raises:
        PpencError: a start check refused the run (nothing was written).
    """
    setup_cpu_distributed(cfg, cfg.get('launcher', 'none'))
    runner_type = cfg.get('runner_type') or _RUNNER_TYPE
    cls = RUNNERS.get(runner_type) if isinstance(runner_type, str) else runner_type
    if isinstance(cls, type) and issubclass(cls, PPEncRunner):
        return PPEncRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    from mmseg_ppenc.start_checks import check_before_start
    warnings = check_before_start(cfg)
    runner = RUNNERS.build(cfg)
    _log_warnings(warnings)
    return runner


def train(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
          resume: bool = False, amp: bool = False, launcher: str = 'none'):
    """Train a model from a config, as mmseg's ``tools/train.py`` does.

    Args:
        config (str): Config path.
        work_dir (str, optional): Work directory. Defaults to None.
        cfg_options (dict, optional): Config overrides. Defaults to None.
        resume (bool): Resume from the latest checkpoint in the work_dir (or from
            ``load_from`` if set). Defaults to False.
        amp (bool): Mixed precision (``AmpOptimWrapper``). Defaults to False.
        launcher (str): Job launcher. Defaults to ``'none'``.

    Returns:
        Runner: The runner after training.
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    # --amp asks for mixed precision; configs that already use it (fp16 or our bf16
    # wrapper, which falls back to fp32 without bf16 support) keep their choice.
    if amp and cfg.optim_wrapper.get('type') not in ('AmpOptimWrapper',
                                                     'BF16AmpOptimWrapper'):
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = resume
    modes = ('train', 'val') if cfg.get('val_cfg') else ('train',)
    check_config_paths(cfg, modes)
    runner = build_runner(cfg)
    _run_checked(runner, cfg, 'train')
    return runner


def use_tta(cfg: Config) -> Config:
    """Switch ``cfg`` to test-time augmentation, as mmseg's ``tools/test.py --tta`` does.

    The test dataset runs ``cfg.tta_pipeline`` and the model becomes ``cfg.tta_model``
    (``SegTTAModel``) around ``cfg.model``. The start checks and ``KeyManagementHook``
    then check the segmentor inside and every branch of the pipeline.

    Args:
        cfg (Config): The run config; changed in place.

    Returns:
        Config: ``cfg``.

    Raises:
        ConfigError: the config has no ``tta_pipeline`` or ``tta_model``.
    """
    missing = [k for k in ('tta_pipeline', 'tta_model') if not cfg.get(k)]
    if missing:
        raise ConfigError(
            f'--tta needs {" and ".join(missing)} in the config, and this one has none: '
            'add them (the shipped Cityscapes, ADE20K and tiny configs have them; keyless '
            'server configs have none, since resizing encrypted images does not commute '
            'with the cipher), or test without --tta.')
    # mmseg 1.2.2's tools/test.py, line for line.
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    return cfg


def test(config: str, checkpoint: str, work_dir: Optional[str] = None,
         cfg_options: Optional[dict] = None, launcher: str = 'none',
         out: Optional[str] = None, tta: bool = False) -> dict:
    """Evaluate a checkpoint, as mmseg's ``tools/test.py`` does.

    Args:
        config (str): Config path.
        checkpoint (str): Checkpoint to evaluate.
        work_dir (str, optional): Work directory. Defaults to None.
        cfg_options (dict, optional): Config overrides. Defaults to None.
        launcher (str): Job launcher. Defaults to ``'none'``.
        out (str, optional): Directory for predicted label maps. Defaults to None.
        tta (bool): Test-time augmentation with the config's ``tta_pipeline`` and
            ``tta_model`` (:func:`use_tta`). Defaults to False.

    Returns:
        dict: The metrics (aAcc, mIoU, mAcc).
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    if not osp.isfile(checkpoint):
        raise ConfigError(f'Checkpoint {checkpoint!r} does not exist.')
    cfg.load_from = checkpoint
    if tta:
        use_tta(cfg)
    if out is not None:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    check_config_paths(cfg, ('test',))
    runner = build_runner(cfg)
    return _run_checked(runner, cfg, 'test')

