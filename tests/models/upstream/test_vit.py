"""mmseg's ViT backbone checks, on the stock class and on the plugin's ViT variants.

Source: open-mmlab/mmsegmentation, ``tests/test_models/test_backbones/test_vit.py`` at
v1.2.2 (release commit c685fe6, the installed mmseg; the file is unchanged there since
0.x). Upstream is Copyright (c) OpenMMLab, licensed under Apache-2.0. This file restates
upstream's checks in its own code (every upstream assertion has its counterpart here,
same arguments, inputs and expected results unless listed below); it does not copy
upstream's test code.

Classes under test, each check parametrised over them: ``VisionTransformer`` (stock),
``FastVisionTransformer`` and ``EncryptedVisionTransformer`` (the key comes from
``$PPENC_KEY_FILE``, see ``conftest.py``).

Changes from upstream, and why:

1. Structure: upstream's two long functions are split into one test per check (bad
   arguments, tuple ``img_size``, input sizes, options, cls token, encoder layer,
   ``init_cfg``), so a failure names the check and the class.
2. Sizes: ViT-B's width and heads (``embed_dims=768, num_heads=12``) become
   ``embed_dims=32, num_heads=2`` in every construction, and the expected channel count
   768 becomes 32, because about 20 ViT-B builds and forwards per class take minutes on
   a CPU. Depth (12 layers), patch size, image sizes and every spatial shape are
   upstream's. The ``TransformerEncoderLayer`` check keeps upstream's sizes.
3. ``patch_norm=True``: the encrypted variant refuses it at construction
   (``ConfigError``, "Set patch_bias=True"), because mmseg's ViT has no projection bias
   by default and the key's offset cannot go past the norm. The stock classes keep
   upstream's expectation; the encrypted class expects the refusal, and upstream's
   output shape is checked on it with the documented fix ``patch_bias=True``.
4. ``init_cfg``/``pretrained`` with a checkpoint that does not exist: stock classes
   expect upstream's ``OSError``; the encrypted class, given ``mean``/``std``, expects
   ``CheckpointReadError`` naming the file (it reads and checks the checkpoint before
   loading), and without them its refusal for an unknown normalisation (``utils.py``).
5. The ``TransformerEncoderLayer`` ``with_cp`` check also runs on the plugin's
   ``FusedTransformerEncoderLayer`` (both ``impl`` values), the layer the fast and
   encrypted ViTs are built with.
6. Added (not in upstream): ``frozen_exclude``. mmseg 1.2.2's ViT takes it but upstream
   does not test it; ``test_vit_frozen_exclude`` checks mmseg's rule (a parameter stays
   trainable iff its name contains an entry; ``['all']``, the default, freezes nothing)
   on every ViT class and every ``attn_impl``, that frozen parameters get no gradient,
   and that the encrypted variant's adaptation of pre-trained weights keeps the freezing.
"""
import pytest
import torch
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer

from mmseg_ppenc.models import EncryptedVisionTransformer, FastVisionTransformer
from mmseg_ppenc.models.attention import ATTN_IMPLS, FusedTransformerEncoderLayer
from ppenc.errors import ConfigError

from .utils import NORM, check_init_combinations, check_norm_state, class_id, is_encrypted

pytestmark = [
    pytest.mark.filterwarnings('ignore:DeprecationWarning. pretrained is deprecated'),
    pytest.mark.filterwarnings('ignore:torch.utils.checkpoint. the use_reentrant parameter'),
]

VITS = [VisionTransformer, FastVisionTransformer, EncryptedVisionTransformer]
each_vit = pytest.mark.parametrize('vit_cls', VITS, ids=class_id)

# Change 2: ViT-B's width and heads made small; depth, patch and image sizes kept.
SMALL = dict(embed_dims=32, num_heads=2)
C = SMALL['embed_dims']  # upstream: 768


def _vit(vit_cls, **kw):
    return vit_cls(**SMALL, **kw)


