"""A faster loss path for mmseg decode heads: bilinear resize as matrix products, argmax
accuracy.

mmseg's ``BaseDecodeHead.loss_by_feat`` upsamples each head's logits to the label size
with ``F.interpolate(mode='bilinear')`` and logs ``acc_seg`` from mmseg's ``accuracy()``.
At SETR's training shapes on a GPU both are slow. The CUDA backward of bilinear
upsampling adds every output gradient into its four source pixels with atomic additions,
which contend badly at 16x upsampling (the auxiliary heads). ``accuracy()`` runs a
``topk`` and indexes with a boolean mask, which makes the host wait for the device.

:func:`fast_loss_by_feat` computes the same losses with two changes:

- **Resize.** :func:`bilinear_resize` computes ``A_h @ X @ A_w^T``, where ``A_h`` and
  ``A_w`` are the interpolation matrices of ``F.interpolate``'s bilinear mode
  (:func:`bilinear_matrix`; two non-zero weights per row). The result equals
  ``F.interpolate`` up to float rounding, for both ``align_corners`` settings and for up-
  and down-sampling. Its backward is two matrix products as well, with no atomics.
  Like ``F.interpolate`` under autocast, it runs in float32.
- **Accuracy.** :func:`argmax_accuracy` takes the ``argmax`` over classes without
  gradients and without boolean indexing. It equals mmseg's ``accuracy()`` (top-1)
  except where two classes tie for the highest logit: ``argmax`` picks the first of them,
  while ``topk`` leaves the choice to the device.

The losses, their gradients and everything else in the head are mmseg's own.
:func:`enable_fast_loss` switches the heads of a built segmentor to this path, and
:class:`~mmseg_ppenc.hooks.FastLossHook` does that at the start of a run.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ['bilinear_matrix', 'bilinear_resize', 'argmax_accuracy', 'fast_loss_by_feat',
           'enable_fast_loss', 'disable_fast_loss', 'is_fast_loss_enabled', 'loss_heads',
           'has_stock_loss']

# (in_size, out_size, align_corners, dtype, device) -> matrix. Training uses a handful of
# shapes; the bound only guards runs with varying label sizes.
_MATRICES: 'OrderedDict[tuple, Tensor]' = OrderedDict()
_MAX_CACHED = 64


def _build_matrix(in_size: int, out_size: int, align_corners: bool, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    # The source coordinates as PyTorch's upsample kernels compute them
    # (area_pixel_compute_scale / area_pixel_compute_source_index), in the precision
    # they use: float32 for every float type except float64.
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    dst = torch.arange(out_size, device=device, dtype=cdtype)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = src.floor().clamp(max=in_size - 1)
    lam = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=in_size - 1)
    # One-hot rows by comparison: no scatter, no data-dependent shapes, so the same code
    # runs eagerly and inside torch.compile.
    cols = torch.arange(in_size, device=device)
    m = ((1 - lam)[:, None] * (cols[None, :] == i0[:, None]) +
         lam[:, None] * (cols[None, :] == i1[:, None]))
    return m.to(dtype)


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False,
                    dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Tensor:
    """The ``(out_size, in_size)`` matrix of 1-D bilinear resampling, as ``F.interpolate``.

    Row ``i`` holds the weights of output pixel ``i``: ``1 - t`` and ``t`` at its two
    source pixels (one pixel with weight 1 at the borders). Matrices are cached per
    ``(in_size, out_size, align_corners, dtype, device)``; inside ``torch.compile`` they
    are built in the graph instead (a few element-wise kernels).

    Args:
        in_size (int): Input length (> 0).
        out_size (int): Output length (> 0).
        align_corners (bool): As in ``F.interpolate``. Defaults to False.
        dtype (torch.dtype): Floating dtype of the matrix. Defaults to float32.
        device (torch.device, optional): Defaults to None (the CPU).

    Returns:
        Tensor: The matrix, not requiring gradients. Do not modify it: it is shared.

    Raises:
        ValueError: If a size is not a positive integer or ``dtype`` is not floating.
    """
    for name, value in (('in_size', in_size), ('out_size', out_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if not dtype.is_floating_point:
        raise ValueError(f'dtype must be a floating type, got {dtype}')
    device = torch.device(device if device is not None else 'cpu')
    align_corners = bool(align_corners)
    if torch.compiler.is_compiling():
        return _build_matrix(in_size, out_size, align_corners, dtype, device)
    key = (in_size, out_size, align_corners, dtype, device)
    m = _MATRICES.get(key)
    if m is None:
        # A matrix first built under inference_mode would be an inference tensor, which
        # autograd refuses to save in later training steps.
        with torch.inference_mode(False), torch.no_grad():
            m = _build_matrix(in_size, out_size, align_corners, dtype, device)
        _MATRICES[key] = m
        if len(_MATRICES) > _MAX_CACHED:
            _MATRICES.popitem(last=False)
    else:
        _MATRICES.move_to_end(key)
    return m


def _no_autocast(device_type: str):
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support: nothing to disable
        import contextlib
        return contextlib.nullcontext()


def bilinear_resize(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=...)`` as matrix products.

    Computes ``A_h @ x @ A_w^T`` with the matrices of :func:`bilinear_matrix`, contracting
    first the side that costs fewer multiply-adds. Half and bfloat16 inputs are computed
    and returned in float32, as ``F.interpolate`` does under autocast; autocast is off
    inside, so the products are not cast back down. An input already at ``size`` is
    returned as it is (in that dtype).

    Args:
        x (Tensor): ``(N, C, H, W)`` floating tensor.
        size (Sequence[int]): Output ``(height, width)``.
        align_corners (bool): As in ``F.interpolate``. Defaults to False.

    Returns:
        Tensor: ``(N, C, size[0], size[1])``, float32 or float64.

    Raises:
        ValueError: If ``x`` is not a 4-D floating tensor or ``size`` is not two positive
            integers.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f'x must be a floating (N, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)} and dtype {x.dtype}')
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'size must be two positive integers (height, width), got {size}')
    dtype = torch.promote_types(x.dtype, torch.float32)
    h, w = x.shape[-2:]
    oh, ow = size
    if (h, w) == (oh, ow):
        return x.to(dtype)
    a_h = bilinear_matrix(h, oh, align_corners, dtype, x.device)
    a_w = bilinear_matrix(w, ow, align_corners, dtype, x.device)
    with _no_autocast(x.device.type):
        x = x.to(dtype)
        if h * w * ow + oh * h * ow <= oh * h * w + oh * w * ow:
            # (N*C*H, W) @ (W, OW) as one product, then a batched product along H.
            return torch.matmul(a_h, torch.matmul(x, a_w.t()))
        return torch.matmul(torch.matmul(a_h, x), a_w.t())


@torch.no_grad()
def argmax_accuracy(pred: Tensor, target: Tensor, ignore_index: Optional[int] = None
                    ) -> Tensor:
    """Pixel accuracy in percent from the top class, as mmseg's ``accuracy(topk=1)``.

    Same value and shape as mmseg's (including its epsilon: an all-ignored batch gives
    100) except at ties for the highest logit (see the module notes). No gradients, no
    ``topk``, and no boolean indexing, so the host never waits for the device.

    Args:
        pred (Tensor): ``(N, C, ...)`` scores.
        target (Tensor): ``(N, ...)`` class indices.
        ignore_index (int, optional): Label left out of the count. Defaults to None.

    Returns:
        Tensor: Shape ``(1,)``, float32 (a 0-d zero for an empty batch, as mmseg's).

    Raises:
        ValueError: If the shapes of ``pred`` and ``target`` do not match.
    """
    if pred.dim() != target.dim() + 1 or pred.shape[:1] + pred.shape[2:] != target.shape:
        raise ValueError(f'pred must be (N, C, ...) for target (N, ...); got pred '
                         f'{tuple(pred.shape)} and target {tuple(target.shape)}')
    if pred.size(0) == 0:
        return pred.new_tensor(0.)
    eps = torch.finfo(torch.float32).eps
    correct = pred.argmax(dim=1) == target
    if ignore_index is None:
        hits = correct.sum(dtype=torch.float32).reshape(1)
        return (hits + eps) * (100.0 / (target.numel() + eps))
    valid = target != ignore_index
    hits = (correct & valid).sum(dtype=torch.float32).reshape(1)
    # The count stays on the device (mmseg's `.numel()` of a masked tensor waits for it).
    return (hits + eps) * 100.0 / (valid.sum(dtype=torch.float32) + eps)


def fast_loss_by_feat(head: nn.Module, seg_logits: Tensor, batch_data_samples: list) -> dict:
    """mmseg's ``BaseDecodeHead.loss_by_feat`` with the resize and accuracy above.

    Everything else is mmseg's (the head's ``sampler``, ``loss_decode`` modules and
    ``ignore_index``), in mmseg's order, so the losses and their gradients equal the
    stock ones up to float rounding. The labels are stacked from ``gt_sem_seg`` as
    mmseg's private ``BaseDecodeHead._stack_batch_gt`` does (the mmseg heads that
    override that method override ``loss_by_feat`` too, so they never come here).

    This is a copy of mmseg 1.2.2's method with two calls replaced: mmseg's method calls
    the module-level ``resize`` and ``accuracy`` directly, so it cannot be reused with
    other ones. ``tests/models/test_fast_loss.py`` pins a hash of mmseg's source (and of
    ``_stack_batch_gt``), which fails on an mmseg change that this copy must follow, and
    compares the two methods' losses and gradients for several heads, loss sets and
    samplers.

    Args:
        head (nn.Module): A ``BaseDecodeHead`` that does not override ``loss_by_feat``.
        seg_logits (Tensor): The head's output, ``(N, num_classes, h, w)``.
        batch_data_samples (list[SegDataSample]): Samples with ``gt_sem_seg``.

    Returns:
        dict[str, Tensor]: One entry per loss name, and ``acc_seg``.
    """
    seg_label = torch.stack([s.gt_sem_seg.data for s in batch_data_samples], dim=0)
    seg_logits = bilinear_resize(seg_logits, seg_label.shape[2:], head.align_corners)
    seg_weight = (head.sampler.sample(seg_logits, seg_label)
                  if head.sampler is not None else None)
    seg_label = seg_label.squeeze(1)
    losses_decode = (head.loss_decode if isinstance(head.loss_decode, nn.ModuleList)
                     else [head.loss_decode])
    loss = dict()
    for loss_decode in losses_decode:
        value = loss_decode(seg_logits, seg_label, weight=seg_weight,
                            ignore_index=head.ignore_index)
        name = loss_decode.loss_name
        loss[name] = loss[name] + value if name in loss else value
    loss['acc_seg'] = argmax_accuracy(seg_logits, seg_label, head.ignore_index)
    return loss


def loss_heads(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, head)`` of a segmentor's decode head and auxiliary heads, in order.

    Names are ``'decode_head'`` and ``'auxiliary_head'`` or ``'auxiliary_head.<i>'``.
    """
    from mmseg_ppenc.core.keyed import unwrap_model
    model = unwrap_model(model)
    head = getattr(model, 'decode_head', None)
    if isinstance(head, nn.Module):
        yield 'decode_head', head
    aux = getattr(model, 'auxiliary_head', None)
    if isinstance(aux, nn.ModuleList):
        for i, h in enumerate(aux):
            yield f'auxiliary_head.{i}', h
    elif isinstance(aux, nn.Module):
        yield 'auxiliary_head', aux


