"""The fast loss path: matmul bilinear resize and argmax accuracy equal mmseg's, alone,
in the heads' losses for several heads, loss sets and samplers, and through the real tiny
SETR models; switched off, mmseg's own code runs. The copy of mmseg's ``loss_by_feat``
is pinned to mmseg's source."""
import copy
import functools
import hashlib
import inspect
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

from ppenc.errors import ConfigError
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


# --------------------------------------------------------------------------- the copy
# mmseg 1.2.2's BaseDecodeHead methods that fast_loss_by_feat copies: loss_by_feat with
# two calls replaced, and the label stacking of _stack_batch_gt.
COPIED_SHA256 = {
    'loss_by_feat': '10863a800c501fa15f599114a6650c9c67f469210d8675acdb9aaef29500582d',
    '_stack_batch_gt': '4c59c8d3297b675ab254c64ce710a2146c86a768056acc057cb6620994f5acb5',
}


@pytest.mark.parametrize('method', list(COPIED_SHA256))
def test_mmseg_code_is_the_one_fast_loss_copies(method):
    source = inspect.getsource(getattr(BaseDecodeHead, method))
    got = hashlib.sha256(source.encode()).hexdigest()
    assert got == COPIED_SHA256[method], (
        f"mmseg's BaseDecodeHead.{method} changed (an mmseg upgrade?). "
        'mmseg_ppenc.models.fast_loss.fast_loss_by_feat copies loss_by_feat with two '
        'calls replaced (resize -> bilinear_resize, accuracy -> argmax_accuracy) and '
        "_stack_batch_gt's label stacking: compare it line by line with mmseg's new "
        'code, port every other change, run tests/models/test_fast_loss.py, then pin '
        f'the new hash {got}.')


class _OwnLabelsHead(FCNHead):
    """A head that keeps mmseg's loss_by_feat but stacks its labels its own way."""

    def _stack_batch_gt(self, batch_data_samples):
        return super()._stack_batch_gt(batch_data_samples)


def test_heads_stacking_labels_their_own_way_keep_mmseg_loss():
    """fast_loss_by_feat stacks the labels as BaseDecodeHead does, so a head class that
    redefines that keeps mmseg's path; so far no mmseg head with mmseg's loss_by_feat
    does."""
    kw = dict(in_channels=8, channels=8, num_convs=1, num_classes=3)
    assert fl.has_stock_loss(FCNHead(**kw))
    assert not fl.has_stock_loss(_OwnLabelsHead(**kw))
    heads = [cls for cls in MODELS.module_dict.values()
             if isinstance(cls, type) and issubclass(cls, BaseDecodeHead)]
    assert len(heads) > 20
    kept = [cls.__name__ for cls in heads if cls.loss_by_feat is BaseDecodeHead.loss_by_feat
            and cls._stack_batch_gt is not BaseDecodeHead._stack_batch_gt]
    assert kept == []


N_CLASSES = 5
# Heads whose class keeps mmseg's loss_by_feat; the loss path reads only their settings.
HEADS = {
    'fcn': dict(type='FCNHead', in_channels=8, channels=8, num_convs=1),
    'psp': dict(type='PSPHead', in_channels=8, channels=8),
    'aspp': dict(type='ASPPHead', in_channels=8, channels=8, dilations=(1, 6)),
    'setr_up': dict(type='SETRUPHead', in_channels=8, channels=8),
    'uper': dict(type='UPerHead', in_channels=[8] * 4, in_index=[0, 1, 2, 3], channels=8),
}
# Head settings that reach the loss path: loss modules (one, several, two with one name,
# which are summed), class weights, the OHEM sampler, align_corners, ignore_index.
LOSS_SETTINGS = {
    'ce': dict(loss_decode=dict(type='CrossEntropyLoss')),
    'ce_class_weight': dict(loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4,
                                             class_weight=[1.0, 2.0, 0.5, 1.5, 1.0])),
    'ce_avg_non_ignore': dict(loss_decode=dict(type='CrossEntropyLoss',
                                               avg_non_ignore=True)),
    'ce+dice': dict(loss_decode=[dict(type='CrossEntropyLoss'),
                                 dict(type='DiceLoss', loss_weight=3.0)]),
    'ce+ce_same_name': dict(loss_decode=[dict(type='CrossEntropyLoss'),
                                         dict(type='CrossEntropyLoss', loss_weight=0.5)]),
    'lovasz': dict(loss_decode=dict(type='LovaszLoss', reduction='none', per_image=False)),
    'tversky': dict(loss_decode=dict(type='TverskyLoss', alpha=0.3, beta=0.7)),
    'ohem_thresh': dict(sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=100)),
    'ohem_min_kept': dict(sampler=dict(type='OHEMPixelSampler', min_kept=300)),
    'align_corners': dict(align_corners=True),
    'ignore_index_2': dict(ignore_index=2),
}
# mmseg's cross-entropy with class weights indexes them with every label, the ignored
# one included, so those labels have no ignored pixels.
NO_IGNORED = {'ce_class_weight'}


def _head_losses(loss_by_feat, head, logits, samples):
    logits = logits.clone().requires_grad_()
    losses = loss_by_feat(head, logits, samples)
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    return {k: v.detach() for k, v in losses.items()}, logits.grad


@pytest.mark.parametrize('setting', list(LOSS_SETTINGS))
@pytest.mark.parametrize('head_name', list(HEADS))
def test_same_losses_as_mmseg_for_heads_and_loss_settings(head_name, setting):
    """fast_loss_by_feat against mmseg's own loss_by_feat on the same head: the same loss
    names and values, and the same gradients of the logits (float32)."""
    head = MODELS.build(dict(HEADS[head_name], num_classes=N_CLASSES,
                             **LOSS_SETTINGS[setting])).train()
    g = torch.Generator().manual_seed(0)
    # Logits below the label size and of another aspect ratio, as the heads give them.
    logits = torch.randn(2, N_CLASSES, 9, 11, generator=g)
    samples = []
    for _ in range(2):
        label = torch.randint(0, N_CLASSES, (1, 37, 45), generator=g)
        if setting not in NO_IGNORED:
            label[:, :4] = head.ignore_index
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=label)))
    ref, ref_grad = _head_losses(BaseDecodeHead.loss_by_feat, head, logits, samples)
    got, grad = _head_losses(fl.fast_loss_by_feat, head, logits, samples)
    assert list(got) == list(ref)
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-7, msg=k)
    _assert_rel(grad, ref_grad)


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
