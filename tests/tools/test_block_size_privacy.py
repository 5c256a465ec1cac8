"""tools/analyze_block_sizes.py: thumbnail leakage and the two attacks at block sizes 4, 8
and 16 on the same images (``--quick``: small images, real code)."""
import inspect
import json
import math

import numpy as np
import pytest

from conftest import load_tool
from mmseg_ppenc.security.known_plaintext import known_plaintext_attack
from ppenc.cipher import encrypt_image
from ppenc.keys import SecretKey

bsp = load_tool('analysis/block_size_privacy')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """One ``--quick`` run: (JSON result, Markdown document)."""
    out = tmp_path_factory.mktemp('block_sizes')
    rc = bsp.main(['--quick', '--out', str(out / 'r.json'), '--md', str(out / 'r.md')])
    assert rc == 0
    return json.loads((out / 'r.json').read_text()), (out / 'r.md').read_text()


def _image(h=64, w=128, seed=0):
    """Smooth random content with noise: distinct values, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 100 + 60 * np.sin(x / 9.0 + seed)[..., None] + 40 * np.cos(y / 7.0)[..., None]
    img = base + np.array([0, 20, -20]) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_4x4_thumbnail_has_16_times_the_pixels_of_a_16x16_one(quick):
    img = _image()
    t4, t16 = bsp.ciphertext_thumbnail(img, 4), bsp.ciphertext_thumbnail(img, 16)
    assert t4.shape == (16, 32) and t16.shape == (4, 8)
    assert t4.size == 16 * t16.size
    res, _ = quick
    px = {b: r['thumbnail']['pixels'] for b, r in res['block_sizes'].items()}
    assert px['4'] == 16 * px['16'] and px['8'] == 4 * px['16']


def test_the_thumbnail_is_read_from_the_ciphertext_without_a_key():
    assert list(inspect.signature(bsp.ciphertext_thumbnail).parameters) == [
        'image', 'block_size']
    img = _image()
    right, wrong = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
    for b in (4, 8, 16):
        e1, e2 = encrypt_image(img, right, b), encrypt_image(img, wrong, b)
        assert not np.array_equal(e1, e2)
        plain_thumb = bsp.ciphertext_thumbnail(img, b)
        # Whatever the key, the ciphertext gives the plain image's thumbnail...
        np.testing.assert_array_equal(bsp.ciphertext_thumbnail(e1, b), plain_thumb)
        np.testing.assert_array_equal(bsp.ciphertext_thumbnail(e2, b), plain_thumb)
        # ... which is the image's own, not a constant of the method.
        assert not np.array_equal(bsp.ciphertext_thumbnail(_image(seed=1), b), plain_thumb)


def test_the_json_has_every_block_size_with_its_fields(quick):
    res, _ = quick
    assert set(res['block_sizes']) == {'4', '8', '16'}
    counts = sorted(res['config']['coa_counts'])
    for b, r in res['block_sizes'].items():
        b = int(b)
        assert r['positions'] == 3 * b * b and r['key_space'] == f'{3 * b * b}!'
        bits = sum(math.log2(k) for k in range(1, 3 * b * b + 1))
        assert r['key_space_log2'] == pytest.approx(bits, rel=1e-9)
        th = r['thumbnail']
        assert th['shape'] == [res['config']['height'] // b, res['config']['width'] // b]
        assert th['max_abs_diff'] == 0.0
        assert -1.0 <= r['leakage']['thumb_ssim'] <= 1.0
        assert -1.0 <= r['leakage']['ssim_luma'] <= 1.0
        assert r['leakage']['psnr'] > 0
        assert [row['images'] for row in r['ciphertext_only']] == counts
        for row in r['ciphertext_only']:
            assert 0.0 <= row['exact'] <= 1.0 and row['blocks'] == row['images'] * (
                r['known_plaintext']['blocks_per_image'])
        kp = r['known_plaintext']
        assert set(kp['random_blocks']) == {'determined', 'exact'}
        assert kp['draws'] == res['config']['kpa_draws']
        assert kp['images_needed'] is not None
    assert res['block_sizes']['4']['key_space'] == '48!'


def test_one_known_block_does_not_determine_a_16x16_key(quick):
    """768 positions, 256 byte values: one block cannot tell every position apart."""
    res, _ = quick
    kp16 = res['block_sizes']['16']['known_plaintext']
    assert kp16['one_block_determined'] < 1.0
    assert kp16['first_image_in_reading_order']['determined'] >= 2
    lo = kp16['random_blocks']['determined']['min']
    assert lo is None or lo >= 2


def test_blocks_needed_is_the_smallest_sufficient_count():
    """The reported count works and one block fewer does not (real attack, b = 4 and 16)."""
    key = SecretKey(bytes(range(32)))
    img = _image()
    for b in (4, 16):
        enc = encrypt_image(img, key, b)
        rows, cols = img.shape[0] // b, img.shape[1] // b
        where = np.array([(0, y, x) for y in range(rows) for x in range(cols)])
        pairs = bsp.known_blocks([img], [enc], b, where)
        found = bsp.blocks_needed(pairs, key.block_permutation(b), b)
        n = found['determined']
        assert n is not None and 1 <= found['exact'] <= n
        assert known_plaintext_attack(pairs[:n], b).fraction_determined == 1.0
        if n > 1:
            assert known_plaintext_attack(pairs[:n - 1], b).fraction_determined < 1.0
        np.testing.assert_array_equal(known_plaintext_attack(pairs[:n], b).perm,
                                      key.block_permutation(b))


def test_first_sufficient_bisects():
    calls = []

    def at_least(k):
        def ok(n):
            calls.append(n)
            return n >= k
        return ok

    assert bsp.first_sufficient(at_least(7), 100) == 7
    assert max(calls) <= 8  # doubling stops at the first success
    assert bsp.first_sufficient(at_least(1), 100) == 1
    assert bsp.first_sufficient(at_least(6), 5) is None
    assert bsp.first_sufficient(at_least(5), 5) == 5


def test_the_document_holds_the_tables_and_the_command(quick):
    res, md = quick
    assert res['command'].startswith('python tools/analyze_block_sizes.py --quick')
    assert res['command'] in md
    for b in ('4×4', '8×8', '16×16'):
        assert f'| {b} |' in md
    assert '48! ≈ 2^203' in md


def test_a_size_that_a_block_size_does_not_tile_is_refused(tmp_path, capsys):
    rc = bsp.main(['--quick', '--size', '60', '120', '--out', str(tmp_path / 'r.json')])
    assert rc == 2
    assert 'not a multiple of block size 8' in capsys.readouterr().err
    assert not (tmp_path / 'r.json').exists()
