"""Data of the second miniature Table I: distant pre-training, fine-tuning on mosaics.

Version 1 (:mod:`textures`) pre-trained on the evaluation task at a finer labelling: every
fine-tuning class was a function of the pre-training labels. Here the two tasks are apart:

- **Pre-training** (:func:`sample_pretrain_images`): *image-level* classification of
  single-texture 64x64 images by **orientation** (:data:`NUM_PT_CLASSES` bins of
  15 degrees). The waveform (sine or triangle), the period (log-uniform in
  :data:`PT_PERIOD_RANGE`), the phase, the colours, the contrast and the noise are
  random and carry no label.
- **Fine-tuning** (:func:`render_labelled`, :func:`make_dataset`): *segmentation* of
  mosaics of 2-4 large Voronoi regions in a shifted domain (square-wave gratings and
  square-wave plaids, stronger noise, another contrast range). The
  :data:`NUM_CLASSES` classes are pattern (grating or plaid) x period range (fine or
  coarse); the orientation is uniform at random and is no part of the class.

So no fine-tuning label is a function of the pre-training labels:
:func:`label_dependence` measures it on the generators (the conditional entropy
H(FT | PT) of a fine-tuning region's class given the label the pre-training labelling
would give it), and ``tests/tools/test_textures_v2.py`` checks that it is far from 0
here and exactly 0 for the version-1 rule.

Everything is a function of its seed: ``numpy.random.default_rng((seed, stream, i))``;
a seed draws its own train, val and test images and its own pre-training stream.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Hashable, Iterable, List, Tuple

import numpy as np

from .textures import write_dataset

__all__ = [
    'NUM_PT_CLASSES', 'PT_PERIOD_RANGE', 'PATTERNS', 'PERIOD_CLASSES', 'CLASSES',
    'CLASS_NAMES', 'NUM_CLASSES', 'STREAMS', 'pt_label', 'render_single',
    'sample_pretrain_images', 'draw_region', 'render_labelled', 'ft_region_label_pairs',
    'label_dependence', 'chance_miou', 'dataset_metainfo', 'make_dataset'
]

#: Pre-training classes: orientation bins of 15 degrees, centred on multiples of 15.
NUM_PT_CLASSES: int = 12
PT_PERIOD_RANGE: Tuple[float, float] = (3.0, 12.0)
PT_WAVEFORMS: Tuple[str, ...] = ('sine', 'triangle')
#: Fine-tuning attributes: pattern type and period range (pixels).
PATTERNS: Tuple[str, ...] = ('grating', 'plaid')
PERIOD_CLASSES: Dict[str, Tuple[float, float]] = {'fine': (3.0, 4.5), 'coarse': (7.5, 12.0)}
#: Fine-tuning half-amplitude of the colour pattern and pixel-noise std (ranges).
FT_CONTRAST: Tuple[float, float] = (40.0, 90.0)
FT_NOISE: Tuple[float, float] = (4.0, 10.0)
CLASSES: Tuple[Tuple[str, str], ...] = tuple(
    (pat, per) for per in PERIOD_CLASSES for pat in PATTERNS)
CLASS_NAMES: Tuple[str, ...] = tuple(f'{pat}_{per}' for pat, per in CLASSES)
NUM_CLASSES: int = len(CLASSES)
IGNORE_INDEX: int = 255
STREAMS: Dict[str, int] = {'train': 0, 'val': 1, 'test': 2, 'pretrain': 0x50524554,
                           'heldout': 0x48454c44}


def pt_label(orientation_deg) -> np.ndarray:
    """The pre-training label of an orientation: its bin among :data:`NUM_PT_CLASSES`."""
    width = 180.0 / NUM_PT_CLASSES
    return (np.floor((np.asarray(orientation_deg) + width / 2) / width).astype(np.int64)
            % NUM_PT_CLASSES)


def _wave(phase: np.ndarray, kind: str) -> np.ndarray:
    """Zero-mean periodic profile in [-1, 1] of a phase in cycles."""
    frac = np.mod(phase, 1.0)
    if kind == 'sine':
        return np.sin(2 * np.pi * frac)
    if kind == 'triangle':
        return 4 * np.abs(frac - 0.5) - 1
    if kind == 'square':
        return np.where(frac < 0.5, 1.0, -1.0)
    raise ValueError(f'unknown waveform {kind!r}')


def _colourise(pattern: np.ndarray, rng: np.random.Generator,
               contrast: Tuple[float, float]) -> np.ndarray:
    """A random mean colour plus the pattern along a random colour direction."""
    mean = rng.uniform(60, 195, 3)
    direction = rng.normal(size=3)
    half = direction / np.linalg.norm(direction) * rng.uniform(*contrast)
    return mean + pattern[..., None] * half


def render_single(h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """One pre-training image: ``(image (h, w, 3) uint8 RGB, orientation class)``."""
    theta = float(rng.uniform(0, 180))
    lo, hi = np.log(PT_PERIOD_RANGE[0]), np.log(PT_PERIOD_RANGE[1])
    period = float(np.exp(rng.uniform(lo, hi)))
    kind = PT_WAVEFORMS[int(rng.integers(len(PT_WAVEFORMS)))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rad = np.deg2rad(theta)
    phase = (xx * np.cos(rad) + yy * np.sin(rad)) / period + rng.uniform(0, 1)
    img = _colourise(_wave(phase, kind), rng, (20, 70))
    img += rng.normal(0, rng.uniform(3, 10), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), int(pt_label(theta))


def sample_pretrain_images(rng: np.random.Generator, batch: int, size: Tuple[int, int]
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """A pre-training batch: ``(images (B, H, W, 3) float32, labels (B,) int64)``."""
    imgs = np.empty((batch,) + tuple(size) + (3,), np.float32)
    labels = np.empty(batch, np.int64)
    for j in range(batch):
        imgs[j], labels[j] = render_single(size[0], size[1], rng)
    return imgs, labels


def draw_region(rng: np.random.Generator) -> dict:
    """The random parameters of one fine-tuning region (class, orientation, period)."""
    cls = int(rng.integers(NUM_CLASSES))
    pattern, per = CLASSES[cls]
    lo, hi = PERIOD_CLASSES[per]
    return dict(cls=cls, pattern=pattern, orientation=float(rng.uniform(0, 180)),
                period=float(rng.uniform(lo, hi)))


def render_labelled(h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A fine-tuning mosaic: ``(image (h, w, 3) uint8 RGB, label (h, w) uint8)``.

    2-4 Voronoi regions; each is a square-wave grating or a square-wave plaid (two
    perpendicular gratings of the same period) of a random orientation.
    """
    n = int(rng.integers(2, 5))
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    region = ((yy[None] - cy[:, None, None]) ** 2
              + (xx[None] - cx[:, None, None]) ** 2).argmin(0)
    img = np.empty((h, w, 3), np.float32)
    label = np.full((h, w), IGNORE_INDEX, np.uint8)
    for r in range(n):
        p = draw_region(rng)
        m = region == r
        rad = np.deg2rad(p['orientation'])
        u = (xx[m] * np.cos(rad) + yy[m] * np.sin(rad)) / p['period']
        pattern = _wave(u + rng.uniform(0, 1), 'square')
        if p['pattern'] == 'plaid':
            v = (-xx[m] * np.sin(rad) + yy[m] * np.cos(rad)) / p['period']
            pattern = 0.5 * (pattern + _wave(v + rng.uniform(0, 1), 'square'))
        img[m] = _colourise(pattern, rng, FT_CONTRAST)
        label[m] = p['cls']
    img += rng.normal(0, rng.uniform(*FT_NOISE), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def ft_region_label_pairs(n: int, rng: np.random.Generator) -> List[Tuple[int, int]]:
    """``n`` fine-tuning regions as ``(label the pre-training labelling gives it,
    fine-tuning class)``: the pre-training labelling is the orientation bin of the
    region's (first) grating."""
    out = []
    for _ in range(n):
        p = draw_region(rng)
        out.append((int(pt_label(p['orientation'])), p['cls']))
    return out


def label_dependence(pairs: Iterable[Tuple[Hashable, Hashable]],
                     min_share: float = 0.1) -> dict:
    """How far the fine-tuning label is from being a function of the pre-training label.

    Args:
        pairs: ``(pre-training label, fine-tuning label)`` samples.
        min_share (float): A fine-tuning label counts for a pre-training label when it
            has at least this conditional probability. Defaults to 0.1.

    Returns:
        dict: ``h_ft`` (entropy of the fine-tuning label, bits), ``h_ft_given_pt``
        (conditional entropy, bits; 0 means the fine-tuning label is a function of the
        pre-training label), ``share_ambiguous`` (probability that a sample's
        pre-training label maps to at least two fine-tuning labels of probability
        ``>= min_share``), ``n``.
    """
    pairs = list(pairs)
    n = len(pairs)
    if not n:
        raise ValueError('label_dependence needs at least one pair.')
    joint = Counter(pairs)
    pt = Counter(a for a, _ in pairs)
    ft = Counter(b for _, b in pairs)
    h_ft = -sum(c / n * np.log2(c / n) for c in ft.values())
    h_cond = -sum(c / n * np.log2(c / pt[a]) for (a, _), c in joint.items())
    ambiguous = 0
    for a, count in pt.items():
        big = [c for (a2, _), c in joint.items() if a2 == a and c / count >= min_share]
        if len(big) >= 2:
            ambiguous += count
    return dict(h_ft=float(h_ft), h_ft_given_pt=float(max(0.0, h_cond)),
                share_ambiguous=ambiguous / n, n=n)


def chance_miou(labels: Iterable[np.ndarray]) -> float:
    """Expected mIoU (%) of a predictor that guesses every pixel's class uniformly at
    random, on these label maps (255 ignored): the chance floor."""
    counts = np.zeros(NUM_CLASSES)
    for lab in labels:
        lab = np.asarray(lab).ravel()
        counts += np.bincount(lab[lab != IGNORE_INDEX], minlength=NUM_CLASSES)[:NUM_CLASSES]
    p = counts / counts.sum()
    q = 1.0 / NUM_CLASSES
    present = p > 0
    iou = p[present] * q / (p[present] + q - p[present] * q)
    return float(100 * iou.mean())


def dataset_metainfo() -> dict:
    """``metainfo`` for mmseg's ``BaseSegDataset``: class names and a fixed palette."""
    rng = np.random.default_rng(0)
    palette = [[int(v) for v in rng.integers(0, 256, 3)] for _ in range(NUM_CLASSES)]
    return dict(classes=CLASS_NAMES, palette=palette)


def make_dataset(root: str, counts: Dict[str, int], size: Tuple[int, int] = (64, 128),
                 seed: int = 0) -> Dict[str, List[str]]:
    """Write the fine-tuning set as an mmseg ``BaseSegDataset`` folder.

    ``root/img_dir/<split>/<index>.png`` (RGB) and ``root/ann_dir/<split>/<index>.png``
    (class ids). Image ``i`` of a split depends only on ``(seed, split, i)``.

    Args:
        root (str): Data root; must not hold other images of these splits.
        counts (dict): ``{split: images}`` with splits among train / val / test.
        size (tuple[int, int]): ``(height, width)``. Defaults to ``(64, 128)``.
        seed (int): Base seed. Defaults to 0.

    Returns:
        dict: ``{split: [image paths]}``.

    Raises:
        FileExistsError: A split directory already holds files this call would not write.
    """
    return write_dataset(root, counts, render_labelled, STREAMS, size, seed)

