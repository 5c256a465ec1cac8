"""Texture mosaics of the miniature Table I (tools/analysis/textures.py)."""
import os
import os.path as osp
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import textures as T  # noqa: E402


@pytest.mark.parametrize('size', [(64, 64), (64, 128), (96, 160)])
def test_labels_follow_the_gratings(size):
    """Every labelled pixel belongs to a region drawn with its class's grating: the
    region's dominant spatial frequency is the class's."""
    rng = np.random.default_rng(1)
    for _ in range(3):
        img, label = T.render_labelled(*size, rng)
        assert img.shape == size + (3,) and img.dtype == np.uint8
        assert label.shape == size and set(np.unique(label)) <= set(range(T.NUM_CLASSES))
        for c in np.unique(label):
            theta, period = T.CLASSES[c]
            # Project the region's grey values onto the class's grating direction: the
            # spectrum along it peaks at the class period.
            mask = label == c
            if mask.sum() < 400:
                continue
            yy, xx = np.nonzero(mask)
            # The grating runs along a random colour direction: take the region's
            # principal colour axis.
            pix = img[mask].astype(np.float64)
            pix -= pix.mean(0)
            grey = pix @ np.linalg.eigh(pix.T @ pix)[1][:, -1]
            t = np.deg2rad(theta)
            pos = xx * np.cos(t) + yy * np.sin(t)
            periods = np.array([3.0, 4.0, 6.0, 8.0, 12.0])
            power = [abs(np.sum(grey * np.exp(-2j * np.pi * pos / p))) for p in periods]
            assert periods[int(np.argmax(power))] == period, (c, power)


def test_colour_carries_no_class_information():
    """A nearest-class-mean-colour classifier is near chance (1 / NUM_CLASSES)."""
    rng = np.random.default_rng(2)
    train = [T.render_labelled(64, 128, rng) for _ in range(40)]
    test = [T.render_labelled(64, 128, rng) for _ in range(20)]
    sums = np.zeros((T.NUM_CLASSES, 3))
    counts = np.zeros(T.NUM_CLASSES)
    for img, lab in train:
        for c in range(T.NUM_CLASSES):
            m = lab == c
            sums[c] += img[m].sum(0)
            counts[c] += m.sum()
    means = sums / np.maximum(counts, 1)[:, None]
    correct = total = 0
    for img, lab in test:
        d = ((img[:, :, None, :].astype(np.float64) - means[None, None]) ** 2).sum(-1)
        correct += int((d.argmin(-1) == lab).sum())
        total += lab.size
    assert correct / total < 1.0 / T.NUM_CLASSES + 0.08, correct / total


def test_pretraining_bins():
    """Fine-tuning orientations are bin centres; periods fall into log-spaced bins."""
    centres = np.arange(T.NUM_ORIENT_BINS) * 180.0 / T.NUM_ORIENT_BINS
    np.testing.assert_array_equal(T.orientation_bin(centres), np.arange(T.NUM_ORIENT_BINS))
    np.testing.assert_array_equal(T.orientation_bin(np.array([179.0, 0.0])), [0, 0])
    lo, hi = T.PERIOD_RANGE
    edges = np.exp(np.linspace(np.log(lo), np.log(hi), T.NUM_PERIOD_BINS + 1))
    mids = np.sqrt(edges[:-1] * edges[1:])
    np.testing.assert_array_equal(T.period_bin(mids), np.arange(T.NUM_PERIOD_BINS))
    imgs, ob, pb = T.sample_pretrain_batch(np.random.default_rng(0), 4, (64, 64))
    assert imgs.shape == (4, 64, 64, 3) and ob.max() < T.NUM_ORIENT_BINS
    assert pb.max() < T.NUM_PERIOD_BINS and len(np.unique(ob)) > 1


def test_dataset_is_deterministic_and_refuses_foreign_files(tmp_path):
    a = T.make_texture_dataset(str(tmp_path / 'a'), 3, 2, seed=5)
    b = T.make_texture_dataset(str(tmp_path / 'b'), 4, 2, seed=5)
    assert [os.path.basename(p) for p in a['train']] == ['00000.png', '00001.png',
                                                          '00002.png']
    for pa, pb in zip(a['train'] + a['val'], b['train'][:3] + b['val']):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    lab = np.asarray(Image.open(tmp_path / 'a' / 'ann_dir' / 'val' / '00000.png'))
    assert lab.dtype == np.uint8 and lab.max() < T.NUM_CLASSES
    # A rerun into the same root is fine; a stray image would be read as data: refused.
    T.make_texture_dataset(str(tmp_path / 'a'), 3, 2, seed=5)
    (tmp_path / 'a' / 'img_dir' / 'train' / 'other.png').write_bytes(b'')
    with pytest.raises(FileExistsError, match='other.png'):
        T.make_texture_dataset(str(tmp_path / 'a'), 3, 2, seed=5)
