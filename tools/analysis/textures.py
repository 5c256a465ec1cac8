"""Texture mosaics: the data of the miniature Table I (``tools/analysis/reproduce_table.py``).

A scene is a Voronoi partition of the image into 2-6 regions. Every region is filled with
a sinusoidal grating of one orientation and one period, drawn between two colours chosen
at random for the region, plus pixel noise. The colours, the contrast, the phase and the
mean brightness are random and independent of the label, so nothing but the spatial
pattern inside a 16x16 block tells the regions apart: a ViT's patch embedding has to
learn spatial filters, which is what ImageNet pre-training gives a real ViT and what a
block-wise pixel shuffle takes away from a plain pre-trained model.

Two uses, as in the paper's setting:

- **Fine-tuning set** (:func:`make_texture_dataset`): :data:`NUM_CLASSES` classes, each
  one fixed (orientation, period) pair (:data:`CLASSES`), written as an mmseg
  ``BaseSegDataset`` folder (``img_dir/{train,val}``, ``ann_dir/{train,val}``, PNG).
- **Pre-training corpus** (:func:`sample_pretrain_batch`): an unlimited stream of scenes
  whose orientation and period are drawn from continuous ranges. The pre-training task is
  related to the fine-tuning labels but not the same: per pixel, the orientation bin
  (:data:`NUM_ORIENT_BINS`) and the period bin (:data:`NUM_PERIOD_BINS`).

Everything is a function of its seed: ``numpy.random.default_rng((seed, stream, index))``.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

__all__ = [
    'CLASSES', 'CLASS_NAMES', 'NUM_CLASSES', 'NUM_ORIENT_BINS', 'NUM_PERIOD_BINS',
    'PERIOD_RANGE', 'render_mosaic', 'render_labelled', 'sample_pretrain_batch',
    'make_texture_dataset', 'write_dataset', 'dataset_metainfo'
]

#: Fine-tuning classes: (orientation in degrees, period in pixels). Four orientations,
#: two periods; both periods show at least two cycles inside a 16x16 block.
CLASSES: Tuple[Tuple[float, float], ...] = tuple(
    (float(t), float(p)) for p in (4.0, 8.0) for t in (0, 45, 90, 135))
NUM_CLASSES: int = len(CLASSES)
CLASS_NAMES: Tuple[str, ...] = tuple(f'grating_{int(t)}deg_{int(p)}px' for t, p in CLASSES)
#: Pre-training orientations are uniform in [0, 180) degrees, binned into this many bins
#: centred on multiples of 180 / bins (so the fine-tuning orientations are bin centres).
NUM_ORIENT_BINS: int = 8
#: Pre-training periods are log-uniform in :data:`PERIOD_RANGE`, binned into this many
#: log-spaced bins.
NUM_PERIOD_BINS: int = 4
PERIOD_RANGE: Tuple[float, float] = (3.0, 12.0)
IGNORE_INDEX: int = 255

# Seed streams: fine-tuning train/val and pre-training never share a generator.
STREAMS: Dict[str, int] = {'train': 0, 'val': 1, 'pretrain': 0x50524554,
                           'heldout': 0x48454c44}


def _voronoi(h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    n = int(rng.integers(2, 7))
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    yy, xx = np.mgrid[0:h, 0:w]
    dist = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    return dist.argmin(0), n


def render_mosaic(h: int, w: int, rng: np.random.Generator,
                  draw_params: Callable[[np.random.Generator], Tuple[float, float]],
                  noise: float = 8.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One texture mosaic.

    Args:
        h (int): Height in pixels.
        w (int): Width in pixels.
        rng (np.random.Generator): Source of every random choice.
        draw_params (Callable): ``rng -> (orientation_deg, period_px)`` for a region.
        noise (float): Standard deviation of the additive pixel noise. Defaults to 8.

    Returns:
        tuple: ``(image (h, w, 3) uint8 RGB, orientation (h, w) float32 degrees,
        period (h, w) float32 pixels)``.
    """
    region, n = _voronoi(h, w, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    orient = np.empty((h, w), np.float32)
    period = np.empty((h, w), np.float32)
    for r in range(n):
        t, p = draw_params(rng)
        m = region == r
        rad = np.deg2rad(t)
        wave = np.sin(2 * np.pi * (xx[m] * np.cos(rad) + yy[m] * np.sin(rad)) / p
                      + rng.uniform(0, 2 * np.pi))
        # Random mean colour and a random colour direction of random contrast: colour
        # and brightness carry no information about the class.
        mean = rng.uniform(60, 195, 3)
        direction = rng.normal(size=3)
        half = direction / np.linalg.norm(direction) * rng.uniform(25, 60)
        img[m] = mean + wave[:, None] * half
        orient[m], period[m] = t, p
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), orient, period


def _class_params(rng: np.random.Generator) -> Tuple[float, float]:
    return CLASSES[int(rng.integers(NUM_CLASSES))]


def _continuous_params(rng: np.random.Generator) -> Tuple[float, float]:
    lo, hi = np.log(PERIOD_RANGE[0]), np.log(PERIOD_RANGE[1])
    return float(rng.uniform(0, 180)), float(np.exp(rng.uniform(lo, hi)))


