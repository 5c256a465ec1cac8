"""Known-plaintext attack: recover the block permutation from plain/encrypted pairs.

Every block of every image is encrypted with the same permutation, so each block is one
equation ``enc_block[k] == plain_block[pi[k]]`` for all ``k`` at once. Stack the blocks of
all known pairs into ``(N, n)`` matrices ``P`` and ``C``: then column ``k`` of ``C`` equals
column ``pi[k]`` of ``P``. Encrypted position ``k`` can therefore only come from plain
positions whose whole column (its value in every known block) is identical to ``C[:, k]``;
intersecting the per-block candidate sets is exactly grouping identical columns. In
natural images two positions almost never agree in every one of a few hundred blocks, so
one image pins down the whole permutation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from mmseg_ppenc.security.common import blocks_of, check_images

__all__ = ['KnownPlaintextResult', 'known_plaintext_attack']


@dataclass
class KnownPlaintextResult:
    """Outcome of :func:`known_plaintext_attack`.

    Attributes:
        perm (np.ndarray): Estimated permutation (``perm[k]`` = plain position of
            encrypted position ``k``). Within a group of indistinguishable positions the
            assignment is arbitrary (it decrypts the known images correctly either way).
        determined (np.ndarray): Boolean mask: position ``k`` has exactly one candidate.
        num_blocks (int): Number of known block pairs used.
    """
    perm: np.ndarray
    determined: np.ndarray
    num_blocks: int

    @property
    def fraction_determined(self) -> float:
        """Fraction of positions whose source is unambiguous."""
        return float(self.determined.mean())


def known_plaintext_attack(pairs: Sequence[Tuple[np.ndarray, np.ndarray]],
                           block_size: int = 16) -> KnownPlaintextResult:
    """Recover the block permutation from known (plain, encrypted) image pairs.

    Args:
        pairs (Sequence[tuple[np.ndarray, np.ndarray]]): ``(plain, encrypted)`` HxWx3
            uint8 images encrypted with one key; sizes may differ between pairs.
        block_size (int): Cipher block size. Defaults to 16.

    Returns:
        KnownPlaintextResult: The estimate and which positions it determines uniquely.

    Raises:
        ValueError: bad images, or pairs that no single block permutation explains (the
            candidate groups do not match up: different keys, or not encryptions of each
            other).
    """
    if len(pairs) == 0:
        raise ValueError('known_plaintext_attack needs at least one (plain, encrypted) '
                         'pair.')
    plains = [p for p, _ in pairs]
    encs = [e for _, e in pairs]
    check_images(plains, block_size, 'plain images')
    check_images(encs, block_size, 'encrypted images')
    for i, (p, e) in enumerate(pairs):
        if p.shape != e.shape:
            raise ValueError(f'Pair {i}: plain image {p.shape} and encrypted image '
                             f'{e.shape} differ in shape; they must be the same image.')
    P = blocks_of(plains, block_size)  # (N, n)
    C = blocks_of(encs, block_size)
    n = P.shape[1]
    # One label per distinct column over plain and encrypted positions together: a plain
    # and an encrypted position are compatible iff their labels agree.
    cols = np.ascontiguousarray(np.concatenate([P.T, C.T]))
    _, labels = np.unique(cols.view(np.dtype((np.void, cols.shape[1]))).ravel(),
                          return_inverse=True)
    labels = labels.ravel()
    lp, lc = labels[:n], labels[n:]
    # Sorting both label lists pairs the k-th encrypted position of a group with the k-th
    # plain position of the same group (stable order inside groups).
    order_p = np.argsort(lp, kind='stable')
    order_c = np.argsort(lc, kind='stable')
    if not np.array_equal(lp[order_p], lc[order_c]):
        bad = int(np.sum(np.bincount(lp, minlength=labels.max() + 1) !=
                         np.bincount(lc, minlength=labels.max() + 1)))
        raise ValueError(
            f'No block permutation maps these plain images to these encrypted images: '
            f'{bad} value patterns occur a different number of times in the two sets. '
            'Check that each pair is (plain, its encryption) under one key and block size '
            f'{block_size}.')
    perm = np.empty(n, dtype=np.int64)
    perm[order_c] = order_p
    group_size = np.bincount(lc)[lc]
    return KnownPlaintextResult(perm=perm, determined=group_size == 1,
                                num_blocks=int(P.shape[0]))
