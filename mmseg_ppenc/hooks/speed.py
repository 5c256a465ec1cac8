"""Opt-in speed switches for training: channels-last heads, a faster loss path, compiling
the segmentor, deferred loss logging.

All are Runner hooks, so each is one config entry and removing the entry restores
mmseg's stock behaviour:

- :class:`ChannelsLastHook` puts the convolutions of the neck and the heads into
  channels-last memory format. Under bf16 autocast, cuDNN runs NHWC convolutions without
  the layout transposes it inserts around NCHW ones. The numbers are unchanged up to
  floating-point summation order (float32 outputs agree to about 1e-6).
- :class:`FastLossHook` switches the decode and auxiliary heads to
  :func:`~mmseg_ppenc.models.fast_loss.fast_loss_by_feat`: the bilinear resize of the
  logits to the label size as two matrix products, and ``acc_seg`` from ``argmax``.
  Losses and gradients are unchanged up to float rounding.
- :class:`CompileModelHook` compiles the segmentor's forward with ``torch.compile``.
- :class:`DeferredLogRuntimeInfoHook` replaces mmengine's ``RuntimeInfoHook``. The stock
  hook calls ``.item()`` on every logged loss after every iteration, one host-device
  synchronisation each, so the CPU can never queue the next iteration while the GPU is
  still busy. This hook keeps the values on the device and copies them to the host once
  every ``interval`` iterations (use the logger's interval); the message hub then holds
  exactly the values the stock hook would have written, so logs are identical.

Two further switches need no code here: ``optim_wrapper.optimizer.fused=True`` (a fused
SGD / AdamW step, PyTorch's own) and mmengine's ``compile=True`` (``torch.compile`` of
the whole ``train_step``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import RuntimeInfoHook
from mmengine.hooks.hook import Hook
from mmseg.registry import HOOKS
from torch import nn

__all__ = ['HEAD_PARTS', 'to_channels_last', 'ChannelsLastHook', 'CompileModelHook',
           'DeferredLogRuntimeInfoHook', 'FastLossHook']

#: The parts of an mmseg ``EncoderDecoder`` after the backbone.
HEAD_PARTS = ('neck', 'decode_head', 'auxiliary_head')


def _unwrap(model: nn.Module) -> nn.Module:
    from ..core.keyed import unwrap_model
    return unwrap_model(model)


def to_channels_last(model: nn.Module, parts: Sequence[str] = HEAD_PARTS) -> List[str]:
    """Convert the 4-D parameters and buffers of ``model.<part>`` to channels-last.

    A convolution whose weight is channels-last runs channels-last and returns a
    channels-last output, so converting the weights is enough; the backbone (a ViT whose
    only convolution is the patch embedding) is left alone by default.

    Args:
        model (nn.Module): An mmseg segmentor (possibly wrapped, e.g. in DDP).
        parts (Sequence[str]): Attribute names of the submodules to convert. Defaults to
            :data:`HEAD_PARTS`.

    Returns:
        list[str]: The parts that exist and were converted, in order.

    Raises:
        ValueError: If ``parts`` names no submodule of ``model`` at all.
    """
    model = _unwrap(model)
    done = []
    for name in parts:
        part = getattr(model, name, None)
        if part is None:
            continue
        part.to(memory_format=torch.channels_last)
        done.append(name)
    if not done:
        raise ValueError(f'None of {list(parts)} is a submodule of '
                         f'{type(model).__name__}; expected some of {list(HEAD_PARTS)}.')
    return done


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Channels-last memory format for the neck and heads, set before training.

    Enable with ``custom_hooks = [dict(type='ChannelsLastHook')]``; drop the entry for
    mmseg's default (contiguous NCHW) layout.

    Args:
        parts (Sequence[str]): Submodules of the segmentor to convert. Defaults to
            ``('neck', 'decode_head', 'auxiliary_head')``.
    """

    # After weights are loaded (init_weights / load_from run before `before_train`).
    priority = 'LOW'

    def __init__(self, parts: Sequence[str] = HEAD_PARTS) -> None:
        if isinstance(parts, str) or not parts:
            raise ValueError(f'parts must be a non-empty list of submodule names, got '
                             f'{parts!r}')
        self.parts = tuple(parts)

    def before_train(self, runner) -> None:
        done = to_channels_last(runner.model, self.parts)
        runner.logger.info(f'ChannelsLastHook: {", ".join(done)} in channels-last format.')


