"""Logged losses copied to the host once per log interval instead of every iteration."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from mmengine.hooks import RuntimeInfoHook
from mmseg.registry import HOOKS

__all__ = ['DeferredLogRuntimeInfoHook']


@HOOKS.register_module()
class DeferredLogRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` that moves logged losses to the host every ``interval`` steps.

    The stock hook calls ``.item()`` on every logged loss after every iteration, one
    host-device synchronisation each, so the CPU can never queue the next iteration while
    the GPU is still busy. This hook keeps the values on the device and copies them to
    the host once every ``interval`` iterations; the message hub then holds exactly the
    values the stock hook would have written, so logs are identical.

    Replace the stock hook with
    ``default_hooks = dict(runtime_info=dict(type='DeferredLogRuntimeInfoHook',
    interval=50))`` (the interval of ``default_hooks.logger``). Values are flushed before
    the logger reads them (this hook runs first), at the end of training and before
    validation and checkpoints, so logs, the message hub and checkpoints match the stock
    hook's.

    Args:
        interval (int): Iterations between host copies. Defaults to 50 (mmseg's logging
            interval). ``1`` behaves like the stock hook.

    Raises:
        ValueError: ``interval`` is not a positive integer.
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
