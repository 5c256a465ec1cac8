"""Tests for the synthetic Cityscapes-layout generator and its command-line tool."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

# mmcv-lite has no compiled ops; the fallback must be installed before mmseg is imported.
import mmseg_ppenc.compat

mmseg_ppenc.compat.install_mmcv_ops_fallback()

from mmseg.datasets import CityscapesDataset  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from ppenc.synthetic import CITYSCAPES_CLASSES, make_synthetic_cityscapes  # noqa: E402

from conftest import REPO  # noqa: E402

REPO_ROOT = Path(REPO)
VALID_LABELS = set(range(19)) | {255}


def _files(root: Path) -> Dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def _load_split(root: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """All pixels of a split as (N, 3) float colours and (N,) labels."""
    colours, labels = [], []
    for img_path in sorted((root / 'leftImg8bit' / split).rglob('*_leftImg8bit.png')):
        rel = img_path.relative_to(root / 'leftImg8bit' / split)
        seg_path = (root / 'gtFine' / split / rel.parent /
                    rel.name.replace('_leftImg8bit.png', '_gtFine_labelTrainIds.png'))
        colours.append(np.asarray(Image.open(img_path), dtype=np.float64).reshape(-1, 3))
        labels.append(np.asarray(Image.open(seg_path)).ravel())
    return np.concatenate(colours), np.concatenate(labels)


def test_classes_match_mmseg() -> None:
    assert CITYSCAPES_CLASSES == tuple(CityscapesDataset.METAINFO['classes'])
    assert len(CITYSCAPES_CLASSES) == 19


@pytest.mark.parametrize('height,width', [(64, 128), (128, 256)])
def test_mmseg_cityscapes_dataset_reads_it(tmp_path: Path, height: int, width: int) -> None:
    register_all_modules()
    n_train, n_val = 5, 3
    info = make_synthetic_cityscapes(tmp_path, num_train=n_train, num_val=n_val,
                                     height=height, width=width, seed=1)
    assert info == {'train': n_train, 'val': n_val, 'height': height, 'width': width,
                    'root': str(tmp_path)}
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    for split, count in (('train', n_train), ('val', n_val)):
        ds = CityscapesDataset(
            data_root=str(tmp_path),
            data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'),
            pipeline=pipeline)
        assert len(ds) == count
        for i in range(len(ds)):
            sample = ds[i]
            assert sample['img'].shape == (height, width, 3)
            assert sample['img'].dtype == np.uint8
            seg = sample['gt_seg_map']
            assert seg.shape == (height, width)
            values = set(np.unique(seg).tolist())
            assert values <= VALID_LABELS
            assert 255 in values  # ignore pixels exist (ego vehicle)
            assert len(values - {255}) >= 5  # a scene, not a single region
            # Image file names follow the Cityscapes pattern.
            name = os.path.basename(sample['img_path'])
            city, seq, frame, _ = name.split('_')
            assert len(seq) == 6 and len(frame) == 6 and city.isalpha()


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kwargs = dict(num_train=3, num_val=2, height=64, width=128)
    make_synthetic_cityscapes(tmp_path / 'a', seed=7, **kwargs)
    make_synthetic_cityscapes(tmp_path / 'b', seed=7, **kwargs)
    make_synthetic_cityscapes(tmp_path / 'c', seed=8, **kwargs)
    a, b, c = (_files(tmp_path / d) for d in 'abc')
    assert len(a) == 2 * (3 + 2)
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith('_leftImg8bit.png')]
    assert all(a[k] != c[k] for k in images)


def test_val_images_do_not_depend_on_train_count(tmp_path: Path) -> None:
    make_synthetic_cityscapes(tmp_path / 'a', num_train=1, num_val=2, height=32, width=64)
    make_synthetic_cityscapes(tmp_path / 'b', num_train=4, num_val=2, height=32, width=64)
    val_a = {k: v for k, v in _files(tmp_path / 'a').items() if 'val' in Path(k).parts}
    val_b = {k: v for k, v in _files(tmp_path / 'b').items() if 'val' in Path(k).parts}
    assert val_a and val_a == val_b


def test_learnable_by_nearest_mean_colour(tmp_path: Path) -> None:
    make_synthetic_cityscapes(tmp_path, num_train=12, num_val=4, height=64, width=128)
    x_train, y_train = _load_split(tmp_path, 'train')
    x_val, y_val = _load_split(tmp_path, 'val')
    keep_t, keep_v = y_train != 255, y_val != 255
    x_train, y_train, x_val, y_val = x_train[keep_t], y_train[keep_t], x_val[keep_v], y_val[keep_v]

    present = np.unique(y_train)
    assert len(present) >= 10
    means = np.stack([x_train[y_train == c].mean(axis=0) for c in present])
    # Class mean colours are pairwise distinct (the generator spreads them >= ~60 apart).
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[~np.eye(len(present), dtype=bool)].min() > 20

    pred = present[((x_val[:, None, :] - means[None]) ** 2).sum(-1).argmin(axis=1)]
    accuracy = float((pred == y_val).mean())
    majority = np.bincount(y_train).argmax()
    baseline = float((y_val == majority).mean())
    # Measured: accuracy ~0.97 against a majority baseline ~0.23 (64x128, seed 0).
    assert accuracy > baseline + 0.4, (accuracy, baseline)
    assert accuracy > 0.8, accuracy


@pytest.mark.parametrize('kwargs,bad', [
    (dict(height=100), 'height=100'),
    (dict(width=250), 'width=250'),
    (dict(height=0), 'height=0'),
    (dict(width=-16), 'width=-16'),
])
def test_bad_sizes_raise(tmp_path: Path, kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad) as err:
        make_synthetic_cityscapes(tmp_path / 'out', num_train=1, num_val=1, **kwargs)
    assert 'multiple of 16' in str(err.value)
    assert not (tmp_path / 'out').exists()  # validated before anything is written


def test_size_error_suggests_valid_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='96 or 112'):
        make_synthetic_cityscapes(tmp_path, height=100)


def test_non_empty_out_dir_refused(tmp_path: Path) -> None:
    marker = tmp_path / 'keep.txt'
    marker.write_text('mine')
    with pytest.raises(FileExistsError, match='not empty'):
        make_synthetic_cityscapes(tmp_path, num_train=1, num_val=1, height=32, width=64)
    assert marker.read_text() == 'mine'
    assert not (tmp_path / 'leftImg8bit').exists()

    # overwrite=True writes alongside and deletes nothing.
    make_synthetic_cityscapes(tmp_path, num_train=1, num_val=1, height=32, width=64,
                              overwrite=True)
    assert marker.read_text() == 'mine'
    assert len(list((tmp_path / 'leftImg8bit').rglob('*.png'))) == 2


def test_tool_runs_as_subprocess(tmp_path: Path) -> None:
    out = tmp_path / 'synthetic'
    # Without PYTHONPATH, as a user would run it (the tool adds the repo root itself).
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [sys.executable, 'tools/make_synthetic_cityscapes.py', str(out), '--train', '4',
         '--val', '2', '--height', '64', '--width', '128'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and '4 train' in proc.stdout
    assert len(list((out / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))) == 4
    assert len(list((out / 'gtFine' / 'val').rglob('*_gtFine_labelTrainIds.png'))) == 2
    with Image.open(next((out / 'leftImg8bit' / 'val').rglob('*.png'))) as img:
        assert img.mode == 'RGB' and img.size == (128, 64)


def test_tool_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture,
                              load_tool) -> None:
    # In-process, because each subprocess pays the package import (mmseg) again.
    tool = load_tool('make_synthetic_cityscapes')
    assert tool.main([str(tmp_path / 'ok'), '--train', '1', '--val', '1', '--height', '32',
                      '--width', '64', '--seed', '3']) == 0
    assert '1 train + 1 val images of 32x64' in capsys.readouterr().out

    # Bad sizes and a non-empty directory are usage errors: exit 2 with the message.
    for argv, message in (([str(tmp_path / 'bad'), '--height', '100'], 'height=100'),
                          ([str(tmp_path / 'ok')], 'not empty')):
        with pytest.raises(SystemExit) as exc:
            tool.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / 'bad').exists()


def test_overwrite_warns_about_files_left_from_a_larger_run(tmp_path: Path) -> None:
    make_synthetic_cityscapes(tmp_path, num_train=4, num_val=1, height=32, width=64)
    with pytest.warns(UserWarning, match='6 image/label files from an earlier run'):
        make_synthetic_cityscapes(tmp_path, num_train=1, num_val=1, height=32, width=64,
                                  overwrite=True)
    assert len(list((tmp_path / 'leftImg8bit' / 'train').rglob('*.png'))) == 4  # kept
