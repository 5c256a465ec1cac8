"""mmseg_ppenc.core: the grid rules, the checkpoint meta record and the keyed protocol."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmseg_ppenc.core import checkpoint, keyed
from ppenc import errors, grid
from ppenc import meta as record


@pytest.mark.parametrize('value,block,expected', [
    (341, 16, (336, 352)), (512, 16, (512, 512)), (8, 16, (16, 16)), (33, 8, (32, 40)),
    (100, 14, (98, 112))])
def test_nearest_on_grid(value, block, expected):
    lo, hi = grid.nearest_on_grid(value, block)
    assert (lo, hi) == expected
    assert lo % block == 0 and hi % block == 0 and lo <= max(value, block) <= hi


def test_check_on_grid_messages_name_setting_and_fix():
    problems = grid.check_on_grid({'model.test_cfg.stride': (341, 341),
                                   'model.test_cfg.crop_size': (512, 512)}, 16)
    assert problems == ['model.test_cfg.stride=(341, 341) is off the 16-pixel block grid, '
                        'so windows would cut blocks apart: use 336 or 352']
    two = grid.check_on_grid({'crop': (30, 50)}, 16)[0]
    assert 'for 30 use 16 or 32' in two and 'for 50 use 48 or 64' in two
    assert grid.check_on_grid({'stride': 0}, 16)  # not positive
    assert grid.slide_problems(dict(mode='whole', stride=(3, 3)), 16) == []
    assert grid.slide_problems(dict(mode='slide', crop_size=(64, 64), stride=(40, 40)),
                               16)[0].startswith('model.test_cfg.stride=(40, 40)')


@pytest.mark.parametrize('shape', [(30, 50), (30, 50, 3), (32, 48, 3)])
@pytest.mark.parametrize('block', [8, 16])
def test_pad_to_grid(shape, block):
    arr = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = grid.pad_to_grid(arr, block, 7)
    ph, pw = grid.grid_pad(shape[0], shape[1], block)
    assert out.shape[:2] == (shape[0] + ph, shape[1] + pw)
    assert out.shape[0] % block == 0 and out.shape[1] % block == 0
    assert np.array_equal(out[:shape[0], :shape[1]], arr)
    assert (out[shape[0]:] == 7).all() and (out[:, shape[1]:] == 7).all()
    if not (ph or pw):
        assert out is arr


def test_to_pair_refuses_bad_values():
    assert grid.to_pair(5) == (5, 5) and grid.to_pair([3, 4]) == (3, 4)
    for bad in (True, (1, 2, 3), 'a', (1.5, 2)):
        with pytest.raises(ValueError, match='must be an int or a pair of ints'):
            grid.to_pair(bad, 'crop_size')


def test_meta_build_read_check(tmp_path):
    rec = record.build_meta('abcd', 16, True, (1, 2, 3), (4, 5, 6))
    assert rec['cipher'] == record.CIPHER_NAME and rec['block_size'] == 16
    assert rec['mean'] == [1.0, 2.0, 3.0] and rec['flip_compatible'] is True
    path = tmp_path / 'c.pth'
    torch.save({'state_dict': {}, 'meta': {'ppenc': rec}}, path)
    assert checkpoint.read_checkpoint_meta(str(path)) == rec
    # One error policy: a missing file is named, not mistaken for one without a record.
    with pytest.raises(errors.CheckpointReadError, match=r'missing\.pth does not exist'):
        checkpoint.read_checkpoint_meta(str(tmp_path / 'missing.pth'))
    assert checkpoint.read_checkpoint_meta('https://example.org/remote.pth') is None
    assert record.check_meta(rec, 'abcd', block_size=16) is True
    with pytest.raises(errors.InvalidKeyError, match='made for key abcd, but this run uses '
                                                     'key ef01'):
        record.check_meta(rec, 'ef01')
    with pytest.raises(errors.InvalidKeyError, match='block size 16.*8-pixel'):
        record.check_meta(rec, 'abcd', block_size=8)
    with pytest.raises(errors.InvalidKeyError, match='records no key.*Do this'):
        record.check_meta(None, 'abcd', missing_fix='Do this.')
    assert record.check_meta(None, 'abcd', allow_missing=True) is False
    with pytest.raises(errors.ConfigError):
        record.check_meta(None, 'abcd', error=errors.KeylessPipelineError)


def test_normalization_record_is_checked():
    rec = record.build_meta('abcd', 16, False, (123.675, 116.28, 103.53),
                          (58.395, 57.12, 57.375))
    record.check_normalization(rec, [123.67500305, 116.27999878, 103.52999878],
                             [58.39500046, 57.11999893, 57.375])  # float32 round trip
    with pytest.raises(errors.InvalidKeyError, match=r'mean=\[123.675.*mean=\[127.5'):
        record.check_normalization(rec, (127.5,) * 3, (127.5,) * 3)
    record.check_normalization(record.build_meta('abcd', 16), (127.5,) * 3, (127.5,) * 3)


def test_keyed_protocol_is_by_type_not_attribute():
    class Records:  # records a fingerprint but holds no key
        key_fingerprint = 'abcd'
        block_size = 16

    class Uses(keyed.KeyedComponent):
        key_fingerprint = 'abcd'
        block_size = 16

    assert not keyed.is_keyed(Records()) and keyed.is_keyed(Uses())
    from mmseg_ppenc.transforms import BlockScramble, GridRandomCrop
    assert issubclass(BlockScramble, keyed.KeyedComponent)
    assert not issubclass(GridRandomCrop, keyed.KeyedComponent)


def test_errors_are_value_errors_and_one_family():
    for cls in (errors.ConfigError, errors.InvalidKeyError, errors.KeylessPipelineError,
                errors.GridError, errors.ModelEncryptionError,
                errors.DatasetEncryptionError):
        assert issubclass(cls, errors.PpencError) and issubclass(cls, ValueError)
    from ppenc import keys
    assert keys.InvalidKeyError is errors.InvalidKeyError


def test_core_imports_without_torch_or_mmseg():
    code = ('import sys; import ppenc.meta, ppenc.grid, ppenc.keys, ppenc.cipher, '
            'ppenc.dataset; '
            'bad = [m for m in ("torch", "mmseg", "mmengine", "mmcv") if m in sys.modules]; '
            'print(bad)')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == '[]'
