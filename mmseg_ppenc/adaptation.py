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
and the tensor taking ``delta`` are, and :func:`offset_site` is the one rule that decides
the latter. The backbone families and where their projection is are
:data:`PATCH_FAMILIES`; a site is found from a built backbone by
:func:`mmseg_ppenc.models.patch_adaptation.input_projection`, and from a state dict (any
family, any key prefix, timm's ViT layout too) by :func:`locate_projection`,
:func:`detect_family` and :func:`family_site`.
The result is a stock state dict: a server loads it without this package and without
the key.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmseg_ppenc.convert import TIMM_MARKER
from ppenc.errors import CheckpointLayoutError, ConfigError
from ppenc.keys import SecretKey
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'encrypt_vit_state_dict',
           'decrypt_vit_state_dict', 'find_vit_prefix', 'adapt_patch_embedding',
           'ProjectionSite', 'adapt_state_dict', 'vit_site', 'offset_site', 'PatchFamily',
           'PATCH_FAMILIES', 'patch_family', 'SUPPORTED_FAMILIES', 'OVERLAP_FIX',
           'FAMILY_ALIASES', 'locate_projection', 'detect_family', 'family_site']


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
                         f'block size must equal the patch size ({bh}).')
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


def offset_site(projection: str, bias: bool, norm: Optional[str],
                pos_embed: Optional[Tuple[str, int]], offset_to_pos_embed: bool, name: str,
                bias_fix: str = '') -> ProjectionSite:
    """Where the offset of an input projection goes: the one rule, for a built backbone
    (:func:`mmseg_ppenc.models.patch_adaptation.input_projection`) and for a state dict
    (:func:`family_site`).

    A norm after the projection would see the offset, so it then goes into the
    projection bias (the norm's output is the plain one exactly). Otherwise it goes into
    an absolute position embedding added right after the projection when the family
    prefers that or the projection has no bias, else into the bias.

    Args:
        projection (str): Module path of the projection (its state-dict key without
            ``.weight``), relative to the backbone.
        bias (bool): Whether the projection has a bias.
        norm (str, optional): The norm that follows the projection, as messages name it;
            None when none does.
        pos_embed (tuple[str, int], optional): ``(name, extra)`` of an absolute position
            embedding added right after the projection, whose first ``extra`` entries are
            not patch tokens; None when there is none.
        offset_to_pos_embed (bool): Prefer the position embedding to the bias.
        name (str): The backbone (or checkpoint), as messages name it.
        bias_fix (str): How to give the projection a bias, for the messages. Defaults to
            ``''``.

    Returns:
        ProjectionSite: The projection weight and the tensor taking the offset.

    Raises:
        ConfigError: the offset has nowhere to go.
    """
    weight = f'{projection}.weight'
    if norm is not None:
        if not bias:
            raise ConfigError(
                f'{name}: a {norm} follows the input projection {projection}, which has no '
                'bias, so the exact offset has nowhere to go (the norm would see it). '
                f'{bias_fix}'.rstrip())
        return ProjectionSite(weight, f'{projection}.bias')
    if pos_embed is not None and (offset_to_pos_embed or not bias):
        return ProjectionSite(weight, pos_embed[0], offset_skip=pos_embed[1])
    if bias:
        return ProjectionSite(weight, f'{projection}.bias')
    raise ConfigError(f'{name}: the input projection {projection} has no bias and no '
                      'absolute position embedding follows it, so the exact offset has '
                      f'nowhere to go. {bias_fix}'.rstrip())


# --------------------------------------------------------------------------- families
@dataclass(frozen=True)
class PatchFamily:
    """A family of mmseg backbones whose first layer is a non-overlapping patch
    projection: where that projection is, and how its state dicts look.

    The encrypted variants (:mod:`mmseg_ppenc.models`) and the offline model encryption
    (:mod:`mmseg_ppenc.model_encryption`) both read it.

    Attributes:
        name (str): Its name (``--family`` of ``tools/encrypt_model.py``).
        title (str): How messages name it.
        classes (tuple[str, ...]): The stock mmseg classes.
        patch_embed (str): Module path of the input ``PatchEmbed``.
        patch_size (int): The stock patch size, which is the cipher block size.
        pos_embed (tuple[str, int], optional): ``(name, extra)`` of an absolute position
            embedding added right after the projection (``extra``: its leading entries
            that are not patch tokens), or None.
        offset_to_pos_embed (bool): Put the offset into that position embedding even when
            the projection has a bias (mmseg's ViT, whose default checkpoints have none).
        markers (tuple[str, ...]): Keys, relative to the backbone, that its state dicts
            have and those of the other families with the same ``patch_embed`` lack.
        without (tuple[str, ...]): Keys its state dicts never have.
        bias_fix (str): How to give the projection a bias, for messages.
    """

    name: str
    title: str
    classes: Tuple[str, ...]
    patch_embed: str
    patch_size: int
    pos_embed: Optional[Tuple[str, int]] = None
    offset_to_pos_embed: bool = False
    markers: Tuple[str, ...] = ()
    without: Tuple[str, ...] = ()
    bias_fix: str = ''

    @property
    def projection(self) -> str:
        """Module path of the input projection (``Conv2d``)."""
        return f'{self.patch_embed}.projection'


