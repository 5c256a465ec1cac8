"""BlockScramble in mmseg pipelines."""
import pickle

import cv2
import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile
from mmseg.registry import TRANSFORMS

from ppenc.cipher import encrypt_image
from ppenc.keys import SecretKey
from mmseg_ppenc.transforms import BlockScramble


def _results(img, seg=None):
    r = {'img': img, 'img_shape': img.shape[:2], 'seg_fields': []}
    if seg is not None:
        r['gt_seg_map'] = seg
        r['seg_fields'].append('gt_seg_map')
    return r


@pytest.mark.parametrize('shape', [(32, 32), (64, 128)])
def test_equals_loading_an_offline_encrypted_file(key_env, tmp_path, shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = str(tmp_path / 'enc.png')
    cv2.imwrite(path, np.ascontiguousarray(encrypt_image(rgb, key_env)[..., ::-1]))
    offline = LoadImageFromFile()({'img_path': path})['img']
    t = TRANSFORMS.build(dict(type='BlockScramble'))
    inline = t(_results(np.ascontiguousarray(rgb[..., ::-1])))['img']
    assert inline.dtype == np.uint8 and np.array_equal(inline, offline)


def test_labels_untouched(key_env):
    img = np.zeros((32, 48, 3), np.uint8)
    seg = np.random.default_rng(1).integers(0, 19, (32, 48), dtype=np.uint8)
    out = BlockScramble()(_results(img, seg.copy()))
    assert np.array_equal(out['gt_seg_map'], seg)


def test_pad_to_grid(key_env):
    img = np.full((30, 40, 3), 7, np.uint8)
    seg = np.ones((30, 40), np.uint8)
    out = BlockScramble(pad_to_grid=True)(_results(img, seg))
    assert out['img'].shape == (32, 48, 3) and out['img_shape'] == (32, 48)
    assert (out['gt_seg_map'][30:] == 255).all() and (out['gt_seg_map'][:, 40:] == 255).all()
    assert (out['gt_seg_map'][:30, :40] == 1).all()


def test_off_grid_error_names_file_and_fix(key_env):
    r = _results(np.zeros((30, 40, 3), np.uint8))
    r['img_path'] = 'some/city_leftImg8bit.png'
    with pytest.raises(ValueError, match=r'city_leftImg8bit.png.*30x40.*pad_to_grid'):
        BlockScramble()(r)


def test_repr_shows_fingerprint_not_key(key_env):
    text = repr(BlockScramble(block_size=16))
    assert 'block_size=16' in text and key_env.fingerprint in text
    assert key_env._key.hex() not in text


def test_explicit_key_file_and_pickling(tmp_path, key_env):
    path = tmp_path / 'other.key'
    other = SecretKey.generate()
    other.save(path)
    t = BlockScramble(key_file=str(path))
    assert t.key_fingerprint == other.fingerprint != key_env.fingerprint
    data = pickle.dumps(t)
    assert other._key not in data and bytes(other.block_permutation(16)) not in data
    img = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    t2 = pickle.loads(data)
    assert np.array_equal(t2(_results(img.copy()))['img'], t(_results(img.copy()))['img'])


def test_missing_key(monkeypatch):
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    with pytest.raises(ValueError, match='PPENC_KEY_FILE is not set'):
        BlockScramble()
