"""Ciphertext-only attack: estimate the block permutation from encrypted images alone.

Every block of every encrypted image is a sample of the same 768 shuffled positions, so an
attacker can estimate how the positions co-vary without knowing anything else. In natural
images, values of spatially adjacent pixels of one channel are the most strongly
correlated pairs in a block. The attack uses that structure in four steps:

1. **Statistics.** The correlation matrix ``C`` of the encrypted positions over all
   blocks, and the cross-block matrices ``H`` (position ``a`` in a block vs position
   ``b`` in the block to its right) and ``V`` (block below). The block grid of an
   encrypted image is public, and the right-hand edge of one block touches the left-hand
   edge of the next, so ``H`` and ``V`` reveal which positions lie on which edge: they fix
   the orientation that in-block statistics alone leave open (mirrors, transposition).
2. **Channels.** The graph joining every position to its few most correlated positions
   falls apart into one cluster per colour channel (neighbours in space correlate more
   than the same pixel across channels); spectral clustering with equal cluster sizes,
   helped by each position's mean and spread (which differ between channels), finds them.
3. **Layout.** Per channel, a spectral embedding of the neighbour graph (Laplacian
   eigenmaps; Isomap as an alternative start) gives approximate grid coordinates; the
   grid layout that maximises the summed correlation of grid neighbours (in-block and
   across block edges) is then searched by pairwise swaps, from several starts, keeping
   the best score. The score uses ciphertext statistics only.
4. **Channel order.** The channel whose pixels correlate most with both others is taken
   as green; red and blue are told apart only by a guess (the brighter one is called
   blue), so they may come out swapped, which leaves the content fully visible.

No knowledge of the plain images or the key is used. The result is scored by
:func:`mmseg_ppenc.security.common.recovery_stats` against the true key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import laplacian, shortest_path

from mmseg_ppenc.security.common import block_grid, check_images

__all__ = ['CiphertextOnlyResult', 'ciphertext_only_attack', 'BlockStats',
           'block_statistics', 'group_channels', 'place_channel']


@dataclass
class CiphertextOnlyResult:
    """Outcome of :func:`ciphertext_only_attack`.

    Attributes:
        perm (np.ndarray): Estimated permutation (``perm[k]`` = believed plain position of
            encrypted position ``k``).
        groups (list[np.ndarray]): Encrypted positions assigned to each channel (R, G, B
            as guessed), each laid out in (y, x) order of the block.
        num_blocks (int): Number of encrypted blocks used.
        scores (list[float]): Layout score of each channel (higher is better).
    """
    perm: np.ndarray
    groups: List[np.ndarray] = field(default_factory=list)
    num_blocks: int = 0
    scores: List[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- stats
def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b``.

    ``a`` and ``b`` hold uint8 values (same number of rows). The sums of values and of
    products are integers below 2**53 for fewer than 2**53 / 255**2 (about 1.4e11) rows,
    so float64 computes them exactly whatever the BLAS kernel's summation order; the rest
    is elementwise (correctly rounded) arithmetic. The result is therefore the same on
    every machine, and the attack's later decisions (nearest neighbours, swap order) do
    not depend on the BLAS build.
    """
    n = len(a)
    fa = a.astype(np.float64)
    fb = fa if b is a else b.astype(np.float64)
    mean_a, mean_b = fa.sum(0) / n, fb.sum(0) / n
    cov = (fa.T @ fb) / n - mean_a[:, None] * mean_b[None]

    def sd(x, f, mean):
        var = np.maximum((f * f).sum(0) / n - mean * mean, 0.0)
        # A position constant over all blocks carries no information: correlation 0
        # (tested on the integers, as rounding can leave a tiny positive variance).
        return np.where(x.max(0) > x.min(0), np.sqrt(var), np.inf)

    sd_a = sd(a, fa, mean_a)
    sd_b = sd_a if b is a else sd(b, fb, mean_b)
    return cov / sd_a[:, None] / sd_b[None]


