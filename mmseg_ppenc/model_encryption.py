"""Client-side model encryption: a plain checkpoint of any supported backbone family in,
keyed mmseg checkpoint out.

This is the model creator's step of the paper's workflow (its Fig. 1): the pre-trained
(or already fine-tuned, "conventional 1") model is adapted to the secret key *locally*,
and only the result is uploaded. The families are those whose first layer is a
non-overlapping patch projection (:data:`mmseg_ppenc.adaptation.PATCH_FAMILIES`: ViT/DeiT,
BEiT, MAE with 16-pixel patches, Swin and Twins PCPVT/SVT with 4-pixel ones), in mmseg's
key layout (backbone or whole segmentor), or timm's for a ViT. The input projection is
found, and the family detected (or stated with ``family=``), by
:func:`mmseg_ppenc.adaptation.locate_projection` and
:func:`~mmseg_ppenc.adaptation.detect_family`, and adapted by
:func:`~mmseg_ppenc.adaptation.adapt_state_dict` at the
:func:`~mmseg_ppenc.adaptation.family_site` that the encrypted variant of the family
uses too. The output is an ordinary mmseg checkpoint::

    {'state_dict': <stock backbone (or segmentor) weights>,
     'meta': {'ppenc': {key_fingerprint, cipher, block_size, flip_compatible, version,
                        mean, std, patch_embed_sha256},
              'ppenc_model': {source_layout, family, mean, std, patch_bias},
              'dataset_meta': ...}}          # only if the input had one

It loads into the stock backbone (``init_cfg=dict(type='Pretrained',
checkpoint=...)``) without this package and without the key, and the encrypted variant
(``EncryptedVisionTransformer``, ``EncryptedSwinTransformer``, ...) recognises it as
already encrypted (``meta['ppenc']``) and loads it as it is.
Optimizer state, message hubs and training meta of the input are not copied: they hold
plain-model statistics (and file paths of the creator's machine) that the server must
not get and cannot use.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import List, Mapping, Optional, Sequence, Tuple

import torch

from mmseg_ppenc.adaptation import (
    PatchFamily,
    adapt_state_dict,
    detect_family,
    family_site,
    locate_projection,
)
from mmseg_ppenc.convert import convert_timm_vit, strip_prefix
from mmseg_ppenc.core.checkpoint import (
    check_checkpoint,
    check_patch_embed_digest,
    patch_embed_digest,
    permutation_smoothness,
    read_weights,
)
from ppenc.errors import ModelEncryptionError
from ppenc.files import check_output_path
from ppenc.keys import SecretKey
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD, META_KEY, build_meta

__all__ = ['ModelEncryptionError', 'load_vit_checkpoint', 'load_plain_checkpoint',
           'detect_layout', 'detect_checkpoint', 'check_block_size',
           'encrypt_model_checkpoint', 'normalization_from_config',
           'patch_embed_digest', 'encrypted_with', 'check_patch_embed_digest']


def encrypted_with(weight: torch.Tensor, key: SecretKey) -> bool:
    """Whether a patch embedding looks adapted to ``key`` already (meta or not).

    Pre-trained patch embeddings are smooth: the columns of neighbouring pixels are
    similar. The adaptation permutes the columns with the key, which destroys that; undoing
    the permutation restores it. So a weight that is much smoother after undoing this key's
    permutation than as it is was encrypted with this key. A weight without that
    structure (a random initialisation) gives no answer, and False is returned.

    Args:
        weight (Tensor): ``(D, C, b, b)`` patch-embedding weight.
        key (SecretKey): The key.
    """
    as_is, restored = permutation_smoothness(weight, key)
    return restored > 0.2 and restored > as_is + 0.2


def detect_checkpoint(state_dict: Mapping[str, torch.Tensor],
                      family: Optional[str] = None) -> Tuple[str, str, PatchFamily]:
    """The key layout, the backbone's key prefix and the family of a plain state dict.

    Args:
        state_dict (Mapping[str, Tensor]): The state dict (wrappers removed).
        family (str, optional): The family the caller states (``'vit'``, ``'beit'``,
            ``'mae'``, ``'swin'``, ``'twins'``; :func:`mmseg_ppenc.adaptation.
            patch_family`). Defaults to None (detected from the keys).

    Returns:
        tuple[str, str, PatchFamily]: ``(layout, prefix, family)``: ``'timm'`` (a ViT)
        or ``'mmseg'``; ``''`` for a backbone or e.g. ``'backbone.'`` for a whole
        segmentor; the family.

    Raises:
        CheckpointLayoutError: (a :class:`ModelEncryptionError`) no supported input
            projection (an overlapping stem such as MiT's or ResNet's is named, with the
            supported families and the fix), several, keys that fit several families
            (pass ``family``) or another family than the stated one.
    """
    layout, prefix, patch_embed = locate_projection(state_dict)
    if layout == 'timm' and prefix:
        raise ModelEncryptionError(f'The timm ViT keys carry the prefix {prefix!r}; expected '
                                   'a bare timm state dict.')
    return layout, prefix, detect_family(state_dict, prefix, patch_embed, layout, family)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """The key layout of a ViT state dict: :func:`detect_checkpoint` for the ``'vit'``
    family.

    Returns:
        tuple[str, str]: ``(layout, prefix)``: ``('timm', '')``, ``('mmseg', '')`` for
        a backbone or ``('mmseg', 'backbone.')`` (any prefix) for a whole segmentor.

    Raises:
        ModelEncryptionError: neither layout, several ViTs, or another family's state dict.
    """
    layout, prefix, _ = detect_checkpoint(state_dict, 'vit')
    return layout, prefix


def load_plain_checkpoint(path: str, patch_bias: str = 'fold',
                          key: Optional[SecretKey] = None, family: Optional[str] = None
                          ) -> Tuple['OrderedDict[str, torch.Tensor]', dict, str, str,
                                     PatchFamily]:
    """Read a checkpoint of a supported family and return it in mmseg's layout.

    The file is read by :func:`mmseg_ppenc.core.checkpoint.read_weights` (weights only) and
    checked by :func:`mmseg_ppenc.core.checkpoint.check_checkpoint`: a ``meta['ppenc']``
    record copied onto other weights is refused as on every other load path.

    Args:
        path (str): Local checkpoint file.
        patch_bias (str): For timm ViT inputs, see
            :func:`mmseg_ppenc.convert.convert_timm_vit`. Defaults to ``'fold'``.
        key (SecretKey, optional): The key the caller encrypts for: a record of this key
            without a digest is also checked against the weights themselves. Defaults to
            None.
        family (str, optional): The backbone family (see :func:`detect_checkpoint`).
            Defaults to None (detected).

    Returns:
        tuple: ``(state_dict, meta, source_layout, prefix, family)`` where
        ``source_layout`` is ``'timm'``, ``'mmseg-backbone'`` or ``'mmseg-segmentor'``,
        ``prefix`` the backbone's key prefix in ``state_dict`` and ``family`` its
        :class:`~mmseg_ppenc.adaptation.PatchFamily`.

    Raises:
        ModelEncryptionError: unreadable file (:class:`~ppenc.errors.CheckpointReadError`),
            a record that does not belong to the weights
            (:class:`~ppenc.errors.CheckpointRecordError`), unsupported or ambiguous
            layout (:class:`~ppenc.errors.CheckpointLayoutError`), unsupported timm
            variant.
    """
    sd, meta = read_weights(path)
    sd = strip_prefix(sd)
    try:
        layout, prefix, fam = detect_checkpoint(sd, family)
    except ModelEncryptionError as e:
        raise type(e)(f'{path}: {e}') from None
    check_checkpoint({'state_dict': sd, 'meta': meta}, f'the checkpoint {path}',
                     adapted_key=key)
    if layout == 'timm':
        try:
            sd = convert_timm_vit(sd, patch_bias=patch_bias)
        except ValueError as e:
            raise ModelEncryptionError(str(e)) from None
        return sd, meta, 'timm', '', fam
    return sd, meta, ('mmseg-backbone' if prefix == '' else 'mmseg-segmentor'), prefix, fam


def load_vit_checkpoint(path: str, patch_bias: str = 'fold',
                        key: Optional[SecretKey] = None
                        ) -> Tuple['OrderedDict[str, torch.Tensor]', dict, str, str]:
    """:func:`load_plain_checkpoint` of a ViT (timm or mmseg layout).

    Returns:
        tuple: ``(state_dict, meta, source_layout, prefix)``.
    """
    return load_plain_checkpoint(path, patch_bias, key, family='vit')[:4]


def check_block_size(state_dict: Mapping[str, torch.Tensor], weight_key: str,
                     family: PatchFamily, block_size: Optional[int] = None) -> int:
    """Check that the input projection is a ``(D, 3, b, b)`` patch projection whose patch
    size ``b`` is the key's block size.

    The weights do not record the stride: the stock ViT, BEiT, MAE and Swin tie it to
    the patch size, Twins takes it separately (its encrypted variant refuses
    ``strides[0] != patch_sizes[0]`` when it is built).

    Args:
        state_dict (Mapping[str, Tensor]): The weights.
        weight_key (str): Key of the projection weight.
        family (PatchFamily): The backbone's family.
        block_size (int, optional): The block size the images are encrypted with.
            Defaults to None (the family's stock patch size: 16 for ViT, BEiT and MAE, 4
            for Swin and Twins).

    Returns:
        int: The block size.

    Raises:
        ModelEncryptionError: another shape, or a patch size other than the block size
            (the message shows the expected and the actual size, and the fix).
    """
    weight = state_dict[weight_key]
    shape = tuple(weight.shape)
    if weight.dim() != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ModelEncryptionError(
            f'The input projection {weight_key} of this {family.title} checkpoint has shape '
            f'{shape}; expected a square patch projection of RGB images, (D, 3, b, b). '
            'The cipher encrypts 3-channel images in square blocks.')
    expected = family.patch_size if block_size is None else int(block_size)
    if shape[-1] != expected:
        source = ('as given' if block_size is not None else
                  f'the stock {family.title} patch size, used when no block size is given')
        raise ModelEncryptionError(
            f'Block size mismatch: expected block size {expected} ({source}), actual patch '
            f'size {shape[-1]} (the input projection {weight_key} of this {family.title} '
            f'checkpoint has shape {shape}). The cipher block size must equal the patch '
            f'size: if the images are (or will be) encrypted with {shape[-1]}-pixel blocks, '
            f'pass --block-size {shape[-1]} (block_size={shape[-1]}); otherwise use a '
            f'checkpoint with {expected}-pixel patches.')
    return expected


def convert_plain_checkpoint(src: str, dst: str, force: bool = False) -> dict:
    """Convert a timm ViT checkpoint to an mmseg backbone checkpoint, without encrypting.

    The baseline and conventional-2 configs need the *plain* pre-trained weights in the
    same layout (patch bias folded exactly as :func:`encrypt_model_checkpoint` does), so
    that all three settings start from the same function.

    Args:
        src (str): timm (or mmseg) ViT checkpoint.
        dst (str): Output path; written atomically.
        force (bool): Overwrite ``dst``. Defaults to False.

    Returns:
        dict: ``source_layout``, ``num_tensors``, ``dst``.
    """
    check_output_path(src, dst, force, 'the converted model', ModelEncryptionError)
    sd, meta, layout, prefix = load_vit_checkpoint(src)
    if isinstance(meta.get(META_KEY), dict):
        fp = meta[META_KEY].get('key_fingerprint')
        raise ModelEncryptionError(f'{src} is encrypted (key {fp}); this tool converts '
                                   'plain checkpoints.')
    sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
    _atomic_save({'state_dict': sd, 'meta': {}}, dst)
    return dict(source_layout=layout, num_tensors=len(sd), dst=dst)


def _atomic_save(obj, path: str) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def encrypt_model_checkpoint(src: str, dst: str, key: SecretKey,
                             mean: Optional[Sequence[float]] = None,
                             std: Optional[Sequence[float]] = None,
                             patch_bias: str = 'fold',
                             backbone_only: bool = False,
                             force: bool = False,
                             family: Optional[str] = None,
                             block_size: Optional[int] = None) -> dict:
    """Encrypt a plain checkpoint of a supported backbone family for ``key`` and write an
    mmseg checkpoint.

    Args:
        src (str): Plain checkpoint: a timm ViT (``vit_base_patch16_384`` layout), an
            mmseg ``VisionTransformer``, ``BEiT``, ``MAE``, ``SwinTransformer``,
            ``PCPVT`` or ``SVT`` backbone, or a whole mmseg segmentor with one of them
            (e.g. a model fine-tuned on plain images).
        dst (str): Output path; written atomically.
        key (SecretKey): The key the data is (or will be) encrypted with.
        mean (Sequence[float]): The target config's data preprocessor mean (see
            :func:`normalization_from_config`). Required: the adaptation folds it into
            the weights, and it is recorded in ``meta['ppenc']``.
        std (Sequence[float]): The data preprocessor's std. Required.
        patch_bias (str): timm patch-embedding bias handling (``'fold'`` or ``'keep'``).
            Defaults to ``'fold'``.
        backbone_only (bool): For a segmentor input, write only the backbone (for
            ``init_cfg``) instead of the whole segmentor (for ``load_from``).
            Defaults to False.
        force (bool): Overwrite ``dst``. Defaults to False.
        family (str, optional): The backbone family (``'vit'``, ``'beit'``, ``'mae'``,
            ``'swin'``, ``'twins'``). Defaults to None (detected from the keys; a state
            dict whose keys fit several families is refused).
        block_size (int, optional): The block size the images are encrypted with; the
            input projection's patch size must equal it (:func:`check_block_size`).
            Defaults to None (the family's stock patch size).

    Returns:
        dict: ``source_layout``, ``family``, ``output`` (``'backbone'``/``'segmentor'``),
        ``num_tensors``, ``key_fingerprint``, ``block_size``, ``dst``.

    Raises:
        ModelEncryptionError: unreadable, unsupported (an overlapping stem) or ambiguous
            input, a patch size other than the block size, an input that is already
            encrypted or whose record does not belong to its weights, ``dst`` exists
            (without ``force``) or equals ``src``.
    """
    if mean is None or std is None:
        raise ModelEncryptionError(
            'The normalisation to adapt the weights for is not given: pass the target '
            'config (--config CONFIG; it is read from model.data_preprocessor) or '
            f'--mean/--std (mmseg\'s ImageNet values are {list(IMAGENET_MEAN)} / '
            f'{list(IMAGENET_STD)}; Segmenter configs use 127.5 / 127.5).')
    check_output_path(src, dst, force, 'the encrypted model', ModelEncryptionError)
    sd, meta, layout, prefix, fam = load_plain_checkpoint(src, patch_bias, key, family)
    if isinstance(meta.get(META_KEY), dict):
        raise ModelEncryptionError(
            f'{src} is already encrypted (meta["{META_KEY}"] records key '
            f'{meta[META_KEY].get("key_fingerprint")}); encrypting it again would not '
            'match any images. Start from the plain checkpoint.')
    if backbone_only and prefix:
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items()
                         if k.startswith(prefix))
        prefix = ''
    weight_key = f'{prefix}{fam.projection}.weight'
    try:
        block = check_block_size(sd, weight_key, fam, block_size)
    except ModelEncryptionError as e:
        raise ModelEncryptionError(f'{src}: {e}') from None
    if encrypted_with(sd[weight_key], key):
        raise ModelEncryptionError(
            f'{src} has no meta["{META_KEY}"] record, but its patch embedding is already '
            f'encrypted with key {key.fingerprint} (undoing the key\'s permutation makes '
            'it smooth, as plain pre-trained weights are): the record was stripped. '
            'Encrypting it again would match no images. Use it as it is, or start from '
            'the plain checkpoint.')
    try:
        enc = adapt_state_dict(sd, key, family_site(sd, fam, prefix), mean, std,
                               prefix=prefix)
    except (KeyError, ValueError) as e:
        raise ModelEncryptionError(f'Cannot adapt {src}: {e}') from None
    meta_rec = build_meta(key.fingerprint, block, key.flip_compatible, mean, std,
                          patch_embed_sha256=patch_embed_digest(enc[weight_key]))
    out_meta = {META_KEY: meta_rec,
                'ppenc_model': dict(source_layout=layout, family=fam.name,
                                    mean=[float(v) for v in mean],
                                    std=[float(v) for v in std],
                                    patch_bias=patch_bias if layout == 'timm' else None)}
    if isinstance(meta.get('dataset_meta'), dict):
        out_meta['dataset_meta'] = meta['dataset_meta']
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    _atomic_save({'state_dict': enc, 'meta': out_meta}, dst)
    return dict(source_layout=layout, family=fam.name,
                output='segmentor' if prefix else 'backbone', num_tensors=len(enc),
                key_fingerprint=key.fingerprint, block_size=block, dst=dst)


def normalization_from_config(config) -> Tuple[List[float], List[float]]:
    """The ``(mean, std)`` of a config's ``model.data_preprocessor`` (and its backbone).

    Args:
        config (str | Config): Config file or object (``mmseg::`` bases resolved).

    Returns:
        tuple[list[float], list[float]]: Mean and std, in the channel order the ViT sees.

    Raises:
        ModelEncryptionError: the config states no normalisation, or its backbone states
            another one than its data preprocessor.
    """
    from mmengine.config import Config

    from mmseg_ppenc.core.exactness import normalization_problem
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model = cfg.get('model') or {}
    pre = model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean, std = pre.get('mean'), pre.get('std')
    backbone = model.get('backbone') or {}
    if mean is None or std is None:
        mean, std = backbone.get('mean'), backbone.get('std')
        if mean is None or std is None:
            raise ModelEncryptionError(
                'The config states no normalisation (model.data_preprocessor.mean/std): '
                'pass --mean/--std.')
    problem = normalization_problem((backbone.get('mean'), backbone.get('std')),
                                    (mean, std), 'model.backbone')
    if problem:
        raise ModelEncryptionError(f'The config is inconsistent: {problem}.')
    return [float(v) for v in mean], [float(v) for v in std]