_STOCK_BIAS = ('Its PatchEmbed is built with bias=True in mmseg; a subclass that removes the '
               'bias cannot be adapted.')
#: The supported families, by name.
PATCH_FAMILIES: Dict[str, PatchFamily] = {f.name: f for f in (
    PatchFamily('vit', 'ViT/DeiT', ('VisionTransformer',), 'patch_embed', 16,
                pos_embed=('pos_embed', 1),  # entry 0 belongs to the class token
                offset_to_pos_embed=True, markers=('layers.0.attn.attn.in_proj_weight',),
                bias_fix='Set patch_bias=True (or patch_norm=False).'),
    PatchFamily('beit', 'BEiT', ('BEiT',), 'patch_embed', 16,
                markers=('layers.0.attn.qkv.weight',), without=('pos_embed',),
                bias_fix=_STOCK_BIAS),
    PatchFamily('mae', 'MAE', ('MAE',), 'patch_embed', 16, pos_embed=('pos_embed', 1),
                markers=('layers.0.attn.qkv.weight', 'pos_embed'), bias_fix=_STOCK_BIAS),
    PatchFamily('swin', 'Swin', ('SwinTransformer',), 'patch_embed', 4,
                pos_embed=('absolute_pos_embed', 0),  # with use_abs_pos_embed=True
                markers=('stages.0.blocks.0.attn.w_msa.qkv.weight',), bias_fix=_STOCK_BIAS),
    # Only the first (input) patch embedding is adapted; later ones see features.
    PatchFamily('twins', 'Twins PCPVT/SVT', ('PCPVT', 'SVT'), 'patch_embeds.0', 4,
                bias_fix=_STOCK_BIAS),
)}
#: Other names :func:`patch_family` accepts.
FAMILY_ALIASES = {'deit': 'vit', 'pcpvt': 'twins', 'svt': 'twins'}
#: The supported families, as messages list them.
SUPPORTED_FAMILIES = ', '.join(f'{f.title} (patch {f.patch_size})'
                               for f in PATCH_FAMILIES.values())
#: Why a backbone must start with a non-overlapping patch projection, and which do.
OVERLAP_FIX = ('The exact adaptation needs a non-overlapping patch projection as the first '
               'layer (kernel = stride = the cipher block size, padding 0, dilation 1, '
               f'groups 1, 3 input channels), as in {SUPPORTED_FAMILIES}. Overlapping stems '
               '(MiT/SegFormer 7x7 stride 4, MSCAN, ResNet) mix several cipher blocks in one '
               'output and cannot be adapted exactly.')


def patch_family(name: str) -> PatchFamily:
    """The family called ``name`` (a family name, an alias, or a stock class name; any
    case).

    Raises:
        ConfigError: no supported family has that name.
    """
    low = str(name).lower()
    low = FAMILY_ALIASES.get(low, low)
    for fam in PATCH_FAMILIES.values():
        if low == fam.name or low in (c.lower() for c in fam.classes):
            return fam
    raise ConfigError(f'Unknown backbone family {name!r}: the supported families are '
                      f'{", ".join(PATCH_FAMILIES)} ({SUPPORTED_FAMILIES}).')


def _is_key(key, suffix: str) -> bool:
    return isinstance(key, str) and (key == suffix or key.endswith('.' + suffix))


# Input layers of the overlapping stems, by the class that says why they cannot be adapted
# (mmseg_ppenc.core.exactness.NOT_ADAPTABLE).
_STEMS = ((re.compile(r'(^|\.)layers\.0\.0\.projection\.weight$'), 'MixVisionTransformer'),
          (re.compile(r'(^|\.)patch_embed1\.proj\.0\.weight$'), 'MSCAN'),
          (re.compile(r'(^|\.)(stem\.0|conv1)\.weight$'), 'ResNet'))