@HOOKS.register_module()
class CompileModelHook(Hook):
    """``torch.compile`` the whole segmentor forward (backbone, neck, heads and losses).

    ``nn.Module.compile`` compiles in place, so parameter names, checkpoints and the
    optimizer are unaffected; the data preprocessor (and with it any encryption on the
    device) stays eager. On one H200 this took ViT-L + MLA 768x768 training from about
    30 to about 38 images/s (docs/benchmarks.md); the first iterations are slow while it
    compiles. mmengine's own ``compile=True`` compiles ``train_step`` instead, which
    compiled for minutes in the same measurement.

    Enable with ``custom_hooks = [dict(type='CompileModelHook')]``; drop the entry for
    eager execution.

    Args:
        options (dict, optional): Keyword arguments of ``torch.compile`` (e.g.
            ``dict(mode='max-autotune')``). Defaults to None.
    """

    priority = 'LOW'

    def __init__(self, options: Optional[dict] = None) -> None:
        self.options = dict(options or {})

    def before_train(self, runner) -> None:
        _unwrap(runner.model).compile(**self.options)


@HOOKS.register_module()
class FastLossHook(Hook):
    """The heads' losses through :mod:`mmseg_ppenc.models.fast_loss`, set before training.

    Resizes each head's logits to the label size with two matrix products instead of
    ``F.interpolate`` (whose CUDA backward uses atomics) and logs ``acc_seg`` from
    ``argmax`` instead of mmseg's ``topk`` accuracy (equal except at exact ties). Heads
    whose class overrides ``loss_by_feat`` keep their own and are named in the log.

    Enable it without touching a config's own ``custom_hooks`` (the proposed configs
    hold ``KeyManagementHook`` there) with
    ``--cfg-options default_hooks.fast_loss.type=FastLossHook``, or in a config with
    ``custom_hooks = [..., dict(type='FastLossHook')]``; drop it for mmseg's loss path.
    It runs before :class:`CompileModelHook`, so a compiled forward includes it.
    """

    priority = 'NORMAL'

    def before_train(self, runner) -> None:
        from ..models.fast_loss import enable_fast_loss
        enabled, kept = enable_fast_loss(runner.model)
        msg = f'FastLossHook: matmul resize + argmax accuracy in {", ".join(enabled)}.'
        if kept:
            msg += f' Kept their own loss_by_feat: {", ".join(kept)}.'
        runner.logger.info(msg)


@HOOKS.register_module()
class DeferredLogRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` that moves logged losses to the host every ``interval`` steps.

    Replace the stock hook with
    ``default_hooks = dict(runtime_info=dict(type='DeferredLogRuntimeInfoHook',
    interval=50))`` (the interval of ``default_hooks.logger``). Values are flushed before
    the logger reads them (this hook runs first), at the end of training and before
    validation and checkpoints, so logs, the message hub and checkpoints match the stock
    hook's.

    Args:
        interval (int): Iterations between host copies. Defaults to 50 (mmseg's logging
            interval). ``1`` behaves like the stock hook.
    """

    def __init__(self, interval: int = 50) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be a positive integer, got {interval!r}')
        self.interval = interval
        self._pending: List[Dict[str, object]] = []

    def _flush(self, runner) -> None:
        if not self._pending:
            return
        tensors = [v.detach().reshape(()).double() for item in self._pending
                   for v in item.values() if isinstance(v, torch.Tensor)]
        # One device-to-host copy for every pending value.
        host = iter(torch.stack(tensors).tolist() if tensors else [])
        for item in self._pending:
            for key, value in item.items():
                if isinstance(value, torch.Tensor):
                    value = next(host)
                runner.message_hub.update_scalar(f'train/{key}', value)
        self._pending = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if outputs is not None:
            self._pending.append(dict(outputs))
        if (self.every_n_train_iters(runner, self.interval)
                or self.every_n_inner_iters(batch_idx, self.interval)
                or self.is_last_train_iter(runner)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            self._flush(runner)

    def before_val(self, runner) -> None:
        self._flush(runner)
        super().before_val(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._pending:
            # The Runner put the message hub into `checkpoint` before calling hooks.
            self._flush(runner)
            if 'message_hub' in checkpoint:
                checkpoint['message_hub'] = runner.message_hub.state_dict()

    def after_train(self, runner) -> None:
        self._flush(runner)
