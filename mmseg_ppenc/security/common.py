"""Block helpers shared by the attacks: views of images as blocks, applying an (estimated)
permutation, and scoring an estimate against the true key permutation.

Blocks are flattened in the cipher's (channel, y, x) order (see :mod:`ppenc.cipher`),
so ``enc_block[k] == plain_block[pi[k]]`` for the key permutation ``pi``. An attacker's
estimate uses the same convention: ``est[k]`` is the plain position that encrypted position
``k`` is believed to come from.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from ppenc.cipher import block_grid, from_block_grid
from ppenc.grid import check_image_on_grid

__all__ = ['block_grid', 'blocks_of', 'from_block_grid', 'permute_image',
           'unpermute_image', 'recovery_stats', 'check_images']


def check_images(images: Sequence[np.ndarray], block_size: int, what: str = 'images') -> None:
    """Raise ``ValueError`` unless every image is HxWx3 uint8 on the block grid.

    Args:
        images (Sequence[np.ndarray]): The images.
        block_size (int): Block side in pixels.
        what (str): Name used in the message. Defaults to ``'images'``.
    """
    if len(images) == 0:
        raise ValueError(f'No {what} given; expected at least one HxWx3 uint8 array.')
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or \
                img.dtype != np.uint8:
            shape = getattr(img, 'shape', None)
            dtype = getattr(img, 'dtype', type(img).__name__)
            raise ValueError(f'{what}[{i}] must be an HxWx3 uint8 array, got shape {shape} '
                             f'and dtype {dtype}.')
        check_image_on_grid(img.shape[0], img.shape[1], block_size, f'{what}[{i}]',
                            'Crop it to the block grid first.')


def blocks_of(images: Sequence[np.ndarray], block_size: int) -> np.ndarray:
    """All blocks of all images stacked into an ``(N, C*b*b)`` array (same dtype)."""
    return np.concatenate([block_grid(img, block_size).reshape(-1, img.shape[2] *
                                                               block_size ** 2)
                           for img in images])


def permute_image(img: np.ndarray, perm: np.ndarray, block_size: int) -> np.ndarray:
    """Encrypt with an explicit permutation: ``out_block[k] = img_block[perm[k]]``."""
    grid = block_grid(img, block_size)[:, :, np.asarray(perm)]
    return from_block_grid(grid, block_size, img.shape[2])


def unpermute_image(img: np.ndarray, perm: np.ndarray, block_size: int) -> np.ndarray:
    """Decrypt with an explicit (possibly estimated) permutation.

    ``out_block[perm[k]] = img_block[k]``; this is what an attacker does with a recovered
    permutation.
    """
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return permute_image(img, inv, block_size)


def recovery_stats(est: np.ndarray, true: np.ndarray, block_size: int,
                   channels: int = 3) -> Dict[str, float]:
    """How much of the key permutation an estimate recovered.

    Args:
        est (np.ndarray): Estimated permutation (``est[k]`` = plain position of encrypted
            position ``k``).
        true (np.ndarray): The key's permutation ``pi``.
        block_size (int): Block side.
        channels (int): Channels. Defaults to 3.

    Returns:
        dict: ``exact`` (fraction of positions with ``est[k] == pi[k]``), ``pixel``
        (fraction mapped to the right pixel location, whatever the channel: what matters
        for seeing the content), ``near`` (right channel and at most one pixel off in y
        and x: such errors barely change how a restored image looks), ``channel``
        (fraction with the right channel) and ``chance`` (the expected ``exact`` of a
        random guess, ``1/n``).
    """
    est = np.asarray(est)
    true = np.asarray(true)
    if est.shape != true.shape:
        raise ValueError(f'Estimate has shape {est.shape}, the key permutation '
                         f'{true.shape}; both must be ({channels * block_size ** 2},).')
    per_channel = block_size * block_size
    same_channel = est // per_channel == true // per_channel
    ey, ex = np.divmod(est % per_channel, block_size)
    ty, tx = np.divmod(true % per_channel, block_size)
    return {
        'exact': float(np.mean(est == true)),
        'pixel': float(np.mean(est % per_channel == true % per_channel)),
        'near': float(np.mean(same_channel & (np.abs(ey - ty) <= 1) &
                              (np.abs(ex - tx) <= 1))),
        'channel': float(np.mean(same_channel)),
        'chance': 1.0 / true.size,
    }
