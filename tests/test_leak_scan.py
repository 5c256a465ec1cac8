"""The structural key scan: every form of the key and its permutations is found, and
ordinary numbers, hex digests and other keys are not."""
import json

import numpy as np
import pytest

from mmseg_ppenc.leak_scan import (data_contains_key, find_bytes_values, find_key_material,
                                   text_contains_key)
from mmseg_ppenc.keys import SecretKey

# Covers control characters, quotes, backslashes and bytes above 0x7f.
KEY = SecretKey(bytes((i * 37 + 200) % 256 for i in range(32)))
OTHER = SecretKey(bytes(range(100, 132)))


def _perm(key):
    return [int(v) for v in key.block_permutation(16)]


def _inverse(key):
    return [int(v) for v in np.argsort(key.block_permutation(16))]


# Each form renders the key (or its permutation) as a user might paste it into a config.
FORMS = {
    'bytes literal': lambda k: repr(k._key),
    'bytes literal in json': lambda k: json.dumps({'notes': repr(k._key)}),
    'latin-1 string': lambda k: k._key.decode('latin-1'),
    'latin-1 string repr': lambda k: repr(k._key.decode('latin-1')),
    'latin-1 string in json': lambda k: json.dumps(k._key.decode('latin-1')),
    'decimal list': lambda k: str(list(k._key)),
    'decimal, spaces': lambda k: ' '.join(str(b) for b in k._key),
    'decimal, one per line': lambda k: ',\n        '.join(str(b) for b in k._key),
    'hex ints': lambda k: str([hex(b) for b in k._key]),
    'hex, colons': lambda k: ':'.join(f'{b:02x}' for b in k._key),
    'hex, spaces upper': lambda k: ' '.join(f'{b:02X}' for b in k._key),
    'hex, dashes': lambda k: '-'.join(f'{b:02x}' for b in k._key),
    'half the key, hex': lambda k: k._key[:16].hex(),
    'permutation': lambda k: str(_perm(k)),
    'permutation, middle part': lambda k: ' '.join(map(str, _perm(k)[300:320])),
    'permutation in hex': lambda k: ', '.join(hex(v) for v in _perm(k)),
    'inverse permutation': lambda k: str(_inverse(k)),
}


@pytest.mark.parametrize('form', sorted(FORMS))
def test_every_form_is_found(form):
    text = 'lr = 0.01\nnotes = ' + FORMS[form](KEY) + '\nmax_iters = 400\n'
    assert text_contains_key(text, KEY)
    assert not text_contains_key(text, OTHER)  # what is found is this key, not noise


def test_ordinary_run_files_are_clean(tmp_path):
    """Logs full of numbers, shapes, sha256 digests and timestamps are not key material."""
    rng = np.random.default_rng(0)
    lines = [json.dumps({'iter': i, 'loss': float(rng.random()), 'shape': [1, 3, 64, 64],
                         'lr': 1e-4, 'sha256': f'{rng.integers(1 << 62):064x}'})
             for i in range(2000)]
    lines.append(str(list(range(768))))  # the identity is no key's permutation
    (tmp_path / 'scalars.json').write_text('\n'.join(lines))
    assert find_key_material([str(tmp_path)], KEY) == []


def test_files_and_fifos(tmp_path):
    import os
    (tmp_path / 'a.log').write_text('x = ' + ':'.join(f'{b:02x}' for b in KEY._key))
    os.mkfifo(tmp_path / 'pipe')  # must be skipped, not read (it would block)
    assert find_key_material([str(tmp_path)], KEY) == [str(tmp_path / 'a.log')]


def test_binary_file_with_raw_key():
    assert data_contains_key(b'\x00\x01PK' + KEY._key + b'\xff', KEY)


def test_bytes_values_are_located():
    from mmengine.config import Config
    cfg = Config(dict(a=1, model=dict(backbone=dict(k=b'xx')), hooks=[dict(), b'y']))
    assert find_bytes_values(cfg) == ['model.backbone.k', 'hooks[1]']
    assert find_bytes_values(Config(dict(a='text', b=[1, 2]))) == []
