"""Paired statistics of the miniature Table I (tools/analysis/stats.py), against cases
computed by hand."""
import math
import os.path as osp
import sys

import pytest

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import stats as S  # noqa: E402

# Student t quantiles from tables: t(0.975, 2) = 4.302653, t(0.95, 2) = 2.919986,
# t(0.975, 4) = 2.776445.
T975_2, T95_2, T975_4 = 4.302653, 2.919986, 2.776445


def test_paired_differences_and_interval():
    # a - b = [1, 2, 3]: mean 2, sd 1, se 1 / sqrt(3).
    p = S.paired([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert p['diffs'] == [1.0, 2.0, 3.0] and p['n'] == 3
    assert p['mean'] == pytest.approx(2.0) and p['sd'] == pytest.approx(1.0)
    half = T975_2 / math.sqrt(3)
    assert p['ci95'] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-5)


def test_paired_five_seeds():
    # diffs [-2, -1, 0, 1, 2]: mean 0, sd sqrt(10 / 4), se sqrt(0.5).
    p = S.paired([0, 1, 2, 3, 4], [2, 2, 2, 2, 2])
    half = T975_4 * math.sqrt(0.5)
    assert p['ci95'] == pytest.approx([-half, half], abs=1e-5)
    assert S.verdict(p['ci95']) == 'not shown'


def test_paired_rejects_unequal_lengths_and_handles_one_pair():
    with pytest.raises(ValueError, match='equally long'):
        S.paired([1.0], [1.0, 2.0])
    one = S.paired([3.0], [1.0])
    assert one['mean'] == 2.0 and one['ci95'] is None and one['sd'] is None


def test_tost_by_hand():
    # diffs [1, 2, 3], margin 3: t_lower = (2 + 3) / se = 8.660, t_upper = (2 - 3) / se
    # = -1.732 -> p_upper = P(T_2 <= -1.732) = 0.1127: not equivalent.
    t = S.tost([1.0, 2.0, 3.0], margin=3.0)
    se = 1 / math.sqrt(3)
    assert t['t_lower'] == pytest.approx(5 / se)
    assert t['p_upper'] == pytest.approx(0.1127, abs=5e-4)
    assert t['p'] == t['p_upper'] and not t['equivalent']
    half = T95_2 * se
    assert t['ci90'] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    # The same differences with a margin of 5: t_upper = -3 / se = -5.196,
    # p = P(T_2 <= -5.196) = 0.0176 < 0.05: equivalent, and the 90 % interval
    # [0.31, 3.69] lies inside (-5, 5).
    t5 = S.tost([1.0, 2.0, 3.0], margin=5.0)
    assert t5['p'] == pytest.approx(0.0176, abs=5e-4) and t5['equivalent']


def test_tost_without_spread_and_bad_margin():
    assert S.tost([0.5, 0.5, 0.5], margin=1.0)['equivalent']
    assert not S.tost([1.5, 1.5], margin=1.0)['equivalent']
    with pytest.raises(ValueError, match='margin'):
        S.tost([1.0, 2.0], margin=0.0)
    with pytest.raises(ValueError, match='at least 2'):
        S.tost([1.0], margin=1.0)


@pytest.mark.parametrize('ci,eq,word', [
    ([-3.0, -1.0], False, 'worse'),
    ([1.0, 3.0], False, 'better'),
    ([-1.0, 1.0], False, 'not shown'),
    ([-1.0, 1.0], True, 'equivalent'),
    (None, False, 'not shown'),
])
def test_verdict(ci, eq, word):
    assert S.verdict(ci, eq) == word
