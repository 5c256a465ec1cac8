"""Data of the second miniature Table I (tools/analysis/textures_v2.py): distant
pre-training, and no fine-tuning label that is a function of the pre-training labels."""
import os.path as osp
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import textures as T1  # noqa: E402
from analysis import textures_v2 as T  # noqa: E402


def test_no_finetuning_label_is_a_function_of_the_pretraining_labels():
    """On the generators: label fine-tuning regions with the pre-training labelling;
    the fine-tuning class is far from determined (H(FT | PT) close to H(FT) = 2 bits),
    and almost every pre-training label is shared by several fine-tuning classes."""
    dep = T.label_dependence(T.ft_region_label_pairs(20000, np.random.default_rng(0)))
    assert dep['h_ft'] == pytest.approx(np.log2(T.NUM_CLASSES), abs=0.02)
    assert dep['h_ft_given_pt'] > 1.5, dep
    assert dep['share_ambiguous'] > 0.9, dep


def test_the_check_fails_for_the_first_design():
    """The version-1 rule (fine-tuning class = orientation bin / 2 + 4 x [period bin = 2],
    from the pre-training orientation and period bins) gives H(FT | PT) = 0: the check
    above would fail for it."""
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(5000):
        c = int(rng.integers(T1.NUM_CLASSES))
        theta, period = T1.CLASSES[c]
        ob = int(T1.orientation_bin(np.array([theta]))[0])
        pb = int(T1.period_bin(np.array([period]))[0])
        assert c == ob // 2 + 4 * (pb == 2)
        pairs.append(((ob, pb), c))
    dep = T.label_dependence(pairs)
    assert dep['h_ft_given_pt'] == pytest.approx(0.0, abs=1e-9)
    assert dep['share_ambiguous'] == 0.0
    assert not dep['h_ft_given_pt'] > 1.5


def test_label_dependence_by_hand():
    # PT label 0 -> FT 0 or 1 half each; PT label 1 -> FT 2: H(FT|PT) = 0.5 bit.
    dep = T.label_dependence([(0, 0), (0, 1), (1, 2), (1, 2)])
    assert dep['h_ft_given_pt'] == pytest.approx(0.5)
    assert dep['h_ft'] == pytest.approx(1.5)
    assert dep['share_ambiguous'] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        T.label_dependence([])


def test_pretraining_images_and_labels():
    imgs, labels = T.sample_pretrain_images(np.random.default_rng(0), 64, (64, 64))
    assert imgs.shape == (64, 64, 64, 3) and labels.shape == (64,)
    assert labels.min() >= 0 and labels.max() < T.NUM_PT_CLASSES
    assert len(np.unique(labels)) >= 8
    np.testing.assert_array_equal(T.pt_label(np.arange(12) * 15.0), np.arange(12))
    assert int(T.pt_label(179.0)) == 0


def test_finetuning_mosaics_follow_their_classes():
    """Coarse regions' dominant spatial period is longer than fine ones'; plaids have
    energy along two perpendicular directions, gratings along one (measured by the
    2-D spectrum of the principal colour component)."""
    rng = np.random.default_rng(3)
    ratio = {'grating': [], 'plaid': []}
    period = {'fine': [], 'coarse': []}
    for _ in range(12):
        img, lab = T.render_labelled(64, 128, rng)
        assert img.dtype == np.uint8 and set(np.unique(lab)) <= set(range(T.NUM_CLASSES))
        for c in np.unique(lab):
            m = lab == c
            if m.sum() < 1500:
                continue
            pix = img.astype(np.float64)
            grey = pix @ np.linalg.eigh(np.cov(pix[m].T))[1][:, -1]
            grey = np.where(m, grey - grey[m].mean(), 0.0)
            spec = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
            fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(64)),
                                 np.fft.fftshift(np.fft.fftfreq(128)), indexing='ij')
            r = np.hypot(fy, fx)
            spec[r < 0.05] = 0
            iy, ix = np.unravel_index(spec.argmax(), spec.shape)
            pattern, per = T.CLASSES[c]
            period[per].append(1 / r[iy, ix])
            # Energy at the peak rotated by 90 degrees (plaid) vs. at the peak.
            ang = np.arctan2(fy[iy, ix], fx[iy, ix]) + np.pi / 2
            near = (np.abs(np.angle(np.exp(1j * (np.arctan2(fy, fx) - ang)))) < 0.25) | (
                np.abs(np.angle(np.exp(1j * (np.arctan2(fy, fx) - ang - np.pi)))) < 0.25)
            ratio[pattern].append((spec * near).max() / spec.max())
    assert max(period['fine']) < min(period['coarse']), period
    assert np.median(ratio['plaid']) > 0.3 > np.median(ratio['grating']), ratio


def test_dataset_splits_are_deterministic_and_distinct(tmp_path):
    a = T.make_dataset(str(tmp_path / 'a'), dict(train=2, val=1, test=1), seed=5)
    b = T.make_dataset(str(tmp_path / 'b'), dict(train=2, val=1, test=1), seed=5)
    c = T.make_dataset(str(tmp_path / 'c'), dict(train=2, val=1, test=1), seed=6)
    load = lambda p: np.asarray(Image.open(p))  # noqa: E731
    for pa, pb in zip(a['train'] + a['test'], b['train'] + b['test']):
        assert np.array_equal(load(pa), load(pb))
    assert not np.array_equal(load(a['val'][0]), load(a['test'][0]))
    assert not np.array_equal(load(a['train'][0]), load(c['train'][0]))
    (tmp_path / 'a' / 'img_dir' / 'test' / 'other.png').write_bytes(b'')
    with pytest.raises(FileExistsError, match='other.png'):
        T.make_dataset(str(tmp_path / 'a'), dict(test=1), seed=5)


def test_chance_miou_by_hand():
    # One class present: IoU of random guessing = (1/4) / (1 + 1/4 - 1/4) = 25 %.
    assert T.chance_miou([np.zeros((4, 4), np.uint8)]) == pytest.approx(25.0)
    # Four equal classes: (1/16) / (1/4 + 1/4 - 1/16) = 1/7 each; ignore pixels dropped.
    lab = np.array([[0, 1, 2, 3, 255]], np.uint8)
    assert T.chance_miou([lab]) == pytest.approx(100 / 7)
