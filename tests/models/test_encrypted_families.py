"""The encrypted BEiT, MAE, Swin and Twins backbones: one adaptation for every backbone whose
first layer is a non-overlapping patch projection.

- exactness: with the same weights, the encrypted variant on encrypted images gives the
  stock model's features on plain images (1e-5 relative), for on-grid sizes;
- stock checkpoints load (same state-dict names and shapes), and the already-encrypted
  and wrong-block-size records are handled as for the ViT;
- overlapping stems and mismatched block sizes are refused with the reason;
- the stock backbones' own behaviour (construction arguments, ``init_cfg``/``pretrained``
  combinations, frozen stages, output shapes), re-checked on the encrypted variants with
  tiny models.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.dataset import Compose
from mmseg.models.backbones import (
    MAE,
    PCPVT,
    MixVisionTransformer,
    ResNetV1c,
    SwinTransformer,
    VisionTransformer,
)
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.adaptation import ProjectionSite, adapt_state_dict, vit_site
from mmseg_ppenc.core.checkpoint import patch_embed_digest, patch_embed_keys
from mmseg_ppenc.models import (
    EncryptedBackboneMixin,
    EncryptedBEiT,
    EncryptedMAE,
    EncryptedPCPVT,
    EncryptedSVT,
    EncryptedSwinTransformer,
    EncryptedVisionTransformer,
    bind_normalization,
    input_projection,
)
from mmseg_ppenc.start_checks import check_run
from mmseg_ppenc.transforms import BlockScramble
from ppenc.cipher import encrypt_image
from ppenc.errors import CheckpointReadError, ConfigError, InvalidKeyError
from ppenc.keys import KEY_ENV_VAR, SecretKey
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD, build_meta

from family_models import (
    BEIT_KW,
    BLOCK,
    FAMILIES,
    NO_PRETRAINED,
    NORM,
    SVT_KW,
    SWIN_KW,
    TWINS_KW,
    encrypted_model,
    normalise,
    plain_model,
    rel,
    save_state_dict,
)

register_all_modules(init_default_scope=True)
# The stock backbones' own warning for the deprecated ``pretrained=`` the tests pass.
pytestmark = pytest.mark.filterwarnings('ignore:DeprecationWarning. pretrained is deprecated')


@pytest.fixture(scope='module')
def key(session_key_file):
    return SecretKey.load(session_key_file)


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize('family', list(FAMILIES))
def test_encrypted_on_encrypted_equals_stock_onplain_model(family, key, session_key_file, tmp_path):
    stock, enc_cls, kw, shapes = FAMILIES[family]
    plain = plain_model(stock, kw)
    if family in NO_PRETRAINED:
        enc = enc_cls(**kw, key_file=session_key_file)
        enc.load_state_dict(adapt_state_dict(plain.state_dict(), key, enc.projection_site))
        enc.eval()
    else:
        enc = encrypted_model(enc_cls, kw, save_state_dict(plain, tmp_path / 'plain.pth'),
                              session_key_file)
    block = BLOCK[family.split('_')[0]]
    assert enc.block_size == enc.patch_size == block
    rng = np.random.default_rng(0)
    for shape in shapes:
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        scrambled = encrypt_image(img, key, block)
        with torch.no_grad():
            want = plain(normalise(img))
            got = enc(normalise(scrambled))
            unadapted = plain(normalise(scrambled))
        assert len(want) == len(got) == len(kw['out_indices'])
        for a, b, c in zip(want, got, unadapted):
            assert a.shape == b.shape
            assert rel(a, b) <= 1e-5, (family, shape)
            assert rel(a, c) > 1e-2  # control: the adaptation is what makes it exact


@pytest.mark.parametrize('family', ['beit', 'mae', 'swin', 'pcpvt', 'svt'])
def test_only_the_input_projection_changes(family, session_key_file, tmp_path):
    stock, enc_cls, kw, _ = FAMILIES[family]
    plain = plain_model(stock, kw)
    enc = encrypted_model(enc_cls, kw, save_state_dict(plain, tmp_path / 'plain.pth'),
                          session_key_file)
    a, b = plain.state_dict(), enc.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    site = enc.projection_site
    assert changed == {site.weight, site.offset}
    assert site.offset.endswith('projection.bias')  # all four have a projection bias
    if family in ('pcpvt', 'svt'):
        assert site.weight == 'patch_embeds.0.projection.weight'  # later stages untouched


def test_segmentor_with_encrypted_swin_equalsplain_model(key, session_key_file, tmp_path):
    """UperNet-style segmentor through the data preprocessor: the encrypted Swin, bound to
    the preprocessor's normalisation, gives the plain segmentor's logits."""
    def seg(backbone_type):
        cfg = dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', **NORM, bgr_to_rgb=False,
                                   pad_val=0, seg_pad_val=255),
            backbone=dict(type=backbone_type, **SWIN_KW),
            decode_head=dict(type='UPerHead', in_channels=[32, 64], in_index=[0, 1],
                             pool_scales=(1, 2), channels=16, num_classes=3,
                             norm_cfg=dict(type='BN', requires_grad=True),
                             align_corners=False),
            train_cfg=dict(), test_cfg=dict(mode='whole'))
        if backbone_type != 'SwinTransformer':
            cfg['backbone']['key_file'] = session_key_file
        return MODELS.build(cfg)

    torch.manual_seed(0)
    plain = seg('SwinTransformer')
    plain.init_weights()
    enc = seg('EncryptedSwinTransformer')
    enc.load_state_dict(plain.state_dict())  # stock segmentor weights load as they are
    torch.save({'state_dict': plain.backbone.state_dict()}, str(tmp_path / 'b.pth'))
    enc.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(tmp_path / 'b.pth'))
    bind_normalization(enc)
    enc.backbone.init_weights()
    assert enc.backbone.norm_mean == tuple(IMAGENET_MEAN)
    img = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)

    def logits(model, array):
        data = model.data_preprocessor(
            dict(inputs=[torch.from_numpy(array).permute(2, 0, 1).contiguous()]), False)
        model.eval()
        with torch.no_grad():
            return model._forward(data['inputs'])

    assert rel(logits(plain, img), logits(enc, encrypt_image(img, key, 4))) <= 1e-5


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('family', ['beit', 'mae', 'swin', 'swin_abs_pos', 'pcpvt', 'svt'])
def test_stock_state_dict_loads_with_identical_keys(family, session_key_file):
    stock, enc_cls, kw, _ = FAMILIES[family]
    plain = stock(**kw)
    enc = enc_cls(**kw, key_file=session_key_file)
    assert isinstance(enc, stock) and isinstance(enc, EncryptedBackboneMixin)
    a, b = plain.state_dict(), enc.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    enc.load_state_dict(a, strict=True)


@pytest.mark.parametrize('family', ['swin', 'pcpvt'])
def test_already_encrypted_checkpoint_is_loaded_as_is(family, key, session_key_file,
                                                      tmp_path):
    stock, enc_cls, kw, _ = FAMILIES[family]
    plain = plain_model(stock, kw)
    enc = encrypted_model(enc_cls, kw, save_state_dict(plain, tmp_path / 'plain.pth'),
                          session_key_file)
    sd = enc.state_dict()
    weight = sd[enc.projection_site.weight]
    path = str(tmp_path / 'enc.pth')
    rec = build_meta(key.fingerprint, 4, key.flip_compatible, list(IMAGENET_MEAN),
                     list(IMAGENET_STD), patch_embed_sha256=patch_embed_digest(weight))
    torch.save({'state_dict': sd, 'meta': {'ppenc': rec}}, path)
    again = encrypted_model(enc_cls, kw, path, session_key_file)
    assert torch.equal(again.state_dict()[enc.projection_site.weight], weight)
    # A second init_weights() does not encrypt twice.
    again.init_weights()
    assert torch.equal(again.state_dict()[enc.projection_site.weight], weight)

    # A record of 16-pixel blocks does not fit a patch-4 backbone.
    rec16 = dict(rec, block_size=16)
    torch.save({'state_dict': sd, 'meta': {'ppenc': rec16}}, path)
    with pytest.raises(InvalidKeyError, match='block size 16, but this model uses 4-pixel'):
        encrypted_model(enc_cls, kw, path, session_key_file)
    # A record of another key is refused.
    torch.save({'state_dict': sd, 'meta': {'ppenc': dict(rec, key_fingerprint='0' * 16)}},
               path)
    with pytest.raises(InvalidKeyError, match='0' * 16):
        encrypted_model(enc_cls, kw, path, session_key_file)


def test_twins_input_projection_is_the_digested_patch_embedding():
    sd = {'backbone.patch_embeds.0.projection.weight': torch.zeros(1),
          'backbone.patch_embeds.1.projection.weight': torch.zeros(1),
          'backbone.patch_embed.projection.weight': torch.zeros(1)}
    assert patch_embed_keys(sd) == ['backbone.patch_embeds.0.projection.weight',
                                    'backbone.patch_embed.projection.weight']


def test_adaptation_round_trip_and_vit_site(key, session_key_file):
    """adapt_state_dict is the one implementation (the ViT path uses it too), and its
    inverse restores the weights."""
    plain = plain_model(SwinTransformer, SWIN_KW).state_dict()
    site = ProjectionSite('patch_embed.projection.weight', 'patch_embed.projection.bias')
    enc = adapt_state_dict(plain, key, site)
    back = adapt_state_dict(enc, key, site, inverse=True)
    for k in plain:
        assert torch.allclose(back[k], plain[k], atol=1e-6), k
    vit = VisionTransformer(img_size=32, embed_dims=32, num_layers=1, num_heads=2)
    ev = EncryptedVisionTransformer(img_size=32, embed_dims=32, num_layers=1, num_heads=2,
                                    key_file=session_key_file)
    assert ev.projection_site == vit_site(vit.state_dict()) == ProjectionSite(
        'patch_embed.projection.weight', 'pos_embed', offset_skip=1)


# --------------------------------------------------------------------------- refusals
def test_overlapping_stems_are_refused():
    for model, where in ((MixVisionTransformer(embed_dims=8, num_stages=1, num_layers=[1],
                                               num_heads=[1], patch_sizes=[7], strides=[4],
                                               sr_ratios=[1], out_indices=(0,)),
                          'layers.0.0.projection'),
                         (ResNetV1c(depth=18), 'stem.0')):
        with pytest.raises(ConfigError, match=rf'input layer {where} is Conv2d.*'
                                              r'so its patches overlap.*Overlapping stems'):
            input_projection(model)


def test_overlapping_twins_stem_is_refused(session_key_file):
    kw = dict(TWINS_KW, patch_sizes=[7, 2])
    PCPVT(**kw)  # stock mmseg accepts it (an overlapping 7x7 stride-4 stem) ...
    with pytest.raises(ConfigError, match=r'EncryptedPCPVT cannot be adapted exactly.*'
                                          r'kernel \(7, 7\) differs from its stride \(4, 4\)'):
        EncryptedPCPVT(**kw, key_file=session_key_file)  # ... the encrypted variant not


def test_patch_size_must_be_the_block_size(session_key_file):
    from mmengine.config import Config

    from mmseg_ppenc.start_checks import _block_sizes
    swin = SwinTransformer(**SWIN_KW)
    assert input_projection(swin, block_size=4).block_size == 4
    with pytest.raises(ConfigError, match='its kernel 4 differs from the block size 16'):
        input_projection(swin, block_size=16)
    # The config scan looks for the permutation of Twins' block size too.
    cfg = Config(dict(model=dict(backbone=dict(type='EncryptedPCPVT', patch_sizes=[4, 2]))))
    assert _block_sizes(cfg) == (4, 16)


def test_other_input_channels_are_refused(session_key_file):
    with pytest.raises(ConfigError, match='4 input channels, not 3'):
        EncryptedSwinTransformer(**SWIN_KW, in_channels=4, key_file=session_key_file)


def test_block_size_other_than_patch_size_is_refused(session_key_file, key):
    """The start checks and KeyManagementHook compare BlockScramble's block size with the
    backbone's patch size, which Swin and Twins get from their input projection; the
    checkpoint record states it."""
    from mmseg_ppenc.hooks import KeyManagementHook
    hook = KeyManagementHook(key_file=session_key_file)
    for enc_cls, kw in ((EncryptedSwinTransformer, SWIN_KW), (EncryptedSVT, SVT_KW)):
        model = torch.nn.Module()
        model.backbone = enc_cls(**kw, key_file=session_key_file, **NORM)
        for block in (4, 16):
            ds = SimpleNamespace(pipeline=Compose(
                [BlockScramble(key_file=session_key_file, block_size=block)]))
            runner = SimpleNamespace(model=model, train_loop=SimpleNamespace(
                dataloader=SimpleNamespace(dataset=ds)))
            if block == 4:
                hook._check_components(runner, ('train',))
                checkpoint = {}
                hook.before_save_checkpoint(runner, checkpoint)
                assert checkpoint['meta']['ppenc']['block_size'] == 4
                assert checkpoint['meta']['ppenc']['key_fingerprint'] == key.fingerprint
                continue
            match = ('train_pipeline.BlockScramble uses block size 16, but the backbone '
                     'patch size is 4: set block_size=4')
            with pytest.raises(InvalidKeyError, match=match):
                check_run(model, [('train', ds)])
            with pytest.raises(InvalidKeyError, match=match):
                hook._check_components(runner, ('train',))


def test_key_file_defaults_to_the_environment(monkeypatch, session_key_file, key):
    monkeypatch.setenv(KEY_ENV_VAR, session_key_file)
    assert EncryptedMAE(**BEIT_KW).key_fingerprint == key.fingerprint
    monkeypatch.delenv(KEY_ENV_VAR)
    with pytest.raises(Exception, match='keygen'):
        EncryptedMAE(**BEIT_KW)


def test_normalisation_is_needed_for_pretrained_weights(session_key_file, tmp_path):
    ckpt = save_state_dict(plain_model(PCPVT, TWINS_KW), tmp_path / 'p.pth')
    model = EncryptedPCPVT(**TWINS_KW, key_file=session_key_file,
                           init_cfg=dict(type='Pretrained', checkpoint=ckpt))
    with pytest.raises(ConfigError, match='EncryptedPCPVT does not know the normalisation'):
        model.init_weights()
    with pytest.raises(ConfigError, match='give both mean and std'):
        EncryptedPCPVT(**TWINS_KW, key_file=session_key_file, mean=IMAGENET_MEAN)


def test_random_start_is_not_adapted(session_key_file):
    torch.manual_seed(1)
    ref = SwinTransformer(**SWIN_KW)
    ref.init_weights()
    torch.manual_seed(1)
    enc = EncryptedSwinTransformer(**SWIN_KW, key_file=session_key_file)
    enc.init_weights()
    assert torch.equal(ref.patch_embed.projection.weight, enc.patch_embed.projection.weight)


# --------------------------------------------------------------------------- stock behaviour
# The checks of mmseg's own backbone tests (tests/test_models/test_backbones/test_beit.py,
# test_mae.py, test_swin.py, test_twins.py), on the encrypted variants with tiny models:
# the stock arguments keep their meaning and their errors.
MISSING = 'PATH_THAT_DOES_NOT_EXIST.pth'


def _check_init_combinations(enc_cls, kw, key_file):
    """The ``pretrained``/``init_cfg`` combinations of the stock backbones."""
    model = enc_cls(**kw, key_file=key_file, pretrained=None, init_cfg=None)
    assert model.init_cfg is None
    model.init_weights()
    pre = dict(type='Pretrained', checkpoint=MISSING)
    for args in (dict(init_cfg=pre), dict(pretrained=MISSING)):
        model = enc_cls(**kw, key_file=key_file, **NORM, **args)
        assert model.init_cfg == pre
        # Stock mmseg raises OSError from its loader; the file is read (and refused,
        # naming it) before anything is loaded.
        with pytest.raises(CheckpointReadError, match=f'{MISSING} does not exist'):
            model.init_weights()
    with pytest.raises(TypeError):
        enc_cls(**kw, key_file=key_file, pretrained=123)
    for args in (dict(pretrained=MISSING, init_cfg=pre), dict(pretrained=MISSING, init_cfg=123),
                 dict(pretrained=123, init_cfg=pre), dict(pretrained=123, init_cfg=123)):
        with pytest.raises(AssertionError):
            enc_cls(**kw, key_file=key_file, **args)


@pytest.mark.parametrize('enc_cls', [EncryptedBEiT, EncryptedMAE])
def test_beit_mae_arguments(enc_cls, session_key_file):
    kw = dict(BEIT_KW, key_file=session_key_file)
    with pytest.raises(TypeError):
        enc_cls(**dict(kw, img_size=32.0))
    with pytest.raises(TypeError):
        enc_cls(**dict(kw, out_indices=1.))
    with pytest.raises(AssertionError):
        enc_cls(**dict(kw, img_size=(32, 32, 32)))
    imgs = torch.randn(1, 3, 32, 32)
    for img_size in ((32,), (32, 32)):
        model = enc_cls(**dict(kw, img_size=img_size))
        model.init_weights()
        assert model(imgs)[-1].shape == (1, 32, 2, 2)
    model = enc_cls(**dict(kw, norm_eval=True))
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    model = enc_cls(**dict(kw, out_indices=[0, 1]))
    model.train()
    assert [f.shape for f in model(imgs)] == [(1, 32, 2, 2)] * 2
    for h, w in ((32, 32), (32, 64), (64, 48)):
        model = enc_cls(**dict(kw, img_size=(h, w)))
        model.init_weights()
        model.train()
        assert model(torch.randn(1, 3, h, w))[-1].shape == (1, 32, h // 16, w // 16)
    for extra in (dict(init_values=0), dict(final_norm=True), dict(patch_norm=True)):
        assert enc_cls(**dict(kw, **extra))(imgs)[-1].shape == (1, 32, 2, 2)
    if enc_cls is EncryptedBEiT:
        assert EncryptedBEiT(**dict(kw, qv_bias=False))(imgs)[-1].shape == (1, 32, 2, 2)
    else:
        # MAE resizes a checkpoint's absolute position embedding to its own size.
        model = enc_cls(**dict(kw, img_size=(64, 64)))
        sd = model.resize_abs_pos_embed({'pos_embed': torch.rand(1, 5, 32)})
        assert sd['pos_embed'].shape == model.pos_embed.shape


@pytest.mark.parametrize('enc_cls', [EncryptedBEiT, EncryptedMAE])
def test_beit_mae_init(enc_cls, session_key_file):
    _check_init_combinations(enc_cls, BEIT_KW, session_key_file)
    model = enc_cls(**BEIT_KW, key_file=session_key_file, init_cfg=123)
    with pytest.raises(TypeError):
        model.init_weights()


def test_swin_arguments(session_key_file):
    kw = dict(SWIN_KW, key_file=session_key_file)
    with pytest.raises(AssertionError):  # non-overlapping patch embed: stride = patch size
        EncryptedSwinTransformer(**dict(kw, strides=(2, 2)))
    with pytest.raises(AssertionError):
        EncryptedSwinTransformer(**dict(kw, pretrain_img_size=(32, 32, 32)))
    EncryptedSwinTransformer(**dict(kw, pretrain_img_size=(32,)))
    imgs = torch.randn(1, 3, 32, 32)
    model = EncryptedSwinTransformer(**dict(kw, use_abs_pos_embed=True, pretrain_img_size=32))
    model.init_weights()
    assert model(imgs)[0].shape == (1, 32, 8, 8)
    assert EncryptedSwinTransformer(**dict(kw, patch_norm=False))(imgs)[0].shape == (1, 32, 8, 8)
    model = EncryptedSwinTransformer(**kw)
    # On the grid and off it (the stock backbone pads the bottom right; encrypted runs
    # keep inputs on the grid, which the start checks enforce).
    for (h, w), shapes in (((64, 64), [(16, 16), (8, 8)]), ((63, 63), [(16, 16), (8, 8)]),
                           ((28, 37), [(7, 10), (4, 5)])):
        outs = model(torch.randn(1, 3, h, w))
        assert [tuple(o.shape) for o in outs] == [(1, 32, *shapes[0]), (1, 64, *shapes[1])]


def test_swin_frozen_stages(session_key_file):
    model = EncryptedSwinTransformer(**SWIN_KW, key_file=session_key_file, frozen_stages=1)
    model.train()
    assert not model.patch_embed.training
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not model.stages[0].training and not model.norm0.training
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert model.stages[1].training
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_swin_init(session_key_file):
    with pytest.raises(TypeError):
        EncryptedSwinTransformer(**SWIN_KW, key_file=session_key_file, pretrained=123)
    model = EncryptedSwinTransformer(**SWIN_KW, key_file=session_key_file, **NORM,
                                     pretrained=MISSING)
    assert model.init_cfg == dict(type='Pretrained', checkpoint=MISSING)
    with pytest.raises(CheckpointReadError, match=f'{MISSING} does not exist'):
        model.init_weights()


@pytest.mark.parametrize('enc_cls,kw', [(EncryptedPCPVT, TWINS_KW), (EncryptedSVT, SVT_KW)],
                         ids=['pcpvt', 'svt'])
def test_twins_outputs(enc_cls, kw, session_key_file):
    h, w = 64, 96
    for extra in (dict(qkv_bias=True, norm_after_stage=False), dict(norm_after_stage=True)):
        model = enc_cls(**kw, **extra, key_file=session_key_file)
        model.init_weights()
        outs = model(torch.randn(1, 3, h, w))
        assert [tuple(o.shape) for o in outs] == [(1, 32, h // 4, w // 4),
                                                  (1, 64, h // 8, w // 8)]
    # Four stages, as the stock defaults (only the first patch embedding is adapted).
    model = enc_cls(**dict(kw, embed_dims=[16, 16, 32, 32], patch_sizes=[4, 2, 2, 2],
                           strides=[4, 2, 2, 2], num_heads=[1, 1, 2, 2],
                           mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 1, 1],
                           sr_ratios=[4, 2, 1, 1], out_indices=(0, 1, 2, 3),
                           **({'windiow_sizes': [4, 4, 4, 4]} if enc_cls is EncryptedSVT
                              else {})),
                    key_file=session_key_file)
    assert model.projection_site.weight == 'patch_embeds.0.projection.weight'
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


@pytest.mark.parametrize('enc_cls,kw', [(EncryptedPCPVT, TWINS_KW), (EncryptedSVT, SVT_KW)],
                         ids=['pcpvt', 'svt'])
def test_twins_init(enc_cls, kw, session_key_file):
    _check_init_combinations(enc_cls, kw, session_key_file)
    model = enc_cls(**kw, key_file=session_key_file, init_cfg=123)
    with pytest.raises(TypeError):
        model.init_weights()


def test_model_block_size_of_stock_backbones():
    """A keyless server runs encrypted weights in the stock class, which for Swin and
    Twins stores no patch size: the block size is read off the input projection."""
    from mmseg_ppenc.apis import model_block_size
    for backbone, block in ((SwinTransformer(**SWIN_KW), 4), (PCPVT(**TWINS_KW), 4),
                            (MAE(**BEIT_KW), 16), (ResNetV1c(depth=18), 16)):
        model = torch.nn.Module()
        model.backbone = backbone
        assert model_block_size(model) == block
