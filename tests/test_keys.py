"""Keys: derivation (golden vectors), key files, fingerprints, no leakage."""
import hashlib
import hmac
import os
import pickle
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from ppenc.keys import (ALLOW_OPEN_KEY_ENV_VAR, KEY_ENV_VAR, InvalidKeyError, SecretKey,
                        mirror_index, resolve_key)

GOLDEN_KEY = bytes(range(32))


def _spec_permutation(key: bytes, label: str, n: int) -> list:
    """Independent transcription of the documented derivation (keys.py docstring)."""
    def words():
        counter = 0
        while True:
            block = hmac.new(key, f'mmseg_ppenc/perm/v1/{label}'.encode() +
                             struct.pack('>I', counter), hashlib.sha256).digest()
            counter += 1
            yield from struct.unpack('>8I', block)

    w = words()
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - (2**32 % bound)
        while True:
            x = next(w)
            if x < limit:
                break
        j = x % bound
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _digest(perm: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(perm, dtype='<i8').tobytes()).hexdigest()


class TestGoldenVectors:
    """Pinned values: a change here breaks every encrypted dataset in the field."""

    def test_fingerprint(self):
        assert SecretKey(GOLDEN_KEY).fingerprint == '820d9ba0c0760ddd'

    def test_small_permutation(self):
        assert SecretKey(GOLDEN_KEY).permutation(10, 'golden').tolist() == \
            [7, 8, 6, 1, 3, 9, 0, 4, 5, 2]

    def test_block_permutation(self):
        p = SecretKey(GOLDEN_KEY).block_permutation(16)
        assert p[:12].tolist() == [595, 306, 706, 284, 323, 432, 112, 343, 292, 373, 354,
                                   511]
        assert _digest(p) == \
            '2e578d7fc208b14a71dbb7c0034092d86170c78fce0222b027cf49d2862087e7'

    def test_flip_compatible_block_permutation(self):
        p = SecretKey(GOLDEN_KEY, flip_compatible=True).block_permutation(16)
        assert _digest(p) == \
            'a1ebbaaa086b442c087bac7b3800a1b65bb57b1820f49a9970429dfb65d59b15'

    @pytest.mark.parametrize('n,label', [(10, 'golden'), (768, 'block/c3/b16'),
                                         (192, 'block/c3/b8'), (1, 'x')])
    def test_matches_specification(self, n, label):
        assert SecretKey(GOLDEN_KEY).permutation(n, label).tolist() == \
            _spec_permutation(GOLDEN_KEY, label, n)

    def test_same_in_fresh_process(self):
        code = ('from ppenc.keys import SecretKey;'
                'print(SecretKey(bytes(range(32))).block_permutation(16)[:5].tolist())')
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == '[595, 306, 706, 284, 323]'


@pytest.mark.parametrize('block_size', [2, 8, 16])
@pytest.mark.parametrize('flip', [False, True])
def test_block_permutation_is_a_permutation(block_size, flip):
    key = SecretKey.generate(flip_compatible=flip)
    p = key.block_permutation(block_size)
    n = 3 * block_size * block_size
    assert sorted(p.tolist()) == list(range(n))
    assert not np.array_equal(p, np.arange(n))
    if flip:
        m = mirror_index(block_size)
        # pi commutes with the in-block mirror M: pi[M[k]] == M[pi[k]]
        np.testing.assert_array_equal(p[m], m[p])


def test_plain_keys_do_not_commute_with_mirror():
    m = mirror_index(16)
    p = SecretKey.generate().block_permutation(16)
    assert not np.array_equal(p[m], m[p])


def test_different_keys_and_labels_differ():
    a, b = SecretKey.generate(), SecretKey.generate()
    assert a.fingerprint != b.fingerprint
    assert not np.array_equal(a.block_permutation(16), b.block_permutation(16))
    assert not np.array_equal(a.permutation(768, 'x'), a.permutation(768, 'y'))


