"""bf16 mixed-precision training that falls back to float32 where bf16 is unsupported.

mmengine's ``AmpOptimWrapper`` asserts a GPU (or NPU/MLU/MUSA) when it is built, so a config
that names it cannot even start on a CPU, and on GPUs without native bf16 (before Ampere)
``dtype='bfloat16'`` is emulated and slow. :class:`BF16AmpOptimWrapper` decides per step,
from the device of the model's parameters: bf16 autocast where the device supports it
natively, float32 otherwise, with one log line saying which.

bf16 has float32's exponent range, so no loss scaling is needed; backward and step are
those of the plain ``OptimWrapper``, and checkpoints are interchangeable with it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS
from torch import nn

__all__ = ['BF16AmpOptimWrapper', 'bf16_autocast_supported']


def bf16_autocast_supported(device_type: str, allow_cpu: bool = False) -> bool:
    """Whether bf16 autocast is worth using on ``device_type``.

    Args:
        device_type (str): ``'cuda'``, ``'cpu'``, ...
        allow_cpu (bool): Count CPUs as supported. CPU bf16 autocast works in PyTorch, but
            without AMX matrix units it is usually slower than float32. Defaults to
            False.

    Returns:
        bool: True for CUDA devices with native bf16 (compute capability >= 8.0), and for
        the CPU when ``allow_cpu``.
    """
    if device_type == 'cuda':
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation (and no emulation)
            return torch.cuda.is_bf16_supported()
    if device_type == 'cpu':
        return allow_cpu
    return False


@OPTIM_WRAPPERS.register_module()
class BF16AmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` with bf16 autocast where supported, float32 elsewhere.

    Use it in place of ``OptimWrapper`` (same arguments plus ``allow_cpu``); switching back
    is ``optim_wrapper.type='OptimWrapper'``. Only the forward pass and loss under
    ``optim_context`` are autocast; parameters, gradients and optimizer state stay
    float32. Validation and testing are not affected (mmengine's loops run them outside
    ``optim_context``).

    Args:
        allow_cpu (bool): Use bf16 autocast on the CPU as well (useful only on CPUs with
            AMX). Defaults to False: CPU runs train in float32.
        **kwargs: Arguments of ``mmengine.optim.OptimWrapper`` (``optimizer``,
            ``clip_grad``, ``accumulative_counts``).
    """

    def __init__(self, allow_cpu: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allow_cpu = allow_cpu
        self._decided: dict = {}

    def autocast_dtype(self, device_type: str) -> Optional[torch.dtype]:
        """``torch.bfloat16`` if steps on ``device_type`` are autocast, else None."""
        if device_type not in self._decided:
            ok = bf16_autocast_supported(device_type, self.allow_cpu)
            self._decided[device_type] = torch.bfloat16 if ok else None
            how = ('bf16 mixed precision' if ok else
                   'float32 (bf16 autocast is unsupported or disabled here)')
            print_log(f'BF16AmpOptimWrapper: training on {device_type} in {how}.',
                      logger='current')
        return self._decided[device_type]

    @contextmanager
    def optim_context(self, model: nn.Module):
        """The parent's context (gradient-accumulation sync control) plus bf16 autocast.

        Args:
            model (nn.Module): The training model.
        """
        param = next(model.parameters(), None)
        device_type = param.device.type if param is not None else 'cpu'
        dtype = self.autocast_dtype(device_type)
        with super().optim_context(model):
            if dtype is None:
                yield
            else:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    yield
