"""mmseg's Twins backbone checks, on the stock classes and on ``EncryptedPCPVT`` and
``EncryptedSVT``.

Source: open-mmlab/mmsegmentation, ``tests/test_models/test_backbones/test_twins.py`` at
v1.2.2 (release commit c685fe6, the installed mmseg). Upstream is Copyright (c) OpenMMLab,
licensed under Apache-2.0. This file restates upstream's checks in its own code (every
upstream assertion has its counterpart here, same arguments, inputs and expected results
unless listed below); it does not copy upstream's test code.

Classes under test, each backbone check parametrised over them: ``PCPVT`` and ``SVT``
(stock), ``EncryptedPCPVT`` and ``EncryptedSVT`` (the key comes from
``$PPENC_KEY_FILE``, see ``conftest.py``).

Changes from upstream, and why:

1. ``init_cfg``/``pretrained`` with a checkpoint that does not exist
   (``test_pcpvt_init``, ``test_svt_init``): the stock classes expect upstream's
   ``OSError``; the encrypted classes, given ``mean``/``std``, expect
   ``CheckpointReadError`` naming the file (they read and check the checkpoint before
   loading), and without them their refusal for an unknown normalisation
   (``utils.py``).
2. Sizes: the init checks build the default ``PCPVT()``/``SVT()`` upstream; here their
   widths are a quarter of the defaults (``embed_dims=[16, 32, 64, 128]`` and
   ``[16, 32, 64]``; head counts, depths and everything else default), because some ten
   default builds and weight initialisations per class take several seconds on a loaded
   two-core CPU. Those checks assert errors and ``init_cfg`` only, no shapes. The output
   checks (``test_pcpvt``, ``test_svt``) keep upstream's sizes.
3. ``test_locallygrouped_self_attention_module`` and
   ``test_conditional_position_encoding_module`` test mmseg's Twins modules on their
   own; they run once, not per backbone class, because the encrypted variants are built
   from the same, unchanged modules (only the first patch projection's weights differ).
4. Slightly stricter: the outputs are compared as one list of shapes (so their number
   is checked too).

No upstream check is refused by the encrypted variants: the first patch projection
(4x4, stride 4) has a bias, and only it is adapted.
"""
import pytest
import torch
from mmseg.models.backbones.twins import (
    PCPVT,
    SVT,
    ConditionalPositionEncoding,
    LocallyGroupedSelfAttention,
)

from mmseg_ppenc.models import EncryptedPCPVT, EncryptedSVT

from .utils import check_init_combinations, class_id

pytestmark = pytest.mark.filterwarnings('ignore:DeprecationWarning. pretrained is deprecated')

each_pcpvt = pytest.mark.parametrize('pcpvt_cls', [PCPVT, EncryptedPCPVT], ids=class_id)
each_svt = pytest.mark.parametrize('svt_cls', [SVT, EncryptedSVT], ids=class_id)

# Change 2: the default widths made small for the init checks.
PCPVT_SMALL = dict(embed_dims=[16, 32, 64, 128])
SVT_SMALL = dict(embed_dims=[16, 32, 64])


@each_pcpvt
def test_pcpvt(pcpvt_cls):
    H, W = (224, 224)
    model = pcpvt_cls(
        embed_dims=[32, 64, 160, 256], num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
        qkv_bias=True, depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1], norm_after_stage=False)
    model.init_weights()
    outs = model(torch.randn((1, 3, H, W)))
    assert [tuple(o.shape) for o in outs] == [
        (1, 32, H // 4, W // 4), (1, 64, H // 8, W // 8), (1, 160, H // 16, W // 16),
        (1, 256, H // 32, W // 32)]


@each_svt
def test_svt(svt_cls):
    H, W = (224, 224)
    model = svt_cls(
        embed_dims=[32, 64, 128], num_heads=[1, 2, 4], mlp_ratios=[4, 4, 4], qkv_bias=False,
        depths=[4, 4, 4], windiow_sizes=[7, 7, 7], norm_after_stage=True)
    model.init_weights()
    outs = model(torch.randn((1, 3, H, W)))
    assert [tuple(o.shape) for o in outs] == [
        (1, 32, H // 4, W // 4), (1, 64, H // 8, W // 8), (1, 128, H // 16, W // 16)]


@each_svt
def test_svt_init(svt_cls):
    check_init_combinations(svt_cls, **SVT_SMALL)


@each_pcpvt
def test_pcpvt_init(pcpvt_cls):
    check_init_combinations(pcpvt_cls, **PCPVT_SMALL)


def test_locallygrouped_self_attention_module():
    lsa = LocallyGroupedSelfAttention(embed_dims=32, window_size=3)
    outs = lsa(torch.randn(1, 3136, 32), (56, 56))
    assert outs.shape == torch.Size([1, 3136, 32])


def test_conditional_position_encoding_module():
    cpe = ConditionalPositionEncoding(in_channels=32, embed_dims=32, stride=2)
    outs = cpe(torch.randn(1, 3136, 32), (56, 56))
    assert outs.shape == torch.Size([1, 784, 32])
