"""mmseg's Vision Transformer whose encoder layers are built with fused attention."""
from __future__ import annotations

import inspect

import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from mmseg_ppenc.models.attention import (
    FusedTransformerEncoderLayer,
    check_attention_impl,
    set_attention_impl,
)

__all__ = ['FastVisionTransformer']

# The parent's arguments with mmseg's own defaults, so that the layers built here get
# exactly the values the parent would have given its own layers.
_VIT_SIGNATURE = inspect.signature(VisionTransformer.__init__)


@MODELS.register_module()
class FastVisionTransformer(VisionTransformer):
    """mmseg's ``VisionTransformer`` whose layers use fused scaled-dot-product attention.

    The layers are built as
    :class:`~mmseg_ppenc.models.attention.FusedTransformerEncoderLayer` from the start:
    the parent constructor builds everything but the encoder layers (it is called with
    ``num_layers=0``), then this one appends the layers with the arguments mmseg's loop
    gives them and applies the parent's ``frozen_exclude`` freezing again, now that the
    layers exist. Nothing is built twice and no weights are copied.

    What stays the parent's:

    - module tree, parameter names and state-dict order, so state dicts (and pre-trained
      or fine-tuned checkpoints) load strictly in both directions between
      ``VisionTransformer`` and ``FastVisionTransformer``;
    - ``frozen_exclude``: freezing goes by parameter name, so it freezes the same
      parameters, the attention's ``attn.attn.in_proj_weight`` etc. included;
    - initial values: the layers draw from the global random generator in the parent's
      order (patch embedding, then layer by layer attention and FFN). The only module the
      parent builds after its layers is the final norm, which is now built before them;
      it draws no random numbers (mmcv's norm layers start at ones and zeros), so a
      model built after ``torch.manual_seed(s)`` has the stock model's weights and leaves
      the generator where the stock build does;
    - outputs: in float32 they equal the parent's up to rounding (tests check 1e-5
      relative).

    ``torch.compile`` is not a backbone switch: the project's one compile path is
    :class:`~mmseg_ppenc.hooks.CompileModelHook`, which compiles the whole segmentor.

    Args:
        *args: Positional arguments of ``mmseg.models.backbones.VisionTransformer``.
        attn_impl (str): ``'fused'`` (:class:`FusedMultiheadAttention`, PyTorch's flash /
            memory-efficient kernels) or ``'stock'`` (mmcv's path, which materialises the
            attention matrix). Defaults to ``'fused'``.
        **kwargs: Keyword arguments of ``mmseg.models.backbones.VisionTransformer``.

    Raises:
        ValueError: ``attn_impl`` is not ``'fused'`` or ``'stock'``.
        TypeError: An argument ``VisionTransformer`` does not take, e.g. the removed
            ``torch_compile``.
    """

    def __init__(self, *args, attn_impl: str = 'fused', **kwargs) -> None:
        check_attention_impl(attn_impl)
        if 'torch_compile' in kwargs:
            # Removed switch: say what replaces it rather than Python's bare "unexpected
            # keyword argument".
            raise TypeError('FastVisionTransformer no longer takes torch_compile; compile '
                            "with custom_hooks=[dict(type='CompileModelHook')] instead.")
        bound = _VIT_SIGNATURE.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cfg = dict(bound.arguments)
        del cfg['self']
        num_layers = cfg['num_layers']
        if isinstance(cfg['out_indices'], int) and cfg['out_indices'] == -1:
            # The parent turns -1 into its last layer from num_layers, which it sees as 0.
            cfg['out_indices'] = num_layers - 1
        super().__init__(**{**cfg, 'num_layers': 0})
        self._build_layers(cfg, num_layers, attn_impl)
        # The parent froze by name before the layers existed.
        self._freeze()
        self.attn_impl = attn_impl

    def _build_layers(self, cfg: dict, num_layers: int, attn_impl: str) -> None:
        """Append the encoder layers to ``self.layers`` as mmseg's loop builds them.

        ``self.layers`` was registered by the parent before its final norm, so the
        state-dict order is the parent's.

        Args:
            cfg (dict): Every ``VisionTransformer`` argument, defaults filled in.
            num_layers (int): How many layers to build.
            attn_impl (str): ``'fused'`` or ``'stock'``.
        """
        embed_dims = cfg['embed_dims']
        # The parent's stochastic depth decay rule.
        dpr = [x.item() for x in torch.linspace(0, cfg['drop_path_rate'], num_layers)]
        for i in range(num_layers):
            self.layers.append(
                FusedTransformerEncoderLayer(
                    embed_dims=embed_dims,
                    num_heads=cfg['num_heads'],
                    feedforward_channels=cfg['mlp_ratio'] * embed_dims,
                    attn_drop_rate=cfg['attn_drop_rate'],
                    drop_rate=cfg['drop_rate'],
                    drop_path_rate=dpr[i],
                    num_fcs=cfg['num_fcs'],
                    qkv_bias=cfg['qkv_bias'],
                    act_cfg=cfg['act_cfg'],
                    norm_cfg=cfg['norm_cfg'],
                    with_cp=cfg['with_cp'],
                    batch_first=True,
                    # A dict per layer: mmseg's layer updates its attn_cfg in place (its
                    # default is one dict shared by every layer).
                    attn_cfg=dict(impl=attn_impl)))

    def set_attn_impl(self, impl: str) -> None:
        """Switch all layers to ``'fused'`` or ``'stock'`` attention, in place.

        Args:
            impl (str): ``'fused'`` or ``'stock'``.

        Raises:
            ValueError: ``impl`` is not ``'fused'`` or ``'stock'``.
        """
        set_attention_impl(self.layers, impl)
        self.attn_impl = impl
