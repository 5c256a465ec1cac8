"""Visual-leakage metrics: PSNR, SSIM, adjacent-pixel correlation, histogram entropy.

Implemented with NumPy/SciPy only. :func:`ssim` follows Wang et al. (IEEE TIP 2004) with
the conventions of ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)``: an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, and the mean of the SSIM map over pixels whose window
lies inside the image.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from mmseg_ppenc.security.common import block_grid

__all__ = ['psnr', 'ssim', 'luminance', 'adjacent_correlation', 'histogram_entropy',
           'block_mean_thumbnail', 'leakage_metrics', 'mean_metrics', 'DIRECTIONS']

#: Neighbour offsets (dy, dx) for :func:`adjacent_correlation`.
DIRECTIONS: Dict[str, tuple] = {'horizontal': (0, 1), 'vertical': (1, 0),
                                'diagonal': (1, 1)}

_SIGMA = 1.5
_TRUNCATE = 3.5  # window radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11x11 as in Wang et al.


def _pair(a: np.ndarray, b: np.ndarray) -> tuple:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f'Images must have the same shape, got {a.shape} and {b.shape}.')
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB.

    Args:
        a (np.ndarray): Reference image (any shape).
        b (np.ndarray): Test image, same shape.
        data_range (float): Peak value. Defaults to 255.

    Returns:
        float: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float('inf')
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two single-channel images.

    Args:
        a (np.ndarray): HxW reference image.
        b (np.ndarray): HxW test image.
        data_range (float): Peak value. Defaults to 255.

    Returns:
        float: Mean SSIM in [-1, 1]; 1 for identical images.

    Raises:
        ValueError: not 2-D, different shapes, or smaller than the 11x11 window.
    """
    a, b = _pair(a, b)
    if a.ndim != 2:
        raise ValueError(f'ssim() takes single-channel HxW images, got shape {a.shape}; '
                         'call it per channel or on luminance(img).')
    pad = int(_TRUNCATE * _SIGMA + 0.5)
    if min(a.shape) < 2 * pad + 1:
        raise ValueError(f'Images must be at least {2 * pad + 1}x{2 * pad + 1} for the '
                         f'11x11 SSIM window, got {a.shape}.')
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def filt(x):
        return gaussian_filter(x, _SIGMA, truncate=_TRUNCATE, mode='reflect')

    mu_a, mu_b = filt(a), filt(b)
    # Population (not sample) moments, as use_sample_covariance=False.
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(smap[pad:-pad, pad:-pad].mean())


def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of an HxWx3 RGB image, as float64."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'Expected an HxWx3 RGB image, got shape {img.shape}.')
    # Elementwise, not ``img @ weights``: a BLAS dot product rounds differently under
    # different kernels (FMA or not), and SSIM of restored images is compared with bounds.
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def adjacent_correlation(img: np.ndarray, direction: str = 'horizontal') -> np.ndarray:
    """Pearson correlation of every pixel with its neighbour, per channel.

    Uses all pixel pairs (no random sampling), so the value is deterministic.

    Args:
        img (np.ndarray): HxW or HxWxC image.
        direction (str): ``'horizontal'`` (right neighbour), ``'vertical'`` (below) or
            ``'diagonal'`` (below right). Defaults to ``'horizontal'``.

    Returns:
        np.ndarray: One correlation per channel (``nan`` for a constant channel).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {list(DIRECTIONS)}, got {direction!r}.')
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    dy, dx = DIRECTIONS[direction]
    h, w = x.shape[:2]
    p = x[:h - dy, :w - dx].reshape(-1, x.shape[2])
    q = x[dy:, dx:].reshape(-1, x.shape[2])
    p = p - p.mean(0)
    q = q - q.mean(0)
    den = np.sqrt((p * p).sum(0) * (q * q).sum(0))
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 0, (p * q).sum(0) / np.where(den > 0, den, 1), np.nan)


def histogram_entropy(values: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-bin histogram of uint8 values (max 8)."""
    v = np.asarray(values)
    if v.dtype != np.uint8:
        raise ValueError(f'histogram_entropy() takes uint8 values, got {v.dtype}.')
    counts = np.bincount(v.reshape(-1), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)


def block_mean_thumbnail(img: np.ndarray, block_size: int) -> np.ndarray:
    """The attack that needs nothing: every block's mean over its ``3*b*b`` values.

    A block permutation keeps the multiset of values of every block, so this grey
    thumbnail is *identical* for the plain and the encrypted image. Returned upsampled to
    the image size (nearest neighbour), as float64 HxW.
    """
    grid = block_grid(np.asarray(img), block_size).astype(np.float64).mean(-1)
    return np.kron(grid, np.ones((block_size, block_size)))


def leakage_metrics(plain: np.ndarray, enc: np.ndarray,
                    block_size: int = 16) -> Dict[str, float]:
    """All visual-leakage numbers for one plain/encrypted RGB pair.

    Args:
        plain (np.ndarray): HxWx3 uint8 plain image.
        enc (np.ndarray): Its encryption.
        block_size (int): Cipher block size (for the thumbnail). Defaults to 16.

    Returns:
        dict: ``psnr``, ``ssim_luma``, ``ssim_r``/``_g``/``_b``, ``corr_<dir>_plain`` and
        ``corr_<dir>_enc`` (mean over channels) for the three directions,
        ``entropy_plain``/``entropy_enc`` (mean of the per-channel entropies),
        ``entropy_all_plain``/``entropy_all_enc`` (all channels pooled), and
        ``thumb_ssim``/``thumb_psnr`` (block-mean thumbnail of ``enc`` vs the plain
        luminance; the same numbers as for the plain image itself).
    """
    out: Dict[str, float] = {'psnr': psnr(plain, enc),
                             'ssim_luma': ssim(luminance(plain), luminance(enc))}
    for i, name in enumerate('rgb'):
        out[f'ssim_{name}'] = ssim(plain[:, :, i], enc[:, :, i])
    for d in DIRECTIONS:
        out[f'corr_{d}_plain'] = float(np.nanmean(adjacent_correlation(plain, d)))
        out[f'corr_{d}_enc'] = float(np.nanmean(adjacent_correlation(enc, d)))
    out['entropy_plain'] = float(np.mean([histogram_entropy(plain[:, :, i])
                                          for i in range(3)]))
    out['entropy_enc'] = float(np.mean([histogram_entropy(enc[:, :, i]) for i in range(3)]))
    out['entropy_all_plain'] = histogram_entropy(plain)
    out['entropy_all_enc'] = histogram_entropy(enc)
    thumb = block_mean_thumbnail(enc, block_size)
    # Compared with the mean over channels, which is what the thumbnail estimates.
    grey = np.asarray(plain, dtype=np.float64).mean(-1)
    out['thumb_ssim'] = ssim(grey, thumb)
    out['thumb_psnr'] = psnr(grey, thumb)
    return out


def mean_metrics(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Average a list of :func:`leakage_metrics` dicts key by key (finite values only)."""
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = np.array([r[k] for r in rows], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if vals.size else float('nan')
    return out