def _unsupported(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Why a state dict without a supported input projection is refused, with the fix."""
    from mmseg_ppenc.core.exactness import NOT_ADAPTABLE
    fix = (f'Encrypt a checkpoint of a supported family ({", ".join(PATCH_FAMILIES)}), or '
           'use this backbone without the key adaptation (a plain model on encrypted '
           'images, the "conventional 2" setting).')
    first = next(((k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor)
                  and v.dim() == 4 and v.shape[1] == 3), None)
    if first is None:
        return ('Unrecognised checkpoint layout: it has no input patch projection. Expected '
                'an mmseg backbone or segmentor of a supported family (keys like '
                "'[backbone.]patch_embed.projection.weight', Twins "
                "'[backbone.]patch_embeds.0.projection.weight') or a timm ViT (keys like "
                f"'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight'); found e.g. "
                f'{list(state_dict)[:6]}. {OVERLAP_FIX} {fix}')
    key, weight = first
    cls = next((c for rx, c in _STEMS if rx.search(key)), None)
    what = (f'the stem of {cls}, {NOT_ADAPTABLE[cls]}' if cls else
            'not the input projection of a supported family')
    return (f'Unsupported checkpoint: its input layer {key} (a '
            f'{"x".join(str(n) for n in weight.shape[2:])} convolution, weight shape '
            f'{tuple(weight.shape)}) is {what}. {OVERLAP_FIX} {fix}')


def locate_projection(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, str, str]:
    """Find the one input patch projection in a state dict of any supported family.

    Args:
        state_dict (Mapping[str, Tensor]): A backbone or segmentor state dict in mmseg's
            key layout, or a timm ViT state dict.

    Returns:
        tuple[str, str, str]: ``(layout, prefix, patch_embed)``: ``'mmseg'`` or
        ``'timm'``; the backbone's key prefix (``''`` for a backbone, e.g.
        ``'backbone.'`` for a segmentor); the module path of its input ``PatchEmbed``
        (``'patch_embed'``, Twins' ``'patch_embeds.0'``).

    Raises:
        CheckpointLayoutError: no supported input projection (the message names an
            overlapping stem such as MiT's or ResNet's, the supported families and the
            fix), or several.
    """
    paths = sorted({f.patch_embed for f in PATCH_FAMILIES.values()})
    hits = [('mmseg', k[:-len(f'{p}.projection.weight')], p) for k in state_dict
            for p in paths if _is_key(k, f'{p}.projection.weight')]
    if not hits:
        hits = [('timm', k[:-len(TIMM_MARKER)], 'patch_embed') for k in state_dict
                if _is_key(k, TIMM_MARKER)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise CheckpointLayoutError(
            f'The state dict holds {len(hits)} input patch projections '
            f'({[f"{p}{pe}" for _, p, pe in hits]}), so it holds several backbones; use '
            'one with exactly one.')
    raise CheckpointLayoutError(_unsupported(state_dict))


def _fits(family: PatchFamily, state_dict: Mapping, prefix: str) -> bool:
    return (all(prefix + k in state_dict for k in family.markers) and
            not any(prefix + k in state_dict for k in family.without))


def detect_family(state_dict: Mapping[str, torch.Tensor], prefix: str = '',
                  patch_embed: str = 'patch_embed', layout: str = 'mmseg',
                  family: Optional[str] = None) -> PatchFamily:
    """The family of the backbone :func:`locate_projection` found.

    Args:
        state_dict (Mapping[str, Tensor]): The state dict.
        prefix (str): The backbone's key prefix. Defaults to ``''``.
        patch_embed (str): Its input ``PatchEmbed``. Defaults to ``'patch_embed'``.
        layout (str): ``'mmseg'`` or ``'timm'`` (a ViT). Defaults to ``'mmseg'``.
        family (str, optional): The family the caller states (:func:`patch_family`
            names). Defaults to None (detected).

    Returns:
        PatchFamily: The family.

    Raises:
        CheckpointLayoutError: the stated family has another input projection or the
            keys show another family; or, undetected, the keys fit several families or
            none.
    """
    candidates = [f for f in PATCH_FAMILIES.values() if f.patch_embed == patch_embed
                  and (layout == 'mmseg' or f.name == 'vit')]
    found = [f for f in candidates if _fits(f, state_dict, prefix)]
    where = f'{prefix}{patch_embed}.{"projection" if layout == "mmseg" else "proj"}.weight'
    names = ' or '.join(f'--family {f.name}' for f in candidates)
    if family is not None:
        fam = patch_family(family)
        if fam not in candidates:
            raise CheckpointLayoutError(
                f'--family {fam.name}: the input projection of a {fam.title} backbone is '
                f'{fam.projection}.weight (mmseg layout), but this checkpoint\'s is {where}, '
                f'as in {" and ".join(f.title for f in candidates)}. Pass {names}, or leave '
                '--family out to detect it.')
        if len(found) == 1 and found[0] is not fam:
            raise CheckpointLayoutError(
                f'--family {fam.name}, but this checkpoint is a {found[0].title} backbone '
                f'(it has {", ".join(prefix + k for k in found[0].markers)}). Pass '
                f'--family {found[0].name}, or leave --family out to detect it.')
        return fam
    if len(found) == 1:
        return found[0]
    if len(candidates) == 1:  # Twins' projection, or timm's ViT layout
        return candidates[0]
    fits = found or candidates
    raise CheckpointLayoutError(
        f'Cannot tell the backbone family of this checkpoint: its input projection {where} '
        f'is that of {" and ".join(f.title for f in fits)}, and its other keys do not tell '
        f'which. Pass the family: {names}.')


def family_site(state_dict: Mapping[str, torch.Tensor], family: PatchFamily,
                prefix: str = '') -> ProjectionSite:
    """The :class:`ProjectionSite` of a ``family`` backbone state dict (mmseg layout).

    The facts :func:`offset_site` decides on are read from the keys: a projection bias,
    a norm after the projection (``<patch_embed>.norm.*``), the family's absolute
    position embedding.

    Args:
        state_dict (Mapping[str, Tensor]): Backbone or segmentor weights.
        family (PatchFamily): The backbone's family.
        prefix (str): The backbone's key prefix. Defaults to ``''``.

    Raises:
        ConfigError: the offset has nowhere to go (e.g. a ViT with ``patch_norm=True``
            and no projection bias).
    """
    norm = f'{family.patch_embed}.norm'
    has_norm = any(f'{prefix}{norm}.{p}' in state_dict for p in ('weight', 'bias'))
    pos = family.pos_embed
    if pos is not None and prefix + pos[0] not in state_dict:
        pos = None
    return offset_site(family.projection, f'{prefix}{family.projection}.bias' in state_dict,
                       f'norm ({norm})' if has_norm else None, pos,
                       family.offset_to_pos_embed, f'This {family.title} checkpoint',
                       family.bias_fix)


def vit_site(state_dict: Mapping[str, torch.Tensor], prefix: str = '') -> ProjectionSite:
    """The :class:`ProjectionSite` of an mmseg ``VisionTransformer`` state dict.

    ``delta`` goes into the spatial entries of ``pos_embed`` (entry 0 belongs to the
    class token, which does not pass through the projection), unless a LayerNorm sits
    between projection and position embedding (``patch_norm=True``): that one sees the
    offset, so it goes into the projection bias (:func:`family_site` of the ``'vit'``
    family).

    Raises:
        ConfigError: ``patch_norm=True`` (or no ``pos_embed``) without a projection bias.
    """
    return family_site(state_dict, PATCH_FAMILIES['vit'], prefix)


def find_vit_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The prefix of the mmseg ViT inside ``state_dict`` (``''`` or e.g. ``'backbone.'``).

    Raises:
        CheckpointLayoutError: (a ``KeyError``) no ViT patch embedding, several, one in
            timm's layout, or the state dict of another family.
    """
    layout, prefix, patch_embed = locate_projection(state_dict)
    if layout != 'mmseg':
        raise CheckpointLayoutError(
            f'The state dict has the timm layout (key "{prefix}{TIMM_MARKER}"); convert it '
            'to the mmseg layout first (tools/encrypt_model.py and '
            'tools/convert_timm_vit.py do this).')
    detect_family(state_dict, prefix, patch_embed, family='vit')
    return prefix


def _transform(state_dict, key: SecretKey, mean, std, prefix: Optional[str],
               inverse: bool) -> 'OrderedDict[str, torch.Tensor]':
    if prefix is None:
        prefix = find_vit_prefix(state_dict)
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
