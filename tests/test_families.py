"""Stock mmseg BEiT, MAE, Swin and Twins configs made private by the README recipe.

Each case loads a stock ADE20K config of the installed mmseg through ``mmseg::``, shrinks
it (toy widths and depths, 64-pixel crops, no auxiliary head, lr 0) and derives two
configs: the plain one, and the same plus only the recipe (``tests/recipe.py``: the
backbone's encrypted variant, ``BlockScramble`` with the patch size as block size,
``KeyManagementHook``, the plugin and its runner). Both train one step and test through
the real mmengine Runner, from the same plain "pre-trained" backbone, on a generated
ADE20K-format folder whose test images are resized off the grid.

Acceptance: the first loss within 1e-5 relative, and the plain label maps, without and
with test-time augmentation (mmseg's ``SegTTAModel``, rescales off the grid, both flips).
(The recipe on backbones whose first layer overlaps -- ResNet, MiT, MSCAN -- is refused
at start: ``tests/test_refusals.py``.)
"""
from __future__ import annotations

import copy
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmseg_ppenc.runner import use_tta
from recipe import (apply_recipe, assert_same_predictions, predictions, save_weights,
                    shrink_family_backbone, stock_config, toy_run, train_and_test,
                    tta_pipeline)

#: id -> (stock config below mmseg's configs/, cipher block size = input patch size).
CASES = {
    'beit': ('beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py', 16),
    'mae': ('mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py', 16),
    'swin': ('swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py', 4),
    'twins-pcpvt': ('twins/twins_pcpvt-s_uperhead_8xb4-160k_ade20k-512x512.py', 4),
    'twins-svt': ('twins/twins_svt-s_uperhead_8xb2-160k_ade20k-512x512.py', 4),
}


def shrink(cfg: Config, data_root: str, work_dir: str) -> Config:
    """The stock config at toy scale; types, wiring, optimiser and constructor unchanged."""
    m = cfg.model
    m.pretrained = None
    widths = shrink_family_backbone(m)
    m.backbone.init_cfg = None
    m.decode_head.update(in_channels=widths, channels=16, dropout_ratio=0.0)
    toy_run(cfg, 'ade', data_root, work_dir)
    cfg.tta_pipeline = tta_pipeline('ade')
    return cfg


def tta_predictions(cfg: Config, tag: str) -> list:
    """mmseg's TTA (``tools/test.py --tta``) of the checkpoint ``cfg`` trained."""
    cfg = use_tta(copy.deepcopy(cfg))
    cfg.load_from = osp.join(cfg.work_dir, 'iter_1.pth')
    cfg.work_dir = osp.join(cfg.work_dir, tag)
    runner = Runner.from_cfg(cfg)
    runner.test()  # the start checks and the hook look inside SegTTAModel
    return predictions(runner)


@pytest.mark.parametrize('family', list(CASES))
def test_recipe_is_exact_without_and_with_tta(family, key_env, ade_root, tmp_path):
    name, block = CASES[family]
    plain = shrink(stock_config(name, tmp_path), ade_root, str(tmp_path / 'plain'))
    plain = save_weights(plain, str(tmp_path))
    enc = apply_recipe(plain, block_size=block)
    enc.work_dir = str(tmp_path / 'enc')

    loss_p, out_p, _ = train_and_test(plain)
    loss_e, out_e, runner = train_and_test(enc)
    # The encrypted variant with the patch size as block size ran.
    backbone = runner.model.backbone
    assert type(backbone).__name__ == enc.model.backbone.type
    assert backbone.block_size == block
    # A padded training batch: the same first-iteration loss.
    assert abs(loss_e - loss_p) <= 1e-5 * abs(loss_p), (loss_p, loss_e)
    # Off-grid test images (padded to the grid): the plain label maps.
    assert all(any(meta['img_padding_size']) for _, _, meta in out_p)
    assert_same_predictions(out_p, out_e)

    # Test-time augmentation: every branch rescales off the grid, pads, (encrypts).
    tta_p, tta_e = tta_predictions(plain, 'tta'), tta_predictions(enc, 'tta')
    assert len(tta_p) == len(out_p)
    for (_, labels_p, meta), (_, labels_e, _), (_, labels_plain, _) in zip(tta_p, tta_e,
                                                                           out_p):
        # The merged prediction carries the last branch (x1.25, flipped): TTA ran.
        assert meta['flip'] and meta['scale_factor'][0] > 1.1
        assert labels_p.shape == labels_plain.shape
        # SegTTAModel averages the branches' probabilities; the keyed model's differ
        # from the plain ones by float32 rounding only, so labels could differ only
        # on ties, which stay rare.
        assert (labels_p != labels_e).float().mean().item() <= 1e-3
    # The last branch's logits are still the plain model's.
    assert_same_predictions(tta_p, tta_e)
