"""Fused attention: same outputs, gradients, state dicts, initial values and freezing as
mmseg's stock ViT; the fast backbones build their layers fused from the start."""
import copy
import hashlib
import inspect

import numpy as np
import pytest
import torch
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmseg.models.backbones.vit import TransformerEncoderLayer
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
from ppenc.cipher import encrypt_tensor
from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.models import (EncryptedVisionTransformer, FastVisionTransformer,
                                FusedMultiheadAttention, set_attention_impl)
from mmseg_ppenc.models.attention import FusedTransformerEncoderLayer

from conftest import tiny_config

register_all_modules(init_default_scope=True)

TOL = 1e-5
# (model img_size, input batch x height x width): the second input differs from
# img_size, so the position embedding is resized on the way.
SHAPES = [((32, 32), (2, 32, 32)), ((32, 48), (1, 48, 64))]
SHAPE_IDS = ['native', 'resized-pos']


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _kwargs(img_size, with_cls_token, **extra):
    return dict(img_size=img_size, embed_dims=32, num_layers=3, num_heads=4, mlp_ratio=2,
                out_indices=(0, 2), with_cls_token=with_cls_token, final_norm=True,
                interpolate_mode='bilinear', **extra)


def _images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _normalise(x_uint8):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x_uint8.float() - mean) / std


