"""Multi-head attention through PyTorch's fused scaled-dot-product attention.

mmcv's ``MultiheadAttention`` (used by every layer of mmseg's ``VisionTransformer``) calls
``nn.MultiheadAttention`` with the default ``need_weights=True``. That forces the slow path:
the full ``heads x tokens x tokens`` attention matrix is materialised, and kept for the
backward pass, instead of running ``F.scaled_dot_product_attention`` (flash /
memory-efficient kernels). For SETR ViT-L at 768x768 (2305 tokens) this matrix dominates
both time and memory (see docs/benchmarks.md).

:class:`FusedMultiheadAttention` is a drop-in subclass: same constructor, same submodules,
same parameter names (``attn.in_proj_weight``, ``attn.out_proj.weight``, ...), so state
dicts load both ways. Only the forward differs, and its ``impl`` attribute selects mmcv's
stock forward again. :class:`FusedTransformerEncoderLayer` builds it through mmseg's
override point, ``TransformerEncoderLayer.build_attn``, and
:class:`~mmseg_ppenc.models.FastVisionTransformer` builds its layers as that class from the
start; :func:`set_attention_impl` switches every fused module of a model between the two
forwards.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmengine.utils import deprecated_api_warning
from mmseg.models.backbones.vit import TransformerEncoderLayer
from mmseg.registry import MODELS
from torch import nn

__all__ = ['FusedMultiheadAttention', 'FusedTransformerEncoderLayer', 'set_attention_impl',
           'check_attention_impl', 'ATTN_IMPLS']

#: Accepted values of ``attn_impl``: PyTorch's fused kernels or mmcv's stock path.
ATTN_IMPLS = ('fused', 'stock')


@MODELS.register_module()
class FusedMultiheadAttention(MultiheadAttention):
    """mmcv's ``MultiheadAttention`` computed with ``F.scaled_dot_product_attention``.

    Same arguments, submodules and state-dict names as
    ``mmcv.cnn.bricks.transformer.MultiheadAttention``, and the same dropouts in the
    same places: ``attn_drop`` on the attention probabilities (inside the fused kernel),
    ``proj_drop`` and ``dropout_layer`` on the output. Outputs equal the stock module's
    up to float rounding (about 1e-7 relative in float32); only the attention weights
    are never materialised, so they cannot be returned.

    Self-attention without masks, positional inputs or ``nn.MultiheadAttention`` extras
    (``add_bias_kv``, ``add_zero_attn``, separate k/v dims) -- every ViT layer -- runs
    a direct path: one packed QKV projection in the batch-first layout and one
    ``scaled_dot_product_attention`` call, without the layout transposes of
    ``nn.MultiheadAttention``. Anything else goes through ``nn.MultiheadAttention``
    with ``need_weights=False``, which also selects the fused kernel.

    Args:
        embed_dims (int): The embedding dimension.
        num_heads (int): Parallel attention heads.
        attn_drop (float): Dropout on the attention probabilities. Defaults to 0.
        proj_drop (float): Dropout after the output projection. Defaults to 0.
        dropout_layer (dict): The dropout layer on the output before the shortcut.
            Defaults to ``dict(type='Dropout', drop_prob=0.)``.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
        batch_first (bool): Inputs are (batch, tokens, dims). Defaults to False.
        impl (str): ``'fused'``, or ``'stock'`` for mmcv's forward (which materialises
            the attention matrix). Defaults to ``'fused'``.
        **kwargs: Passed to ``nn.MultiheadAttention`` (e.g. ``bias``).
    """

    def __init__(self, *args, impl: str = 'fused', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.impl = check_attention_impl(impl)

    def _direct_path_ok(self) -> bool:
        attn = self.attn
        # Packed QKV (what nn.MultiheadAttention calls _qkv_same_embed_dim, read here
        # from its public attributes).
        same_dims = attn.kdim == attn.embed_dim and attn.vdim == attn.embed_dim
        return (same_dims and attn.bias_k is None and attn.bias_v is None
                and not attn.add_zero_attn and attn.in_proj_weight is not None)

    def _self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Packed self-attention of a batch-first (B, L, E) tensor."""
        attn = self.attn
        b, n, e = x.shape
        h = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        # (B, L, 3, H, hd) -> 3 x (B, H, L, hd): the last dim stays contiguous, which
        # is what the flash and memory-efficient kernels need.
        q, k, v = qkv.view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4).unbind(0)
        dropout_p = attn.dropout if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(b, n, e)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    @deprecated_api_warning({'residual': 'identity'},
                            cls_name='FusedMultiheadAttention')
    def forward(self,
                query: torch.Tensor,
                key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                key_pos: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        """Same signature and semantics as mmcv's ``MultiheadAttention.forward``.

        Returns:
            torch.Tensor: ``identity + dropout(proj_drop(attention(query, key, value)))``,
            in the input's layout.
        """
        if self.impl == 'stock':
            return super().forward(query, key, value, identity, query_pos, key_pos,
                                   attn_mask, key_padding_mask, **kwargs)
        if identity is None:
            identity = query
        if (key is None and value is None and query_pos is None and key_pos is None
                and attn_mask is None and key_padding_mask is None
                and self._direct_path_ok()):
            x = query if self.batch_first else query.transpose(0, 1)
            out = self._self_attention(x)
            if not self.batch_first:
                out = out.transpose(0, 1)
            return identity + self.dropout_layer(self.proj_drop(out))

        # General case: mmcv's own argument handling, then need_weights=False.
        if key is None:
            key = query
        if value is None:
            value = key
        if key_pos is None and query_pos is not None:
            if query_pos.shape == key.shape:
                key_pos = query_pos
            else:
                warnings.warn('position encoding of key is missing in '
                              f'{type(self).__name__}.')
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out = self.attn(query=query, key=key, value=value, attn_mask=attn_mask,
                        key_padding_mask=key_padding_mask, need_weights=False)[0]
        if self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


class FusedTransformerEncoderLayer(TransformerEncoderLayer):
    """mmseg's ``TransformerEncoderLayer`` whose attention is :class:`FusedMultiheadAttention`.

    Same arguments, submodules, parameter names and initial values as the parent; only
    :meth:`build_attn` differs. ``attn_cfg`` may hold ``impl`` (``'fused'`` or
    ``'stock'``), which is passed on to :class:`FusedMultiheadAttention`.
    """

    def build_attn(self, attn_cfg: dict) -> None:
        """Build the layer's attention as :class:`FusedMultiheadAttention`.

        Args:
            attn_cfg (dict): Keyword arguments of mmcv's ``MultiheadAttention`` as the
                parent's constructor assembles them, plus an optional ``impl``.
        """
        self.attn = FusedMultiheadAttention(**attn_cfg)


def check_attention_impl(impl: str) -> str:
    """``impl`` if it is one of :data:`ATTN_IMPLS`.

    Raises:
        ValueError: another value; the message lists the accepted ones.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {impl!r}.')
    return impl


def set_attention_impl(model: nn.Module, impl: str = 'fused') -> int:
    """Switch every :class:`FusedMultiheadAttention` in ``model`` to ``impl``, in place.

    Args:
        model (nn.Module): Any module, e.g. a ``FastVisionTransformer`` or a segmentor.
        impl (str): ``'fused'`` (``F.scaled_dot_product_attention``) or ``'stock'``
            (mmcv's forward, which materialises the attention matrix). Defaults to
            ``'fused'``.

    Returns:
        int: How many attention modules now use ``impl``.

    Raises:
        ValueError: ``impl`` is not one of :data:`ATTN_IMPLS`.
    """
    check_attention_impl(impl)
    n = 0
    for m in model.modules():
        if isinstance(m, FusedMultiheadAttention):
            m.impl = impl
            n += 1
    return n
