"""Table I of Sueyoshi et al. (arXiv 2507.12730) in miniature, on this CPU.

Experiment driver, not library code: it lives in the repository's ``tools/analysis/``
and reads the tiny configs of the checkout it sits in. Run it as
``python tools/reproduce_table.py --out-dir work_dirs/table1`` (or this file directly).

The paper fine-tunes ImageNet-pre-trained SETR models on Cityscapes in three settings
(``docs/method.md``, "The method"): **baseline** (plain model, plain images),
**conventional 2** (plain model, encrypted images) and **proposed** (model encrypted with
the key, encrypted images).
Neither ImageNet weights nor Cityscapes can be used here, so this module rebuilds the
experiment at toy scale:

1. **Data**: a synthetic Cityscapes-format set (:func:`make_synthetic_cityscapes`).
2. **Pre-training stand-in**: the tiny configs' own ViT backbone (``model.backbone`` of the
   tiny baseline config, ``init_cfg=None``) is trained on *plain* images of a different task
   and different images: for 64x64 crops, every token must linearly decode the
   Cityscapes *category* (flat, construction, object, nature, sky, human, vehicle: 7, not
   the 19 classes) of each pixel of its 16x16 patch (:func:`pretrain_backbone`). The
   scenes come from :func:`render_scene` with their own seed stream and sizes, so no
   fine-tuning image is seen. Inputs are normalised exactly as the fine-tuning configs'
   ``SegDataPreProcessor`` does (RGB, mmseg mean/std). The backbone is saved as
   ``{'state_dict': ...}`` in mmseg's layout.
3. **Fine-tuning**: the nine tiny configs ``configs/ppenc/tiny/setr_tiny_{mla,pup,naive}_
   synthetic_{baseline,conventional2,proposed}.py`` run in the real mmengine ``Runner``
   with ``model.backbone.init_cfg = Pretrained(<that checkpoint>)`` in all three settings,
   the same seed, data and schedule. ``EncryptedVisionTransformer`` (proposed) encrypts
   the same plain weights with the key when it initialises. As a reference that the
   paper does not have, the baseline is also trained without pre-training
   (``init_cfg=None``): conventional 2's handicap is the loss of (part of) what
   pre-training gave, so the table means little unless pre-training helps.
4. **Evaluation**: the configs' ``IoUMetric`` (aAcc / mIoU / mAcc) on the val split.

Outputs: ``table1.md`` (shaped like the paper's Table I, plus the no-pre-training
reference), ``table1.json`` (metrics,
settings, timings, key fingerprint; never key bytes) and ``table1.png`` (mIoU bars).
:func:`evaluate_at_init` evaluates a setting's model right after initialisation, which
shows that proposed and baseline start from the same function while conventional 2 does
not; :func:`pretrain_backbone` reports the same at the level of the pre-training task
(held-out accuracy on encrypted crops with the plain and with the adapted weights).

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
# on sys.path so that its mmseg_ppenc is the one imported.
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmseg_ppenc.datasets.synthetic import make_synthetic_cityscapes, render_scene  # noqa: E402
from mmseg_ppenc.keys import KEY_ENV_VAR, InvalidKeyError, SecretKey  # noqa: E402

__all__ = [
    'DECODERS', 'SETTINGS', 'CATEGORY_OF_CLASS', 'ExperimentConfig', 'default_config_dir',
    'tiny_config_path', 'load_backbone_config', 'pretrain_backbone', 'prepare_key',
    'make_finetune_config', 'finetune', 'evaluate_at_init', 'run_experiment',
    'format_markdown', 'plot_miou'
]

#: Decoders of the paper's Table I, in its row order.
DECODERS: Tuple[str, ...] = ('mla', 'pup', 'naive')
#: The three settings, in the paper's column order.
SETTINGS: Tuple[str, ...] = ('baseline', 'conventional2', 'proposed')
_DECODER_TITLES = {'mla': 'MLA', 'pup': 'PUP', 'naive': 'Naive'}
_SETTING_TITLES = {'baseline': 'baseline', 'conventional2': 'conventional 2',
                   'proposed': 'proposed'}
_METRICS = ('aAcc', 'mIoU', 'mAcc')

#: Cityscapes category of each train id (the official 7 categories without 'void'):
#: flat 0, construction 1, object 2, nature 3, sky 4, human 5, vehicle 6. The
#: pre-training stand-in predicts these, a coarser label space than fine-tuning's 19.
CATEGORY_OF_CLASS: Tuple[int, ...] = (0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6,
                                      6, 6)
_NUM_CATEGORIES = 7
# Seed-stream tags: pre-training scenes must never coincide with the data set's
# default_rng((seed, split, index)) streams (split is 0 or 1).
_PRETRAIN_STREAM = 0x50524554  # 'PRET'
_HELDOUT_STREAM = 0x48454c44  # 'HELD'
# Scene sizes for pre-training: a different size mix than the 128x256 data set, so
# objects appear at other scales.
_PRETRAIN_SIZES = ((96, 192), (160, 320))

_RUN_COUNTER = [0]  # makes Runner experiment names unique within one process


# --------------------------------------------------------------------------- settings
@dataclass
class ExperimentConfig:
    """Settings of the miniature Table I experiment.

    Args:
        out_dir (str): Output directory. Defaults to ``'work_dirs/table1'``.
        seed (int): Seed of data, pre-training and every fine-tune. Defaults to 0.
        iters (int): Fine-tuning iterations per run (batch size from the configs, 8).
            Defaults to 400.
        pretrain_iters (int): Pre-training iterations. Defaults to 2000.
        decoders (Sequence[str]): Subset of :data:`DECODERS`. Defaults to all three.
        settings (Sequence[str]): Subset of :data:`SETTINGS`. Defaults to all three.
        num_train (int): Training images of the synthetic set. Defaults to 160.
        num_val (int): Validation images. Defaults to 40.
        height (int): Image height (multiple of 16). Defaults to 128.
        width (int): Image width (multiple of 16). Defaults to 256.
        key_file (str, optional): Key file. Defaults to None: ``<out_dir>/table1.key`` is
            created (mode 600) or, if present, reused.
        pretrain_batch_size (int): Crops per pre-training step. Defaults to 64.
        pretrain_lr (float): AdamW peak learning rate of pre-training. Defaults to 1e-3.
        pretrain_pool (int): Scenes rendered for pre-training. Defaults to 512.
        pretrain_task (str): ``'pixel'`` or ``'patch'`` (see :func:`pretrain_backbone`).
            Defaults to ``'pixel'``.
        scratch_reference (bool): Also fine-tune the baseline of every decoder without
            pre-training, to show how much pre-training is worth here. Defaults to True.
        threads (int, optional): ``torch.set_num_threads`` during the experiment (restored
            afterwards). One thread is the default because these models are so small that
            a second thread mostly adds synchronisation, which becomes very costly when
            other processes share the cores; a fixed count also keeps float reductions,
            and so the results, identical between runs. None leaves torch's setting.
            Defaults to 1.
        log_interval (int): Iterations between logged training losses. Defaults to 10.
        config_dir (str, optional): Directory of the tiny configs. Defaults to None
            (``configs/ppenc/tiny`` of this checkout).
        verbose (bool): Show mmengine's INFO logs on the console. Defaults to False.
    """

    out_dir: str = 'work_dirs/table1'
    seed: int = 0
    iters: int = 400
    pretrain_iters: int = 2000
    decoders: Sequence[str] = DECODERS
    settings: Sequence[str] = SETTINGS
    num_train: int = 160
    num_val: int = 40
    height: int = 128
    width: int = 256
    key_file: Optional[str] = None
    pretrain_batch_size: int = 64
    pretrain_lr: float = 1e-3
    pretrain_pool: int = 512
    pretrain_task: str = 'pixel'
    scratch_reference: bool = True
    threads: Optional[int] = 1
    log_interval: int = 10
    config_dir: Optional[str] = None
    verbose: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the expected and the actual value of a bad field."""
        for name, allowed in (('decoders', DECODERS), ('settings', SETTINGS)):
            chosen = list(getattr(self, name))
            bad = [c for c in chosen if c not in allowed]
            if bad or not chosen or len(set(chosen)) != len(chosen):
                raise ValueError(f'{name} must be distinct values among {list(allowed)}, '
                                 f'got {chosen}.')
        for name in ('iters', 'pretrain_batch_size', 'pretrain_pool', 'num_train',
                     'num_val', 'log_interval'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
        if self.pretrain_iters < 0:
            raise ValueError(f'pretrain_iters must be >= 0, got {self.pretrain_iters}.')
        if self.pretrain_task not in _PretrainTask.TASKS:
            raise ValueError(f'pretrain_task must be one of {_PretrainTask.TASKS}, got '
                             f'{self.pretrain_task!r}.')
        if self.seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {self.seed}.')
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


def _load_cfg(path: str, data_root: Optional[str] = None):
    """``Config.fromfile`` with the data root substituted (the tiny configs read
    ``$PPENC_DATA_ROOT`` when they are parsed)."""
    import mmseg_ppenc  # noqa: F401  (compat fixes and registrations before mmseg)
    from mmengine.config import Config
    root = None if data_root is None else data_root.rstrip('/\\') + os.sep
    with _environ(**({'PPENC_DATA_ROOT': root} if root else {})):
        return Config.fromfile(path)


def load_backbone_config(config_dir: Optional[str] = None) -> Tuple[dict, dict]:
    """The backbone to pre-train and the data preprocessor of the tiny configs.

    The backbone is the tiny MLA baseline config's ``model.backbone`` with
    ``init_cfg=None`` and ``with_cls_token=True``. The class token is part of the
    parameters in every setting, but only PUP and Naive (as in mmseg's SETR configs) feed
    it through the transformer; pre-training with it, as ImageNet ViTs are, gives every
    decoder a trained class token and MLA the same mild mismatch as real SETR-MLA.

    Every decoder's tiny baseline backbone must have the same parameter names and
    shapes, because one pre-trained checkpoint serves all nine runs.

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


# --------------------------------------------------------------------------- key
def prepare_key(out_dir: str, key_file: Optional[str] = None,
                log: Callable[[str], None] = print) -> Tuple[str, SecretKey]:
    """Load ``key_file``, or create/reuse ``<out_dir>/table1.key`` (mode 600).

    Reusing the out-dir's key keeps a rerun into the same out-dir comparable: the
    conventional 2 and proposed numbers depend on the key as well as the seed.

    Returns:
        tuple[str, SecretKey]: The absolute key path and the key (log only its
        fingerprint).
    """
    if key_file is None:
        key_file = osp.join(out_dir, 'table1.key')
        if not osp.exists(key_file):
            os.makedirs(out_dir, exist_ok=True)
            SecretKey.generate().save(key_file)
            how = 'new key'
        else:
            how = 'reusing key'
    else:
        how = 'key'
    key_file = osp.abspath(key_file)
    key = SecretKey.load(key_file)
    log(f'{how} {key.fingerprint} ({key_file})')
    return key_file, key


# --------------------------------------------------------------------------- pre-training
def _category_lut() -> np.ndarray:
    lut = np.full(256, _NUM_CATEGORIES, dtype=np.int64)  # _NUM_CATEGORIES = ignore
    lut[:len(CATEGORY_OF_CLASS)] = CATEGORY_OF_CLASS
    return lut


def _render_pool(n: int, seed: int, stream: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``n`` scenes, each from its own ``default_rng((seed, stream, i))``."""
    pool = []
    for i in range(n):
        h, w = _PRETRAIN_SIZES[i % len(_PRETRAIN_SIZES)]
        pool.append(render_scene(h, w, np.random.default_rng((seed, stream, i))))
    return pool


def _patch_targets(cats: np.ndarray, patch: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-patch category distributions of category crops.

    Args:
        cats (np.ndarray): ``(B, H, W)`` categories, :data:`_NUM_CATEGORIES` = ignore.
        patch (int): Patch size.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(targets (B, h*w, 7) float32, valid (B, h*w))``;
        a patch with only ignore pixels is not valid.
    """
    b, h, w = cats.shape
    onehot = np.eye(_NUM_CATEGORIES + 1, dtype=np.float32)[cats]
    counts = onehot.reshape(b, h // patch, patch, w // patch, patch,
                            _NUM_CATEGORIES + 1).sum(axis=(2, 4))
    counts = counts[..., :_NUM_CATEGORIES].reshape(b, -1, _NUM_CATEGORIES)
    total = counts.sum(-1)
    valid = total > 0
    return counts / np.maximum(total, 1)[..., None], valid


def _sample_crops(pool, rng: np.random.Generator, batch: int, crop: Tuple[int, int],
                  augment: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Random crops (any offset, like RandomCrop) with optional flips and
    brightness/contrast jitter.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(images (B, H, W, 3) float32 RGB in [0, 255],
        labels (B, H, W) uint8 train ids)``; without ``augment`` the images hold
        integers.
    """
    ch, cw = crop
    imgs = np.empty((batch, ch, cw, 3), np.float32)
    labs = np.empty((batch, ch, cw), np.uint8)
    for j in range(batch):
        img, lab = pool[int(rng.integers(len(pool)))]
        y = int(rng.integers(img.shape[0] - ch + 1))
        x = int(rng.integers(img.shape[1] - cw + 1))
        im, lb = img[y:y + ch, x:x + cw].astype(np.float32), lab[y:y + ch, x:x + cw]
        if augment:
            if rng.random() < 0.5:
                im, lb = im[:, ::-1], lb[:, ::-1]
            im = np.clip(im * rng.uniform(0.8, 1.2) + rng.uniform(-24, 24), 0, 255)
        imgs[j], labs[j] = im, lb
    return imgs, labs


def _normalise(imgs: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) RGB -> (B, 3, H, W), as ``SegDataPreProcessor`` normalises."""
    return torch.from_numpy((imgs - mean) / std).permute(0, 3, 1, 2).contiguous()


class _PretrainTask:
    """Head, loss and held-out accuracy of one pre-training task.

    ``'pixel'``: a linear layer maps every token to the category logits of each of the
    ``patch x patch`` pixels it covers (as a linear SETR-Naive-style decoder would),
    trained with per-pixel cross-entropy; accuracy is per pixel.
    ``'patch'``: a linear layer maps every token to the patch's category distribution
    (soft cross-entropy); accuracy is the patch's majority category.
    """

    TASKS = ('pixel', 'patch')

    def __init__(self, task: str, dims: int, patch: int) -> None:
        if task not in self.TASKS:
            raise ValueError(f'pretrain task must be one of {self.TASKS}, got {task!r}.')
        self.task, self.patch = task, patch
        out = _NUM_CATEGORIES * patch * patch if task == 'pixel' else _NUM_CATEGORIES
        self.head = torch.nn.Linear(dims, out)

    def describe(self) -> str:
        what = ('per-pixel Cityscapes category (7 categories) decoded linearly from each '
                'ViT token, cross-entropy' if self.task == 'pixel' else
                'per-patch Cityscapes-category distribution (7 categories) from a linear '
                'head on each ViT token, soft cross-entropy')
        return (f'{what}; plain 64x64 crops of separately seeded render_scene scenes '
                f'({" and ".join(f"{h}x{w}" for h, w in _PRETRAIN_SIZES)})')

    def _logits(self, feat: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        out = self.head(feat.flatten(2).transpose(1, 2))  # (B, h*w, out)
        if self.task == 'patch':
            return out
        p, k = self.patch, _NUM_CATEGORIES
        out = out.reshape(b, h, w, p, p, k).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, k, h * p, w * p)

    def loss(self, feat: torch.Tensor, cats: np.ndarray) -> torch.Tensor:
        logits = self._logits(feat)
        if self.task == 'pixel':
            return torch.nn.functional.cross_entropy(
                logits, torch.from_numpy(cats), ignore_index=_NUM_CATEGORIES)
        target, valid = _patch_targets(cats, self.patch)
        per_patch = -(torch.from_numpy(target) * torch.log_softmax(logits, -1)).sum(-1)
        mask = torch.from_numpy(valid).float()
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def correct(self, feat: torch.Tensor, cats: np.ndarray) -> Tuple[int, int]:
        pred = self._logits(feat).argmax(1 if self.task == 'pixel' else -1).numpy()
        if self.task == 'pixel':
            valid = cats != _NUM_CATEGORIES
            return int(((pred == cats) & valid).sum()), int(valid.sum())
        target, valid = _patch_targets(cats, self.patch)
        return int(((pred == target.argmax(-1)) & valid).sum()), int(valid.sum())


def pretrain_backbone(backbone_cfg: dict, preprocessor_cfg: dict, out_path: str,
                      iters: int = 2000, seed: int = 0, batch_size: int = 64,
                      lr: float = 1e-3, pool_size: int = 512, task: str = 'pixel',
                      key: Optional[SecretKey] = None,
                      log: Callable[[str], None] = print) -> dict:
    """Pre-train the tiny ViT on plain images (the ImageNet stand-in) and save it.

    The images are 64x64 crops (any offset, flips, brightness/contrast jitter) of
    :func:`render_scene` scenes drawn from their own seed stream at sizes 96x192 and
    160x320, never the fine-tuning images. The labels are the 7 Cityscapes categories
    (:data:`CATEGORY_OF_CLASS`), not the 19 classes fine-tuning learns; see
    :class:`_PretrainTask` for the two task variants. AdamW (weight decay 0.05), 5 %
    linear warm-up, cosine decay. Inputs are normalised like ``SegDataPreProcessor``
    (RGB, per-channel mean/std).

    Args:
        backbone_cfg (dict): mmseg backbone config (``init_cfg`` is ignored).
        preprocessor_cfg (dict): The fine-tuning configs' ``SegDataPreProcessor`` config;
            its RGB ``mean``/``std`` normalise the inputs.
        out_path (str): Checkpoint path; written as ``{'state_dict': backbone_state,
            'meta': {...}}`` in mmseg's ``VisionTransformer`` layout (no head).
        iters (int): Optimisation steps; 0 saves the random initialisation. Defaults to
            2000.
        seed (int): Seed of the scenes, crops and the initialisation. Defaults to 0.
        batch_size (int): Crops per step. Defaults to 64.
        lr (float): Peak learning rate. Defaults to 1e-3.
        pool_size (int): Scenes rendered up front. Defaults to 512.
        task (str): ``'pixel'`` or ``'patch'`` (see :class:`_PretrainTask`). Defaults to
            ``'pixel'``.
        key (SecretKey, optional): Also measure the held-out accuracy on encrypted
            crops, with the plain and with the adapted weights. Defaults to None.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: ``task``, ``description``, ``iters``, ``batch_size``, ``lr``,
        ``pool_size``, ``final_loss`` (mean of the last 100 steps), ``heldout_acc``
        (% correct on 512 crops of 64 held-out scenes), with a key also
        ``heldout_acc_encrypted_plain_weights`` and
        ``heldout_acc_encrypted_adapted_weights``, and ``time_s``.
    """
    import mmseg_ppenc  # noqa: F401
    import mmseg.models  # noqa: F401  (registers VisionTransformer)
    from mmseg.registry import MODELS

    t0 = time.time()
    cfg = dict(copy.deepcopy(backbone_cfg), init_cfg=None)
    size = cfg.get('img_size', 224)
    # Pre-train at the fine-tuning crop size, so pos_embed needs no resizing later.
    crop = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    patch = int(cfg.get('patch_size', 16))
    mean = np.asarray(preprocessor_cfg['mean'], np.float32)
    std = np.asarray(preprocessor_cfg['std'], np.float32)
    lut = _category_lut()

    torch.manual_seed(seed)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    head = _PretrainTask(task, int(cfg['embed_dims']), patch)
    params = list(backbone.parameters()) + list(head.head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, iters // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return lr * (i + 1) / warmup
        return lr * 0.5 * (1 + np.cos(np.pi * (i - warmup) / max(1, iters - warmup)))

    pool = _render_pool(pool_size, seed, _PRETRAIN_STREAM)
    rng = np.random.default_rng((seed, _PRETRAIN_STREAM, 1 << 20))
    backbone.train()
    losses: List[float] = []
    for i in range(iters):
        for g in opt.param_groups:
            g['lr'] = lr_at(i)
        imgs, labs = _sample_crops(pool, rng, batch_size, crop, augment=True)
        # [-1]: the last layer's tokens (out_indices covers every layer).
        loss = head.loss(backbone(_normalise(imgs, mean, std))[-1], lut[labs])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (i + 1) % max(1, iters // 10) == 0 or i + 1 == iters:
            log(f'  pre-train iter {i + 1}/{iters}: loss {np.mean(losses[-100:]):.4f} '
                f'({time.time() - t0:.0f} s)')

    # Held-out accuracy shows that pre-training learned something; with a key, also what
    # the pre-trained backbone is worth on encrypted images at the start of fine-tuning
    # (plain weights: conventional 2; adapted weights: proposed). Reported only.
    backbone.eval()
    held = _render_pool(64, seed, _HELDOUT_STREAM)
    hrng = np.random.default_rng((seed, _HELDOUT_STREAM, 1 << 20))
    crops = [_sample_crops(held, hrng, 64, crop, augment=False) for _ in range(8)]
    variants = {'heldout_acc': (backbone, False)}
    if key is not None:
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict
        from mmseg_ppenc.cipher import encrypt_image
        adapted = copy.deepcopy(backbone)
        adapted.load_state_dict(encrypt_vit_state_dict(backbone.state_dict(), key, mean,
                                                       std, prefix=''))
        variants.update(heldout_acc_encrypted_plain_weights=(backbone, True),
                        heldout_acc_encrypted_adapted_weights=(adapted, True))
    accs = {}
    with torch.no_grad():
        for name, (model, encrypted) in variants.items():
            correct = total = 0
            for imgs, labs in crops:
                if encrypted:
                    imgs = np.stack([encrypt_image(im.astype(np.uint8), key, patch)
                                     for im in imgs]).astype(np.float32)
                c, n = head.correct(model(_normalise(imgs, mean, std))[-1], lut[labs])
                correct, total = correct + c, total + n
            accs[name] = round(100.0 * correct / max(total, 1), 2)
    stats = dict(
        task=task, description=head.describe(),
        iters=int(iters), batch_size=int(batch_size), lr=float(lr),
        pool_size=int(pool_size),
        final_loss=round(float(np.mean(losses[-100:])), 4) if losses else None,
        **accs, time_s=round(time.time() - t0, 1))
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    torch.save({'state_dict': backbone.state_dict(),
                'meta': {'mmseg_ppenc_pretrain': {k: v for k, v in stats.items()
                                                  if k != 'time_s'}}}, out_path)
    return stats


# --------------------------------------------------------------------------- fine-tuning
def make_finetune_config(decoder: str, setting: str, *, data_root: str,
                         pretrained: Optional[str], work_dir: str, iters: int,
                         seed: int, log_interval: int = 10, verbose: bool = False,
                         config_dir: Optional[str] = None):
    """A tiny config prepared for one run of the experiment.

    Args:
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``.
        setting (str): ``'baseline'``, ``'conventional2'`` or ``'proposed'``.
        data_root (str): Root of the Cityscapes-format data.
        pretrained (str, optional): Plain pre-trained backbone checkpoint; None trains
            the backbone from scratch.
        work_dir (str): The run's work_dir.
        iters (int): Training iterations (the poly schedule ends there).
        seed (int): ``randomness.seed``.
        log_interval (int): Logger interval. Defaults to 10.
        verbose (bool): mmengine INFO logs on the console. Defaults to False.
        config_dir (str, optional): Tiny config directory. Defaults to None.

    Returns:
        mmengine.config.Config: The config. The key is not in it: proposed and
        conventional 2 components read ``$PPENC_KEY_FILE`` (see :func:`finetune`).
    """
    cfg = _load_cfg(tiny_config_path(decoder, setting, config_dir), data_root)
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
    root = data_root.rstrip('/\\') + os.sep
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if not loader:
            continue
        # Worker processes would compete with the main process for the two cores;
        # in-process loading is also the simplest way to keep runs reproducible.
        loader.num_workers = 0
        loader.persistent_workers = False
        ds = loader.dataset
        while 'dataset' in ds and 'data_root' not in ds:
            ds = ds.dataset
        ds.data_root = root
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


def finetune(cfg, key_file: str, expected_backbone: Optional[Dict[str, torch.Tensor]] = None
             ) -> dict:
    """Train ``cfg`` with the mmengine Runner, then evaluate it on the val split.

    Args:
        cfg (mmengine.config.Config): From :func:`make_finetune_config`.
        key_file (str): Key file, exported as ``$PPENC_KEY_FILE`` for the run only.
        expected_backbone (dict, optional): Backbone state the model must hold after
            ``init_weights()`` (checked before the first iteration). Defaults to None.

    Returns:
        dict: ``aAcc``, ``mIoU``, ``mAcc`` (%, 2 decimals, from ``IoUMetric``),
        ``final_loss`` (last logged), ``loss_curve`` ([iter, loss] pairs),
        ``train_time_s``, ``val_time_s``.
    """
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class _CheckInit(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner) -> None:
            # Runner.train() calls init_weights() right before this hook point.
            if expected_backbone is not None:
                _check_backbone_init(runner, expected_backbone, cfg.experiment_name)

    with _environ(**{KEY_ENV_VAR: key_file}):
        runner = Runner.from_cfg(cfg)
        runner.register_hook(_CheckInit())
        t0 = time.time()
        runner.train()
        t1 = time.time()
        metrics = runner.val()
        t2 = time.time()
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
        maps, val order), and ``logits`` (list of ``(19, H, W)`` float32) if asked.
    """
    from mmengine.runner import Runner

    with _environ(**{KEY_ENV_VAR: key_file}):
        runner = Runner.from_cfg(cfg)
        model = _unwrap(runner.model)
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


# --------------------------------------------------------------------------- outputs
def _cell(res: Optional[dict]) -> str:
    if not res:
        return '–'
    return ' / '.join(f'{res[m]:.2f}' for m in _METRICS)


def format_markdown(result: dict) -> str:
    """The miniature Table I as markdown (rows: decoders; columns: the three settings).

    Args:
        result (dict): What :func:`run_experiment` returns (or ``table1.json``).
    """
    s = result['settings']
    pre = result['pretrain']
    enc = ''
    if 'heldout_acc_encrypted_plain_weights' in pre:
        enc = (f'; on encrypted crops {pre["heldout_acc_encrypted_plain_weights"]:.1f} % '
               f'with these plain weights, {pre["heldout_acc_encrypted_adapted_weights"]:.1f}'
               ' % with the adapted ones')
    lines = [
        '# Table I in miniature',
        '',
        f'aAcc / mIoU / mAcc (%) on the synthetic Cityscapes-format val split '
        f'({s["num_val"]} images of {s["height"]}x{s["width"]}; {s["num_train"]} train '
        f'images). SETR with the tiny ViT of `configs/ppenc/tiny` '
        f'({result["backbone"]["summary"]}), pre-trained for {pre["iters"]} iterations on '
        f'plain images of a different task ({pre["task"]}-level Cityscapes categories; '
        f'held-out accuracy {pre["heldout_acc"]:.1f} %{enc}), fine-tuned {s["iters"]} '
        f'iterations at batch {s["batch_size"]}; seed {s["seed"]}, key '
        f'{result["key_fingerprint"]}.',
        '',
        '| backbone | decoder | baseline | conventional 2 | proposed |',
        '|---|---|---|---|---|',
    ]
    for d in s['decoders']:
        row = result['results'].get(d, {})
        cells = [_cell(row.get(st)) for st in SETTINGS]
        lines.append(f'| tiny ViT | {_DECODER_TITLES[d]} | ' + ' | '.join(cells) + ' |')
    deltas = []
    for d in s['decoders']:
        row = result['results'].get(d, {})
        base = row.get('baseline')
        if not base:
            continue
        parts = [f'{_SETTING_TITLES[st]} {row[st]["mIoU"] - base["mIoU"]:+.2f}'
                 for st in ('conventional2', 'proposed') if row.get(st)]
        if parts:
            deltas.append(f'{_DECODER_TITLES[d]}: ' + ', '.join(parts))
    if deltas:
        lines += ['', 'mIoU minus baseline: ' + '; '.join(deltas) + '.']
    scratch = (result.get('reference') or {}).get('baseline_without_pretraining') or {}
    if scratch:
        lines += ['', 'Reference (not in the paper): the baseline fine-tuned from a random '
                  'initialisation, same schedule. A conventional 2 that lost the whole '
                  'benefit of pre-training would land near this level.', '',
                  '| backbone | decoder | baseline, no pre-training | baseline minus it '
                  '(mIoU) |', '|---|---|---|---|']
        for d in s['decoders']:
            if d in scratch:
                base = result['results'].get(d, {}).get('baseline')
                gain = f'{base["mIoU"] - scratch[d]["mIoU"]:+.2f}' if base else '–'
                lines.append(f'| tiny ViT | {_DECODER_TITLES[d]} | {_cell(scratch[d])} | '
                             f'{gain} |')
    return '\n'.join(lines) + '\n'


def plot_miou(result: dict, path: str) -> None:
    """Grouped bar chart of mIoU per decoder and setting (Agg canvas, no GUI backend).

    Args:
        result (dict): What :func:`run_experiment` returns.
        path (str): PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result['settings']
    decoders = list(s['decoders'])
    settings = [st for st in SETTINGS if st in s['settings']]
    colours = {'baseline': '#4c72b0', 'conventional2': '#c44e52', 'proposed': '#55a868'}
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(settings))
    for j, st in enumerate(settings):
        xs = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(decoders))]
        ys = [result['results'][d][st]['mIoU'] for d in decoders]
        bars = ax.bar(xs, ys, width, label=_SETTING_TITLES[st], color=colours[st])
        ax.bar_label(bars, fmt='%.1f', fontsize=7, padding=1)
    scratch = (result.get('reference') or {}).get('baseline_without_pretraining') or {}
    if scratch:
        # A thin marker over the baseline bar: the level reached without pre-training.
        j0 = settings.index('baseline') if 'baseline' in settings else (len(settings) - 1) / 2
        xs = [i + (j0 - (len(settings) - 1) / 2) * width for i, d in enumerate(decoders)
              if d in scratch]
        ys = [scratch[d]['mIoU'] for d in decoders if d in scratch]
        ax.scatter(xs, ys, marker='_', s=400, color='black', zorder=3,
                   label='baseline, no pre-training')
    ax.set_xticks(range(len(decoders)), [_DECODER_TITLES[d] for d in decoders])
    ax.set_ylabel('mIoU (%)')
    top = max(result['results'][d][st]['mIoU'] for d in decoders for st in settings)
    ax.set_ylim(0, max(10.0, top * 1.18))
    ax.set_title(f'Table I in miniature: tiny SETR, {s["iters"]} fine-tune iterations, '
                 f'seed {s["seed"]}', fontsize=9)
    ax.legend(fontsize=7, ncol=len(settings) + bool(scratch), loc='upper center')
    ax.grid(axis='y', alpha=0.3)
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


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole miniature Table I and write ``table1.{md,json,png}`` to ``out_dir``.

    Steps: key, data, pre-training, then for every decoder and setting one fine-tune and
    evaluation with the mmengine Runner (same seed, data and pre-trained weights).

    Args:
        exp (ExperimentConfig): The settings.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: Everything written to ``table1.json``.
    """
    exp.validate()
    t_start = time.time()
    load_start = _loadavg()
    out_dir = exp.out_dir
    os.makedirs(out_dir, exist_ok=True)
    with _torch_threads(exp.threads):
        key_file, key = prepare_key(out_dir, exp.key_file, log)

        t0 = time.time()
        data_root = osp.join(out_dir, 'data', f'synthetic_s{exp.seed}_{exp.num_train}x'
                             f'{exp.num_val}_{exp.height}x{exp.width}')
        # The directory name fixes the file set, so overwriting cannot leave stale files.
        make_synthetic_cityscapes(data_root, exp.num_train, exp.num_val, exp.height,
                                  exp.width, seed=exp.seed, overwrite=True)
        t_data = time.time() - t0
        log(f'data: {exp.num_train} train / {exp.num_val} val images of '
            f'{exp.height}x{exp.width} in {data_root} ({t_data:.1f} s)')

        backbone_cfg, pre_cfg = load_backbone_config(exp.config_dir)
        ckpt = osp.join(out_dir, 'pretrained_tiny_vit.pth')
        log(f'pre-training {_backbone_summary(backbone_cfg)} for {exp.pretrain_iters} '
            'iterations on plain images of the stand-in task')
        pre_stats = pretrain_backbone(backbone_cfg, pre_cfg, ckpt, exp.pretrain_iters,
                                      exp.seed, exp.pretrain_batch_size, exp.pretrain_lr,
                                      exp.pretrain_pool, exp.pretrain_task, key, log)
        log(f'pre-training done in {pre_stats["time_s"]:.0f} s: held-out accuracy '
            f'{pre_stats["heldout_acc"]:.1f} % on plain crops; on encrypted crops '
            f'{pre_stats["heldout_acc_encrypted_plain_weights"]:.1f} % with the plain '
            f'weights, {pre_stats["heldout_acc_encrypted_adapted_weights"]:.1f} % with the '
            'adapted ones')
        plain_state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict
        encrypted_state = encrypt_vit_state_dict(plain_state, key, pre_cfg['mean'],
                                                 pre_cfg['std'], prefix='')

        # (decoder, setting, pretrained?) in table order; the scratch reference last.
        runs = [(d, st, True) for d in exp.decoders for st in SETTINGS
                if st in exp.settings]
        if exp.scratch_reference:
            runs += [(d, 'baseline', False) for d in exp.decoders]
        results: Dict[str, Dict[str, dict]] = {}
        scratch: Dict[str, dict] = {}
        batch_size = None
        t_ft = time.time()
        for k, (decoder, setting, pretrained) in enumerate(runs, 1):
            name = _SETTING_TITLES[setting] + ('' if pretrained else ', no pre-training')
            cfg = make_finetune_config(
                decoder, setting, data_root=data_root,
                pretrained=osp.abspath(ckpt) if pretrained else None,
                work_dir=osp.join(out_dir, 'runs', f'{decoder}_{setting}' +
                                  ('' if pretrained else '_scratch')),
                iters=exp.iters, seed=exp.seed, log_interval=exp.log_interval,
                verbose=exp.verbose, config_dir=exp.config_dir)
            batch_size = int(cfg.train_dataloader.batch_size)
            tag = f'[{k}/{len(runs)}] {_DECODER_TITLES[decoder]} / {name}'
            log(f'{tag}: {exp.iters} iterations ...')
            expected = None
            if pretrained:
                expected = encrypted_state if setting == 'proposed' else plain_state
            res = finetune(cfg, key_file, expected)
            res['backbone_type'] = cfg.model.backbone.type
            if pretrained:
                results.setdefault(decoder, {})[setting] = res
            else:
                scratch[decoder] = res
            log(f'{tag}: aAcc {res["aAcc"]:.2f}  mIoU {res["mIoU"]:.2f}  mAcc '
                f'{res["mAcc"]:.2f}  (final loss {res["final_loss"]}, '
                f'{res["train_time_s"]:.0f} s train, {res["val_time_s"]:.0f} s val)')
        t_ft = time.time() - t_ft

    settings = asdict(exp)
    settings.update(decoders=list(exp.decoders), settings=list(exp.settings),
                    batch_size=batch_size, key_file=None)
    settings.pop('verbose')
    result = dict(
        experiment='Table I in miniature (Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730)',
        settings=settings,
        key_fingerprint=key.fingerprint,
        backbone=dict(config=backbone_cfg, summary=_backbone_summary(backbone_cfg)),
        pretrain=dict(pre_stats, checkpoint=osp.basename(ckpt)),
        results=results,
        reference=dict(baseline_without_pretraining=scratch),
        timings=dict(data_s=round(t_data, 1), pretrain_s=pre_stats['time_s'],
                     finetune_s=round(t_ft, 1), total_s=round(time.time() - t_start, 1)),
        machine=dict(cpu_count=os.cpu_count(), torch_threads=exp.threads or
                     torch.get_num_threads(), loadavg_start=load_start,
                     loadavg_end=_loadavg()),
        versions=_versions(),
    )
    with open(osp.join(out_dir, 'table1.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(osp.join(out_dir, 'table1.md'), 'w') as f:
        f.write(format_markdown(result))
    plot_miou(result, osp.join(out_dir, 'table1.png'))
    return result


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser (defaults are those of :class:`ExperimentConfig`).

    Returns:
        argparse.ArgumentParser: The parser of ``tools/reproduce_table.py``.
    """
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description='Table I of Sueyoshi et al. in miniature: '
                                'baseline / conventional 2 / proposed x MLA / PUP / Naive.')
    p.add_argument('--out-dir', default=d.out_dir,
                   help=f'output directory (default: {d.out_dir})')
    p.add_argument('--seed', type=int, default=d.seed,
                   help=f'seed of data, pre-training and fine-tuning (default: {d.seed})')
    p.add_argument('--iters', type=int, default=d.iters,
                   help=f'fine-tuning iterations per run (default: {d.iters})')
    p.add_argument('--pretrain-iters', type=int, default=d.pretrain_iters,
                   help=f'pre-training iterations (default: {d.pretrain_iters})')
    p.add_argument('--decoders', nargs='+', choices=DECODERS, default=list(DECODERS),
                   help='decoders (default: all)')
    p.add_argument('--settings', nargs='+', choices=SETTINGS, default=list(SETTINGS),
                   help='settings (default: all)')
    p.add_argument('--train', type=int, default=d.num_train,
                   help=f'synthetic training images (default: {d.num_train})')
    p.add_argument('--val', type=int, default=d.num_val,
                   help=f'synthetic validation images (default: {d.num_val})')
    p.add_argument('--key-file', default=None,
                   help='key file (default: OUT_DIR/table1.key, created with mode 600 '
                   'if missing, reused otherwise)')
    p.add_argument('--no-scratch', dest='scratch', action='store_false',
                   help='skip the reference runs of the baseline without pre-training')
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
    exp = ExperimentConfig(out_dir=args.out_dir, seed=args.seed, iters=args.iters,
                           pretrain_iters=args.pretrain_iters, decoders=args.decoders,
                           settings=args.settings, num_train=args.train,
                           num_val=args.val, key_file=args.key_file,
                           scratch_reference=args.scratch, threads=args.threads,
                           verbose=args.verbose)
    try:
        exp.validate()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        result = run_experiment(exp)
    except (FileNotFoundError, InvalidKeyError) as e:  # missing config or bad key file
        print(f'error: {e}', file=sys.stderr)
        return 2
    total = time.time() - t0
    print()
    print(format_markdown(result))
    print(f'Wrote {osp.join(args.out_dir, "table1.md")}, table1.json and table1.png; '
          f'total runtime {total / 60:.1f} min ({total:.0f} s; load average at start '
          f'{result["machine"]["loadavg_start"]}, end {result["machine"]["loadavg_end"]}).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