def has_stock_loss(head: nn.Module) -> bool:
    """Whether ``head`` is a ``BaseDecodeHead`` whose class keeps mmseg's ``loss_by_feat``
    and its label stacking (``_stack_batch_gt``), the two that :func:`fast_loss_by_feat`
    stands in for.

    Args:
        head (nn.Module): Any module.

    Returns:
        bool: True when :func:`fast_loss_by_feat` computes what the head's own
        ``loss_by_feat`` computes.
    """
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    if not isinstance(head, BaseDecodeHead):
        return False
    below = type(head).__mro__[:type(head).__mro__.index(BaseDecodeHead)]
    # Looked up by name in the subclasses' own dicts: a subclass that redefines how the
    # labels are stacked keeps its own path (mmseg's method itself is private API).
    return (type(head).loss_by_feat is BaseDecodeHead.loss_by_feat
            and not any('_stack_batch_gt' in vars(c) for c in below))


def is_fast_loss_enabled(head: nn.Module) -> bool:
    """Whether ``head`` runs :func:`fast_loss_by_feat` (set by :func:`enable_fast_loss`)."""
    bound = head.__dict__.get('loss_by_feat')
    return isinstance(bound, functools.partial) and bound.func is fast_loss_by_feat


def enable_fast_loss(model: nn.Module) -> Tuple[List[str], List[str]]:
    """Switch the heads of ``model`` to :func:`fast_loss_by_feat`.

    Each eligible head (a ``BaseDecodeHead`` whose class keeps mmseg's
    ``loss_by_feat``) gets an instance attribute ``loss_by_feat``, a
    ``functools.partial`` of :func:`fast_loss_by_feat` bound to it, which the head's
    ``loss()`` then calls. This changes only this model's heads: no class, no mmseg
    module and no other model is touched, nor the heads' types (SETRMLAHead, FCNHead,
    SETRUPHead, ... stay what the config built), so any config's heads can use it
    without a subclass per head type and a config edit per head. Parameters, state
    dicts and checkpoints are unchanged. :func:`disable_fast_loss` undoes it.

    Heads that override ``loss_by_feat`` compute something else and keep their own.
    Calling this twice is harmless.

    Args:
        model (nn.Module): An mmseg segmentor (possibly wrapped, e.g. in DDP).

    Returns:
        tuple[list[str], list[str]]: Names of the heads switched (see
        :func:`loss_heads`) and of the heads kept as they were.

    Raises:
        ConfigError: If no head is eligible, or if something else already replaced a
            head's ``loss_by_feat`` on the instance.
    """
    from ppenc.errors import ConfigError
    enabled, kept = [], []
    for name, head in loss_heads(model):
        if not has_stock_loss(head):
            kept.append(name)
            continue
        if 'loss_by_feat' in head.__dict__ and not is_fast_loss_enabled(head):
            raise ConfigError(
                f'{name} ({type(head).__name__}) already has loss_by_feat replaced on the '
                f'instance by {head.__dict__["loss_by_feat"]!r}; expected mmseg\'s own. '
                'Remove the other replacement or do not enable the fast loss path.')
        head.loss_by_feat = functools.partial(fast_loss_by_feat, head)
        enabled.append(name)
    if not enabled:
        found = ', '.join(f'{n} ({type(h).__name__})' for n, h in loss_heads(model))
        raise ConfigError(
            f'The fast loss path applies to heads that use mmseg\'s '
            f'BaseDecodeHead.loss_by_feat; {type(model).__name__} has none '
            f'(heads: {found or "none"}). Remove FastLossHook from the config.')
    return enabled, kept


def disable_fast_loss(model: nn.Module) -> List[str]:
    """Give every head of ``model`` mmseg's own ``loss_by_feat`` back.

    Args:
        model (nn.Module): A segmentor (possibly wrapped).

    Returns:
        list[str]: Names of the heads switched back.
    """
    done = []
    for name, head in loss_heads(model):
        if is_fast_loss_enabled(head):
            del head.__dict__['loss_by_feat']
            done.append(name)
    return done