class BlockStats(NamedTuple):
    """Statistics of encrypted block positions (see :func:`block_statistics`)."""
    corr: np.ndarray
    right: np.ndarray
    down: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_blocks: int


def block_statistics(images: Sequence[np.ndarray], block_size: int) -> BlockStats:
    """Correlation statistics of encrypted positions.

    Args:
        images (Sequence[np.ndarray]): Encrypted HxWx3 uint8 images (one key).
        block_size (int): Cipher block size.

    Returns:
        BlockStats: ``corr[a, b]``, the correlation of positions ``a`` and ``b`` within a
        block; ``right[a, b]``, of position ``a`` in a block with position ``b`` in the
        block to its right; ``down[a, b]``, likewise with the block below (zero matrices
        if no image has two block columns / rows); per-position ``mean`` and ``std``; and
        the number of blocks. All are computed from exact integer sums, so they are
        bit-for-bit the same under every BLAS kernel.
    """
    grids = [block_grid(img, block_size) for img in images]
    n = grids[0].shape[-1]
    raw = np.concatenate([g.reshape(-1, n) for g in grids])
    corr = _correlation(raw, raw)

    def cross(pairs):
        left = [a.reshape(-1, n) for a, _ in pairs if a.size]
        if not left:
            return np.zeros((n, n))
        right = [b.reshape(-1, n) for _, b in pairs if b.size]
        return _correlation(np.concatenate(left), np.concatenate(right))

    h = cross([(g[:, :-1], g[:, 1:]) for g in grids])
    v = cross([(g[:-1], g[1:]) for g in grids])
    total = raw.sum(0, dtype=np.int64)
    squares = (raw.astype(np.int64) ** 2).sum(0)
    mean = total / len(raw)
    std = np.sqrt(np.maximum(squares / len(raw) - mean * mean, 0.0))
    return BlockStats(corr, h, v, mean, std, len(raw))


# -------------------------------------------------------------------------- channels
def _knn_graph(sim: np.ndarray, k: int) -> np.ndarray:
    """Symmetric 0/1 adjacency joining every node to its ``k`` most similar nodes."""
    n = len(sim)
    s = sim.copy()
    np.fill_diagonal(s, -np.inf)
    k = min(k, n - 1)
    # A stable sort breaks ties by index; argpartition's order among equal values depends
    # on the CPU's SIMD code path.
    nb = np.argsort(-s, axis=1, kind='stable')[:, :k]
    adj = np.zeros((n, n))
    adj[np.repeat(np.arange(n), k), nb.ravel()] = 1.0
    return np.maximum(adj, adj.T)


