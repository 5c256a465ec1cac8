"""The fast loss path: matmul bilinear resize and argmax accuracy equal mmseg's, alone and
through the real tiny SETR models; switched off, mmseg's own code runs."""
import copy
import functools
import pickle

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FCNHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import accuracy
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules
from torch.utils._python_dispatch import TorchDispatchMode

from mmseg_ppenc.core.errors import ConfigError
from mmseg_ppenc.models import fast_loss as fl

from conftest import tiny_config

register_all_modules(init_default_scope=True)

DECODERS = ['mla', 'pup', 'naive']
# (input size, output size): up, down, odd, mixed and degenerate shapes.
SHAPES = [((12, 12), (48, 48)), ((7, 5), (64, 33)), ((48, 40), (13, 17)),
          ((3, 9), (3, 20)), ((9, 1), (4, 6)), ((5, 5), (1, 1)), ((1, 3), (5, 2))]


def _assert_rel(got, ref, rel=1e-5, floor=1e-30):
    """Element-wise within ``rel`` of the largest reference magnitude (or of ``floor``)."""
    scale = max(ref.abs().max().item(), floor)
    err = (got - ref).abs().max().item()
    assert err <= rel * scale, f'max error {err:.3g} is {err / scale:.3g} of {scale:.3g}'


# --------------------------------------------------------------------------- resize
@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('shape_in,shape_out', SHAPES)
def test_resize_equals_interpolate_values_and_gradients(shape_in, shape_out, align_corners):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *shape_in, requires_grad=True)
    ref = F.interpolate(x, shape_out, mode='bilinear', align_corners=align_corners)
    got = fl.bilinear_resize(x, shape_out, align_corners)
    assert got.shape == ref.shape and got.dtype == torch.float32
    _assert_rel(got, ref)
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    (got_grad,) = torch.autograd.grad(got, x, g)
    _assert_rel(got_grad, ref_grad)


@pytest.mark.parametrize('dynamic', [False, True])
def test_resize_under_torch_compile(dynamic):
    """Traced by dynamo (matrices built in the graph), also with symbolic shapes."""
    torch._dynamo.reset()
    fn = torch.compile(fl.bilinear_resize, backend='eager', dynamic=dynamic, fullgraph=True)
    try:
        for shape_in, shape_out in SHAPES[:3]:
            x = torch.randn(2, 3, *shape_in)
            _assert_rel(fn(x, shape_out), F.interpolate(x, shape_out, mode='bilinear'))
    finally:
        torch._dynamo.reset()


def test_resize_in_float64_is_exact_to_double_rounding():
    x = torch.randn(1, 2, 11, 6, dtype=torch.float64)
    ref = F.interpolate(x, (30, 31), mode='bilinear', align_corners=False)
    got = fl.bilinear_resize(x, (30, 31))
    assert got.dtype == torch.float64
    _assert_rel(got, ref, rel=1e-13)