# case: (expected error, what is done with the class)
BAD_ARGUMENTS = {
    'init_weights_takes_no_pretrained': (
        TypeError, lambda cls: _vit(cls).init_weights(pretrained=0)),
    'img_size_float': (TypeError, lambda cls: _vit(cls, img_size=512.0)),
    'out_indices_float': (TypeError, lambda cls: _vit(cls, out_indices=1.)),
    'resize_pos_embed_arguments': (
        TypeError,
        lambda cls: cls.resize_pos_embed(torch.randn(1, 196), 512, 512, 224, 224, 'bilinear')),
    'img_size_three_values': (AssertionError, lambda cls: _vit(cls, img_size=(224, 224, 224))),
    'pretrained_int': (TypeError, lambda cls: _vit(cls, pretrained=123)),
    'output_cls_token_without_cls_token': (
        AssertionError, lambda cls: _vit(cls, with_cls_token=False, output_cls_token=True)),
}


@each_vit
@pytest.mark.parametrize('case', list(BAD_ARGUMENTS))
def test_vit_bad_arguments(vit_cls, case):
    error, action = BAD_ARGUMENTS[case]
    with pytest.raises(error):
        action(vit_cls)


@each_vit
def test_vit_tuple_img_size_and_norm_eval(vit_cls):
    imgs = torch.randn(1, 3, 224, 224)
    model = _vit(vit_cls, img_size=(224,))
    model.init_weights()
    model(imgs)
    model = _vit(vit_cls, img_size=(224, 224))
    model(imgs)
    model = _vit(vit_cls, norm_eval=True)
    model.train()


@each_vit
def test_vit_output_follows_input_size(vit_cls):
    """One 224-pixel model, fed larger, smaller, unbalanced and off-grid inputs (the
    position embedding is resized; ``patch_pad='corner'`` pads off-grid inputs)."""
    model = _vit(vit_cls)
    model.init_weights()
    model.train()
    assert check_norm_state(model.modules(), True)
    for (h, w), grid in (((224, 224), (14, 14)), ((256, 256), (16, 16)), ((32, 32), (2, 2)),
                         ((224, 224), (14, 14)), ((112, 224), (7, 14)),
                         ((234, 345), (15, 22))):
        feat = model(torch.randn(1, 3, h, w))
        assert feat[-1].shape == (1, C, *grid), (h, w)


@each_vit
@pytest.mark.parametrize('option', [dict(with_cp=True), dict(with_cls_token=False),
                                    dict(final_norm=True)], ids=lambda o: next(iter(o)))
def test_vit_option_keeps_output_shape(vit_cls, option):
    model = _vit(vit_cls, **option)
    feat = model(torch.randn(1, 3, 224, 224))
    assert feat[-1].shape == (1, C, 14, 14)


@each_vit
def test_vit_patch_norm(vit_cls):
    imgs = torch.randn(1, 3, 224, 224)
    if is_encrypted(vit_cls):
        # Change 3: refused without a projection bias; upstream's shape with the fix.
        with pytest.raises(ConfigError, match='Set patch_bias=True'):
            _vit(vit_cls, patch_norm=True)
        model = _vit(vit_cls, patch_norm=True, patch_bias=True)
    else:
        model = _vit(vit_cls, patch_norm=True)
    feat = model(imgs)
    assert feat[-1].shape == (1, C, 14, 14)


@each_vit
def test_vit_output_cls_token(vit_cls):
    model = _vit(vit_cls, with_cls_token=True, output_cls_token=True)
    feat = model(torch.randn(1, 3, 224, 224))
    assert feat[0][0].shape == (1, C, 14, 14)
    assert feat[0][1].shape == (1, C)


@pytest.mark.parametrize('impl', [None, *ATTN_IMPLS], ids=lambda i: (
    f'FusedTransformerEncoderLayer-{i}' if i else 'TransformerEncoderLayer'))