def _balanced_kmeans(feat: np.ndarray, k: int, rng: np.random.Generator,
                     restarts: int = 3, iters: int = 30) -> np.ndarray:
    """k-means, then a final assignment with exactly ``n/k`` points per cluster."""
    n = len(feat)
    m = n // k
    best = None
    for _ in range(restarts):
        # k-means++ seeding. Uniform starts put two centres in one channel 7 times in 9;
        # k-means did not always get out of it, and for 1 key in 48 measured all three
        # restarts mixed two channels (the layout then fails for half the positions).
        cent = [feat[rng.integers(n)]]
        for _ in range(k - 1):
            d2 = np.min([((feat - c) ** 2).sum(1) for c in cent], axis=0)
            total = d2.sum()
            cent.append(feat[rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)])
        cent = np.stack(cent)
        for _ in range(iters):
            lab = (((feat[:, None, :] - cent[None]) ** 2).sum(-1)).argmin(1)
            new = np.stack([feat[lab == j].mean(0) if np.any(lab == j) else cent[j]
                            for j in range(k)])
            if np.allclose(new, cent):
                break
            cent = new
        # Every channel has the same number of positions: balance by the Hungarian method.
        cost = ((feat[:, None, :] - cent[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(np.repeat(cost, m, axis=1))
        lab = np.empty(n, dtype=np.int64)
        lab[rows] = cols // m
        inertia = float(cost[np.arange(n), lab].sum())
        if best is None or inertia < best[0]:
            best = (inertia, lab)
    return best[1]


def group_channels(stats: BlockStats, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Split encrypted positions into ``channels`` equal groups (one per colour channel).

    Features per position: the spectral embedding of the graph joining each position to
    its ``k`` most correlated ones, plus its (standardised) mean and standard deviation,
    which differ between colour channels. Of the groupings for ``k`` in 4, 6, 8, the one
    with the highest total within-group correlation wins (a ciphertext-only criterion).

    Args:
        stats (BlockStats): From :func:`block_statistics`.
        channels (int): Number of channels. Defaults to 3.
        seed (int): Seed of the k-means starts. Defaults to 0.

    Returns:
        np.ndarray: Group label (``0..channels-1``, arbitrary order) per position.
    """
    corr = stats.corr
    if channels == 1:
        return np.zeros(len(corr), dtype=np.int64)
    moments = np.stack([stats.mean, stats.std], 1)
    moments = (moments - moments.mean(0)) / np.maximum(moments.std(0), 1e-12)
    best = None
    for k in (4, 6, 8):
        adj = _knn_graph(corr, k)
        deg = adj.sum(1)
        norm_adj = adj / np.sqrt(deg[:, None] * deg[None])
        # Smallest eigenvectors of the normalised Laplacian = largest of this matrix. The
        # graph often falls apart into one component per channel, so the top eigenvalue
        # is repeated; a Lanczos solver (eigsh) then finds a rounding-dependent subset of
        # its copies, and the grouping changed with the BLAS kernel. A dense solver
        # returns the whole eigenspace; the basis it picks does not matter, as the
        # row-normalised features below only enter through distances.
        n = len(adj)
        _, feat = eigh(norm_adj, subset_by_index=[n - channels, n - 1])
        feat = feat / np.maximum(np.linalg.norm(feat, axis=1, keepdims=True), 1e-12)
        feat = np.concatenate([feat, moments / np.sqrt(2)], 1)
        labels = _balanced_kmeans(feat, channels, np.random.default_rng(seed))
        within = sum(corr[np.ix_(labels == c, labels == c)].sum() for c in range(channels))
        if best is None or within > best[0]:
            best = (within, labels)
    return best[1]


# ---------------------------------------------------------------------------- layout
class _Template:
    """One grid-adjacency matrix (zero diagonal) in the forms the layout search needs."""

    def __init__(self, dense: np.ndarray) -> None:
        self.dense = np.asarray(dense, dtype=np.float64)
        self.sparse = csr_matrix(self.dense)
        self.sym = self.dense + self.dense.T
        self.pair_index = np.nonzero(self.sym)
        self.pair_weight = self.sym[self.pair_index]


class _Templates:
    """Grid adjacency of one channel of a ``b x b`` block (cell index ``y*b + x``)."""

    def __init__(self, b: int) -> None:
        ys, xs = np.divmod(np.arange(b * b), b)
        dy = ys[:, None] - ys[None]
        dx = xs[:, None] - xs[None]
        manhattan = np.abs(dy) + np.abs(dx)
        self.b, self.ys, self.xs = b, ys, xs
        # In-block: 4-neighbours, diagonal neighbours at half weight.
        self.inner = _Template((manhattan == 1) +
                               0.5 * ((np.abs(dy) == 1) & (np.abs(dx) == 1)))
        # Across block edges: right column of a block touches the left column of the next.
        self.right = _Template((xs[:, None] == b - 1) & (xs[None] == 0) & (dy == 0))
        self.down = _Template((ys[:, None] == b - 1) & (ys[None] == 0) & (dx == 0))
        self.neighbours = (self.inner.sym + self.right.sym + self.down.sym) > 0


def _objective(x: np.ndarray, terms) -> float:
    return float(sum((a.dense * s[np.ix_(x, x)]).sum() for a, s in terms))


def _swap_gains(x: np.ndarray, terms) -> np.ndarray:
    """Exact objective change for swapping the items of every pair of cells.

    For ``f(x) = sum_t sum_{p,q} A_t[p,q] S_t[x_p, x_q]`` with templates ``A_t`` that have
    a zero diagonal (sparse) and arbitrary, not necessarily symmetric ``S_t``; entry
    ``[p, q]`` is ``f(x with x_p and x_q swapped) - f(x)``.
    """
    n = len(x)
    m = np.zeros((n, n))
    pair = np.zeros((n, n))
    for a, s in terms:
        g = s[np.ix_(x, x)]
        # m[i, j] = sum_r g[i, r] a[j, r] + g[r, i] a[r, j]: what item i would gain at
        # cell j, as if nothing else moved.
        m += (a.sparse @ g.T + a.sparse.T @ g).T
        rows, cols = a.pair_index
        gs = g[rows, cols] + g[cols, rows] - g[rows, rows] - g[cols, cols]
        # Correction for the pair itself when p and q are neighbours (a has a zero
        # diagonal; derived term by term).
        pair[rows, cols] += a.pair_weight * gs  # (rows, cols) pairs are unique
    d = np.diag(m)
    total = m + m.T - d[:, None] - d[None] + pair
    np.fill_diagonal(total, 0.0)
    return total


def _local_search(x: np.ndarray, terms, neighbours: np.ndarray,
                  max_rounds: int = 200) -> np.ndarray:
    """Best-improvement pairwise swaps; many non-interacting swaps per round."""
    x = x.copy()
    n = len(x)
    for _ in range(max_rounds):
        gains = _swap_gains(x, terms)
        # The best partner of every cell, best first (gains are symmetric in p, q).
        partner = gains.argmax(1)
        best = gains[np.arange(n), partner]
        blocked = np.zeros(n, dtype=bool)
        applied = 0
        for p in np.argsort(-best, kind='stable'):
            q = int(partner[p])
            if best[p] <= 1e-9:
                break
            if blocked[p] or blocked[q]:
                continue
            # A swap's gain stays exact only if no earlier swap this round touched the
            # cells it interacts with.
            x[p], x[q] = x[q], x[p]
            applied += 1
            blocked[p] = blocked[q] = True
            blocked |= neighbours[p] | neighbours[q]
        if applied == 0:
            break
    return x


def _dihedral(x: np.ndarray, b: int, t: int) -> np.ndarray:
    g = x.reshape(b, b)
    if t & 4:
        g = g.T
    if t & 1:
        g = g[:, ::-1]
    if t & 2:
        g = g[::-1]
    return g.reshape(-1).copy()


def _to_grid(emb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotate/reflect a 2-D embedding onto grid target coordinates, then assign cells.

    Returns ``x`` with ``x[cell] = item``. Rotations are screened by matching the sorted
    coordinates (cheap), and the best few are assigned with the Hungarian method.

    The embedding's plane has no preferred basis: the two lowest grid modes have (nearly)
    equal eigenvalues, and eigensolvers return any orthonormal basis of their span, a
    different one under different BLAS kernels. The candidate angles are therefore
    measured from the embedding's own fourfold orientation (the phase of
    ``sum (x + iy)**4``), which turns with the basis; the candidates, and the layout, are
    then the same for every basis, up to the square's symmetries (which
    :func:`place_channel` resolves with the cross-block statistics).
    """
    # Norms as plain sums: np.linalg.norm of a matrix is a BLAS dot product, whose
    # rounding depends on the kernel; np.cos may differ in the last bit between CPUs
    # (SIMD code paths), hence the rounded target.
    emb = emb / max(np.sqrt(np.sum(emb * emb)), 1e-12)
    target = np.round(target / np.sqrt(np.sum(target * target)), 12)
    tsort = np.sort(target, axis=0)
    cands = []
    for refl in (1.0, -1.0):
        reflected = emb * np.array([1.0, refl])
        phase = np.angle(np.sum((reflected[:, 0] + 1j * reflected[:, 1]) ** 4)) / 4
        for th in np.linspace(0, np.pi, 90, endpoint=False) - phase:
            c, s = np.cos(th), np.sin(th)
            # Rounded so that items the graph cannot tell apart (equal coordinates up
            # to the eigensolver's rounding) tie exactly, and the Hungarian method
            # breaks the tie by index, not by the BLAS kernel's last bits.
            er = np.round(np.stack([c * reflected[:, 0] - s * reflected[:, 1],
                                    s * reflected[:, 0] + c * reflected[:, 1]], 1), 9)
            cands.append((float(((np.sort(er, axis=0) - tsort) ** 2).sum()), er))
    cands.sort(key=lambda t: t[0])
    best = None
    for _, er in cands[:3]:
        cost = ((er[:, None, :] - target[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        total = cost[rows, cols].sum()
        if best is None or total < best[0]:
            x = np.empty(len(er), dtype=np.int64)
            x[cols] = rows
            best = (total, x)
    return best[1]


def _rank_layout(sx: np.ndarray, sy: np.ndarray, tpl: '_Templates') -> np.ndarray:
    """Cells for items whose x (y) order is given by the scores ``sx`` (``sy``)."""
    n = len(sx)
    rx = np.argsort(np.argsort(sx, kind='stable'), kind='stable') * tpl.b / n
    ry = np.argsort(np.argsort(sy, kind='stable'), kind='stable') * tpl.b / n
    cost = (rx[:, None] - tpl.xs[None]) ** 2 + (ry[:, None] - tpl.ys[None]) ** 2
    rows, cols = linear_sum_assignment(cost)
    x = np.empty(n, dtype=np.int64)
    x[cols] = rows
    return x


def _starts(corr: np.ndarray, right: np.ndarray, down: np.ndarray,
            tpl: '_Templates') -> List[np.ndarray]:
    """Initial layouts; the spectral ones are only defined up to the square's symmetries."""
    b = tpl.b
    cos_t = np.stack([np.cos(np.pi * (tpl.xs + 0.5) / b),
                      np.cos(np.pi * (tpl.ys + 0.5) / b)], 1)
    lin_t = np.stack([tpl.xs, tpl.ys], 1).astype(float)
    lin_t -= lin_t.mean(0)
    # A position near a block's right edge correlates more with the whole next block
    # than with the previous one: a direct, orientation-aware coordinate estimate.
    starts = [_rank_layout(right.mean(1) - right.mean(0), down.mean(1) - down.mean(0),
                           tpl)]
    weights = np.clip(corr, 0, 1) ** 8
    for k, weighted in ((4, False), (8, False), (6, True)):
        adj = _knn_graph(corr, k)
        # The Laplacian's first non-constant eigenvectors of a grid graph are the
        # lowest cosine modes along x and y.
        _, vec = eigh(laplacian(adj * weights if weighted else adj), subset_by_index=[1, 2])
        starts.append(_to_grid(vec, cos_t))
    # Isomap: classical MDS of hop distances in the neighbour graph.
    hops = shortest_path(_knn_graph(corr, 6), directed=False, unweighted=True)
    finite = np.isfinite(hops)
    hops[~finite] = hops[finite].max() + 1
    n = len(hops)
    # Double centring elementwise, not as J @ D @ J (a BLAS product whose rounding
    # depends on the kernel); the squared hop counts are integers, so their row sums are
    # exact.
    sq = hops ** 2
    row = sq.mean(1)
    gram = -0.5 * (sq - row[:, None] - row[None] + row.mean())
    val, vec = eigh(gram, subset_by_index=[n - 2, n - 1])
    starts.append(_to_grid(vec * np.sqrt(np.maximum(val, 0)), lin_t))
    return starts


def place_channel(corr: np.ndarray, right: np.ndarray, down: np.ndarray,
                  block_size: int) -> Tuple[np.ndarray, float]:
    """Lay out one channel's ``b*b`` positions on the block grid.

    Args:
        corr (np.ndarray): In-block correlations among the channel's positions.
        right (np.ndarray): ``right[a, b]``: correlation of ``a`` in a block with ``b`` in
            the block to its right.
        down (np.ndarray): Same for the block below.
        block_size (int): ``b``.

    Returns:
        tuple[np.ndarray, float]: ``x`` with ``x[y*b + x_] =`` the index (into the
        channel's positions) placed at that pixel, and its layout score.
    """
    tpl = _Templates(block_size)
    terms = [(tpl.inner, corr), (tpl.right, right), (tpl.down, down)]
    best = None
    for x0 in _starts(corr, right, down, tpl):
        # In-block statistics cannot tell the 8 symmetries of the square apart; the
        # cross-block terms can.
        x0 = max((_dihedral(x0, block_size, t) for t in range(8)),
                 key=lambda x: _objective(x, terms))
        x1 = _local_search(x0, terms, tpl.neighbours)
        score = _objective(x1, terms)
        if best is None or score > best[1]:
            best = (x1, score)
    return best


# ----------------------------------------------------------------------------- attack
def ciphertext_only_attack(images: Sequence[np.ndarray], block_size: int = 16,
                           channels: int = 3, seed: int = 0) -> CiphertextOnlyResult:
    """Estimate the key permutation from encrypted images only.

    Args:
        images (Sequence[np.ndarray]): Encrypted HxWx3 uint8 images, all under one key.
            More images give better statistics.
        block_size (int): Cipher block size. Defaults to 16.
        channels (int): Channels. Defaults to 3.
        seed (int): Seed of the clustering starts. Defaults to 0.

    Returns:
        CiphertextOnlyResult: The estimate; score it with
        :func:`~mmseg_ppenc.security.common.recovery_stats`.
    """
    check_images(images, block_size, 'encrypted images')
    stats = block_statistics(images, block_size)
    corr, h, v = stats.corr, stats.right, stats.down
    labels = group_channels(stats, channels, seed)
    cells = block_size * block_size
    groups, scores = [], []
    for c in range(channels):
        items = np.flatnonzero(labels == c)
        ix = np.ix_(items, items)
        x, score = place_channel(corr[ix], h[ix], v[ix], block_size)
        groups.append(items[x])
        scores.append(score)
    order = _guess_channel_order(groups, corr, stats.mean)
    groups = [groups[i] for i in order]
    scores = [scores[i] for i in order]
    perm = np.empty(channels * cells, dtype=np.int64)
    for c, g in enumerate(groups):
        perm[g] = c * cells + np.arange(cells)
    return CiphertextOnlyResult(perm=perm, groups=groups, num_blocks=stats.num_blocks,
                                scores=scores)


def _guess_channel_order(groups: List[np.ndarray], corr: np.ndarray,
                         mean: np.ndarray) -> List[int]:
    """R, G, B order of the groups: G correlates most with both others; R/B is a guess."""
    k = len(groups)
    if k != 3:
        return list(range(k))
    pix = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            if i != j:
                pix[i, j] = np.mean(corr[groups[i], groups[j]])
    green = int(np.argmax(pix.sum(1)))
    rest = [i for i in range(3) if i != green]
    means = [float(mean[groups[i]].mean()) for i in rest]
    # A guess, not an inference: in outdoor scenes blue (sky) tends to be brighter.
    red, blue = (rest[0], rest[1]) if means[0] <= means[1] else (rest[1], rest[0])
    return [red, green, blue]