class TestKeyFiles:

    def test_roundtrip_and_mode(self, tmp_path):
        key = SecretKey.generate(flip_compatible=True)
        path = tmp_path / 'k.key'
        key.save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        loaded = SecretKey.load(path)
        assert loaded == key and loaded.flip_compatible
        assert loaded.fingerprint == key.fingerprint

    def test_refuses_overwrite(self, tmp_path):
        path = tmp_path / 'k.key'
        SecretKey.generate().save(path)
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match='refusing to overwrite'):
            SecretKey.generate().save(path)
        assert path.read_bytes() == before

    @pytest.mark.parametrize('damage,match', [
        (lambda b: b[:-5], 'truncated'),
        (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], 'checksum'),
        (lambda b: b'hello world, not a key' * 3, 'not an mmseg_ppenc key file'),
        (lambda b: b[:8] + b'\x09' + b[9:], 'format version 9'),
    ])
    def test_corrupt_files(self, tmp_path, damage, match):
        path = tmp_path / 'k.key'
        key = SecretKey.generate()
        key.save(path)
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(InvalidKeyError, match=match) as info:
            SecretKey.load(path)
        assert key._key.hex() not in str(info.value)

    def test_missing_file_says_how_to_make_one(self, tmp_path):
        with pytest.raises(InvalidKeyError, match='tools/keygen.py'):
            SecretKey.load(tmp_path / 'nope.key')

    def test_wrong_length_bytes(self):
        with pytest.raises(InvalidKeyError, match='32 bytes'):
            SecretKey(b'short')


class TestResolve:

    def test_env_var(self, tmp_path, monkeypatch):
        path = tmp_path / 'k.key'
        key = SecretKey.generate()
        key.save(path)
        monkeypatch.setenv(KEY_ENV_VAR, str(path))
        assert resolve_key(None) == key
        assert resolve_key(str(path)) == key

    def test_nothing_selected(self, monkeypatch):
        monkeypatch.delenv(KEY_ENV_VAR, raising=False)
        with pytest.raises(InvalidKeyError, match=f'{KEY_ENV_VAR} is not set'):
            resolve_key(None)

    @pytest.mark.parametrize('mode', [0o644, 0o640, 0o604, 0o620, 0o602])
    def test_file_open_to_others_is_refused(self, tmp_path, monkeypatch, mode):
        monkeypatch.delenv(ALLOW_OPEN_KEY_ENV_VAR, raising=False)
        path = tmp_path / 'k.key'
        key = SecretKey.generate()
        key.save(path)
        resolve_key(str(path))  # cached while it is 0600...
        os.chmod(path, mode)
        for load in (resolve_key, SecretKey.load):  # ...and refused once it is not
            with pytest.raises(InvalidKeyError, match=rf'mode {mode:o}, expected 600.*'
                               rf'chmod 600.*{ALLOW_OPEN_KEY_ENV_VAR}=1'):
                load(str(path))
        monkeypatch.setenv(ALLOW_OPEN_KEY_ENV_VAR, '1')
        with pytest.warns(UserWarning, match='chmod 600'):
            assert resolve_key(str(path)) == key
        monkeypatch.delenv(ALLOW_OPEN_KEY_ENV_VAR)
        with pytest.warns(UserWarning, match='accepted because'):
            assert SecretKey.load(str(path), allow_open=True) == key

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize('through_symlink', [False, True])
    def test_fifo_is_refused_without_hanging(self, tmp_path, through_symlink):
        fifo = tmp_path / 'k.fifo'
        os.mkfifo(fifo, 0o600)
        path = fifo
        if through_symlink:
            path = tmp_path / 'k.key'
            os.symlink(fifo, path)
        with pytest.raises(InvalidKeyError, match='is a FIFO, expected a regular key file'):
            resolve_key(str(path))


def test_repr_and_errors_hide_key_material():
    key = SecretKey.generate()
    text = repr(key) + str(key)
    assert key.fingerprint in text
    for form in key.material_forms():
        assert form.decode('latin-1') not in text
    with pytest.raises(TypeError, match='not picklable'):
        pickle.dumps(key)


def test_keygen_tool(tmp_path):
    out = tmp_path / 'sub' / 'new.key'
    res = subprocess.run([sys.executable, 'tools/keygen.py', str(out), '--flip-compatible'],
                         capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    key = SecretKey.load(out)
    assert key.flip_compatible
    assert key.fingerprint in res.stdout
    assert key._key.hex() not in res.stdout + res.stderr
    again = subprocess.run([sys.executable, 'tools/keygen.py', str(out)],
                           capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    assert again.returncode != 0 and 'refusing to overwrite' in again.stderr
    assert SecretKey.load(out) == key


@pytest.mark.parametrize('link', ['symlink to a file', 'dangling symlink', 'hard link'])
def test_key_save_never_writes_through_a_link(tmp_path, link):
    target = tmp_path / 'precious.bin'
    out = tmp_path / 'new.key'
    if link == 'dangling symlink':
        os.symlink(target, out)
    else:
        target.write_bytes(b'precious')
        (os.symlink if link == 'symlink to a file' else os.link)(target, out)
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        SecretKey.generate().save(out)
    if link == 'dangling symlink':
        assert not target.exists()
    else:
        assert target.read_bytes() == b'precious'