def render_labelled(h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A fine-tuning scene: ``(image (h, w, 3) uint8 RGB, label (h, w) uint8 class id)``."""
    img, orient, period = render_mosaic(h, w, rng, _class_params)
    label = np.full((h, w), IGNORE_INDEX, np.uint8)
    for c, (t, p) in enumerate(CLASSES):
        label[(orient == t) & (period == p)] = c
    return img, label


def orientation_bin(orient: np.ndarray) -> np.ndarray:
    """Orientation bin of :data:`NUM_ORIENT_BINS`, bins centred on ``k * 180 / bins``."""
    width = 180.0 / NUM_ORIENT_BINS
    return (np.floor((orient + width / 2) / width).astype(np.int64)) % NUM_ORIENT_BINS


def period_bin(period: np.ndarray) -> np.ndarray:
    """Log-spaced period bin of :data:`NUM_PERIOD_BINS` over :data:`PERIOD_RANGE`."""
    lo, hi = np.log(PERIOD_RANGE[0]), np.log(PERIOD_RANGE[1])
    b = np.floor((np.log(period) - lo) / (hi - lo) * NUM_PERIOD_BINS).astype(np.int64)
    return np.clip(b, 0, NUM_PERIOD_BINS - 1)


def sample_pretrain_batch(rng: np.random.Generator, batch: int, size: Tuple[int, int]
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of the pre-training stream.

    Returns:
        tuple: ``(images (B, H, W, 3) float32 RGB in [0, 255], orientation bins (B, H, W)
        int64, period bins (B, H, W) int64)``.
    """
    h, w = size
    imgs = np.empty((batch, h, w, 3), np.float32)
    obins = np.empty((batch, h, w), np.int64)
    pbins = np.empty((batch, h, w), np.int64)
    for j in range(batch):
        img, orient, period = render_mosaic(h, w, rng, _continuous_params)
        imgs[j], obins[j], pbins[j] = img, orientation_bin(orient), period_bin(period)
    return imgs, obins, pbins


def dataset_metainfo() -> dict:
    """``metainfo`` for mmseg's ``BaseSegDataset``: class names and a fixed palette."""
    rng = np.random.default_rng(0)
    palette = [[int(v) for v in rng.integers(0, 256, 3)] for _ in range(NUM_CLASSES)]
    return dict(classes=CLASS_NAMES, palette=palette)


def _write_png(path: str, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(array).save(path, format='PNG', compress_level=1)


def make_texture_dataset(root: str, num_train: int, num_val: int,
                         size: Tuple[int, int] = (64, 128), seed: int = 0,
                         splits: Sequence[str] = ('train', 'val')) -> Dict[str, List[str]]:
    """Write the fine-tuning set as an mmseg ``BaseSegDataset`` folder.

    ``root/img_dir/<split>/<index>.png`` (RGB) and ``root/ann_dir/<split>/<index>.png``
    (class ids, 255 = ignore). Image ``i`` of a split depends only on ``(seed, split,
    i)``, so a larger ``num_train`` adds images without changing the others.

    Args:
        root (str): Data root; must not hold other images of these splits.
        num_train (int): Training images.
        num_val (int): Validation images.
        size (tuple[int, int]): ``(height, width)``. Defaults to ``(64, 128)``.
        seed (int): Base seed. Defaults to 0.
        splits (Sequence[str]): Splits to write. Defaults to both.

    Returns:
        dict: ``{split: [image paths]}``.

    Raises:
        FileExistsError: A split directory already holds files this call would not write
            (they would be read as part of the split).
    """
    counts = {split: n for split, n in (('train', num_train), ('val', num_val))
              if split in splits}
    return write_dataset(root, counts, render_labelled, STREAMS, size, seed)


def write_dataset(root: str, counts: Dict[str, int],
                  render: Callable[[int, int, np.random.Generator],
                                   Tuple[np.ndarray, np.ndarray]],
                  streams: Dict[str, int], size: Tuple[int, int], seed: int
                  ) -> Dict[str, List[str]]:
    """Write rendered (image, label) pairs as an mmseg ``BaseSegDataset`` folder.

    ``root/img_dir/<split>/<index>.png`` (RGB) and ``root/ann_dir/<split>/<index>.png``
    (class ids). Image ``i`` of a split is ``render`` with the random stream
    ``(seed, streams[split], i)``, so it depends on nothing else.

    Args:
        root (str): Data root; must not hold other images of these splits.
        counts (dict): ``{split: images}``.
        render (Callable): ``render(h, w, rng) -> (image, label)``.
        streams (dict): ``{split: stream id}``.
        size (tuple[int, int]): ``(height, width)``.
        seed (int): Base seed.

    Returns:
        dict: ``{split: [image paths]}``.

    Raises:
        FileExistsError: A split directory already holds files this call would not write.
    """
    h, w = size
    out: Dict[str, List[str]] = {}
    for split, count in counts.items():
        names = {f'{i:05d}.png' for i in range(count)}
        for sub in ('img_dir', 'ann_dir'):
            d = osp.join(root, sub, split)
            os.makedirs(d, exist_ok=True)
            extra = sorted(set(os.listdir(d)) - names)
            if extra:
                raise FileExistsError(f'{d} holds {len(extra)} files this data set does not '
                                      f'contain (e.g. {extra[0]}); use an empty directory.')
        out[split] = []
        for i in range(count):
            img, label = render(h, w, np.random.default_rng((int(seed), streams[split], i)))
            img_path = osp.join(root, 'img_dir', split, f'{i:05d}.png')
            _write_png(img_path, img)
            _write_png(osp.join(root, 'ann_dir', split, f'{i:05d}.png'), label)
            out[split].append(img_path)
    return out
