"""Keyless server-side training on offline-encrypted data (DESIGN section 2).

A cloud server that fine-tunes on a tree made by ``tools/encrypt_dataset.py`` has no key,
so it may only apply augmentations ``aug`` with ``aug(encrypt(x)) == encrypt(aug(x))``:
then the encrypted model sees exactly the encryption of what the plain model would have
seen. This module provides them as registered transforms and refuses everything else:

- :class:`GridRandomCrop`: a random crop whose offsets and size are multiples of the
  block size (a crop on the grid keeps whole blocks).
- :class:`EncryptedPhotoMetric`: brightness (``x + beta``) and contrast (``x * alpha``)
  with the same scalar for every value, clipped to 0..255, as in mmseg's
  ``PhotoMetricDistortion``. It commutes with *any* permutation of values, clipping
  included, because every step is element-wise; hue and saturation are not (they mix the
  three channels of a pixel, which the cipher shuffles across).
- :class:`EncryptedRandomFlip`: horizontal flip. A flip mirrors every block, so it only
  commutes with keys whose permutation commutes with the in-block mirror
  (``tools/keygen.py --flip-compatible``); the dataset manifest says which kind of key
  encrypted the data, and :class:`KeylessEncryptedDataset` checks it.
- :class:`KeylessEncryptedDataset`: a dataset wrapper that reads the tree's manifest and
  checks the pipeline against an allow-list *before* building it, so a non-commuting
  transform (``RandomResize``, ``RandomCrop``, ``RandomFlip``, ``PhotoMetricDistortion``,
  ...) fails when the Runner builds its dataloaders, naming the transform and the
  alternative.
- :class:`KeylessServerHook`: checks at runner start that every dataset is keyless and
  encrypted with one key, that the initial checkpoint is encrypted for that key
  (``tools/encrypt_model.py``) and that nothing on the server needs the key; writes
  ``meta['ppenc']`` (from the manifest, no key needed) into the server's checkpoints.
"""
from __future__ import annotations

import inspect
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import DATASETS, HOOKS, TRANSFORMS

from . import __version__
from .datasets.encrypt import MANIFEST_FORMAT, MANIFEST_NAME
from .hooks import CIPHER_NAME
from .runner import ConfigError

__all__ = ['KeylessPipelineError', 'GridRandomCrop', 'EncryptedPhotoMetric',
           'EncryptedRandomFlip', 'KeylessEncryptedDataset', 'KeylessServerHook',
           'check_keyless_pipeline', 'load_manifest', 'ALLOWED_TRANSFORMS']


class KeylessPipelineError(ConfigError):
    """A keyless encrypted run is misconfigured; the message names the fix."""


def _pair(v: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f'{name} must be an int or a pair of ints, got {v!r}')


def _check_grid(img: np.ndarray, block: int, who: str, results: dict) -> None:
    h, w = img.shape[:2]
    if h % block or w % block:
        name = results.get('img_path', 'the image')
        raise ValueError(
            f'{who}: {name} is {h}x{w} pixels, not a multiple of the {block}-pixel block '
            'size, so it cannot be an image encrypted by tools/encrypt_dataset.py (which '
            'refuses or pads such images). Re-encrypt the data with --pad.')


