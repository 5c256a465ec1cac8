"""Fused attention: same outputs, gradients and state dicts as mmseg's stock ViT."""
import copy

import numpy as np
import pytest
import torch
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.adaptation import IMAGENET_MEAN, IMAGENET_STD
from mmseg_ppenc.cipher import encrypt_tensor
from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.models import (EncryptedVisionTransformer, FastVisionTransformer,
                                FusedMultiheadAttention, set_attention_impl)

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


def test_fast_vit_builds_like_stock_vit():
    """Rebuilding the attention through build_attn keeps the stock initial values and the
    global random state, so modules built afterwards initialise as with the stock ViT."""
    torch.manual_seed(3)
    stock = VisionTransformer(**_kwargs((32, 32), True))
    after_stock = torch.rand(4)
    torch.manual_seed(3)
    fast = FastVisionTransformer(**_kwargs((32, 32), True))
    after_fast = torch.rand(4)
    assert torch.equal(after_stock, after_fast)
    for (k, a), (k2, b) in zip(stock.state_dict().items(), fast.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


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
    with pytest.raises(TypeError, match='torch_compile must be a bool or a dict'):
        FastVisionTransformer(**_kwargs((32, 32), True), torch_compile='yes')


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


def test_torch_compile_switch_keeps_names():
    torch.manual_seed(0)
    kw = _kwargs((32, 32), True)
    ref = FastVisionTransformer(**kw)
    ref.init_weights()
    # The eager backend checks the wiring without needing a C++ toolchain.
    compiled = FastVisionTransformer(**kw, torch_compile=dict(backend='eager'))
    assert list(compiled.state_dict()) == list(ref.state_dict())
    compiled.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    compiled.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(ref(x), compiled(x)):
            assert _rel(a, b) <= TOL


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
