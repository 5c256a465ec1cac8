"""Fine-tuning of the miniature Table I: one tiny config in the real mmengine Runner.

:func:`make_finetune_config` turns a tiny config
(``configs/ppenc/tiny/setr_tiny_{mla,pup,naive}_synthetic_{baseline,conventional2,
proposed}.py``) into one run on the texture mosaics, from the pre-trained checkpoint of
:mod:`pretrain` (``init_cfg=Pretrained``; ``EncryptedVisionTransformer`` encrypts it with
the key for proposed) or from scratch. :func:`finetune` trains and evaluates it with the
configs' ``IoUMetric``; :func:`evaluate_at_init` evaluates the model right after
initialisation, which shows that proposed and baseline start from the same function
while conventional 2 does not.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import os.path as osp
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mmseg_ppenc.core.keyed import unwrap_model
from ppenc.keys import KEY_ENV_VAR

from . import textures_v2 as textures
from .common import METRICS, load_config, tiny_config_path
from .pretrain import PRETRAIN_CROP

__all__ = ['make_finetune_config', 'check_backbone_init', 'finetune', 'evaluate_at_init']

_RUN_COUNTER = [0]  # makes Runner experiment names unique within one process


@contextlib.contextmanager
def _environ(**values: Optional[str]) -> Iterator[None]:
    """Set environment variables for the block, then restore the previous values."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mosaic_pipelines(encrypted: bool) -> Tuple[list, list]:
    """Train and test pipelines for the mosaics.

    The tiny configs' random resizing is left out on purpose: it changes a grating's
    period, i.e. the class (a flip would not, but it is left out as well, as in the first
    version). ``PhotoMetricDistortion`` stays: colour is meant to be uninformative, and
    with a few dozen images a model could otherwise memorise region colours.
    """
    train = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
             dict(type='RandomCrop', crop_size=PRETRAIN_CROP),
             dict(type='PhotoMetricDistortion'),
             # As in the tiny configs: the data preprocessor pads to the crop size, and
             # only a uint8 pad before encryption keeps the encrypted runs exact.
             dict(type='PadToGrid', size=PRETRAIN_CROP)]
    test = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    if encrypted:
        train.append(dict(type='BlockScramble'))
        test.append(dict(type='BlockScramble'))
    pack = dict(type='PackSegInputs')
    return train + [pack], test + [copy.deepcopy(pack)]


