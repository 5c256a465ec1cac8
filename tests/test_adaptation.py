"""The exact state-dict adaptation, at the level of the ViT backbone."""
import numpy as np
import pytest
import torch
from mmseg.models.backbones import VisionTransformer

from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
from mmseg_ppenc.adaptation import decrypt_vit_state_dict, encrypt_vit_state_dict, find_vit_prefix
from ppenc.cipher import encrypt_image
from ppenc.keys import SecretKey


def _vit(patch_norm=False, patch_bias=False, with_cls_token=False, embed=32, patch=16):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=patch, embed_dims=embed, num_layers=2,
                            num_heads=2, out_indices=(0, 1), with_cls_token=with_cls_token,
                            patch_norm=patch_norm, patch_bias=patch_bias,
                            interpolate_mode='bilinear')
    vit.init_weights()
    vit.eval()
    return vit


def _normalise(img, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    x = torch.from_numpy(img).permute(2, 0, 1).double()
    m = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    return ((x - m) / s).float()[None]


def _rel(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize('patch_norm,patch_bias', [(False, False), (False, True),
                                                   (True, True)])
@pytest.mark.parametrize('with_cls_token', [False, True])
@pytest.mark.parametrize('shape', [(64, 64), (64, 96)])  # 96 wide: pos_embed is resized
def test_encrypted_vit_on_encrypted_image_equals_plain(patch_norm, patch_bias,
                                                       with_cls_token, shape):
    key = SecretKey.generate()
    plain = _vit(patch_norm, patch_bias, with_cls_token)
    enc_model = _vit(patch_norm, patch_bias, with_cls_token)
    enc_model.load_state_dict(encrypt_vit_state_dict(plain.state_dict(), key))
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    with torch.no_grad():
        a = plain(_normalise(img))
        b = enc_model(_normalise(encrypt_image(img, key)))
        c = plain(_normalise(encrypt_image(img, key)))  # control: no adaptation
    for x, y, z in zip(a, b, c):
        assert _rel(x, y) < 1e-5
        assert _rel(x, z) > 1e-2


@pytest.mark.parametrize('mean,std', [((0., 0., 0.), (1., 1., 1.)),
                                      ((10., 200., 50.), (3., 90., 20.))])
def test_any_normalisation(mean, std):
    key = SecretKey.generate()
    plain = _vit()
    enc_model = _vit()
    enc_model.load_state_dict(encrypt_vit_state_dict(plain.state_dict(), key, mean, std))
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        a = plain(_normalise(img, mean, std))
        b = enc_model(_normalise(encrypt_image(img, key), mean, std))
    assert _rel(a[-1], b[-1]) < 1e-5


def test_naive_column_permutation_is_not_exact():
    """The research code's E[:, pi] is only approximate under per-channel normalisation."""
    key = SecretKey.generate()
    plain = _vit()
    naive = _vit()
    sd = plain.state_dict()
    w = sd['patch_embed.projection.weight']
    perm = torch.from_numpy(np.array(key.block_permutation(16)))
    sd['patch_embed.projection.weight'] = w.reshape(w.shape[0], -1)[:, perm].reshape(w.shape)
    naive.load_state_dict(sd)
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        a = plain(_normalise(img))[-1]
        b = naive(_normalise(encrypt_image(img, key)))[-1]
    assert _rel(a, b) > 1e-3


def test_only_embedding_changes_and_roundtrip():
    key = SecretKey.generate()
    sd = _vit().state_dict()
    enc = encrypt_vit_state_dict(sd, key)
    changed = {k for k in sd if not torch.equal(sd[k], enc[k])}
    assert changed == {'patch_embed.projection.weight', 'pos_embed'}
    assert torch.equal(enc['pos_embed'][:, 0], sd['pos_embed'][:, 0])  # cls slot
    back = decrypt_vit_state_dict(enc, key)
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=1e-6, atol=1e-6)
    # the input is not modified
    assert torch.equal(sd['patch_embed.projection.weight'],
                       _vit().state_dict()['patch_embed.projection.weight'])


def test_segmentor_prefix_and_stock_loading():
    key = SecretKey.generate()
    sd = {f'backbone.{k}': v for k, v in _vit().state_dict().items()}
    sd['decode_head.conv_seg.weight'] = torch.ones(3)
    assert find_vit_prefix(sd) == 'backbone.'
    enc = encrypt_vit_state_dict(sd, key)
    assert torch.equal(enc['decode_head.conv_seg.weight'], sd['decode_head.conv_seg.weight'])
    stock = _vit()
    missing, unexpected = stock.load_state_dict(
        {k[len('backbone.'):]: v for k, v in enc.items() if k.startswith('backbone.')},
        strict=True)
    assert not missing and not unexpected


def test_patch_norm_without_bias_is_refused():
    sd = _vit(patch_norm=True, patch_bias=False).state_dict()
    with pytest.raises(ValueError, match='patch_bias=True'):
        encrypt_vit_state_dict(sd, SecretKey.generate())


def test_other_patch_size_and_non_vit_state_dict():
    sd = _vit(patch=8).state_dict()
    enc = encrypt_vit_state_dict(sd, SecretKey.generate())  # 8x8 blocks: fine
    assert enc['patch_embed.projection.weight'].shape[-1] == 8
    with pytest.raises(KeyError, match='Unrecognised checkpoint layout'):
        encrypt_vit_state_dict({'foo': torch.zeros(1)}, SecretKey.generate())
