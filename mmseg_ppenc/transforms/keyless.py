"""Augmentations a keyless server may apply to block-encrypted images.

A cloud server that fine-tunes on a tree made by ``tools/encrypt_dataset.py`` has no key,
so it may only apply augmentations ``aug`` with ``aug(encrypt(x)) == encrypt(aug(x))``:
then the encrypted model sees exactly the encryption of what the plain model would have
seen.

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
  encrypted the data, and ``KeylessEncryptedDataset`` checks it.

:mod:`mmseg_ppenc.transforms.policy` holds the allow-list that refuses everything else.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ppenc.errors import KeylessPipelineError
from ppenc.grid import check_image_on_grid, check_on_grid, to_pair

__all__ = ['GridRandomCrop', 'EncryptedPhotoMetric', 'EncryptedRandomFlip']


def _check_grid(img: np.ndarray, block: int, who: str, results: dict) -> None:
    check_image_on_grid(img.shape[0], img.shape[1], block,
                        f"{who}: {results.get('img_path', 'the image')}",
                        'It cannot be an image encrypted by tools/encrypt_dataset.py (which '
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
        self.crop_size = to_pair(crop_size, 'crop_size')
        self.block_size = int(block_size)
        problems = check_on_grid({'GridRandomCrop crop_size': self.crop_size},
                                 self.block_size)
        if problems:
            raise KeylessPipelineError(f'{problems[0]}.')
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