def test_vit_encoder_layer_with_cp(impl):
    kw = dict(embed_dims=64, num_heads=4, feedforward_channels=256, with_cp=True)
    if impl is None:
        block = TransformerEncoderLayer(**kw)
    else:
        block = FusedTransformerEncoderLayer(**kw, attn_cfg=dict(impl=impl))
    assert block.with_cp
    x_out = block(torch.randn(1, 56 * 56, 64))
    assert x_out.shape == torch.Size([1, 56 * 56, 64])


@each_vit
def test_vit_init(vit_cls):
    check_init_combinations(vit_cls, **SMALL)


# --------------------------------------------------------------------- change 6: added
# Every attn_impl the plugin's ViTs take.
VITS_WITH_IMPL = [(VisionTransformer, None)] + [
    (cls, impl) for cls in (FastVisionTransformer, EncryptedVisionTransformer)
    for impl in ATTN_IMPLS]
each_vit_and_impl = pytest.mark.parametrize(
    'vit_cls,attn_impl', VITS_WITH_IMPL,
    ids=[c.__name__ + (f'-{i}' if i else '') for c, i in VITS_WITH_IMPL])
FROZEN_EXCLUDE = {
    'default': None,  # mmseg's default ['all']
    'all': ['all'],
    'nothing': [],
    'pos_embed': ['pos_embed'],
    # Some attention parameters frozen and some not, the patch embedding trainable.
    'mixed': ['ffn', 'ln', 'layers.1.attn', 'patch_embed'],
}
TINY = dict(img_size=32, embed_dims=32, num_layers=3, num_heads=2, mlp_ratio=2)


def _trainable_by_rule(names, exclude):
    """mmseg's ``VisionTransformer._freeze``, as its docstring states it."""
    if exclude is None or 'all' in exclude:
        return {n: True for n in names}
    return {n: any(e in n for e in exclude) for n in names}


def _built(vit_cls, attn_impl, **kw):
    return vit_cls(**kw) if attn_impl is None else vit_cls(**kw, attn_impl=attn_impl)


@each_vit_and_impl
@pytest.mark.parametrize('exclude', list(FROZEN_EXCLUDE))
def test_vit_frozen_exclude(vit_cls, attn_impl, exclude):
    frozen_exclude = FROZEN_EXCLUDE[exclude]
    kw = dict(TINY) if frozen_exclude is None else dict(TINY, frozen_exclude=frozen_exclude)
    torch.manual_seed(0)
    model = _built(vit_cls, attn_impl, **kw)
    model.init_weights()
    model.train()
    got = {n: p.requires_grad for n, p in model.named_parameters()}
    assert got == _trainable_by_rule(list(got), frozen_exclude)
    assert got == {n: p.requires_grad for n, p in VisionTransformer(**kw).named_parameters()}

    out = model(torch.randn(2, 3, 32, 32))[-1]
    if not any(got.values()):
        assert not out.requires_grad
        return
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == got[name], name


@pytest.mark.parametrize('attn_impl', ATTN_IMPLS)
def test_encrypted_vit_frozen_exclude_with_pretrained_weights(attn_impl, tmp_path):
    """The adaptation rewrites the (frozen) patch embedding and position embedding of
    the loaded weights: they stay frozen, the rest is loaded as it is."""
    kw = dict(TINY, frozen_exclude=['ffn', 'layers.1.attn'])
    torch.manual_seed(0)
    plain = VisionTransformer(**TINY)
    plain.init_weights()
    path = str(tmp_path / 'vit.pth')
    torch.save({'state_dict': plain.state_dict()}, path)
    model = EncryptedVisionTransformer(**kw, **NORM, attn_impl=attn_impl,
                                       init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    want = {n: p.requires_grad for n, p in VisionTransformer(**kw).named_parameters()}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == want
    assert not want['patch_embed.projection.weight'] and not want['pos_embed']
    assert not torch.equal(model.patch_embed.projection.weight, plain.patch_embed.projection.weight)
    sd = plain.state_dict()
    for name, value in model.state_dict().items():
        if name not in ('patch_embed.projection.weight', 'pos_embed'):
            assert torch.equal(value, sd[name]), name
