"""Exact adaptation of a Vision Transformer to block-encrypted images (derivation: docs/method.md).

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

The result is a stock ``VisionTransformer`` state dict: a server loads it without this
package and without the key.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmseg_ppenc.convert import TIMM_MARKER, locate_vit
from ppenc.keys import SecretKey
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'encrypt_vit_state_dict',
           'decrypt_vit_state_dict', 'find_vit_prefix', 'adapt_patch_embedding']

#: mmseg's normalisation (RGB order), used by every SETR config.

_PROJ = 'patch_embed.projection.weight'


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


def _transform(state_dict, key: SecretKey, mean, std, prefix: Optional[str],
               inverse: bool) -> 'OrderedDict[str, torch.Tensor]':
    if prefix is None:
        prefix = find_vit_prefix(state_dict)
    out = OrderedDict(state_dict)
    wkey = prefix + _PROJ
    if wkey not in out:
        raise KeyError(f'{wkey!r} not found in the state dict.')
    weight = out[wkey]
    perm = key.block_permutation(weight.shape[-1], weight.shape[1])
    new_w, delta = adapt_patch_embedding(weight, perm, mean, std, inverse=inverse)
    sign = -1.0 if inverse else 1.0
    out[wkey] = new_w
    norm_key = prefix + 'patch_embed.norm.weight'
    bias_key = prefix + 'patch_embed.projection.bias'
    pos_key = prefix + 'pos_embed'
    if norm_key in out or pos_key not in out:
        # A LayerNorm between projection and position embedding (patch_norm=True) sees
        # the offset, so it must go into the projection bias.
        if bias_key not in out:
            raise ValueError(
                'This ViT has patch_norm=True (or no pos_embed) but no patch-embedding '
                'bias, so the exact offset has nowhere to go. Build it with '
                'patch_bias=True (the bias starts at zero when absent from the '
                'pre-trained checkpoint).')
        b = out[bias_key]
        out[bias_key] = (b.detach().double() + sign * delta.to(b.device)).to(b.dtype)
    else:
        pe = out[pos_key].detach().clone()
        # Entry 0 belongs to the cls token, which does not pass through the projection.
        pe[:, 1:] = (pe[:, 1:].double() + sign * delta.to(pe.device)).to(pe.dtype)
        out[pos_key] = pe
    return out


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