def _outputs_and_grads(model, x, train):
    model.train(train)
    model.zero_grad()
    with torch.set_grad_enabled(train):
        outs = model(x)
    if train:
        sum(o.square().sum() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


def _assert_same(ref, new, train):
    (outs_r, grads_r), (outs_n, grads_n) = ref, new
    assert len(outs_r) == len(outs_n)
    for a, b in zip(outs_r, outs_n):
        assert a.shape == b.shape
        assert _rel(a, b) <= TOL
    assert grads_r.keys() == grads_n.keys()
    assert bool(grads_r) == train
    if train:
        # All gradients as one vector: a few parameters (e.g. the LayerNorm before a
        # freshly initialised attention) get near-zero gradients whose own relative
        # error says nothing about the attention.
        g_r = torch.cat([g.flatten() for g in grads_r.values()])
        g_n = torch.cat([grads_n[k].flatten() for k in grads_r])
        assert _rel(g_r, g_n) <= TOL


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('with_cls_token', [True, False])
@pytest.mark.parametrize('img_size,shape', SHAPES, ids=SHAPE_IDS)
def test_fused_equals_stock_plain(train, with_cls_token, img_size, shape):
    torch.manual_seed(0)
    stock = VisionTransformer(**_kwargs(img_size, with_cls_token))
    stock.init_weights()
    fused = FastVisionTransformer(**_kwargs(img_size, with_cls_token))
    fused.load_state_dict(stock.state_dict(), strict=True)
    assert all(type(layer) is FusedTransformerEncoderLayer for layer in fused.layers)
    assert all(type(layer.attn) is FusedMultiheadAttention for layer in fused.layers)
    assert all(type(layer.attn) is MultiheadAttention for layer in stock.layers)
    x = _normalise(_images(shape))
    _assert_same(_outputs_and_grads(stock, x, train), _outputs_and_grads(fused, x, train),
                 train)


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('with_cls_token', [True, False])
@pytest.mark.parametrize('img_size,shape', SHAPES, ids=SHAPE_IDS)
def test_fused_equals_stock_encrypted(key_env, tmp_path, train, with_cls_token, img_size,
                                      shape):
    """Encrypted backbone, fused vs stock attention; and the fused encrypted model on
    encrypted images vs mmseg's stock ViT on plain images (the method's claim)."""
    torch.manual_seed(0)
    plain = VisionTransformer(**_kwargs(img_size, with_cls_token))
    plain.init_weights()
    ckpt = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': plain.state_dict()}, ckpt)
    init_cfg = dict(type='Pretrained', checkpoint=ckpt)
    enc_stock = EncryptedVisionTransformer(**_kwargs(img_size, with_cls_token),
                                           mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                           attn_impl='stock', init_cfg=init_cfg)
    enc_fused = EncryptedVisionTransformer(**_kwargs(img_size, with_cls_token),
                                           mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                           init_cfg=init_cfg)
    assert enc_fused.attn_impl == 'fused' and enc_stock.attn_impl == 'stock'
    enc_stock.init_weights()
    enc_fused.init_weights()
    for k, v in enc_stock.state_dict().items():
        assert torch.equal(v, enc_fused.state_dict()[k]), k

    imgs = _images(shape)
    x_plain = _normalise(imgs)
    x_enc = _normalise(encrypt_tensor(imgs, key_env))
    ref = _outputs_and_grads(enc_stock, x_enc, train)
    _assert_same(ref, _outputs_and_grads(enc_fused, x_enc, train), train)
    outs_plain, _ = _outputs_and_grads(plain, x_plain, train)
    outs_enc, _ = _outputs_and_grads(enc_fused, x_enc, train)
    for a, b in zip(outs_plain, outs_enc):
        assert _rel(a, b) <= TOL


@pytest.mark.parametrize('with_cls_token', [True, False])
def test_state_dicts_load_strictly_both_ways(with_cls_token):
    kw = _kwargs((32, 32), with_cls_token)
    torch.manual_seed(0)
    stock, fused = VisionTransformer(**kw), FastVisionTransformer(**kw)
    assert list(stock.state_dict()) == list(fused.state_dict())
    for src, dst in ((stock, FastVisionTransformer(**kw)), (fused, VisionTransformer(**kw))):
        src.init_weights()
        result = dst.load_state_dict(src.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        for k, v in src.state_dict().items():
            assert torch.equal(v, dst.state_dict()[k])


def test_encrypted_state_dict_loads_into_stock_vit(key_env):
    kw = _kwargs((32, 32), True)
    enc = EncryptedVisionTransformer(**kw, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    enc.init_weights()
    VisionTransformer(**kw).load_state_dict(enc.state_dict(), strict=True)


# Constructor arguments that reach the layers (dropouts, stochastic depth, bias, FFN depth,
# checkpointing) or the modules around them, each away from mmseg's default.
BUILD_CASES = {
    'defaults': {},
    'regularised': dict(drop_rate=0.1, attn_drop_rate=0.2, drop_path_rate=0.3),
    'variants': dict(qkv_bias=False, num_fcs=3, with_cp=True, act_cfg=dict(type='ReLU'),
                     pre_norm=True, patch_norm=True, patch_bias=True, out_indices=-1,
                     norm_cfg=dict(type='LN', eps=1e-6)),
}


def _plain_attributes(module):
    """A module's own settings (numbers, strings, flags, configs), not its tensors."""
    return {k: v for k, v in vars(module).items()
            if not k.startswith('_') and k not in ('impl', 'attn_impl')
            and isinstance(v, (bool, int, float, str, tuple, list, dict, type(None)))}


@pytest.mark.parametrize('extra', list(BUILD_CASES.values()), ids=list(BUILD_CASES))
def test_fast_vit_builds_like_stock_vit(extra):
    """Built with the same seed, the fast ViT has the stock ViT's initial values and
    leaves the global generator where the stock build does (modules built afterwards
    initialise alike); every submodule has the stock one's name, settings and class, the
    layers and their attention as the fused subclasses."""
    kw = {**_kwargs((32, 32), True), **extra}
    torch.manual_seed(3)
    stock = VisionTransformer(**copy.deepcopy(kw))
    after_stock = torch.rand(4)
    torch.manual_seed(3)
    fast = FastVisionTransformer(**copy.deepcopy(kw))
    after_fast = torch.rand(4)
    assert torch.equal(after_stock, after_fast)
    assert list(stock.state_dict()) == list(fast.state_dict())
    for (k, a), (k2, b) in zip(stock.state_dict().items(), fast.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    fused_of = {VisionTransformer: FastVisionTransformer,
                TransformerEncoderLayer: FusedTransformerEncoderLayer,
                MultiheadAttention: FusedMultiheadAttention}
    pairs = list(zip(stock.named_modules(), fast.named_modules()))
    assert len(pairs) == len(list(stock.modules())) == len(list(fast.modules()))
    for (name, a), (name2, b) in pairs:
        assert name == name2
        assert type(b) is fused_of.get(type(a), type(a)), name
        assert _plain_attributes(a) == _plain_attributes(b), name
    assert stock.out_indices == fast.out_indices


# mmseg 1.2.2's VisionTransformer.__init__. FastVisionTransformer._build_layers repeats its
# layer loop (layer class aside), so a change there must be ported.
VIT_INIT_SHA256 = '2f8646274bf4a9e614518cc2fff0f7595b310c281e47eafe296097f767efc819'


def test_mmseg_vit_constructor_is_the_one_fast_vit_follows():
    got = hashlib.sha256(inspect.getsource(VisionTransformer.__init__).encode()).hexdigest()
    assert got == VIT_INIT_SHA256, (
        "mmseg's VisionTransformer.__init__ changed (an mmseg upgrade?). "
        'mmseg_ppenc.models.fast_vit.FastVisionTransformer builds the encoder layers itself '
        "with the arguments of mmseg's layer loop: compare _build_layers with the new "
        'loop, port any change (new layer arguments, another stochastic depth rule, '
        'modules built after the layers that draw random numbers), run '
        f'tests/models/test_attention.py, then pin the new hash {got}.')


# Substrings of parameter names left trainable: some attention parameters frozen and some
# not, so that a fused attention built outside the freezing shows.
FROZEN_EXCLUDE = ['ffn', 'ln', 'layers.1.attn', 'patch_embed']


def test_frozen_exclude_freezes_the_same_parameters(key_env):
    """mmseg's ``frozen_exclude`` freezes by parameter name; the fast and encrypted ViTs
    freeze exactly what the stock ViT freezes, the attention's in/out projections
    included."""
    kw = _kwargs((32, 32), True, frozen_exclude=FROZEN_EXCLUDE)
    ref = {n: p.requires_grad for n, p in VisionTransformer(**kw).named_parameters()}
    assert any(ref.values()) and not all(ref.values())
    assert not ref['layers.0.attn.attn.in_proj_weight']
    assert not ref['layers.2.attn.attn.out_proj.bias']
    assert ref['layers.1.attn.attn.in_proj_weight']
    for model in (FastVisionTransformer(**kw),
                  FastVisionTransformer(**kw, attn_impl='stock'),
                  EncryptedVisionTransformer(**kw, mean=IMAGENET_MEAN, std=IMAGENET_STD)):
        got = {n: p.requires_grad for n, p in model.named_parameters()}
        assert got == ref, type(model).__name__


def test_switch_both_ways_and_errors():
    torch.manual_seed(0)
    vit = FastVisionTransformer(**_kwargs((32, 32), True))
    vit.init_weights()
    vit.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fused_out = vit(x)
        vit.set_attn_impl('stock')
        assert vit.attn_impl == 'stock'
        assert all(layer.attn.impl == 'stock' for layer in vit.layers)
        stock_out = vit(x)
        assert set_attention_impl(vit, 'fused') == 3
    for a, b in zip(fused_out, stock_out):
        assert _rel(a, b) <= TOL
    with pytest.raises(ValueError, match=r"one of \('fused', 'stock'\), got 'flash'"):
        FastVisionTransformer(**_kwargs((32, 32), True), attn_impl='flash')
    with pytest.raises(ValueError, match='got None'):
        set_attention_impl(vit, None)
    with pytest.raises(TypeError, match=r"no longer takes torch_compile; compile with "
                                        r"custom_hooks=\[dict\(type='CompileModelHook'\)\]"):
        FastVisionTransformer(**_kwargs((32, 32), True), torch_compile=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_layer'"):
        FastVisionTransformer(**_kwargs((32, 32), True), num_layer=2)


@pytest.mark.parametrize('batch_first', [True, False])
def test_general_path_equals_stock(batch_first):
    """Cross-attention with positions and masks goes through nn.MultiheadAttention with
    need_weights=False, and equals mmcv's module."""
    torch.manual_seed(0)
    stock = MultiheadAttention(32, 4, batch_first=batch_first)
    fused = MODELS.build(dict(type='FusedMultiheadAttention', embed_dims=32, num_heads=4,
                              batch_first=batch_first))
    fused.load_state_dict(stock.state_dict(), strict=True)
    stock.eval()
    fused.eval()
    b, nq, nk = 2, 5, 7
    q, k = torch.randn(b, nq, 32), torch.randn(b, nk, 32)
    q_pos, k_pos = torch.randn(b, nq, 32), torch.randn(b, nk, 32)
    attn_mask = torch.zeros(nq, nk, dtype=torch.bool)
    attn_mask[:, -1] = True
    pad = torch.zeros(b, nk, dtype=torch.bool)
    pad[0, -2] = True
    if not batch_first:
        q, k, q_pos, k_pos = (t.transpose(0, 1) for t in (q, k, q_pos, k_pos))
    args = dict(query=q, key=k, value=k, query_pos=q_pos, key_pos=k_pos,
                attn_mask=attn_mask, key_padding_mask=pad)
    with torch.no_grad():
        assert _rel(stock(**args), fused(**args)) <= TOL
        # Self-attention (the direct path) in the non-batch-first layout as well.
        assert _rel(stock(q), fused(q)) <= TOL


def test_attention_dropout_is_kept():
    """attn_drop acts inside the fused kernel in training, not in eval."""
    torch.manual_seed(0)
    vit = FastVisionTransformer(**_kwargs((32, 32), True, attn_drop_rate=0.5))
    vit.init_weights()
    x = torch.randn(1, 3, 32, 32)
    vit.train()
    with torch.no_grad():
        a, b = vit(x)[-1], vit(x)[-1]
    assert _rel(a, b) > 1e-3
    vit.eval()
    with torch.no_grad():
        a, b = vit(x)[-1], vit(x)[-1]
    assert torch.equal(a, b)


def test_shipped_configs_are_fused_and_one_switch_from_stock(key_env):
    for setting in ('baseline', 'proposed'):
        cfg = Config.fromfile(tiny_config('mla', setting))
        model = MODELS.build(copy.deepcopy(cfg.model))
        assert all(type(layer.attn) is FusedMultiheadAttention
                   for layer in model.backbone.layers)
        cfg.merge_from_dict({'model.backbone.attn_impl': 'stock'})
        model = MODELS.build(cfg.model)
        assert all(layer.attn.impl == 'stock' for layer in model.backbone.layers)


def test_segmentor_logits_fused_vs_stock(key_env):
    """Whole tiny SETR-MLA (proposed), train-mode loss and eval logits, fused vs stock."""
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    torch.manual_seed(0)
    fused = MODELS.build(copy.deepcopy(cfg.model))
    bind_normalization(fused)
    fused.init_weights()
    cfg.merge_from_dict({'model.backbone.attn_impl': 'stock'})
    stock = MODELS.build(cfg.model)
    stock.load_state_dict(fused.state_dict(), strict=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64),
                                                                  dtype=np.float32))
    for m in (fused, stock):
        m.eval()
    with torch.no_grad():
        assert _rel(stock(x, mode='tensor'), fused(x, mode='tensor')) <= TOL