@TRANSFORMS.register_module()
class GridRandomCrop(BaseTransform):
    """Random crop on the block grid; commutes with block encryption.

    Like mmseg's ``RandomCrop`` (same ``cat_max_ratio`` retries, same use of NumPy's
    global RNG that mmengine seeds per worker), but the offsets are random multiples of
    ``block_size`` and ``crop_size`` must be a multiple of it. An image smaller than the
    crop in one dimension is kept whole in that dimension (as ``RandomCrop`` does).

    Required Keys: img (H x W x C, H and W multiples of ``block_size``), gt_seg_map.
    Modified Keys: img, img_shape, every key in seg_fields.

    Args:
        crop_size (int | tuple[int, int]): (h, w), multiples of ``block_size``.
        block_size (int): Cipher block size (= ViT patch size). Defaults to 16.
        cat_max_ratio (float): Maximum share one class may occupy in the crop (retried
            up to 10 times). Defaults to 1.0 (no constraint).
        ignore_index (int): Label ignored by ``cat_max_ratio``. Defaults to 255.
    """

    def __init__(self, crop_size: Union[int, Tuple[int, int]], block_size: int = 16,
                 cat_max_ratio: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.crop_size = _pair(crop_size, 'crop_size')
        self.block_size = int(block_size)
        if any(c <= 0 or c % self.block_size for c in self.crop_size):
            b = self.block_size
            hint = tuple(max(b, round(c / b) * b) for c in self.crop_size)
            raise KeylessPipelineError(
                f'GridRandomCrop crop_size={self.crop_size} must be positive multiples of '
                f'block_size={b} (e.g. {hint}): an off-grid crop cuts blocks apart.')
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _bbox(self, h: int, w: int) -> Tuple[int, int, int, int]:
        b = self.block_size
        ch, cw = self.crop_size
        # Margins are multiples of b because sizes are; offsets k*b for k in 0..margin/b.
        oy = b * np.random.randint(0, max(h - ch, 0) // b + 1)
        ox = b * np.random.randint(0, max(w - cw, 0) // b + 1)
        return oy, min(oy + ch, h), ox, min(ox + cw, w)

    def transform(self, results: dict) -> dict:
        """Crop ``img`` and every seg field at one random on-grid box."""
        img = results['img']
        _check_grid(img, self.block_size, 'GridRandomCrop', results)
        h, w = img.shape[:2]
        box = self._bbox(h, w)
        if self.cat_max_ratio < 1.0 and 'gt_seg_map' in results:
            for _ in range(10):
                seg = results['gt_seg_map'][box[0]:box[1], box[2]:box[3]]
                labels, cnt = np.unique(seg, return_counts=True)
                cnt = cnt[labels != self.ignore_index]
                if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < self.cat_max_ratio:
                    break
                box = self._bbox(h, w)
        y1, y2, x1, x2 = box
        results['img'] = img[y1:y2, x1:x2, ...]
        for k in results.get('seg_fields', []):
            results[k] = results[k][y1:y2, x1:x2]
        results['img_shape'] = results['img'].shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(crop_size={self.crop_size}, block_size='
                f'{self.block_size}, cat_max_ratio={self.cat_max_ratio})')


@TRANSFORMS.register_module()
class EncryptedPhotoMetric(BaseTransform):
    """Brightness and contrast jitter that commute with block encryption.

    The brightness and contrast steps of mmseg's ``PhotoMetricDistortion``, with its
    arithmetic: ``uint8(clip(float32(x) * alpha + beta, 0, 255))`` with one ``alpha``
    and one ``beta`` per image. The same element-wise function is applied to every value,
    so it commutes with every permutation of values (clipping and rounding included),
    in particular with the cipher. The saturation and hue steps are left out: they work
    on the three channels of a pixel together, which the cipher shuffles across.

    Modified Keys: img.

    Args:
        brightness_delta (int): ``beta`` is uniform in ``[-delta, delta]``.
            Defaults to 32.
        contrast_range (tuple[float, float]): ``alpha`` is uniform in this range.
            Defaults to (0.5, 1.5).
        prob (float): Probability of each of the two steps. Defaults to 0.5 (as
            ``PhotoMetricDistortion``).
    """

    def __init__(self, brightness_delta: int = 32,
                 contrast_range: Sequence[float] = (0.5, 1.5),
                 prob: float = 0.5) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = contrast_range
        self.prob = prob

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        img = img.astype(np.float32) * alpha + beta
        return np.clip(img, 0, 255).astype(np.uint8)

    def transform(self, results: dict) -> dict:
        """Apply brightness, then contrast, each with probability ``prob``."""
        img = results['img']
        if np.random.rand() < self.prob:
            img = self._convert(img, beta=np.random.uniform(-self.brightness_delta,
                                                            self.brightness_delta))
        if np.random.rand() < self.prob:
            img = self._convert(img, alpha=np.random.uniform(self.contrast_lower,
                                                             self.contrast_upper))
        results['img'] = img
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(brightness_delta={self.brightness_delta}, '
                f'contrast_range=({self.contrast_lower}, {self.contrast_upper}), '
                f'prob={self.prob})')


@TRANSFORMS.register_module()
class EncryptedRandomFlip(BaseTransform):
    """Horizontal flip for data encrypted with a flip-compatible key.

    Flipping an encrypted image mirrors the order of the blocks and the content of each
    block. That equals encrypting the flipped plain image only if the key's block
    permutation commutes with the in-block mirror, which holds for keys made with
    ``tools/keygen.py --flip-compatible`` and fails for others. The server cannot check
    the key, so the config must declare it (``flip_compatible=True``), and
    :class:`KeylessEncryptedDataset` compares the declaration with the dataset manifest.

    Required Keys: img (width a multiple of ``block_size``). Modified Keys: img, every
    seg field; adds ``flip`` and ``flip_direction``.

    Args:
        prob (float): Flip probability. Defaults to 0.5.
        flip_compatible (bool): Declaration that the data was encrypted with a
            flip-compatible key. Must be True. Defaults to False.
        key_fingerprint (str, optional): If given, the manifest's key must have this
            fingerprint. Defaults to None.
        block_size (int): Cipher block size. Defaults to 16.
    """

    requires_flip_compatible_key = True

    def __init__(self, prob: float = 0.5, flip_compatible: bool = False,
                 key_fingerprint: Optional[str] = None, block_size: int = 16) -> None:
        super().__init__()
        if flip_compatible is not True:
            raise KeylessPipelineError(
                'EncryptedRandomFlip needs flip_compatible=True: a flip commutes with the '
                'cipher only for keys made by `tools/keygen.py --flip-compatible`. Set '
                'flip_compatible=True if the data was encrypted with such a key '
                '(KeylessEncryptedDataset checks it against the dataset manifest), or '
                'remove the flip.')
        self.prob = prob
        self.flip_compatible = True
        # Only the *expected* fingerprint: this transform never holds a key.
        self.expected_fingerprint = key_fingerprint
        self.block_size = int(block_size)

    def transform(self, results: dict) -> dict:
        """Flip ``img`` and the seg fields horizontally with probability ``prob``."""
        img = results['img']
        if img.shape[1] % self.block_size:
            _check_grid(img, self.block_size, 'EncryptedRandomFlip', results)
        flip = bool(np.random.rand() < self.prob)
        if flip:
            results['img'] = np.ascontiguousarray(img[:, ::-1])
            for k in results.get('seg_fields', []):
                results[k] = np.ascontiguousarray(results[k][:, ::-1])
        results['flip'] = flip
        results['flip_direction'] = 'horizontal' if flip else None
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob}, flip_compatible=True)'


# --------------------------------------------------------------------------- allow-list
#: Transform name -> why it is allowed on encrypted data without the key.
ALLOWED_TRANSFORMS: Dict[str, str] = {
    'LoadImageFromFile': 'reads the stored (encrypted) pixels',
    'LoadImageFromNDArray': 'wraps an (encrypted) array',
    'LoadAnnotations': 'label maps are stored in the clear',
    'PackSegInputs': 'packs without changing pixels',
    'GridRandomCrop': 'crop on the block grid',
    'EncryptedPhotoMetric': 'element-wise brightness/contrast',
    'EncryptedRandomFlip': 'flip, with a flip-compatible key only',
}

_RESIZE_FIX = ('none on the server: resizing blends pixels of different positions and '
               'blocks. The client can encrypt several rescaled copies of the data '
               'offline (see docs/workflow.md)')
#: Known non-commuting transforms -> the alternative to use.
ALTERNATIVES: Dict[str, str] = {
    'RandomCrop': 'GridRandomCrop(crop_size=..., cat_max_ratio=...): offsets and size on '
                  'the block grid',
    'RandomFlip': 'EncryptedRandomFlip(flip_compatible=True), with data encrypted by a '
                  'key from `tools/keygen.py --flip-compatible`',
    'PhotoMetricDistortion': 'EncryptedPhotoMetric: brightness and contrast only (hue and '
                             'saturation mix the colour channels that the cipher '
                             'shuffles across)',
    'RandomResize': _RESIZE_FIX,
    'Resize': _RESIZE_FIX,
    'RandomChoiceResize': _RESIZE_FIX,
    'ResizeToMultiple': _RESIZE_FIX,
    'ResizeShortestEdge': _RESIZE_FIX,
    'RandomRotate': 'none: rotation moves pixels across blocks',
    'RandomRotFlip': 'none: rotation moves pixels across blocks',
    'RandomCutOut': 'none (cut-out at arbitrary positions fills parts of blocks)',
    'RandomMosaic': 'none (mosaic tiles are not aligned to the block grid)',
    'BioMedical3DRandomCrop': 'GridRandomCrop',
    'AdjustGamma': 'none as shipped; a per-value gamma commutes but is not provided',
    'CLAHE': 'none: histogram equalisation works on pixel neighbourhoods',
    'RGB2Gray': 'none: mixes channels',
    'BlockScramble': 'none: BlockScramble needs the key. A keyless server reads data '
                     'encrypted offline by tools/encrypt_dataset.py',
    'TestTimeAug': 'a plain test pipeline (no multi-scale or flip test on encrypted '
                   'images)',
}


def _type_name(t: Any) -> str:
    if isinstance(t, dict):
        name = t.get('type')
        if isinstance(name, type):
            return name.__name__
        return str(name).split('.')[-1]  # drop a registry scope ('mmseg.RandomCrop')
    return type(t).__name__


def _resolve(t: Any):
    if isinstance(t, dict):
        name = t.get('type')
        if isinstance(name, type):
            return name
        return TRANSFORMS.get(name)
    return type(t)


def _allowed_classes() -> Dict[type, str]:
    out = {}
    for name in ALLOWED_TRANSFORMS:
        cls = TRANSFORMS.get(name)
        if cls is not None:
            out[cls] = name
    return out


def _param(t: Any, cls: type, name: str, default: Any = None) -> Any:
    """A transform's parameter from its config dict (or class default) or object."""
    if isinstance(t, dict):
        if name in t:
            return t[name]
        try:
            p = inspect.signature(cls.__init__).parameters.get(name)
        except (TypeError, ValueError):
            p = None
        return p.default if p is not None and p.default is not p.empty else default
    return getattr(t, name, default)


def check_keyless_pipeline(pipeline: Sequence[Any], manifest: Optional[dict] = None,
                           where: str = 'pipeline') -> List[str]:
    """Check that every transform of ``pipeline`` commutes with the block cipher.

    Args:
        pipeline (Sequence[dict | callable]): Transform configs or objects.
        manifest (dict, optional): The dataset manifest; when given, block sizes must
            match it and a flip needs a flip-compatible key. Defaults to None.
        where (str): Name of the pipeline, for messages. Defaults to ``'pipeline'``.

    Returns:
        list[str]: The transform names, in order.

    Raises:
        KeylessPipelineError: a transform outside the allow-list (the message names it,
            says why it does not commute and what to use instead), a block size that
            differs from the data's, or a flip on data without a flip-compatible key.
    """
    allowed = _allowed_classes()
    names, problems = [], []
    for i, t in enumerate(pipeline):
        name = _type_name(t)
        names.append(name)
        cls = _resolve(t)
        if cls not in allowed:
            alt = ALTERNATIVES.get(name, 'none known: it is not on the allow-list of '
                                         'transforms proven to commute with the cipher')
            problems.append(f'{where}[{i}] {name} does not commute with block '
                            f'encryption; alternative: {alt}')
            continue
        if name == 'LoadImageFromFile' and _param(t, cls, 'color_type') == 'grayscale':
            problems.append(f'{where}[{i}] LoadImageFromFile(color_type="grayscale") mixes '
                            'the channels of encrypted pixels; use color_type="color"')
        bs = _param(t, cls, 'block_size')
        if manifest is not None and bs is not None and bs != manifest.get('block_size'):
            problems.append(f'{where}[{i}] {name} has block_size={bs}, but the data was '
                            f'encrypted with block_size={manifest.get("block_size")}')
        if getattr(cls, 'requires_flip_compatible_key', False) and manifest is not None:
            if not manifest.get('flip_compatible'):
                problems.append(
                    f'{where}[{i}] {name}: the data was encrypted with key '
                    f'{manifest.get("key_fingerprint")}, which is not flip-compatible, so '
                    'flipping encrypted images does not equal encrypting flipped ones. '
                    'Remove the flip, or have the client re-encrypt the data with a key '
                    'from `tools/keygen.py --flip-compatible`')
            expected = _param(t, cls, 'key_fingerprint') if isinstance(t, dict) else \
                getattr(t, 'expected_fingerprint', None)
            if expected and expected != manifest.get('key_fingerprint'):
                problems.append(f'{where}[{i}] {name} expects key {expected}, but the data '
                                f'was encrypted with key {manifest.get("key_fingerprint")}')
    if problems:
        allowed_names = ', '.join(ALLOWED_TRANSFORMS)
        raise KeylessPipelineError(
            'This keyless encrypted pipeline contains transforms that do not commute with '
            'the block cipher (the model would not see encrypted versions of augmented '
            'images):\n  - ' + '\n  - '.join(problems) +
            f'\nAllowed transforms: {allowed_names}.')
    return names


def load_manifest(data_root: str, manifest_path: Optional[str] = None) -> dict:
    """Read and validate the manifest of an encrypted tree.

    Args:
        data_root (str): The dataset's ``data_root``.
        manifest_path (str, optional): Explicit manifest path. Defaults to None
            (``data_root/ppenc_manifest.json``).

    Raises:
        KeylessPipelineError: missing, unreadable, foreign or incomplete manifest.
    """
    import json
    path = manifest_path or osp.join(data_root or '', MANIFEST_NAME)
    if not osp.isfile(path):
        raise KeylessPipelineError(
            f'No {MANIFEST_NAME} at {path!r}: a keyless server only trains on trees made '
            'by `tools/encrypt_dataset.py` (on the client, with the key). Point data_root '
            'at the uploaded encrypted tree.')
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise KeylessPipelineError(f'{path} is unreadable or corrupt: {e}') from None
    if manifest.get('format') != MANIFEST_FORMAT or manifest.get('cipher') != CIPHER_NAME:
        raise KeylessPipelineError(
            f'{path} is not an mmseg_ppenc dataset manifest for cipher {CIPHER_NAME} '
            f'(format={manifest.get("format")!r}, cipher={manifest.get("cipher")!r}).')
    if not manifest.get('complete'):
        raise KeylessPipelineError(
            f'The encrypted tree at {data_root!r} is incomplete (its manifest says '
            'complete=false: encrypt_dataset was interrupted). Rerun '
            'tools/encrypt_dataset.py on the client and upload the finished tree.')
    return manifest


# --------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class KeylessEncryptedDataset:
    """Wrap a dataset of an offline-encrypted tree and enforce keyless training rules.

    Before the wrapped dataset (and so its pipeline) is built, this reads
    ``data_root/ppenc_manifest.json`` and runs :func:`check_keyless_pipeline`, so a
    misconfigured server run fails as soon as the Runner builds its dataloaders. Indexing,
    ``len`` and ``metainfo`` are those of the wrapped dataset.

    Args:
        dataset (dict | BaseDataset): The dataset config (e.g. ``CityscapesDataset`` with
            ``data_root`` at the encrypted tree) or a built dataset.
        manifest_path (str, optional): Manifest location. Defaults to None
            (``<data_root>/ppenc_manifest.json``).

    Attributes:
        manifest (dict): The tree's manifest (fingerprint, block size, flip flag, ...).
    """

    def __init__(self, dataset: Union[dict, BaseDataset],
                 manifest_path: Optional[str] = None) -> None:
        if isinstance(dataset, dict):
            data_root = dataset.get('data_root')
            pipeline = dataset.get('pipeline', [])
            ds_cls = DATASETS.get(dataset.get('type'))
            img_suffix = dataset.get('img_suffix', _default(ds_cls, 'img_suffix'))
        else:
            data_root = getattr(dataset, 'data_root', None)
            pipeline = getattr(getattr(dataset, 'pipeline', None), 'transforms', [])
            img_suffix = getattr(dataset, 'img_suffix', None)
            ds_cls = type(dataset)
        self.manifest = load_manifest(data_root, manifest_path)
        check_keyless_pipeline(pipeline, self.manifest, where='pipeline')
        if isinstance(img_suffix, str) and not img_suffix.lower().endswith('.png'):
            raise KeylessPipelineError(
                f'{getattr(ds_cls, "__name__", ds_cls)} reads images with '
                f'img_suffix={img_suffix!r}, but encrypted trees store every image as '
                f'lossless PNG; set img_suffix={re.sub(r"[.][^.]*$", ".png", img_suffix)!r} '
                'in the dataset config.')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.key_fingerprint_of_data = self.manifest['key_fingerprint']

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's metainfo (classes, palette)."""
        return self.dataset.metainfo

    @property
    def pipeline(self):
        """The wrapped dataset's pipeline."""
        return self.dataset.pipeline

    def full_init(self) -> None:
        """Fully initialise the wrapped dataset."""
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        """The wrapped dataset's data info."""
        return self.dataset.get_data_info(idx)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        return self.dataset[idx]

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(key_fingerprint={self.manifest["key_fingerprint"]}, '
                f'block_size={self.manifest["block_size"]}, dataset='
                f'{type(self.dataset).__name__}, len={len(self)})')


def _default(cls, name: str):
    if cls is None:
        return None
    try:
        p = inspect.signature(cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return p.default if p is not None and p.default is not p.empty else None


# --------------------------------------------------------------------------- hook
@HOOKS.register_module()
class KeylessServerHook(Hook):
    """Runner-start checks for keyless training/testing on encrypted data.

    - Every dataloader's dataset is a :class:`KeylessEncryptedDataset`, and all were
      encrypted with one key (by fingerprint; the server never has the key).
    - No model component needs the key (e.g. ``EncryptedVisionTransformer``): the server
      uses the stock ``VisionTransformer`` with a checkpoint encrypted on the client.
    - The backbone's ``init_cfg`` checkpoint records (``meta['ppenc']``) the same key as
      the data; ``load_from``/``resume`` checkpoints that record a key must match it.
    - Slide-inference windows lie on the block grid; the patch size equals the block size.
    - Checkpoints saved by the server get ``meta['ppenc']`` from the manifest, so the
      client can tell which key a served model belongs to.

    Args:
        allow_plain_init (bool): Accept an ``init_cfg`` checkpoint that records no key
            (e.g. training from scratch, or the "conventional 2" comparison of a plain
            model on encrypted data). Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_plain_init: bool = False) -> None:
        self.allow_plain_init = allow_plain_init
        self.manifest: Optional[dict] = None

    def before_run(self, runner) -> None:
        from .models.encrypted_vit import checkpoint_key_meta
        manifests = []
        for mode in ('train', 'val', 'test'):
            loop = getattr(runner, f'_{mode}_loop', None)
            loader = getattr(loop, 'dataloader', None)
            if loader is None:
                continue
            ds = loader.dataset
            if not isinstance(ds, KeylessEncryptedDataset):
                raise KeylessPipelineError(
                    f'{mode}_dataloader.dataset is {type(ds).__name__}, not '
                    'KeylessEncryptedDataset: wrap it, dict(type="KeylessEncryptedDataset", '
                    'dataset=dict(...)), so that its data and pipeline are checked.')
            manifests.append((mode, ds.manifest))
        if not manifests:
            return
        fps = {m['key_fingerprint'] for _, m in manifests}
        if len(fps) > 1:
            detail = ', '.join(f'{mode}: {m["key_fingerprint"]}' for mode, m in manifests)
            raise KeylessPipelineError(f'The datasets of this run were encrypted with '
                                       f'different keys ({detail}); use one key.')
        self.manifest = manifests[0][1]
        fp, block = self.manifest['key_fingerprint'], self.manifest['block_size']
        model = getattr(runner.model, 'module', runner.model)
        problems = []
        for name, m in model.named_modules():
            if isinstance(getattr(m, 'key_fingerprint', None), str):
                problems.append(f'model.{name} ({type(m).__name__}) needs the key; a keyless '
                                'server uses the stock VisionTransformer with a checkpoint '
                                'encrypted by tools/encrypt_model.py')
        backbone = getattr(model, 'backbone', None)
        patch = getattr(backbone, 'patch_size', None)
        if patch is not None and patch != block:
            problems.append(f'the backbone patch size is {patch} but the data was '
                            f'encrypted with block_size={block}')
        test_cfg = getattr(model, 'test_cfg', None) or {}
        if test_cfg.get('mode') == 'slide':
            for k in ('crop_size', 'stride'):
                if any(int(v) % block for v in test_cfg.get(k, ())):
                    problems.append(f'model.test_cfg.{k}={tuple(test_cfg[k])} is not a '
                                    f'multiple of the block size {block}')
        init_cfg = runner.cfg.get('model', {}).get('backbone', {}).get('init_cfg')
        ckpt = init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None
        training = getattr(runner, '_train_loop', None) is not None and \
            not isinstance(getattr(runner, '_train_loop'), dict)
        if training and not (runner.cfg.get('resume') or runner.cfg.get('load_from')):
            meta = checkpoint_key_meta(ckpt) if isinstance(ckpt, str) else None
            if meta is None and not self.allow_plain_init:
                problems.append(
                    f'the initial checkpoint ({ckpt or "none: model.backbone.init_cfg"}) '
                    'records no key: a plain pre-trained model on encrypted data is the '
                    'inaccurate "conventional 2" setting. Encrypt it on the client with '
                    'tools/encrypt_model.py (or set KeylessServerHook(allow_plain_init='
                    'True) deliberately)')
            elif meta is not None and meta.get('key_fingerprint') != fp:
                problems.append(f'the initial checkpoint {ckpt} is encrypted with key '
                                f'{meta.get("key_fingerprint")}, the data with key {fp}')
        if problems:
            raise KeylessPipelineError('Keyless server run misconfigured:\n  - ' +
                                       '\n  - '.join(problems))
        print_log(f'KeylessServerHook: data encrypted with key {fp} (block size {block}, '
                  f'flip-compatible: {bool(self.manifest.get("flip_compatible"))}); no key '
                  'on this machine is used.', logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.manifest is None:
            return
        checkpoint.setdefault('meta', {})['ppenc'] = dict(
            key_fingerprint=self.manifest['key_fingerprint'], cipher=CIPHER_NAME,
            block_size=int(self.manifest['block_size']),
            flip_compatible=bool(self.manifest.get('flip_compatible')),
            version=__version__)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.manifest is None:
            return
        meta = (checkpoint.get('meta') or {}).get('ppenc')
        fp = self.manifest['key_fingerprint']
        if meta is None:
            if self.allow_plain_init:
                return
            raise KeylessPipelineError(
                f'The checkpoint being loaded records no key, but the data is encrypted '
                f'with key {fp}. Load a checkpoint made for that key (tools/encrypt_model.py '
                'or a server checkpoint).')
        if meta.get('key_fingerprint') != fp:
            raise KeylessPipelineError(
                f'Key fingerprint mismatch: the checkpoint was made for key '
                f'{meta.get("key_fingerprint")}, the data is encrypted with key {fp}.')

