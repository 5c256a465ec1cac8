"""mmseg's MAE backbone checks, on the stock class and on ``EncryptedMAE``.

Source: open-mmlab/mmsegmentation, ``tests/test_models/test_backbones/test_mae.py`` at
v1.2.2 (release commit c685fe6, the installed mmseg). Upstream is Copyright (c) OpenMMLab,
licensed under Apache-2.0. This file restates upstream's checks in its own code (every
upstream assertion has its counterpart here, same arguments, inputs and expected results
unless listed below); it does not copy upstream's test code.

Classes under test, each check parametrised over them: ``MAE`` (stock) and
``EncryptedMAE`` (the key comes from ``$PPENC_KEY_FILE``, see ``conftest.py``).

Changes from upstream, and why:

1. Structure: upstream's two long functions are split into one test per check (bad
   arguments, construction options, one test per input size, options, ``init_cfg``,
   position embedding resizing), so a failure names the check and the class.
2. Sizes: MAE-B's width, heads and depth (``embed_dims=768, num_heads=12,
   num_layers=12``) become ``embed_dims=32, num_heads=2, num_layers=3`` in every
   construction, the expected channel count 768 becomes 32, and the checkpoint position
   embedding given to ``resize_abs_pos_embed`` is 32 wide instead of 768 (it must match
   the model's width): mmseg's MAE (a BEiT) builds a relative position index per layer,
   so even at width 32 the 12-layer models made this file and the BEiT one take about
   30 s together (over a minute at full width).
   Patch size, image sizes and every spatial shape are upstream's. With 3 layers
   ``out_indices=[2, 4, 8, 12]`` returns layer 2's output only (upstream: layers 2, 4 and
   8); indices past the depth are ignored either way, and the shape upstream asserts,
   the last output's, is the same (the single output is asserted too).
3. ``init_cfg``/``pretrained`` with a checkpoint that does not exist: the stock class
   expects upstream's ``OSError``; the encrypted class, given ``mean``/``std``, expects
   ``CheckpointReadError`` naming the file (it reads and checks the checkpoint before
   loading), and without them its refusal for an unknown normalisation (``utils.py``).
4. ``resize_abs_pos_embed``: upstream only calls it; the shape of the resized
   embedding (the model's own) is asserted here too.

No upstream check is refused by ``EncryptedMAE``: its patch projection has a bias, so
``patch_norm=True`` works as in the stock class.
"""
import pytest
import torch
from mmengine.utils import is_installed
from mmseg.models.backbones.mae import MAE

from mmseg_ppenc.models import EncryptedMAE

from .utils import check_init_combinations, check_norm_state, class_id

pytestmark = pytest.mark.filterwarnings('ignore:DeprecationWarning. pretrained is deprecated')

each_mae = pytest.mark.parametrize('mae_cls', [MAE, EncryptedMAE], ids=class_id)

# Change 2: MAE-B's width, heads and depth made small; patch and image sizes kept.
SMALL = dict(embed_dims=32, num_layers=3, num_heads=2)
C = SMALL['embed_dims']  # upstream: 768


def _mae(mae_cls, **kw):
    return mae_cls(**SMALL, **kw)


BAD_ARGUMENTS = {
    'init_weights_takes_no_pretrained': (
        TypeError, lambda cls: _mae(cls).init_weights(pretrained=0)),
    'img_size_float': (TypeError, lambda cls: _mae(cls, img_size=512.0)),
    'out_indices_float': (TypeError, lambda cls: _mae(cls, out_indices=1.)),
    'img_size_three_values': (AssertionError, lambda cls: _mae(cls, img_size=(224, 224, 224))),
    'pretrained_int': (TypeError, lambda cls: _mae(cls, pretrained=123)),
}


@each_mae
@pytest.mark.parametrize('case', list(BAD_ARGUMENTS))
def test_mae_bad_arguments(mae_cls, case):
    error, action = BAD_ARGUMENTS[case]
    with pytest.raises(error):
        action(mae_cls)


@each_mae
def test_mae_construction_options(mae_cls):
    imgs = torch.randn(1, 3, 224, 224)
    model = _mae(mae_cls, img_size=(224,))
    model.init_weights()
    model(imgs)
    model = _mae(mae_cls, img_size=(224, 224))
    model(imgs)
    model = _mae(mae_cls, norm_eval=True)
    model.train()
    model = _mae(mae_cls)
    model.init_weights()
    model.train()
    # Indices past the depth are ignored: 3 layers give layer 2's output only.
    model = _mae(mae_cls, out_indices=[2, 4, 8, 12])
    model.train()
    assert check_norm_state(model.modules(), True)
    feat = model(imgs)
    assert len(feat) == 1
    assert feat[-1].shape == (1, C, 14, 14)


@each_mae
@pytest.mark.parametrize('img_size,grid', [((256, 256), (16, 16)), ((32, 32), (2, 2)),
                                           ((112, 224), (7, 14)), ((234, 345), (14, 21))],
                         ids=['256', '32', 'unbalanced', 'irregular'])
def test_mae_output_follows_img_size(mae_cls, img_size, grid):
    model = _mae(mae_cls, img_size=img_size)
    model.init_weights()
    model.train()
    feat = model(torch.randn(1, 3, *img_size))
    assert feat[-1].shape == (1, C, *grid)


@each_mae
@pytest.mark.parametrize('option', [dict(init_values=0), dict(final_norm=True),
                                    dict(patch_norm=True)], ids=lambda o: next(iter(o)))
def test_mae_option_keeps_output_shape(mae_cls, option):
    model = _mae(mae_cls, **option)
    feat = model(torch.randn(1, 3, 224, 224))
    assert feat[-1].shape == (1, C, 14, 14)


@each_mae
def test_mae_init(mae_cls):
    check_init_combinations(mae_cls, **SMALL)


@each_mae
def test_mae_resize_pos_embed(mae_cls):
    ckpt = {'state_dict': {'layers.0.attn.relative_position_index': 0,
                           'layers.0.attn.relative_position_bias_table': torch.randn(732, 16),
                           'pos_embed': torch.rand(1, 17, C)}}
    model = _mae(mae_cls, img_size=(512, 512))
    # Upstream's condition: the AttributeError only comes without scipy, a dependency.
    if not is_installed('scipy'):
        with pytest.raises(AttributeError):
            model.resize_rel_pos_embed(ckpt)
    # A 4x4 grid (plus the class token) resized to the model's 32x32.
    state_dict = model.resize_abs_pos_embed(ckpt['state_dict'])
    assert state_dict['pos_embed'].shape == model.pos_embed.shape == (1, 32 * 32 + 1, C)
