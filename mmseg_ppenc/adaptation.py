"""Exact adaptation of a patch-projection backbone to block-encrypted images (derivation:
docs/method.md).

Write ``E`` for the patch-embedding weight flattened to ``(D, n)`` in (channel, y, x)
order, ``pi`` for the block permutation (``enc[k] = plain[pi[k]]``) and ``m``, ``s`` for
the per-channel mean and std that the data preprocessor normalises with. Then::

    E'[:, k] = E[:, pi[k]] * s[c(k)] / s[c(pi[k])]
    delta    = sum_k E[:, pi[k]] * (m[c(k)] - m[c(pi[k])]) / s[c(pi[k])]

gives ``E' z_enc + delta == E z_plain`` for every block. ``delta`` is the same for every
token, so it is added to the spatial entries of ``pos_embed`` (or to the projection bias
when a LayerNorm sits between projection and position embedding). The research code's
``E[:, pi]`` is only approximate because a cross-channel shuffle does not commute with
per-channel normalisation.

:func:`adapt_state_dict` is the one implementation, for any backbone whose first layer is
a non-overlapping patch projection; a :class:`ProjectionSite` says where the projection
and the tensor taking ``delta`` are (:func:`vit_site` for mmseg's ``VisionTransformer``,
:func:`mmseg_ppenc.models.patch_adaptation.input_projection` for a built backbone).
The result is a stock state dict: a server loads it without this package and without
the key.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmseg_ppenc.convert import TIMM_MARKER, locate_vit
from ppenc.keys import SecretKey
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'encrypt_vit_state_dict',
           'decrypt_vit_state_dict', 'find_vit_prefix', 'adapt_patch_embedding',
           'ProjectionSite', 'adapt_state_dict', 'vit_site']

_PROJ = 'patch_embed.projection.weight'
_BIAS = 'patch_embed.projection.bias'


def find_vit_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The prefix of the mmseg ViT inside ``state_dict`` (``''`` or e.g. ``'backbone.'``).

    Raises:
        KeyError: no ``patch_embed.projection.weight`` entry, or several.
    """
    layout, prefix = locate_vit(state_dict)
    if layout != 'mmseg':
        raise KeyError(f'The state dict has the timm layout (key "{prefix}{TIMM_MARKER}"); '
                       'convert it to the mmseg layout first (tools/encrypt_model.py and '
                       'tools/convert_timm_vit.py do this).')
    return prefix