def make_finetune_config(decoder: str, setting: str, *, data_root: str,
                         pretrained: Optional[str], work_dir: str, iters: int,
                         seed: int, lr: float = 0.01, log_interval: int = 50,
                         verbose: bool = False, config_dir: Optional[str] = None):
    """A tiny config prepared for one run of the experiment.

    Everything but the data comes from the tiny config: model, optimizer (SGD,
    momentum 0.9), poly schedule, slide inference. The data set becomes the mosaic
    folder (mmseg's ``BaseSegDataset``), with :data:`textures.NUM_CLASSES` classes in
    every head.

    Args:
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``.
        setting (str): ``'baseline'``, ``'conventional2'`` or ``'proposed'``.
        data_root (str): Root of the mosaic data set (:func:`textures_v2.make_dataset`).
        pretrained (str, optional): Plain pre-trained backbone checkpoint; None trains
            the backbone from scratch.
        work_dir (str): The run's work_dir.
        iters (int): Training iterations (the poly schedule ends there).
        seed (int): ``randomness.seed``.
        lr (float): SGD learning rate. Defaults to 0.01 (the tiny configs' value).
        log_interval (int): Logger interval. Defaults to 50.
        verbose (bool): mmengine INFO logs on the console. Defaults to False.
        config_dir (str, optional): Tiny config directory. Defaults to None.

    Returns:
        mmengine.config.Config: The config. The key is not in it: proposed and
        conventional 2 components read ``$PPENC_KEY_FILE`` (see :func:`finetune`).
    """
    cfg = load_config(tiny_config_path(decoder, setting, config_dir))
    _RUN_COUNTER[0] += 1
    cfg.work_dir = work_dir
    # mmengine names loggers, visualizers and message hubs after the experiment (plus a
    # one-second timestamp) and returns an existing instance of the same name, so runs in
    # one process need distinct names.
    cfg.experiment_name = f'table1_{decoder}_{setting}_s{seed}_{os.getpid()}_{_RUN_COUNTER[0]}'
    if cfg.get('visualizer'):
        # mmseg's runtime config names its visualizer 'visualizer'; a second Runner would
        # get the first one's instance and write its scalars into the first work_dir.
        cfg.visualizer.name = cfg.experiment_name
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.log_level = 'INFO' if verbose else 'WARNING'
    cfg.model.backbone.init_cfg = (dict(type='Pretrained', checkpoint=pretrained)
                                   if pretrained else None)
    # The test split is evaluated with the val metric (runner.test()).
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    for head in [cfg.model.decode_head] + list(cfg.model.get('auxiliary_head') or []):
        head.num_classes = textures.NUM_CLASSES
    cfg.optim_wrapper.optimizer.lr = float(lr)
    old_iters = int(cfg.train_cfg.max_iters)
    cfg.train_cfg.max_iters = int(iters)
    # Validate once, explicitly, after training (runner.val()), not inside the loop.
    cfg.train_cfg.val_interval = int(iters)
    cfg.train_cfg.val_begin = int(iters) + 1
    for sched in cfg.param_scheduler:
        if sched.get('end') is not None and int(sched['end']) >= old_iters:
            sched['end'] = int(iters)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=int(iters), max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = int(log_interval)
    train_pipe, test_pipe = _mosaic_pipelines(setting != 'baseline')
    # The inference API reads the top-level pipelines: keep them equal to the loaders'.
    cfg.train_pipeline, cfg.test_pipeline = train_pipe, test_pipe
    root = data_root.rstrip('/\\') + os.sep
    for name, split, pipe in (('train_dataloader', 'train', train_pipe),
                              ('val_dataloader', 'val', test_pipe),
                              ('test_dataloader', 'test', test_pipe)):
        loader = cfg.get(name)
        # Worker processes would compete with the main process for the two cores;
        # in-process loading is also the simplest way to keep runs reproducible.
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset = dict(
            type='BaseSegDataset', data_root=root, metainfo=textures.dataset_metainfo(),
            img_suffix='.png', seg_map_suffix='.png',
            data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}'),
            pipeline=copy.deepcopy(pipe))
    return cfg


def _loss_curve(log_dir: str) -> List[List[float]]:
    files = sorted(glob.glob(osp.join(log_dir, 'vis_data', 'scalars.json')))
    curve = []
    if files:
        with open(files[-1]) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec and 'iter' in rec:
                    curve.append([int(rec['iter']), round(float(rec['loss']), 4)])
    return curve


def check_backbone_init(runner, expected: Dict[str, torch.Tensor], what: str) -> None:
    """Fail unless the initialised backbone holds exactly ``expected``.

    mmseg's ``VisionTransformer`` loads pre-trained weights with ``strict=False``, so a
    renamed or reshaped parameter would otherwise be skipped silently and the run would
    quietly train from scratch.
    """
    got = unwrap_model(runner.model).backbone.state_dict()
    missing = sorted(set(expected) - set(got))
    differ = [k for k in expected if k in got and not torch.allclose(
        got[k].float(), expected[k].float(), rtol=1e-6, atol=1e-6)]
    if missing or differ:
        raise RuntimeError(f'{what}: the backbone after init_weights() does not hold the '
                           f'expected pre-trained weights (missing {missing[:5]}, '
                           f'different {differ[:5]}); check that the tiny configs\' '
                           'backbone matches the pre-trained checkpoint.')