def test_resize_low_precision_input_runs_in_float32_under_autocast():
    x = torch.randn(1, 2, 6, 6).to(torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = fl.bilinear_resize(x, (24, 24))
    assert got.dtype == torch.float32
    _assert_rel(got, F.interpolate(x.float(), (24, 24), mode='bilinear'))


def test_same_size_is_returned_without_a_copy():
    x = torch.randn(1, 2, 8, 8)
    assert fl.bilinear_resize(x, (8, 8)) is x


def test_matrix_rows_cache_and_inference_mode():
    m = fl.bilinear_matrix(6, 20)
    assert m.shape == (20, 6) and not m.requires_grad
    torch.testing.assert_close(m.sum(1), torch.ones(20))
    assert ((m > 0).sum(1) <= 2).all()
    assert fl.bilinear_matrix(6, 20) is m  # cached
    assert fl.bilinear_matrix(6, 20, align_corners=True) is not m
    assert fl.bilinear_matrix(6, 20, dtype=torch.float64).dtype == torch.float64
    # First built under inference_mode, the matrix must still serve training later.
    with torch.inference_mode():
        fl.bilinear_resize(torch.randn(1, 1, 5, 7), (13, 9))
    x = torch.randn(1, 1, 5, 7, requires_grad=True)
    fl.bilinear_resize(x, (13, 9)).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize('call,message', [
    (lambda: fl.bilinear_resize(torch.randn(2, 8, 8), (4, 4)),
     r'floating \(N, C, H, W\) tensor, got shape \(2, 8, 8\)'),
    (lambda: fl.bilinear_resize(torch.zeros(1, 1, 4, 4, dtype=torch.long), (8, 8)),
     'dtype torch.int64'),
    (lambda: fl.bilinear_resize(torch.randn(1, 1, 4, 4), (8, 0)),
     r'two positive integers \(height, width\), got \(8, 0\)'),
    (lambda: fl.bilinear_resize(torch.randn(1, 1, 4, 4), (8,)),
     r'two positive integers \(height, width\), got \(8,\)'),
    (lambda: fl.bilinear_matrix(0, 4), 'in_size must be a positive integer, got 0'),
    (lambda: fl.bilinear_matrix(4, True), 'out_size must be a positive integer, got True'),
    (lambda: fl.bilinear_matrix(4, 8, dtype=torch.int32), 'floating type, got torch.int32'),
])
def test_resize_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- accuracy
# 3: an ignored label that is also a class the model can predict.
@pytest.mark.parametrize('ignore_index', [None, 255, 3])
@pytest.mark.parametrize('ignored', [0.0, 0.3, 1.0])
def test_argmax_accuracy_equals_mmseg(ignore_index, ignored):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 19, 16, 20, generator=g)
    target = torch.randint(0, 19, (3, 16, 20), generator=g)
    # Make the prediction right about half the time, so the value is not near 1/19.
    right = torch.rand(target.shape, generator=g) < 0.5
    pred.scatter_add_(1, target[:, None], 10.0 * right[:, None].float())
    target[torch.rand(target.shape, generator=g) < ignored] = ignore_index or 255
    ref = accuracy(pred, target, ignore_index=ignore_index)
    got = fl.argmax_accuracy(pred, target, ignore_index)
    assert got.shape == ref.shape == (1,)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    assert not fl.argmax_accuracy(pred.requires_grad_(), target).requires_grad


def test_argmax_accuracy_empty_batch_and_shapes():
    assert fl.argmax_accuracy(torch.zeros(0, 4, 2, 2), torch.zeros(0, 2, 2)).item() == 0
    with pytest.raises(ValueError, match=r'got pred \(2, 4, 3, 3\) and target \(2, 3, 4\)'):
        fl.argmax_accuracy(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 4, dtype=torch.long))


# --------------------------------------------------------------------------- model
def _model(decoder, seed=0):
    cfg = Config.fromfile(tiny_config(decoder, 'baseline'))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.train()


