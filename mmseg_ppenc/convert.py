"""timm -> mmseg key conversion for Vision Transformer checkpoints.

The paper's pre-trained models are timm's ``vit_base_patch16_384`` and
``vit_large_patch16_384``. mmsegmentation ships a converter for them
(``tools/model_converters/vit2mmseg.py``), but it is a script in mmseg's source tree, not
part of the installed package, so its renaming is restated here, with two differences:

- Unknown or unsupported keys (layer scale, q/k norm, register tokens, ...) are refused
  instead of being passed through under names a stock ``VisionTransformer`` would ignore
  (``load_state_dict(strict=False)`` would silently leave those weights random).
- timm's patch embedding has a bias; mmseg's ``VisionTransformer`` does not by default
  (``patch_bias=False``), so vit2mmseg's renamed ``patch_embed.projection.bias`` is
  dropped at load time and the loaded model differs from timm's. The bias is the same
  for every patch token, so by default it is folded into the spatial entries of
  ``pos_embed`` instead: the converted model then computes exactly what timm computes.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping

import torch

__all__ = ['TIMM_MARKER', 'MMSEG_MARKER', 'is_timm_vit', 'convert_timm_vit', 'strip_prefix',
           'PATCH_BIAS_MODES']

#: A key only a timm ViT state dict has.
TIMM_MARKER = 'patch_embed.proj.weight'
#: The key that identifies an mmseg ``VisionTransformer`` (possibly prefixed).
MMSEG_MARKER = 'patch_embed.projection.weight'
#: What :func:`convert_timm_vit` does with timm's patch-embedding bias.
PATCH_BIAS_MODES = ('fold', 'keep')

# Parts of a timm classifier that a segmentation backbone does not use.
_DROPPED = re.compile(r'^(head|head_drop|fc_norm|pre_logits|head_dist|dist_token)(\.|$)')
_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')
_BLOCK_MAP = {
    'norm1.weight': 'ln1.weight',
    'norm1.bias': 'ln1.bias',
    'norm2.weight': 'ln2.weight',
    'norm2.bias': 'ln2.bias',
    'attn.qkv.weight': 'attn.attn.in_proj_weight',
    'attn.qkv.bias': 'attn.attn.in_proj_bias',
    'attn.proj.weight': 'attn.attn.out_proj.weight',
    'attn.proj.bias': 'attn.attn.out_proj.bias',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight',
    'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight',
    'mlp.fc2.bias': 'ffn.layers.1.bias',
}
_TOP_MAP = {
    'cls_token': 'cls_token',
    'pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.projection.weight',
    # timm's final norm is mmseg's ``ln1`` (built with final_norm=True).
    'norm.weight': 'ln1.weight',
    'norm.bias': 'ln1.bias',
    # CLIP-style pre-norm is mmseg's ``ln_pre`` (pre_norm=True).
    'norm_pre.weight': 'ln_pre.weight',
    'norm_pre.bias': 'ln_pre.bias',
}


def strip_prefix(state_dict: Mapping[str, torch.Tensor],
                 prefix: str = 'module.') -> 'OrderedDict[str, torch.Tensor]':
    """Remove ``prefix`` from every key that has it (DataParallel's ``module.``).

    Args:
        state_dict (Mapping[str, Tensor]): The state dict.
        prefix (str): Prefix to strip. Defaults to ``'module.'``.

    Returns:
        OrderedDict[str, Tensor]: A new state dict (tensors are shared).
    """
    if not all(k.startswith(prefix) for k in state_dict):
        return OrderedDict(state_dict)
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())


def is_timm_vit(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has timm's ViT key layout (``patch_embed.proj.weight``)."""
    return TIMM_MARKER in state_dict


def convert_timm_vit(state_dict: Mapping[str, torch.Tensor],
                     patch_bias: str = 'fold') -> 'OrderedDict[str, torch.Tensor]':
    """Rename a timm ViT state dict to mmseg ``VisionTransformer`` keys.

    Args:
        state_dict (Mapping[str, Tensor]): timm ``VisionTransformer`` state dict
            (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``,
            ``norm.*``; a classifier ``head`` is dropped).
        patch_bias (str): ``'fold'`` adds timm's patch-embedding bias to the spatial
            entries of ``pos_embed``, for mmseg's default ``patch_bias=False`` (exact);
            ``'keep'`` stores it as ``patch_embed.projection.bias``, for a backbone
            built with ``patch_bias=True``. Defaults to ``'fold'``.

    Returns:
        OrderedDict[str, Tensor]: The mmseg-layout backbone state dict. Build the
        backbone with ``final_norm=True`` to use timm's final norm (``ln1``) and with
        ``pre_norm=True`` if the checkpoint has ``norm_pre``.

    Raises:
        ValueError: the checkpoint is not a plain timm ViT (unsupported variant, e.g.
            layer scale, q/k norm or register tokens, or a position embedding without
            the class-token entry); the message lists the keys it cannot convert.
    """
    if patch_bias not in PATCH_BIAS_MODES:
        raise ValueError(f'patch_bias must be one of {PATCH_BIAS_MODES}, got {patch_bias!r}')
    sd = strip_prefix(state_dict)
    if not is_timm_vit(sd):
        raise ValueError(f'Not a timm ViT state dict: no {TIMM_MARKER!r} key (found e.g. '
                         f'{list(sd)[:5]}).')
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unsupported: List[str] = []
    bias = None
    for k, v in sd.items():
        if _DROPPED.match(k):
            continue
        if k == 'patch_embed.proj.bias':
            bias = v
            continue
        m = _BLOCK.match(k)
        if m:
            new = _BLOCK_MAP.get(m.group(2))
            if new is None:
                unsupported.append(k)
                continue
            out[f'layers.{m.group(1)}.{new}'] = v
            continue
        new = _TOP_MAP.get(k)
        if new is None:
            unsupported.append(k)
            continue
        out[new] = v
    if unsupported:
        raise ValueError(
            f'{len(unsupported)} key(s) of this timm checkpoint have no counterpart in '
            f'mmseg\'s VisionTransformer: {unsupported[:8]}. Only plain ViTs (timm '
            '`vit_*_patch16_*` without layer scale, q/k norm or register tokens) convert '
            'exactly; this variant would load with random weights in their place.')
    for required in ('cls_token', 'pos_embed', 'patch_embed.projection.weight'):
        if required not in out:
            raise ValueError(f'The timm checkpoint has no {required!r} entry; expected a '
                             'ViT with a class token and a learned position embedding.')
    _check_pos_embed(out)
    if bias is not None:
        if patch_bias == 'keep':
            out['patch_embed.projection.bias'] = bias
        else:
            pe = out['pos_embed'].detach().clone()
            # The class token does not pass through the projection, so entry 0 keeps its
            # value; every patch token gets the bias exactly once, as in timm.
            pe[:, 1:] = (pe[:, 1:].double() + bias.detach().double()).to(pe.dtype)
            out['pos_embed'] = pe
    return out


def _check_pos_embed(sd: Dict[str, torch.Tensor]) -> None:
    """Refuse position embeddings that mmseg cannot use (no class entry, not square)."""
    pe = sd['pos_embed']
    if pe.dim() != 3:
        raise ValueError(f'pos_embed has shape {tuple(pe.shape)}; expected (1, 1 + N, D).')
    n = pe.shape[1] - 1
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(
            f'pos_embed has {pe.shape[1]} entries; mmseg expects 1 (class token) + a '
            f'square grid of patches, e.g. 1 + 24*24 = 577. timm models built with '
            'no_embed_class=True or register tokens are not supported.')

