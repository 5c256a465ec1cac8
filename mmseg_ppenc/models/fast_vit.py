"""mmseg's Vision Transformer with fused attention and an opt-in ``torch.compile``."""
from __future__ import annotations

from typing import Union

from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from .attention import ATTN_IMPLS, fuse_encoder_layer, set_attention_impl

__all__ = ['FastVisionTransformer']


@MODELS.register_module()
class FastVisionTransformer(VisionTransformer):
    """mmseg's ``VisionTransformer`` whose layers use fused scaled-dot-product attention.

    The module tree, parameter names and initialisation are those of the parent, so
    state dicts (and pre-trained or fine-tuned checkpoints) load strictly in both
    directions between ``VisionTransformer`` and ``FastVisionTransformer``. In float32 the
    outputs equal the parent's up to rounding (tests check 1e-5 relative).

    Args:
        attn_impl (str): ``'fused'`` (:class:`FusedMultiheadAttention`, PyTorch's flash /
            memory-efficient kernels) or ``'stock'`` (mmcv's path, which materialises the
            attention matrix). Defaults to ``'fused'``.
        torch_compile (bool | dict): ``torch.compile`` the backbone in place
            (``nn.Module.compile``; parameter names do not change). ``True`` uses the
            default options, a dict is passed to ``torch.compile`` (e.g.
            ``dict(mode='max-autotune')``). The first iterations are slow while it
            compiles. Defaults to False.
        *args, **kwargs: Every argument of ``mmseg.models.backbones.VisionTransformer``.
    """

    def __init__(self,
                 *args,
                 attn_impl: str = 'fused',
                 torch_compile: Union[bool, dict] = False,
                 **kwargs) -> None:
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}.')
        if not isinstance(torch_compile, (bool, dict)):
            raise TypeError(f'torch_compile must be a bool or a dict of torch.compile '
                            f'options, got {type(torch_compile).__name__}.')
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            fuse_encoder_layer(layer)
        self.set_attn_impl(attn_impl)
        self.torch_compile = torch_compile
        if torch_compile:
            self.compile(**(torch_compile if isinstance(torch_compile, dict) else {}))

    def set_attn_impl(self, impl: str) -> None:
        """Switch all layers to ``'fused'`` or ``'stock'`` attention, in place.

        Args:
            impl (str): ``'fused'`` or ``'stock'``.
        """
        n = set_attention_impl(self.layers, impl)
        if n != len(self.layers):  # a layer whose attention is not mmcv's
            raise RuntimeError(f'Expected one mmcv MultiheadAttention per layer '
                               f'({len(self.layers)}), found {n}.')
        self.attn_impl = impl