def _batch(model, seed=0, size=64):
    """A preprocessed batch with some ignored (255) label pixels."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(2):
        label = torch.randint(0, 19, (1, size, size), generator=g)
        label[:, :5] = 255
        s = SegDataSample(gt_sem_seg=PixelData(data=label))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size)))
        samples.append(s)
    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
              for _ in range(2)]
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)


def _losses_and_grads(model, batch):
    torch.manual_seed(1)  # the heads' dropout draws the same masks in both models
    losses = model.loss(batch['inputs'], batch['data_samples'])
    total, _ = model.parse_losses(losses)
    total.backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize('decoder', DECODERS)
def test_same_losses_and_gradients_through_the_real_model(decoder):
    """Float32, one forward and backward. The tiny PUP heads upsample to the input size
    themselves (as SETR-PUP's do), so there only ``acc_seg`` takes the new code."""
    stock, fast = _model(decoder), _model(decoder)
    enabled, kept = fl.enable_fast_loss(fast)
    n_aux = len(fast.auxiliary_head)
    assert enabled == ['decode_head'] + [f'auxiliary_head.{i}' for i in range(n_aux)]
    assert kept == []
    ref_losses, ref_grads = _losses_and_grads(stock, _batch(stock))
    losses, grads = _losses_and_grads(fast, _batch(fast))
    assert set(losses) == set(ref_losses) and f'aux_{n_aux - 1}.acc_seg' in losses
    for k, v in ref_losses.items():
        torch.testing.assert_close(losses[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert set(grads) == set(ref_grads) and len(grads) > 20
    # Some gradients are mathematically zero (biases in front of a norm layer) and hold
    # only float noise: no tensor is held to less than 1e-7 of the largest gradient.
    floor = 1e-2 * max(v.abs().max().item() for v in ref_grads.values())
    for k, v in ref_grads.items():
        try:
            _assert_rel(grads[k], v, floor=floor)
        except AssertionError as e:
            raise AssertionError(f'{k}: {e}') from None


class _Ops(TorchDispatchMode):
    """The aten operations that run inside the mode."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _loss_ops(head, feats, samples):
    with torch.no_grad():
        logits = head.forward(feats)
    with _Ops() as mode:
        head.loss_by_feat(logits, samples)
    resized = logits.shape[2:] != samples[0].gt_sem_seg.shape
    return mode.ops, resized


@pytest.mark.parametrize('decoder', DECODERS)
def test_switch_off_is_mmseg_code_path(decoder):
    """Off (never enabled, or disabled again): mmseg's interpolate and topk run; on:
    neither, matrix products instead."""
    model = _model(decoder)
    batch = _batch(model)
    with torch.no_grad():
        feats = model.extract_feat(batch['inputs'])
    samples = batch['data_samples']
    heads = [h for _, h in fl.loss_heads(model)]
    assert len(heads) == 1 + len(model.auxiliary_head)
    for head in heads:
        assert 'loss_by_feat' not in head.__dict__
        # mmseg resizes even logits already at the label size (a copy).
        assert {'upsample_bilinear2d', 'topk'} <= _loss_ops(head, feats, samples)[0]
    fl.enable_fast_loss(model)
    n_resized = 0
    for head in heads:
        ops, resized = _loss_ops(head, feats, samples)
        assert not {'upsample_bilinear2d', 'topk', 'nonzero'} & ops
        assert 'argmax' in ops
        assert {'mm', 'bmm'} <= ops if resized else not {'mm', 'bmm'} & ops
        n_resized += resized
    # SETR-MLA and -Naive heads output below the label size; SETR-PUP's at it.
    assert n_resized == (0 if decoder == 'pup' else len(heads))
    assert fl.disable_fast_loss(model) == [n for n, _ in fl.loss_heads(model)]
    for head in heads:
        assert 'loss_by_feat' not in head.__dict__ and not fl.is_fast_loss_enabled(head)
        assert {'upsample_bilinear2d', 'topk'} <= _loss_ops(head, feats, samples)[0]


@pytest.mark.parametrize('fast', [False, True])
def test_compiled_loss_path_has_no_graph_break(fast):
    """mmseg's accuracy indexes with a boolean mask, which breaks a ``torch.compile``
    graph in every head; the fast path traces the whole loss as one graph."""
    model = _model('mla')
    if fast:
        fl.enable_fast_loss(model)
    batch = _batch(model)
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model.loss)(batch['inputs'],
                                                      batch['data_samples'])
    finally:
        torch._dynamo.reset()
    if fast:
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    else:
        assert explained.graph_break_count >= 5
        assert 'nonzero' in str(explained.break_reasons[0].reason)


def test_enable_is_idempotent_and_survives_copy_and_pickle():
    model = _model('mla')
    fl.enable_fast_loss(model)
    assert fl.enable_fast_loss(model)[0][0] == 'decode_head'
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        head = other.decode_head
        assert fl.is_fast_loss_enabled(head)
        assert head.loss_by_feat.args[0] is head  # bound to the copy, not the original


class _OwnLossHead(FCNHead):
    """A head with its own loss (as several mmseg heads have)."""

    def loss_by_feat(self, seg_logits, batch_data_samples):
        return dict(loss_own=seg_logits.sum() * 0)


def _own_head():
    return _OwnLossHead(in_channels=32, channels=32, num_convs=0, concat_input=False,
                        num_classes=19)


def test_heads_with_their_own_loss_are_kept():
    model = _model('mla')
    model.auxiliary_head[2] = _own_head()
    enabled, kept = fl.enable_fast_loss(model)
    assert kept == ['auxiliary_head.2'] and len(enabled) == 4
    assert not fl.is_fast_loss_enabled(model.auxiliary_head[2])
    # ... and still compute their own loss.
    batch = _batch(model)
    assert 'aux_2.loss_own' in model.loss(batch['inputs'], batch['data_samples'])


def test_enable_errors_name_the_problem():
    model = _model('mla')
    model.decode_head = _own_head()
    model.auxiliary_head = None
    with pytest.raises(ConfigError, match=r'has none \(heads: decode_head '
                                          r'\(_OwnLossHead\)\)\. Remove FastLossHook'):
        fl.enable_fast_loss(model)
    model = _model('mla')
    model.decode_head.loss_by_feat = functools.partial(BaseDecodeHead.loss_by_feat,
                                                       model.decode_head)
    with pytest.raises(ConfigError, match="decode_head .SETRMLAHead. already has "
                                          "loss_by_feat replaced on the instance"):
        fl.enable_fast_loss(model)
