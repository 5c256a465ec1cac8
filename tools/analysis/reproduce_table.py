"""Table I of Sueyoshi et al. (arXiv 2507.12730) in miniature, on this CPU.

Experiment driver, not library code: it lives in the repository's ``tools/analysis/``
and reads the tiny configs of the checkout it sits in. Run it as
``python tools/reproduce_table.py --out-dir work_dirs/table1`` (or this file directly).

The paper fine-tunes ImageNet-pre-trained SETR models on Cityscapes in three settings
(``docs/method.md``, "The method"): **baseline** (plain model, plain images),
**conventional 2** (plain model, encrypted images) and **proposed** (model encrypted with
the key, encrypted images). Its headline is a pattern: proposed is about as good as
baseline, and conventional 2 is far below both, because a block-wise pixel shuffle
breaks the match between the pre-trained patch embedding and its input. That pattern
needs pre-training to be worth a lot. This driver rebuilds the experiment at toy scale
so that it is:

1. **Data** (:mod:`textures`): texture mosaics. Eight classes that differ only by the
   orientation and period of a grating inside each 16x16 block; colour, contrast and
   brightness are random per region, so they carry no information. A scarce fine-tuning
   set (24 images of 64x128 by default), like Cityscapes against ImageNet.
2. **Pre-training stand-in for ImageNet** (:func:`pretrain_backbone`): the tiny configs'
   own ViT backbone learns, on an unlimited stream of *plain* mosaics with continuous
   orientations and periods, to decode every pixel's orientation bin and period bin
   from the tokens. A related task, not the fine-tuning labels.
3. **Fine-tuning** (:func:`finetune`): the nine tiny configs
   ``configs/ppenc/tiny/setr_tiny_{mla,pup,naive}_synthetic_{baseline,conventional2,
   proposed}.py`` in the real mmengine ``Runner``, with the data set swapped for the
   mosaics (:func:`make_finetune_config`), all from the same pre-trained checkpoint
   (``init_cfg=Pretrained``; ``EncryptedVisionTransformer`` encrypts it with the key for
   proposed). A fourth cell, **scratch**, is the baseline without pre-training: how
   much pre-training is worth here, and the floor conventional 2 can fall to.
4. **Seeds**: every cell is run once per seed; a seed sets the fine-tuning seed *and*
   the key (one key file per seed). Data and pre-training stay fixed. Results are the
   per-seed values, their mean and their sample standard deviation.
5. **Frozen backbone**: the same grid with the backbone frozen after initialisation and
   only the decoder trained. Conventional 2 cannot re-learn its patch embedding there,
   which shows the mechanism directly.
6. **Evaluation**: the configs' ``IoUMetric`` (aAcc / mIoU / mAcc) on the val split.

Outputs: ``table1.md``, ``table1.json`` (per decoder and cell: per-seed mIoU, mean,
std, and the other metrics; key fingerprints, never key bytes) and ``table1.png``.
``--quick`` runs every stage at toy sizes (for tests). :func:`evaluate_at_init`
evaluates a cell's model right after initialisation, which shows that proposed and
baseline start from the same function while conventional 2 does not.

Runs are deterministic per (seed, key) on a given machine and thread count: every Runner
is seeded, data loading is in-process and the thread count is fixed
(:attr:`ExperimentConfig.threads`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import json
import os
import os.path as osp
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# Run from a checkout without installing: the repository root (two levels up) goes first
# on sys.path so that its mmseg_ppenc is the one imported; this directory holds textures.
HERE = osp.dirname(osp.abspath(__file__))
REPO_ROOT = osp.dirname(osp.dirname(HERE))
for _p in (REPO_ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import textures  # noqa: E402
from collect_table import PAPER_TABLE1 as PAPER_FULL_SIZE  # noqa: E402
from mmseg_ppenc.keys import KEY_ENV_VAR, InvalidKeyError, SecretKey  # noqa: E402

__all__ = [
    'DECODERS', 'SETTINGS', 'CELLS', 'ExperimentConfig', 'default_config_dir',
    'tiny_config_path', 'load_backbone_config', 'pretrain_backbone', 'prepare_keys',
    'make_finetune_config', 'finetune', 'evaluate_at_init', 'summarise', 'run_experiment',
    'format_markdown', 'plot_miou', 'PAPER_TABLE1'
]

#: Decoders of the paper's Table I, in its row order.
DECODERS: Tuple[str, ...] = ('mla', 'pup', 'naive')
#: The three settings of the paper, in its column order.
SETTINGS: Tuple[str, ...] = ('baseline', 'conventional2', 'proposed')
#: The cells of the grid: the paper's settings plus the baseline without pre-training.
CELLS: Tuple[str, ...] = SETTINGS + ('scratch',)
TITLES = {'mla': 'MLA', 'pup': 'PUP', 'naive': 'Naive', 'baseline': 'baseline',
          'conventional2': 'conventional 2', 'proposed': 'proposed',
          'scratch': 'scratch (no pre-training)'}
_METRICS = ('aAcc', 'mIoU', 'mAcc')
#: The paper's Table I, ViT-B on Cityscapes val: aAcc / mIoU / mAcc (%).
PAPER_TABLE1: Dict[str, Dict[str, Tuple[float, float, float]]] = PAPER_FULL_SIZE['vit-b']
# The tiny configs' backbone sees 64x64 crops: pre-training uses the same size, so the
# position embedding needs no resizing.
_PRETRAIN_CROP = (64, 64)
_RUN_COUNTER = [0]  # makes Runner experiment names unique within one process


# --------------------------------------------------------------------------- settings
@dataclass
class ExperimentConfig:
    """Settings of the miniature Table I experiment.

    Args:
        out_dir (str): Output directory. Defaults to ``'work_dirs/table1'``.
        seeds (Sequence[int]): One full grid per seed; a seed sets the fine-tuning seed
            and selects the key. Defaults to ``(0, 1, 2)``.
        iters (int): Fine-tuning iterations per run (batch size 8, from the configs).
            Defaults to 200.
        lr (float): Fine-tuning SGD learning rate (poly decay). Defaults to 0.01.
        pretrain_iters (int): Pre-training iterations. Defaults to 1500.
        pretrain_batch_size (int): Mosaics per pre-training step. Defaults to 32.
        pretrain_lr (float): AdamW peak learning rate of pre-training. Defaults to 1e-3.
        decoders (Sequence[str]): Subset of :data:`DECODERS`. Defaults to all three.
        cells (Sequence[str]): Subset of :data:`CELLS`. Defaults to all four.
        frozen (bool): Also run the frozen-backbone grid. Defaults to True.
        num_train (int): Fine-tuning images. Defaults to 24.
        num_val (int): Validation images. Defaults to 32.
        height (int): Image height (multiple of 16, at least 64). Defaults to 64.
        width (int): Image width (multiple of 16, at least 64). Defaults to 128.
        data_seed (int): Seed of the data set and of pre-training. Defaults to 0.
        key_dir (str, optional): Directory of the per-seed key files
            ``table1_seed<N>.key``; missing ones are created (mode 600), present ones
            reused. Defaults to None (``<out_dir>/keys``).
        threads (int, optional): ``torch.set_num_threads`` during the experiment (restored
            afterwards). One thread is the default: these models are so small that a
            second thread mostly adds synchronisation, which becomes costly when other
            processes share the cores; a fixed count also keeps float reductions, and so
            the results, identical between runs. None leaves torch's setting.
            Defaults to 1.
        log_interval (int): Iterations between logged training losses. Defaults to 50.
        config_dir (str, optional): Directory of the tiny configs. Defaults to None
            (``configs/ppenc/tiny`` of this checkout).
        verbose (bool): Show mmengine's INFO logs on the console. Defaults to False.
    """

    out_dir: str = 'work_dirs/table1'
    seeds: Sequence[int] = (0, 1, 2)
    iters: int = 200
    lr: float = 0.01
    pretrain_iters: int = 1500
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    decoders: Sequence[str] = DECODERS
    cells: Sequence[str] = CELLS
    frozen: bool = True
    num_train: int = 24
    num_val: int = 32
    height: int = 64
    width: int = 128
    data_seed: int = 0
    key_dir: Optional[str] = None
    threads: Optional[int] = 1
    log_interval: int = 50
    config_dir: Optional[str] = None
    verbose: bool = False

    #: What ``--quick`` changes: every stage at toy sizes, for the tests.
    QUICK = dict(seeds=(0, 1), iters=4, pretrain_iters=6, pretrain_batch_size=8,
                 num_train=4, num_val=2, log_interval=2)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the expected and the actual value of a bad field."""
        for name, allowed in (('decoders', DECODERS), ('cells', CELLS)):
            chosen = list(getattr(self, name))
            bad = [c for c in chosen if c not in allowed]
            if bad or not chosen or len(set(chosen)) != len(chosen):
                raise ValueError(f'{name} must be distinct values among {list(allowed)}, '
                                 f'got {chosen}.')
        seeds = list(self.seeds)
        if (not seeds or len(set(seeds)) != len(seeds)
                or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds)):
            raise ValueError(f'seeds must be distinct non-negative integers, got {seeds}.')
        for name in ('iters', 'pretrain_batch_size', 'num_train', 'num_val',
                     'log_interval'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
        if self.pretrain_iters < 0:
            raise ValueError(f'pretrain_iters must be >= 0, got {self.pretrain_iters}.')
        for name in ('height', 'width'):
            v = int(getattr(self, name))
            if v < 64 or v % 16:
                raise ValueError(f'{name} must be a multiple of 16 and at least 64 (the '
                                 f'crop size), got {v}.')
        if not self.lr > 0 or not self.pretrain_lr > 0:
            raise ValueError(f'learning rates must be > 0, got lr={self.lr}, '
                             f'pretrain_lr={self.pretrain_lr}.')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads must be >= 1 or None, got {self.threads}.')


def default_config_dir() -> str:
    """``configs/ppenc/tiny`` of the repository this tool belongs to (never the installed
    package's location, which has no configs in a wheel install)."""
    return osp.join(REPO_ROOT, 'configs', 'ppenc', 'tiny')


def tiny_config_path(decoder: str, setting: str, config_dir: Optional[str] = None) -> str:
    """Path of a tiny CPU config, e.g. ``tiny_config_path('mla', 'proposed')``.

    Raises:
        FileNotFoundError: the config does not exist.
    """
    path = osp.join(config_dir or default_config_dir(),
                    f'setr_tiny_{decoder}_synthetic_{setting}.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Tiny config {path!r} not found; expected the configs of '
                                'configs/ppenc/tiny/ (pass config_dir to use others).')
    return path


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


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _load_cfg(path: str):
    import mmseg_ppenc  # noqa: F401  (compat fixes and registrations before mmseg)
    from mmengine.config import Config
    return Config.fromfile(path)


def load_backbone_config(config_dir: Optional[str] = None) -> Tuple[dict, dict]:
    """The backbone to pre-train and the data preprocessor of the tiny configs.

    The backbone is the tiny MLA baseline config's ``model.backbone`` with
    ``init_cfg=None`` and ``with_cls_token=True``. The class token is part of the
    parameters in every setting, but only PUP and Naive (as in mmseg's SETR configs) feed
    it through the transformer; pre-training with it, as ImageNet ViTs are, gives every
    decoder a trained class token and MLA the same mild mismatch as real SETR-MLA.

    Every decoder's tiny baseline backbone must have the same parameter names and
    shapes, because one pre-trained checkpoint serves every run.

    Returns:
        tuple[dict, dict]: ``(backbone_cfg, data_preprocessor_cfg)`` as plain dicts.

    Raises:
        ValueError: the decoders' backbone parameters differ, or the preprocessor does
            not feed RGB.
    """
    import mmseg_ppenc  # noqa: F401
    import mmseg.models  # noqa: F401  (registers VisionTransformer)
    from mmseg.registry import MODELS

    ref = ref_shapes = pre = None
    for decoder in DECODERS:
        cfg = _load_cfg(tiny_config_path(decoder, 'baseline', config_dir))
        bb = cfg.model.backbone.to_dict()
        bb.pop('_scope_', None)
        bb['init_cfg'] = None
        shapes = {k: tuple(v.shape) for k, v in MODELS.build(bb).state_dict().items()}
        if ref is None:
            ref, ref_shapes, pre = bb, shapes, cfg.model.data_preprocessor.to_dict()
        elif shapes != ref_shapes:
            diff = sorted(set(shapes.items()) ^ set(ref_shapes.items()))[:6]
            raise ValueError(f'The tiny {decoder} baseline backbone has other parameters '
                             f'than the MLA one (differences: {diff}); one pre-trained '
                             'checkpoint needs one backbone architecture.')
    if not pre.get('bgr_to_rgb', False):
        raise ValueError('The tiny configs\' SegDataPreProcessor must have '
                         f'bgr_to_rgb=True (RGB models), got {pre}.')
    ref['with_cls_token'] = True
    return ref, pre


# --------------------------------------------------------------------------- keys
def prepare_keys(key_dir: str, seeds: Sequence[int],
                 log: Callable[[str], None] = print) -> Dict[int, Tuple[str, SecretKey]]:
    """One key per seed: ``<key_dir>/table1_seed<N>.key``, created (mode 600) or reused.

    Reusing keeps a rerun into the same out-dir comparable: conventional 2 and proposed
    depend on the key as well as on the seed.

    Returns:
        dict: ``{seed: (absolute key path, key)}``; log only fingerprints.
    """
    keys = {}
    for seed in seeds:
        path = osp.abspath(osp.join(key_dir, f'table1_seed{int(seed)}.key'))
        how = 'reusing key'
        if not osp.exists(path):
            os.makedirs(key_dir, exist_ok=True)
            SecretKey.generate().save(path)
            how = 'new key'
        key = SecretKey.load(path)
        log(f'seed {seed}: {how} {key.fingerprint}')
        keys[int(seed)] = (path, key)
    return keys


# --------------------------------------------------------------------------- pre-training
def _normalise(imgs: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) RGB -> (B, 3, H, W), as ``SegDataPreProcessor`` normalises."""
    return torch.from_numpy((imgs - mean) / std).permute(0, 3, 1, 2).contiguous()


class _PixelDecoder(torch.nn.Module):
    """Linear map of every token to per-pixel logits of the ``patch x patch`` pixels it
    covers (as a linear SETR-Naive-style decoder would): orientation bins, then period
    bins."""

    def __init__(self, dims: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.outputs = textures.NUM_ORIENT_BINS + textures.NUM_PERIOD_BINS
        self.linear = torch.nn.Linear(dims, self.outputs * patch * patch)

    def forward(self, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = feat.shape
        p, k = self.patch, self.outputs
        out = self.linear(feat.flatten(2).transpose(1, 2))
        out = out.reshape(b, h, w, p, p, k).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(b, k, h * p, w * p)
        return out[:, :textures.NUM_ORIENT_BINS], out[:, textures.NUM_ORIENT_BINS:]


def pretrain_backbone(backbone_cfg: dict, preprocessor_cfg: dict, out_path: str,
                      iters: int = 1500, seed: int = 0, batch_size: int = 32,
                      lr: float = 1e-3, keys: Sequence[SecretKey] = (),
                      log: Callable[[str], None] = print) -> dict:
    """Pre-train the tiny ViT on plain mosaics (the ImageNet stand-in) and save it.

    Every step draws a fresh batch of 64x64 mosaics whose regions have continuous
    orientations and periods (:func:`textures.sample_pretrain_batch`); a linear decoder
    on the last layer's tokens predicts each pixel's orientation bin and period bin
    (sum of two cross-entropies). AdamW (weight decay 0.05), 5 % linear warm-up, cosine
    decay. Inputs are normalised like ``SegDataPreProcessor`` (RGB, per-channel
    mean/std).

    Args:
        backbone_cfg (dict): mmseg backbone config (``init_cfg`` is ignored).
        preprocessor_cfg (dict): The fine-tuning configs' ``SegDataPreProcessor`` config.
        out_path (str): Checkpoint path; written as ``{'state_dict': backbone_state,
            'meta': {...}}`` in mmseg's ``VisionTransformer`` layout (no decoder).
        iters (int): Optimisation steps; 0 saves the random initialisation. Defaults to
            1500.
        seed (int): Seed of the stream and the initialisation. Defaults to 0.
        batch_size (int): Mosaics per step. Defaults to 32.
        lr (float): Peak learning rate. Defaults to 1e-3.
        keys (Sequence[SecretKey]): Also measure the held-out accuracy on mosaics
            encrypted with each key, with the plain and with the adapted weights
            (averaged over keys). Defaults to none.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: ``description``, ``iters``, ``batch_size``, ``lr``, ``final_loss`` (mean of
        the last 100 steps), ``heldout_orientation_acc`` and ``heldout_period_acc`` (% of
        pixels of 128 held-out mosaics), with keys also the same two on encrypted
        mosaics for the plain (``*_encrypted_plain_weights``) and the adapted weights
        (``*_encrypted_adapted_weights``), and ``time_s``.
    """
    import mmseg_ppenc  # noqa: F401
    import mmseg.models  # noqa: F401  (registers VisionTransformer)
    from mmseg.registry import MODELS

    t0 = time.time()
    cfg = dict(copy.deepcopy(backbone_cfg), init_cfg=None)
    patch = int(cfg.get('patch_size', 16))
    mean = np.asarray(preprocessor_cfg['mean'], np.float32)
    std = np.asarray(preprocessor_cfg['std'], np.float32)

    torch.manual_seed(seed)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    head = _PixelDecoder(int(cfg['embed_dims']), patch)
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=lr,
                            weight_decay=0.05)
    warmup = max(1, iters // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return lr * (i + 1) / warmup
        return lr * 0.5 * (1 + np.cos(np.pi * (i - warmup) / max(1, iters - warmup)))

    def loss_of(model, imgs, obins, pbins):
        # [-1]: the last layer's tokens (out_indices covers every layer).
        o, p = head(model(_normalise(imgs, mean, std))[-1])
        ce = torch.nn.functional.cross_entropy
        return ce(o, torch.from_numpy(obins)) + ce(p, torch.from_numpy(pbins)), o, p

    rng = np.random.default_rng((seed, textures.STREAMS['pretrain']))
    backbone.train()
    losses: List[float] = []
    for i in range(iters):
        for g in opt.param_groups:
            g['lr'] = lr_at(i)
        loss = loss_of(backbone, *textures.sample_pretrain_batch(rng, batch_size,
                                                                  _PRETRAIN_CROP))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (i + 1) % max(1, iters // 5) == 0 or i + 1 == iters:
            log(f'  pre-train iter {i + 1}/{iters}: loss {np.mean(losses[-100:]):.4f} '
                f'({time.time() - t0:.0f} s)')

    # Held-out accuracy shows that pre-training learned something; with keys, also what
    # the pre-trained backbone is worth on encrypted images at the start of fine-tuning
    # (plain weights: conventional 2; adapted weights: proposed). Reported only.
    backbone.eval()
    held = textures.sample_pretrain_batch(
        np.random.default_rng((seed, textures.STREAMS['heldout'])), 128, _PRETRAIN_CROP)

    def accuracy(model, imgs) -> Tuple[float, float]:
        with torch.no_grad():
            o, p = head(model(_normalise(imgs, mean, std))[-1])
        return (100.0 * float((o.argmax(1).numpy() == held[1]).mean()),
                100.0 * float((p.argmax(1).numpy() == held[2]).mean()))

    accs = dict(zip(('heldout_orientation_acc', 'heldout_period_acc'),
                    accuracy(backbone, held[0])))
    if keys:
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict
        from mmseg_ppenc.cipher import encrypt_image
        per_key = []
        for key in keys:
            adapted = copy.deepcopy(backbone)
            adapted.load_state_dict(encrypt_vit_state_dict(backbone.state_dict(), key,
                                                           mean, std, prefix=''))
            enc = np.stack([encrypt_image(im.astype(np.uint8), key, patch)
                            for im in held[0]]).astype(np.float32)
            per_key.append(accuracy(backbone, enc) + accuracy(adapted, enc))
        m = np.mean(per_key, axis=0)
        accs.update(heldout_orientation_acc_encrypted_plain_weights=float(m[0]),
                    heldout_period_acc_encrypted_plain_weights=float(m[1]),
                    heldout_orientation_acc_encrypted_adapted_weights=float(m[2]),
                    heldout_period_acc_encrypted_adapted_weights=float(m[3]))
    stats = dict(
        description=('per-pixel orientation bin (%d) and period bin (%d) decoded linearly '
                     'from each ViT token; plain 64x64 mosaics with continuous '
                     'orientation in [0, 180) degrees and period in [%g, %g] px'
                     % (textures.NUM_ORIENT_BINS, textures.NUM_PERIOD_BINS,
                        *textures.PERIOD_RANGE)),
        iters=int(iters), batch_size=int(batch_size), lr=float(lr),
        images_seen=int(iters * batch_size),
        final_loss=round(float(np.mean(losses[-100:])), 4) if losses else None,
        **{k: round(v, 2) for k, v in accs.items()}, time_s=round(time.time() - t0, 1))
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    torch.save({'state_dict': backbone.state_dict(),
                'meta': {'mmseg_ppenc_pretrain': {k: v for k, v in stats.items()
                                                  if k != 'time_s'}}}, out_path)
    return stats


# --------------------------------------------------------------------------- fine-tuning
def _mosaic_pipelines(encrypted: bool) -> Tuple[list, list]:
    """Train and test pipelines for the mosaics.

    The tiny configs' random resizing and flipping are left out on purpose: resizing
    changes a grating's period and a horizontal flip turns 45 degrees into 135, i.e. both
    change the class. ``PhotoMetricDistortion`` stays: colour is meant to be
    uninformative, and with 24 images a model could otherwise memorise region colours.
    """
    train = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
             dict(type='RandomCrop', crop_size=_PRETRAIN_CROP),
             dict(type='PhotoMetricDistortion'),
             # As in the tiny configs: the data preprocessor pads to the crop size, and
             # only a uint8 pad before encryption keeps the encrypted runs exact.
             dict(type='PadToGrid', size=_PRETRAIN_CROP)]
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
        data_root (str): Root of the mosaic data set (:func:`textures.make_texture_dataset`).
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
    cfg = _load_cfg(tiny_config_path(decoder, setting, config_dir))
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
                              ('test_dataloader', 'val', test_pipe)):
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


def _unwrap(model):
    """The model inside a DDP/FSDP wrapper (mmengine's test), or the model itself."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def _check_backbone_init(runner, expected: Dict[str, torch.Tensor], what: str) -> None:
    """Fail unless the initialised backbone holds exactly ``expected``.

    mmseg's ``VisionTransformer`` loads pre-trained weights with ``strict=False``, so a
    renamed or reshaped parameter would otherwise be skipped silently and the run would
    quietly train from scratch.
    """
    got = _unwrap(runner.model).backbone.state_dict()
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
    """Train ``cfg`` with the mmengine Runner, then evaluate it on the val split.

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
        ``final_loss`` (last logged), ``loss_curve`` ([iter, loss] pairs),
        ``train_time_s``, ``val_time_s``.
    """
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    start: Dict[str, torch.Tensor] = {}

    class _InitHook(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner) -> None:
            # Runner.train() calls init_weights() right before this hook point.
            backbone = _unwrap(runner.model).backbone
            if expected_backbone is not None:
                _check_backbone_init(runner, expected_backbone, cfg.experiment_name)
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
        t2 = time.time()
    if freeze_backbone:
        _check_backbone_init(runner, start, cfg.experiment_name + ' (frozen backbone)')
    curve = _loss_curve(runner.log_dir)
    out = {m: round(float(metrics[m]), 2) for m in _METRICS}
    out.update(final_loss=curve[-1][1] if curve else None, loss_curve=curve,
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
        model = _unwrap(runner.model)
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
    out = dict(metrics={m: round(float(metrics[m]), 2) for m in _METRICS}, preds=preds)
    if keep_logits:
        out['logits'] = logits
    return out


# --------------------------------------------------------------------------- statistics
def summarise(runs: Sequence[dict]) -> dict:
    """Per-seed values, mean and sample standard deviation of one cell.

    Args:
        runs (Sequence[dict]): One :func:`finetune` result per seed (in seed order), each
            with a ``seed`` field.

    Returns:
        dict: ``miou`` (per-seed list), ``mean``, ``std`` (sample std, ddof=1; 0.0 for a
        single seed), the same for aAcc and mAcc as ``aacc``/``aacc_mean``/
        ``aacc_std`` and ``macc``/..., and ``runs`` (the full per-seed results).
    """
    out: dict = {}
    for metric, name in (('mIoU', 'miou'), ('aAcc', 'aacc'), ('mAcc', 'macc')):
        vals = [float(r[metric]) for r in runs]
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        prefix = '' if name == 'miou' else name + '_'
        out[name] = vals
        out[prefix + 'mean'] = round(mean, 2)
        out[prefix + 'std'] = round(std, 2)
    out['runs'] = list(runs)
    return out


def compare(a: dict, b: dict) -> dict:
    """Difference of two cells' mean mIoU and whether it exceeds the seed spread.

    The spread is the sum of the two standard deviations: the difference counts as
    exceeding it when the mean ± std intervals do not overlap.

    Returns:
        dict: ``delta`` (a mean - b mean), ``spread`` (std a + std b), ``exceeds``.
    """
    delta = round(a['mean'] - b['mean'], 2)
    spread = round(a['std'] + b['std'], 2)
    return dict(delta=delta, spread=spread, exceeds=bool(abs(delta) > spread))


# --------------------------------------------------------------------------- outputs
def _pm(cell: Optional[dict], prefix: str = '') -> str:
    if not cell:
        return '–'
    return f'{cell[prefix + "mean"]:.2f} ± {cell[prefix + "std"]:.2f}'


_COMPARISONS = (('baseline', 'scratch', 'pre-training is worth (baseline − scratch)'),
                ('conventional2', 'baseline', 'conventional 2 − baseline'),
                ('proposed', 'baseline', 'proposed − baseline'),
                ('proposed', 'conventional2', 'proposed − conventional 2'))


def _grid_markdown(grid: Dict[str, Dict[str, dict]], decoders: Sequence[str],
                   cells: Sequence[str]) -> List[str]:
    lines = ['| decoder | ' + ' | '.join(TITLES[c] for c in cells) + ' |',
             '|---|' + '---|' * len(cells)]
    for d in decoders:
        lines.append(f'| {TITLES[d]} | ' + ' | '.join(_pm(grid.get(d, {}).get(c))
                                                      for c in cells) + ' |')
    lines += ['', '| decoder | difference of mean mIoU | value | seed spread (std + std) '
              '| exceeds the spread? |', '|---|---|---|---|---|']
    for d in decoders:
        row = grid.get(d, {})
        for a, b, what in _COMPARISONS:
            if row.get(a) and row.get(b):
                c = compare(row[a], row[b])
                lines.append(f'| {TITLES[d]} | {what} | {c["delta"]:+.2f} | '
                             f'{c["spread"]:.2f} | {"yes" if c["exceeds"] else "no"} |')
    return lines


def format_markdown(result: dict) -> str:
    """The miniature Table I as markdown: the full fine-tuning grid, the frozen-backbone
    grid, the differences against the seed spread, and the paper's layout.

    Args:
        result (dict): What :func:`run_experiment` returns (or ``table1.json``).
    """
    s = result['settings']
    pre = result['pretrain']
    seeds = result['seeds']
    decoders, cells = s['decoders'], s['cells']
    enc = ''
    if 'heldout_orientation_acc_encrypted_plain_weights' in pre:
        enc = (f'; on encrypted mosaics '
               f'{pre["heldout_orientation_acc_encrypted_plain_weights"]:.1f}'
               f' / {pre["heldout_period_acc_encrypted_plain_weights"]:.1f} % with these plain '
               f'weights and {pre["heldout_orientation_acc_encrypted_adapted_weights"]:.1f} / '
               f'{pre["heldout_period_acc_encrypted_adapted_weights"]:.1f} % with the adapted '
               'ones')
    lines = [
        '# Table I in miniature',
        '',
        f'mIoU (%) on the texture-mosaic val split ({s["num_val"]} images of '
        f'{s["height"]}x{s["width"]}, {textures.NUM_CLASSES} classes; {s["num_train"]} '
        f'train images), mean ± sample std over {len(seeds)} seeds {seeds} (a seed sets the '
        f'fine-tuning seed and the key). SETR with the tiny ViT of `configs/ppenc/tiny` '
        f'({result["backbone"]["summary"]}), pre-trained for {pre["iters"]} iterations '
        f'({pre["images_seen"]} plain mosaics) on {pre["description"]} (held-out '
        f'orientation / period accuracy {pre["heldout_orientation_acc"]:.1f} / '
        f'{pre["heldout_period_acc"]:.1f} %{enc}); fine-tuned {s["iters"]} iterations at '
        f'batch {s["batch_size"]}, SGD lr {s["lr"]}. Total {result["seconds"] / 60:.1f} min.',
        '',
        '## Full fine-tuning',
        '',
    ]
    lines += _grid_markdown(result['decoders'], decoders, cells)
    if result.get('frozen'):
        lines += ['', '## Frozen backbone (only the decoder is trained)', '']
        lines += _grid_markdown(result['frozen'], decoders, cells)
    lines += ['', '## In the paper\'s layout: aAcc / mIoU / mAcc (%), means', '',
              '| backbone | decoder | baseline | conventional 2 | proposed |',
              '|---|---|---|---|---|']
    for d in decoders:
        row = result['decoders'].get(d, {})
        vals = []
        for c in SETTINGS:
            r = row.get(c)
            vals.append(f'{r["aacc_mean"]:.2f} / {r["mean"]:.2f} / {r["macc_mean"]:.2f}'
                        if r else '–')
        lines.append(f'| tiny ViT | {TITLES[d]} | ' + ' | '.join(vals) + ' |')
    lines += ['', 'The paper (ViT-B, Cityscapes val):', '',
              '| backbone | decoder | baseline | conventional 2 | proposed |',
              '|---|---|---|---|---|']
    for d in decoders:
        lines.append(f'| ViT-B | {TITLES[d]} | ' + ' | '.join(
            ' / '.join(f'{v:.2f}' for v in PAPER_TABLE1[d][c]) for c in SETTINGS) + ' |')
    return '\n'.join(lines) + '\n'


def plot_miou(result: dict, path: str) -> None:
    """Bars of mean mIoU with ±std error bars, per decoder and cell; full fine-tuning
    left, frozen backbone right (Agg canvas, no GUI backend).

    Args:
        result (dict): What :func:`run_experiment` returns.
        path (str): PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result['settings']
    decoders, cells = list(s['decoders']), list(s['cells'])
    colours = {'baseline': '#4c72b0', 'conventional2': '#c44e52', 'proposed': '#55a868',
               'scratch': '#8c8c8c'}
    panels = [('full fine-tuning', result['decoders'])]
    if result.get('frozen'):
        panels.append(('frozen backbone', result['frozen']))
    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    width = 0.8 / max(1, len(cells))
    for k, (title, grid) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for j, c in enumerate(cells):
            xs = [i + (j - (len(cells) - 1) / 2) * width for i in range(len(decoders))]
            ys = [grid[d][c]['mean'] for d in decoders]
            es = [grid[d][c]['std'] for d in decoders]
            bars = ax.bar(xs, ys, width, yerr=es, capsize=2, label=TITLES[c],
                          color=colours[c])
            ax.bar_label(bars, fmt='%.1f', fontsize=6, padding=1)
        ax.set_xticks(range(len(decoders)), [TITLES[d] for d in decoders])
        ax.set_ylabel('mIoU (%)')
        ax.set_ylim(0, 100)
        ax.set_title(f'{title}: mean ± std over {len(result["seeds"])} seeds', fontsize=9)
        ax.grid(axis='y', alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, ncol=2, loc='upper left')
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------- experiment
def _backbone_summary(bb: dict) -> str:
    return (f'{bb.get("type")}, {bb.get("embed_dims")}-d, {bb.get("num_layers")} layers, '
            f'{bb.get("num_heads")} heads, patch {bb.get("patch_size", 16)}')


def _versions() -> dict:
    import mmengine
    import mmseg
    return dict(python=platform.python_version(), torch=torch.__version__,
                mmseg=mmseg.__version__, mmengine=mmengine.__version__,
                numpy=np.__version__)


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _write_outputs(result: dict, out_dir: str) -> None:
    with open(osp.join(out_dir, 'table1.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(osp.join(out_dir, 'table1.md'), 'w') as f:
        f.write(format_markdown(result))
    plot_miou(result, osp.join(out_dir, 'table1.png'))


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole miniature Table I and write ``table1.{md,json,png}`` to ``out_dir``.

    Steps: keys, data, pre-training, then for every seed, decoder and cell one fine-tune
    and evaluation with the mmengine Runner (and the same with a frozen backbone).

    Args:
        exp (ExperimentConfig): The settings.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: Everything written to ``table1.json``: ``decoders`` and ``frozen``
        (``{decoder: {cell: summarise(...)}}``), ``seeds``, ``seconds``, ``settings``,
        ``key_fingerprints``, ``pretrain``, ``backbone``, ``timings``, ``machine``,
        ``versions``.
    """
    exp.validate()
    t_start = time.time()
    load_start = _loadavg()
    out_dir = exp.out_dir
    os.makedirs(out_dir, exist_ok=True)
    seeds = [int(s) for s in exp.seeds]
    with _torch_threads(exp.threads):
        keys = prepare_keys(exp.key_dir or osp.join(out_dir, 'keys'), seeds, log)

        t0 = time.time()
        data_root = osp.join(out_dir, 'data', f'mosaics_s{exp.data_seed}_{exp.num_train}x'
                             f'{exp.num_val}_{exp.height}x{exp.width}')
        # The directory name fixes the file set; the writer refuses foreign files.
        textures.make_texture_dataset(data_root, exp.num_train, exp.num_val,
                                      (exp.height, exp.width), seed=exp.data_seed)
        t_data = time.time() - t0
        log(f'data: {exp.num_train} train / {exp.num_val} val mosaics of '
            f'{exp.height}x{exp.width} in {data_root} ({t_data:.1f} s)')

        backbone_cfg, pre_cfg = load_backbone_config(exp.config_dir)
        ckpt = osp.join(out_dir, 'pretrained_tiny_vit.pth')
        log(f'pre-training {_backbone_summary(backbone_cfg)} for {exp.pretrain_iters} '
            'iterations on plain mosaics')
        pre_stats = pretrain_backbone(backbone_cfg, pre_cfg, ckpt, exp.pretrain_iters,
                                      exp.data_seed, exp.pretrain_batch_size,
                                      exp.pretrain_lr, [k for _, k in keys.values()], log)
        log(f'pre-training done in {pre_stats["time_s"]:.0f} s: held-out orientation / '
            f'period accuracy {pre_stats["heldout_orientation_acc"]:.1f} / '
            f'{pre_stats["heldout_period_acc"]:.1f} %')
        plain_state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict

        grids = [('decoders', False)] + ([('frozen', True)] if exp.frozen else [])
        runs = [(g, seed, d, c) for g, _ in grids for seed in seeds
                for d in exp.decoders for c in exp.cells]
        per_cell: Dict[str, Dict[str, Dict[str, List[dict]]]] = {g: {} for g, _ in grids}
        batch_size = None
        t_ft = time.time()
        for k, (grid, seed, decoder, cell) in enumerate(runs, 1):
            key_file, key = keys[seed]
            pretrained = cell != 'scratch'
            setting = 'baseline' if cell == 'scratch' else cell
            cfg = make_finetune_config(
                decoder, setting, data_root=data_root,
                pretrained=osp.abspath(ckpt) if pretrained else None,
                work_dir=osp.join(out_dir, 'runs', grid, f'seed{seed}',
                                  f'{decoder}_{cell}'),
                iters=exp.iters, seed=seed, lr=exp.lr, log_interval=exp.log_interval,
                verbose=exp.verbose, config_dir=exp.config_dir)
            batch_size = int(cfg.train_dataloader.batch_size)
            expected = None
            if pretrained:
                expected = (encrypt_vit_state_dict(plain_state, key, pre_cfg['mean'],
                                                   pre_cfg['std'], prefix='')
                            if setting == 'proposed' else plain_state)
            tag = (f'[{k}/{len(runs)}] {"frozen " if grid == "frozen" else ""}seed {seed} '
                   f'{TITLES[decoder]} / {TITLES[cell]}')
            res = finetune(cfg, key_file, expected, freeze_backbone=grid == 'frozen')
            res.update(seed=seed, key_fingerprint=key.fingerprint,
                       backbone_type=cfg.model.backbone.type)
            per_cell[grid].setdefault(decoder, {}).setdefault(cell, []).append(res)
            log(f'{tag}: aAcc {res["aAcc"]:.2f}  mIoU {res["mIoU"]:.2f}  mAcc '
                f'{res["mAcc"]:.2f}  (final loss {res["final_loss"]}, '
                f'{res["train_time_s"] + res["val_time_s"]:.0f} s)')
        t_ft = time.time() - t_ft

    settings = asdict(exp)
    settings.update(decoders=list(exp.decoders), cells=list(exp.cells), seeds=seeds,
                    batch_size=batch_size, key_dir=None)
    settings.pop('verbose')
    result = dict(
        experiment='Table I in miniature (Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730)',
        seeds=seeds,
        decoders={d: {c: summarise(v) for c, v in row.items()}
                  for d, row in per_cell['decoders'].items()},
        frozen={d: {c: summarise(v) for c, v in row.items()}
                for d, row in per_cell.get('frozen', {}).items()},
        seconds=None,
        settings=settings,
        key_fingerprints={str(s): keys[s][1].fingerprint for s in seeds},
        backbone=dict(config=backbone_cfg, summary=_backbone_summary(backbone_cfg)),
        pretrain=dict(pre_stats, checkpoint=osp.basename(ckpt)),
        timings=dict(data_s=round(t_data, 1), pretrain_s=pre_stats['time_s'],
                     finetune_s=round(t_ft, 1)),
        machine=dict(cpu_count=os.cpu_count(), torch_threads=exp.threads or
                     torch.get_num_threads(), loadavg_start=load_start,
                     loadavg_end=_loadavg()),
        versions=_versions(),
    )
    result['seconds'] = round(time.time() - t_start, 1)
    _write_outputs(result, out_dir)
    return result


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser (defaults are those of :class:`ExperimentConfig`).

    Returns:
        argparse.ArgumentParser: The parser of ``tools/reproduce_table.py``.
    """
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description='Table I of Sueyoshi et al. in miniature: '
                                'baseline / conventional 2 / proposed / scratch x MLA / '
                                'PUP / Naive x seeds, full fine-tuning and frozen backbone.')
    p.add_argument('--out-dir', default=d.out_dir,
                   help=f'output directory (default: {d.out_dir})')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help=f'seeds; each sets the fine-tuning seed and the key '
                   f'(default: {" ".join(map(str, d.seeds))})')
    p.add_argument('--iters', type=int, default=None,
                   help=f'fine-tuning iterations per run (default: {d.iters})')
    p.add_argument('--pretrain-iters', type=int, default=None,
                   help=f'pre-training iterations (default: {d.pretrain_iters})')
    p.add_argument('--decoders', nargs='+', choices=DECODERS, default=list(DECODERS),
                   help='decoders (default: all)')
    p.add_argument('--cells', nargs='+', choices=CELLS, default=list(CELLS),
                   help='cells: the settings and scratch (default: all)')
    p.add_argument('--train', type=int, default=None,
                   help=f'fine-tuning images (default: {d.num_train})')
    p.add_argument('--val', type=int, default=None,
                   help=f'validation images (default: {d.num_val})')
    p.add_argument('--no-frozen', dest='frozen', action='store_false',
                   help='skip the frozen-backbone grid')
    p.add_argument('--key-dir', default=None,
                   help='directory of the per-seed keys table1_seed<N>.key (default: '
                   'OUT_DIR/keys; missing keys are created with mode 600)')
    p.add_argument('--quick', action='store_true',
                   help='every stage at toy sizes, in a few minutes (for tests): '
                   + ', '.join(f'{k}={v}' for k, v in ExperimentConfig.QUICK.items()))
    p.add_argument('--threads', type=int, default=d.threads,
                   help=f'torch threads (default: {d.threads}; see ExperimentConfig)')
    p.add_argument('--verbose', action='store_true',
                   help="show mmengine's INFO logs and library warnings")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        argparse.Namespace: The parsed flags.
    """
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed flags: defaults, then ``--quick``, then
    every flag given explicitly."""
    values = dict(ExperimentConfig.QUICK) if args.quick else {}
    explicit = dict(seeds=args.seeds, iters=args.iters, pretrain_iters=args.pretrain_iters,
                    num_train=args.train, num_val=args.val)
    values.update({k: v for k, v in explicit.items() if v is not None})
    return ExperimentConfig(out_dir=args.out_dir, decoders=args.decoders, cells=args.cells,
                            frozen=args.frozen, key_dir=args.key_dir, threads=args.threads,
                            verbose=args.verbose, **values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the experiment and print the table and the total runtime.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 for bad settings, a missing config or a bad key file (one
        ``error: ...`` line on stderr).
    """
    args = parse_args(argv)
    if not args.verbose:
        # mmseg/mmengine deprecation notices would repeat for every run.
        warnings.filterwarnings('ignore', module=r'(mmseg|mmengine|mmcv)(\.|$)')
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    exp = config_from_args(args)
    try:
        exp.validate()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        result = run_experiment(exp)
    except (FileNotFoundError, FileExistsError, InvalidKeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print()
    print(format_markdown(result))
    print(f'Wrote {osp.join(args.out_dir, "table1.md")}, table1.json and table1.png; '
          f'total runtime {result["seconds"] / 60:.1f} min ({result["seconds"]:.0f} s; '
          f'load average at start {result["machine"]["loadavg_start"]}, end '
          f'{result["machine"]["loadavg_end"]}).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
