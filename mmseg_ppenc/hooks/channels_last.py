"""Channels-last memory format for the neck and heads of a segmentor (opt-in)."""
from __future__ import annotations

from typing import List, Sequence

import torch
from mmengine.hooks.hook import Hook
from mmseg.registry import HOOKS
from torch import nn

from mmseg_ppenc.core.keyed import unwrap_model

__all__ = ['HEAD_PARTS', 'to_channels_last', 'ChannelsLastHook']

#: The parts of an mmseg ``EncoderDecoder`` after the backbone.
HEAD_PARTS = ('neck', 'decode_head', 'auxiliary_head')


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
    model = unwrap_model(model)
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

    Under bf16 autocast, cuDNN runs NHWC convolutions without the layout transposes it
    inserts around NCHW ones. The numbers are unchanged up to floating-point summation
    order (float32 outputs agree to about 1e-6).

    Enable with ``custom_hooks = [dict(type='ChannelsLastHook')]``; drop the entry for
    mmseg's default (contiguous NCHW) layout.

    Args:
        parts (Sequence[str]): Submodules of the segmentor to convert. Defaults to
            ``('neck', 'decode_head', 'auxiliary_head')``.

    Raises:
        ValueError: ``parts`` is a string or empty.
    """

    # After weights are loaded (init_weights / load_from run before `before_train`).
    priority = 'LOW'

    def __init__(self, parts: Sequence[str] = HEAD_PARTS) -> None:
        if isinstance(parts, str) or not parts:
            raise ValueError(f'parts must be a non-empty list of submodule names, got '
                             f'{parts!r}')
        self.parts = tuple(parts)

    def before_train(self, runner) -> None:
        """Convert the parts of ``runner.model``.

        Args:
            runner (Runner): The mmengine runner.
        """
        done = to_channels_last(runner.model, self.parts)
        runner.logger.info(f'ChannelsLastHook: {", ".join(done)} in channels-last format.')
