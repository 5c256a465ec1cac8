"""The block cipher on numpy arrays and torch tensors."""
import numpy as np
import pytest
import torch

from ppenc.cipher import (BlockCipher, decrypt_image, decrypt_tensor, encrypt_image, encrypt_tensor,
                          get_cipher)
from ppenc.keys import SecretKey


@pytest.fixture(scope='module')
def key():
    return SecretKey(bytes(range(1, 33)))


def _reference_encrypt(img: np.ndarray, perm: np.ndarray, b: int) -> np.ndarray:
    """Straight from the definition: loop over blocks, flatten (c, y, x), permute."""
    h, w, _ = img.shape
    out = np.empty_like(img)
    for by in range(0, h, b):
        for bx in range(0, w, b):
            block = img[by:by + b, bx:bx + b].transpose(2, 0, 1).reshape(-1)
            out[by:by + b, bx:bx + b] = block[perm].reshape(3, b, b).transpose(1, 2, 0)
    return out


@pytest.mark.parametrize('block_size', [4, 8, 16])
@pytest.mark.parametrize('shape', [(32, 32), (48, 64), (16, 96)])
def test_matches_definition_and_roundtrips(key, block_size, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    enc = encrypt_image(img, key, block_size)
    perm = key.block_permutation(block_size)
    np.testing.assert_array_equal(enc, _reference_encrypt(img, perm, block_size))
    assert not np.array_equal(enc, img)
    np.testing.assert_array_equal(decrypt_image(enc, key, block_size), img)


def test_values_stay_within_their_block(key):
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16, :16] = 255  # one bright block
    enc = encrypt_image(img, key)
    assert enc[:16, :16].min() == 255 and enc[16:].max() == 0 and enc[:, 16:].max() == 0


def test_shuffles_across_channels(key):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 255  # red only
    enc = encrypt_image(img, key)
    assert enc[..., 1].any() and enc[..., 2].any()
    assert (enc == 255).sum() == 256


def test_bgr_view_equals_rgb_ciphertext(key):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    cipher = get_cipher(key)
    enc_bgr = cipher.encrypt(np.ascontiguousarray(rgb[..., ::-1]), channel_order='bgr')
    np.testing.assert_array_equal(enc_bgr[..., ::-1], encrypt_image(rgb, key))
    np.testing.assert_array_equal(cipher.decrypt(enc_bgr, channel_order='bgr'),
                                  rgb[..., ::-1])


@pytest.mark.parametrize('bad,match', [
    (np.zeros((30, 32, 3), np.uint8), r'is 30x32 pixels, off the 16-pixel block grid'),
    (np.zeros((32, 32, 4), np.uint8), r'shape \(32, 32, 4\).*H x W x 3'),
    (np.zeros((32, 32), np.uint8), r'shape \(32, 32\)'),
    (np.zeros((32, 32, 3), np.float32), 'dtype float32'),
])
def test_bad_input_errors(key, bad, match):
    with pytest.raises(ValueError, match=match):
        encrypt_image(bad, key)


def test_index_maps_are_cached(key):
    cipher = BlockCipher(key, 16)
    img = np.zeros((32, 64, 3), np.uint8)
    cipher.encrypt(img)
    m = cipher.index_map(32, 64)
    cipher.encrypt(img)
    assert cipher.index_map(32, 64) is m
    assert not m.flags.writeable


@pytest.mark.parametrize('n', [1, 3])
def test_tensor_matches_numpy(key, n):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    enc = encrypt_tensor(x, key)
    for i in range(n):
        np.testing.assert_array_equal(enc[i].permute(1, 2, 0).numpy(),
                                      encrypt_image(imgs[i], key))
    assert torch.equal(decrypt_tensor(enc, key), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_tensor_on_gpu(key):
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(encrypt_tensor(x.cuda(), key).cpu(), encrypt_tensor(x, key))


def test_tensor_bad_input(key):
    with pytest.raises(ValueError, match='uint8'):
        encrypt_tensor(torch.zeros(1, 3, 16, 16), key)
    with pytest.raises(ValueError, match=r'multiples of 16.*\(1, 3, 20, 16\)'):
        encrypt_tensor(torch.zeros(1, 3, 20, 16, dtype=torch.uint8), key)


def test_other_key_does_not_decrypt(key):
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    enc = encrypt_image(img, key)
    assert not np.array_equal(decrypt_image(enc, SecretKey.generate()), img)
