"""mmseg's Swin Transformer backbone checks, on the stock class and on
``EncryptedSwinTransformer``.

Source: open-mmlab/mmsegmentation, ``tests/test_models/test_backbones/test_swin.py`` at
v1.2.2 (release commit c685fe6, the installed mmseg). Upstream is Copyright (c) OpenMMLab,
licensed under Apache-2.0. This file restates upstream's checks in its own code (every
upstream assertion has its counterpart here, same arguments, inputs and expected results
unless listed below); it does not copy upstream's test code.

Classes under test, each backbone check parametrised over them: ``SwinTransformer``
(stock) and ``EncryptedSwinTransformer`` (the key comes from ``$PPENC_KEY_FILE``, see
``conftest.py``).

Changes from upstream, and why:

1. Structure: upstream's ``test_swin_transformer`` is split into one test per check (bad
   arguments, absolute position embedding and patch norm, input sizes, frozen stages,
   ``with_cp``), so a failure names the check and the class.
2. Sizes: Swin-T's width ``embed_dims=96`` becomes 24 in every backbone construction
   (the head counts, 3 to 24, still divide every stage's width), and the expected
   channel counts 96/192/384/768 become 24/48/96/192, because Swin-T's weight
   initialisation and forwards at 256 pixels take several seconds per test on a loaded
   two-core CPU. Depths, window, patch size, image sizes and every spatial shape are
   upstream's. ``test_swin_block`` keeps upstream's sizes.
3. ``test_swin_block`` tests mmseg's ``SwinBlock`` on its own; it runs once, not per
   backbone class, because the encrypted variant is built from the same, unchanged
   ``SwinBlock`` (only its input patch projection's weights differ).
4. Slightly stricter: each input's outputs are compared as one list of shapes (so their
   number is checked too), and the ``with_cp`` check also asserts that there are
   ``SwinBlock`` modules to check.

No upstream check is refused by ``EncryptedSwinTransformer``: its patch projection has a
bias (the key's offset goes there, before the patch norm), and the off-grid inputs
(255 and 112x137 pixels) are padded by the stock code as in the stock class.
"""
import pytest
import torch
from mmseg.models.backbones.swin import SwinBlock, SwinTransformer

from mmseg_ppenc.models import EncryptedSwinTransformer

from .utils import class_id

pytestmark = pytest.mark.filterwarnings(
    'ignore:torch.utils.checkpoint. the use_reentrant parameter')

each_swin = pytest.mark.parametrize('swin_cls', [SwinTransformer, EncryptedSwinTransformer],
                                    ids=class_id)

# Change 2: Swin-T's width made small; depths, heads, window and image sizes kept.
SMALL = dict(embed_dims=24)
CHANNELS = (24, 48, 96, 192)  # upstream: (96, 192, 384, 768)


def _swin(swin_cls, **kw):
    return swin_cls(**SMALL, **kw)


def test_swin_block():
    block = SwinBlock(embed_dims=32, num_heads=4, feedforward_channels=128)
    assert block.ffn.embed_dims == 32
    assert block.attn.w_msa.num_heads == 4
    assert block.ffn.feedforward_channels == 128
    x_out = block(torch.randn(1, 56 * 56, 32), (56, 56))
    assert x_out.shape == torch.Size([1, 56 * 56, 32])

    # With checkpoint forward.
    block = SwinBlock(embed_dims=64, num_heads=4, feedforward_channels=256, with_cp=True)
    assert block.with_cp
    x_out = block(torch.randn(1, 56 * 56, 64), (56, 56))
    assert x_out.shape == torch.Size([1, 56 * 56, 64])


BAD_ARGUMENTS = {
    'pretrained_int': (TypeError, dict(pretrained=123)),
    # Non-overlapping patch embedding: the stride must be the patch size.
    'stride_not_patch_size': (AssertionError, dict(strides=(2, 2, 2, 2), patch_size=4)),
    'pretrain_img_size_three_values': (AssertionError, dict(pretrain_img_size=(112, 112, 112))),
}


@each_swin
@pytest.mark.parametrize('case', list(BAD_ARGUMENTS))
def test_swin_bad_arguments(swin_cls, case):
    error, kwargs = BAD_ARGUMENTS[case]
    with pytest.raises(error):
        _swin(swin_cls, **kwargs)


@each_swin
def test_swin_abs_pos_embed_and_patch_norm(swin_cls):
    temp = torch.randn((1, 3, 112, 112))
    model = _swin(swin_cls, pretrain_img_size=112, use_abs_pos_embed=True)
    model.init_weights()
    model(temp)
    model = _swin(swin_cls, patch_norm=False)
    model(temp)


@each_swin
@pytest.mark.parametrize('size,grids', [
    ((256, 256), [(64, 64), (32, 32), (16, 16), (8, 8)]),
    ((255, 255), [(64, 64), (32, 32), (16, 16), (8, 8)]),
    ((112, 137), [(28, 35), (14, 18), (7, 9), (4, 5)]),
], ids=['normal', 'odd', 'unbalanced'])
def test_swin_output_shapes(swin_cls, size, grids):
    model = _swin(swin_cls)
    outs = model(torch.randn((1, 3, *size)))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, *grid) for c, grid in zip(CHANNELS, grids)]


@each_swin
@pytest.mark.parametrize('use_abs_pos_embed', [False, True], ids=['rel_pos', 'abs_pos'])
def test_swin_frozen_stages(swin_cls, use_abs_pos_embed):
    model = _swin(swin_cls, frozen_stages=4, use_abs_pos_embed=use_abs_pos_embed)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())


@each_swin
def test_swin_with_cp(swin_cls):
    model = _swin(swin_cls, with_cp=True)
    blocks = [m for m in model.modules() if isinstance(m, SwinBlock)]
    assert blocks and all(m.with_cp for m in blocks)
    model.init_weights()
    model.train()
    model(torch.randn((1, 3, 56, 56)))
