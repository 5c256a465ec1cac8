"""The structural key scan: every form of the key and its permutations is found, and
ordinary numbers, hex digests and other keys are not."""
import json

import numpy as np
import pytest

from ppenc.leak_scan import (KeyScanner, data_contains_key, find_bytes_values, find_key_material,
                             text_contains_key)
from ppenc.keys import SecretKey

from key_encodings import generated_keys as _keys
from key_encodings import inverse_permutation as _inverse
from key_encodings import key_encodings
from key_encodings import permutation as _perm

# Covers control characters, quotes, backslashes and bytes above 0x7f.
KEY = SecretKey(bytes((i * 37 + 200) % 256 for i in range(32)))
OTHER = SecretKey(bytes(range(100, 132)))


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


# ---------------------------------------------------------------------------------------
# Detection measured on a generator of encodings: every class the scan claims, in layouts
# nobody listed one by one (random separators, cases, offsets, strides, wrappers).

N_KEYS = 12


@pytest.mark.parametrize('seed', range(N_KEYS))
def test_detection_on_generated_encodings(seed):
    """Every generated encoding of every key is found (100 % detection), and none of them
    is taken for another key's."""
    key, other = _keys(N_KEYS + 1)[seed], _keys(N_KEYS + 1)[-1]
    scanner, other_scanner = KeyScanner(key), KeyScanner(other)
    forms = key_encodings(key, seed)
    missed = []
    for name, form in forms.items():
        # As a log holds it, and as a config dump holds a string value (repr'd).
        for text in (f"model = dict(type='EncoderDecoder')\nnotes = {form}\nlr = 0.01\n",
                     f"model = dict(type='EncoderDecoder', notes={form!r})\n"):
            data = text.encode('utf-8', errors='surrogatepass')
            if not scanner.contains(data):
                missed.append(name)
            assert not other_scanner.contains(data), name
    assert missed == [], f'missed {len(missed)}/{len(forms)}: {missed}'


def test_pieces_shorter_than_64_bits_are_not_reported():
    """7 key bytes (56 bits) are below the leak threshold; 8 are a leak."""
    key = _keys(1)[0]
    assert not text_contains_key(key._key[3:10].hex(), key)
    assert text_contains_key(key._key[3:11].hex(), key)
    assert not text_contains_key(str([int(v) for v in _perm(key)[100:106]]), key)
    assert text_contains_key(str([int(v) for v in _perm(key)[100:107]]), key)


def _stock_config_texts():
    """The pretty-printed text of every config shipped in the installed mmsegmentation."""
    import glob
    import os.path as osp
    import mmseg
    from mmengine.config import Config
    root = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
    paths = sorted(glob.glob(osp.join(root, '**', '*.py'), recursive=True))
    paths = [p for p in paths if '_base_' not in p.split(osp.sep)]
    for path in paths:
        try:
            yield path, Config.fromfile(path).pretty_text
        except Exception:  # noqa: BLE001 - a few stock configs need optional packages
            yield path, open(path).read()


@pytest.mark.slow
def test_no_false_positives_on_stock_mmseg_configs():
    """Zero hits on every stock mmseg config (all block sizes of the model zoo)."""
    texts = list(_stock_config_texts())
    assert len(texts) > 500  # the whole model zoo, not a sample
    scanner = KeyScanner(_keys(1)[0], (8, 16, 32))
    hits = [path for path, text in texts if scanner.contains(text.encode())]
    assert hits == []
