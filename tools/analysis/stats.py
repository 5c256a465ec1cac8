"""Paired statistics over seeds for the miniature Table I (pure functions, no torch).

With independent seeds, each seed gives one value per cell; two cells of the same seed
form a pair. :func:`paired` gives the per-seed differences with their mean, sample
standard deviation and a Student-t confidence interval; :func:`tost` is the two
one-sided tests (TOST) for equivalence within ``±margin``; :func:`verdict` turns both
into the words the docs use: ``equivalent``, ``worse``, ``better`` or ``not shown``.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ['paired', 'tost', 'verdict']


def _t():
    from scipy.stats import t
    return t


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Per-seed differences ``a - b`` and a t-interval of their mean.

    Args:
        a, b: Values of two cells, one per seed, in the same seed order.
        confidence (float): Coverage of the interval. Defaults to 0.95.

    Returns:
        dict: ``diffs``, ``n``, ``mean``, ``sd`` (ddof=1), ``se``, ``ci95`` (``[lo, hi]``;
        named ``ci`` for another ``confidence``), ``confidence``. With equal differences
        the interval is the mean itself; with one pair ``sd``, ``se`` and the interval
        are None.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f'paired needs two equally long non-empty lists, got {len(a)} '
                         f'and {len(b)} values.')
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n > 1:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        se = sd / math.sqrt(n)
        half = float(_t().ppf(0.5 + confidence / 2, n - 1)) * se
        ci = [mean - half, mean + half]
    else:
        sd = se = None
        ci = None
    name = 'ci95' if abs(confidence - 0.95) < 1e-12 else 'ci'
    return {'diffs': diffs, 'n': n, 'mean': mean, 'sd': sd, 'se': se, name: ci,
            'confidence': confidence}


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests: is the mean difference inside ``(-margin, +margin)``?

    H0: mean <= -margin or mean >= +margin. Each one-sided test has level ``alpha``;
    equivalence is shown when both reject, i.e. ``p = max(p_lower, p_upper) < alpha``
    (the same as the ``1 - 2 alpha`` t-interval lying inside the margins).

    Returns:
        dict: ``margin``, ``alpha``, ``n``, ``mean``, ``t_lower``, ``t_upper``,
        ``p_lower``, ``p_upper``, ``p``, ``ci90`` (for ``alpha = 0.05``, the
        ``1 - 2 alpha`` interval under the name ``ci90``), ``equivalent``.
    """
    if not margin > 0:
        raise ValueError(f'margin must be > 0, got {margin}.')
    diffs = [float(d) for d in diffs]
    n = len(diffs)
    if n < 2:
        raise ValueError(f'TOST needs at least 2 differences, got {n}.')
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    t = _t()
    if se == 0:  # no spread: the mean is known exactly
        inside = -margin < mean < margin
        t_lo = t_hi = float('inf') if inside else float('-inf')
        p_lo = p_hi = 0.0 if inside else 1.0
        half = 0.0
    else:
        t_lo = (mean + margin) / se
        t_hi = (mean - margin) / se
        p_lo = float(t.sf(t_lo, n - 1))
        p_hi = float(t.cdf(t_hi, n - 1))
        t_hi = -t_hi
        half = float(t.ppf(1 - alpha, n - 1)) * se
    p = max(p_lo, p_hi)
    return dict(margin=float(margin), alpha=float(alpha), n=n, mean=mean,
                t_lower=t_lo, t_upper=t_hi, p_lower=p_lo, p_upper=p_hi, p=p,
                ci90=[mean - half, mean + half], equivalent=bool(p < alpha))


def verdict(ci95: Sequence[float], equivalent: bool = False) -> str:
    """Words for a difference: ``equivalent`` (TOST), else ``worse`` / ``better`` (the
    95 % interval excludes 0 on that side), else ``not shown``."""
    if equivalent:
        return 'equivalent'
    if ci95 is not None and ci95[1] < 0:
        return 'worse'
    if ci95 is not None and ci95[0] > 0:
        return 'better'
    return 'not shown'