def _channel_of(n: int, channels: int) -> np.ndarray:
    return np.repeat(np.arange(channels), n // channels)


def adapt_patch_embedding(weight: torch.Tensor, perm: np.ndarray, mean: Sequence[float],
                          std: Sequence[float],
                          inverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transform a ``(D, C, b, b)`` projection weight; return ``(new_weight, delta)``.

    Computed in float64 and cast back to the weight's dtype.

    Args:
        weight (torch.Tensor): The plain (or, if ``inverse``, the adapted) weight.
        perm (np.ndarray): Block permutation of length ``C*b*b``.
        mean (Sequence[float]): Per-channel normalisation mean (RGB).
        std (Sequence[float]): Per-channel normalisation std (RGB).
        inverse (bool): Undo the adaptation instead. ``delta`` is then the offset that
            the forward direction had added (to be subtracted). Defaults to False.
    """
    d, c, bh, bw = weight.shape
    n = c * bh * bw
    if len(perm) != n:
        raise ValueError(f'The key permutation has length {len(perm)} but the patch '
                         f'embedding weight {tuple(weight.shape)} needs {n}: the cipher '
                         f'block size must equal the ViT patch size ({bh}).')
    if len(mean) != c or len(std) != c:
        raise ValueError(f'mean/std need {c} values, got {len(mean)} and {len(std)}.')
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    ch = torch.from_numpy(_channel_of(n, c))
    p = torch.from_numpy(np.array(perm, dtype=np.int64))
    w = weight.detach().to('cpu', torch.float64).reshape(d, n)
    if not inverse:
        src = w[:, p]  # E[:, pi[k]]
        new = src * (s[ch] / s[ch[p]])
    else:
        src = torch.empty_like(w)
        src[:, p] = w * (s[ch[p]] / s[ch])  # E[:, pi[k]] recovered from E'[:, k]
        new = src
        src = src[:, p]
    delta = (src * ((m[ch] - m[ch[p]]) / s[ch[p]])).sum(dim=1)
    return (new.reshape(d, c, bh, bw).to(weight.dtype).to(weight.device),
            delta)


@dataclass(frozen=True)
class ProjectionSite:
    """Where a backbone's input patch projection, and the tensor that takes its offset,
    live in a state dict (keys relative to the backbone).

    The one description the adaptation needs, whatever the backbone: ViT/DeiT, BEiT, MAE,
    Swin and Twins all start with a non-overlapping ``Conv2d(3, D, b, b)``.

    Attributes:
        weight (str): Key of the ``(D, 3, b, b)`` projection weight.
        offset (str): Key of the tensor ``delta`` is added to: the projection bias
            (shape ``(D,)``), or an absolute position embedding (shape ``(1, N, D)``) that
            is added right after the projection.
        offset_skip (int): Leading entries of a position embedding that do not belong to
            patch tokens (the class token's). Defaults to 0.
    """

    weight: str
    offset: str
    offset_skip: int = 0


def _add_offset(t: torch.Tensor, delta: torch.Tensor, skip: int, name: str) -> torch.Tensor:
    """``t`` with ``delta`` added to every patch-token entry (computed in float64)."""
    d = delta.to(t.device)
    if t.dim() == 1 and t.shape[0] == d.shape[0]:
        return (t.detach().double() + d).to(t.dtype)
    if t.dim() == 3 and t.shape[-1] == d.shape[0]:
        out = t.detach().clone()
        out[:, skip:] = (out[:, skip:].double() + d).to(t.dtype)
        return out
    raise ValueError(f'{name!r} has shape {tuple(t.shape)}; the patch-projection offset '
                     f'({d.shape[0]} values) goes into a bias of shape ({d.shape[0]},) or a '
                     f'position embedding of shape (1, N, {d.shape[0]}).')


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], key: SecretKey,
                     site: ProjectionSite, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, prefix: str = '',
                     inverse: bool = False) -> 'OrderedDict[str, torch.Tensor]':
    """Adapt (or, with ``inverse``, un-adapt) the input patch projection of any backbone.

    The one implementation of the exact adaptation: the projection's columns are permuted
    and rescaled (:func:`adapt_patch_embedding`) and ``delta`` is added to
    ``site.offset`` (subtracted with ``inverse``). Every other entry is kept.

    Args:
        state_dict (Mapping[str, Tensor]): Backbone or segmentor weights. Not modified.
        key (SecretKey): The key the images are encrypted with.
        site (ProjectionSite): Where the projection and its offset are.
        mean (Sequence[float]): The data preprocessor's mean (RGB).
        std (Sequence[float]): The data preprocessor's std (RGB).
        prefix (str): Key prefix of the backbone (``'backbone.'`` in a segmentor).
            Defaults to ``''``.
        inverse (bool): Undo the adaptation. Defaults to False.

    Returns:
        OrderedDict[str, Tensor]: A new state dict with the stock key names.
    """
    out = OrderedDict(state_dict)
    wkey, okey = prefix + site.weight, prefix + site.offset
    for k in (wkey, okey):
        if k not in out:
            raise KeyError(f'{k!r} not found in the state dict.')
    weight = out[wkey]
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f'{wkey!r} has shape {tuple(weight.shape)}; expected a square '
                         'patch projection (D, C, b, b).')
    perm = key.block_permutation(weight.shape[-1], weight.shape[1])
    new_w, delta = adapt_patch_embedding(weight, perm, mean, std, inverse=inverse)
    out[wkey] = new_w
    out[okey] = _add_offset(out[okey], -delta if inverse else delta, site.offset_skip, okey)
    return out


def vit_site(state_dict: Mapping[str, torch.Tensor], prefix: str = '') -> ProjectionSite:
    """The :class:`ProjectionSite` of an mmseg ``VisionTransformer`` state dict.

    ``delta`` goes into the spatial entries of ``pos_embed`` (entry 0 belongs to the
    class token, which does not pass through the projection), unless a LayerNorm sits
    between projection and position embedding (``patch_norm=True``): that one sees the
    offset, so it goes into the projection bias.

    Raises:
        ValueError: ``patch_norm=True`` (or no ``pos_embed``) without a projection bias.
    """
    if prefix + 'patch_embed.norm.weight' in state_dict or prefix + 'pos_embed' not in \
            state_dict:
        if prefix + _BIAS not in state_dict:
            raise ValueError(
                'This ViT has patch_norm=True (or no pos_embed) but no patch-embedding '
                'bias, so the exact offset has nowhere to go. Build it with '
                'patch_bias=True (the bias starts at zero when absent from the '
                'pre-trained checkpoint).')
        return ProjectionSite(_PROJ, _BIAS)
    return ProjectionSite(_PROJ, 'pos_embed', offset_skip=1)


def _transform(state_dict, key: SecretKey, mean, std, prefix: Optional[str],
               inverse: bool) -> 'OrderedDict[str, torch.Tensor]':
    if prefix is None:
        prefix = find_vit_prefix(state_dict)
    if prefix + _PROJ not in state_dict:
        raise KeyError(f'{prefix + _PROJ!r} not found in the state dict.')
    return adapt_state_dict(state_dict, key, vit_site(state_dict, prefix), mean, std,
                            prefix=prefix, inverse=inverse)


def encrypt_vit_state_dict(state_dict: Mapping[str, torch.Tensor], key: SecretKey,
                           mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD,
                           prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Adapt a plain mmseg ``VisionTransformer`` state dict to images encrypted with ``key``.

    Args:
        state_dict (Mapping[str, Tensor]): A backbone or whole-segmentor state dict in
            mmseg's key layout. Not modified.
        key (SecretKey): The key the images are encrypted with.
        mean (Sequence[float]): The data preprocessor's mean (RGB). Defaults to
            :data:`IMAGENET_MEAN`.
        std (Sequence[float]): The data preprocessor's std (RGB). Defaults to
            :data:`IMAGENET_STD`.
        prefix (str, optional): Key prefix of the ViT (``''`` for a backbone,
            ``'backbone.'`` for a segmentor). Defaults to None (detected).

    Returns:
        OrderedDict[str, Tensor]: A new state dict; only the patch-embedding weight and
        ``pos_embed`` (or the projection bias with ``patch_norm``) differ.
    """
    return _transform(state_dict, key, mean, std, prefix, inverse=False)


def decrypt_vit_state_dict(state_dict: Mapping[str, torch.Tensor], key: SecretKey,
                           mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD,
                           prefix: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Inverse of :func:`encrypt_vit_state_dict` (same arguments)."""
    return _transform(state_dict, key, mean, std, prefix, inverse=True)