def finetune(cfg, key_file: str, expected_backbone: Optional[Dict[str, torch.Tensor]] = None,
             freeze_backbone: bool = False) -> dict:
    """Train ``cfg`` with the mmengine Runner, then evaluate it on the val and the test
    split.

    Args:
        cfg (mmengine.config.Config): From :func:`make_finetune_config`.
        key_file (str): Key file, exported as ``$PPENC_KEY_FILE`` for the run only.
        expected_backbone (dict, optional): Backbone state the model must hold after
            ``init_weights()`` (checked before the first iteration). Defaults to None.
        freeze_backbone (bool): Train only the neck and the heads: after initialisation
            the backbone's parameters stop requiring gradients (the optimizer skips
            parameters without one). Checked after training: the backbone must be
            unchanged. Defaults to False.

    Returns:
        dict: ``aAcc``, ``mIoU``, ``mAcc`` (%, 2 decimals, from ``IoUMetric``),
        on the val split; ``test`` (the same three on the test split); ``final_loss``
        (last logged), ``loss_curve`` ([iter, loss] pairs), ``train_time_s``,
        ``val_time_s`` (val and test).
    """
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    start: Dict[str, torch.Tensor] = {}

    class _InitHook(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner) -> None:
            # Runner.train() calls init_weights() right before this hook point.
            backbone = unwrap_model(runner.model).backbone
            if expected_backbone is not None:
                check_backbone_init(runner, expected_backbone, cfg.experiment_name)
            if freeze_backbone:
                for p in backbone.parameters():
                    p.requires_grad_(False)
                start.update({k: v.detach().clone()
                              for k, v in backbone.state_dict().items()})

    with _environ(**{KEY_ENV_VAR: key_file}):
        runner = Runner.from_cfg(cfg)
        runner.register_hook(_InitHook())
        t0 = time.time()
        runner.train()
        t1 = time.time()
        metrics = runner.val()
        test_metrics = runner.test()
        t2 = time.time()
    if freeze_backbone:
        check_backbone_init(runner, start, cfg.experiment_name + ' (frozen backbone)')
    curve = _loss_curve(runner.log_dir)
    out = {m: round(float(metrics[m]), 2) for m in METRICS}
    out.update(test={m: round(float(test_metrics[m]), 2) for m in METRICS},
               final_loss=curve[-1][1] if curve else None, loss_curve=curve,
               train_time_s=round(t1 - t0, 1), val_time_s=round(t2 - t1, 1))
    del runner
    return out


def evaluate_at_init(cfg, key_file: str, keep_logits: bool = False) -> dict:
    """Evaluate a run's model right after initialisation, without any training.

    The model is built by the Runner (same seed, so same decoder initialisation in every
    setting) and ``init_weights()`` loads the pre-trained backbone (encrypting it for
    proposed); then the val split is predicted and scored with the config's evaluator.

    Args:
        cfg (mmengine.config.Config): From :func:`make_finetune_config`.
        key_file (str): Key file (exported as ``$PPENC_KEY_FILE`` meanwhile).
        keep_logits (bool): Also return the ``seg_logits``. Defaults to False.

    Returns:
        dict: ``metrics`` (aAcc/mIoU/mAcc), ``preds`` (list of ``(H, W)`` int64 label
        maps, val order), and ``logits`` (list of ``(C, H, W)`` float32) if asked.
    """
    from mmengine.runner import Runner

    with _environ(**{KEY_ENV_VAR: key_file}):
        runner = Runner.from_cfg(cfg)
        model = unwrap_model(runner.model)
        from mmseg_ppenc.models.encrypted_vit import bind_normalization
        bind_normalization(model)  # what KeyManagementHook does at runner start
        model.init_weights()
        loop = runner.val_loop  # builds the dataloader and the evaluator
        model.eval()
        preds, logits = [], []
        with torch.no_grad():
            for data in loop.dataloader:
                outs = runner.model.val_step(data)
                loop.evaluator.process(data_samples=outs, data_batch=data)
                for o in outs:
                    preds.append(o.pred_sem_seg.data[0].cpu().numpy().astype(np.int64))
                    if keep_logits:
                        logits.append(o.seg_logits.data.cpu().numpy().astype(np.float32))
        metrics = loop.evaluator.evaluate(len(loop.dataloader.dataset))
    out = dict(metrics={m: round(float(metrics[m]), 2) for m in METRICS}, preds=preds)
    if keep_logits:
        out['logits'] = logits
    return out
