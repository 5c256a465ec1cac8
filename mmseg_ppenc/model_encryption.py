"""Client-side model encryption: any supported ViT checkpoint in, keyed mmseg checkpoint out.

This is the model creator's step of the paper's workflow (its Fig. 1): the pre-trained
(or already fine-tuned, "conventional 1") ViT is adapted to the secret key *locally*, and
only the result is uploaded. The output is an ordinary mmseg checkpoint::

    {'state_dict': <stock VisionTransformer (or segmentor) weights>,
     'meta': {'ppenc': {key_fingerprint, cipher, block_size, flip_compatible, version},
              'ppenc_model': {source_layout, mean, std, patch_bias},
              'dataset_meta': ...}}          # only if the input had one

It loads into a stock ``VisionTransformer`` (``init_cfg=dict(type='Pretrained',
checkpoint=...)``) without this package and without the key, and
``EncryptedVisionTransformer`` recognises it as already encrypted (``meta['ppenc']``).
Optimizer state, message hubs and training meta of the input are not copied: they hold
plain-model statistics (and file paths of the creator's machine) that the server must
not get and cannot use.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import List, Mapping, Optional, Sequence, Tuple

import torch

from mmseg_ppenc.adaptation import encrypt_vit_state_dict
from mmseg_ppenc.convert import MMSEG_MARKER, convert_timm_vit, locate_vit, strip_prefix
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

__all__ = ['ModelEncryptionError', 'load_vit_checkpoint', 'detect_layout',
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


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """The key layout of a ViT state dict.

    Args:
        state_dict (Mapping[str, Tensor]): The state dict (wrappers removed).

    Returns:
        tuple[str, str]: ``(layout, prefix)``: ``('timm', '')``, ``('mmseg', '')`` for
        a backbone or ``('mmseg', 'backbone.')`` (any prefix) for a whole segmentor.

    Raises:
        ModelEncryptionError: neither layout, or several ViTs in one state dict.
    """
    try:
        layout, prefix = locate_vit(state_dict)
    except KeyError as e:
        raise ModelEncryptionError(e.args[0]) from None
    if layout == 'timm' and prefix:
        raise ModelEncryptionError(f'The timm ViT keys carry the prefix {prefix!r}; expected '
                                   'a bare timm state dict.')
    return layout, prefix


def load_vit_checkpoint(path: str, patch_bias: str = 'fold',
                        key: Optional[SecretKey] = None
                        ) -> Tuple['OrderedDict[str, torch.Tensor]', dict, str, str]:
    """Read a timm or mmseg ViT checkpoint and return it in mmseg's layout.

    The file is read by :func:`mmseg_ppenc.core.checkpoint.read_checkpoint` (weights only) and
    checked by :func:`mmseg_ppenc.core.checkpoint.check_checkpoint`: a ``meta['ppenc']`` record
    copied onto other weights is refused as on every other load path.

    Args:
        path (str): Local checkpoint file.
        patch_bias (str): For timm inputs, see :func:`mmseg_ppenc.convert.convert_timm_vit`.
            Defaults to ``'fold'``.
        key (SecretKey, optional): The key the caller encrypts for: a record of this key
            without a digest is also checked against the weights themselves. Defaults to
            None.

    Returns:
        tuple: ``(state_dict, meta, source_layout, prefix)`` where ``source_layout`` is
        ``'timm'``, ``'mmseg-backbone'`` or ``'mmseg-segmentor'`` and ``prefix`` the ViT's
        key prefix in ``state_dict``.

    Raises:
        ModelEncryptionError: unreadable file (:class:`~mmseg_ppenc.core.errors.
            CheckpointReadError`), a record that does not belong to the weights
            (:class:`~ppenc.errors.CheckpointRecordError`), unknown layout,
            unsupported timm variant.
    """
    sd, meta = read_weights(path)
    sd = strip_prefix(sd)
    try:
        layout, prefix = detect_layout(sd)
    except ModelEncryptionError as e:
        raise ModelEncryptionError(f'{path}: {e}') from None
    check_checkpoint({'state_dict': sd, 'meta': meta}, f'the checkpoint {path}',
                     adapted_key=key)
    if layout == 'timm':
        try:
            sd = convert_timm_vit(sd, patch_bias=patch_bias)
        except ValueError as e:
            raise ModelEncryptionError(str(e)) from None
        return sd, meta, 'timm', ''
    return sd, meta, ('mmseg-backbone' if prefix == '' else 'mmseg-segmentor'), prefix


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
                             force: bool = False) -> dict:
    """Encrypt a plain ViT checkpoint for ``key`` and write an mmseg checkpoint.

    Args:
        src (str): Plain checkpoint: timm ViT (``vit_base_patch16_384`` layout), mmseg
            ``VisionTransformer`` backbone, or whole mmseg segmentor (e.g. a model
            fine-tuned on plain images).
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

    Returns:
        dict: ``source_layout``, ``output`` (``'backbone'``/``'segmentor'``),
        ``num_tensors``, ``key_fingerprint``, ``block_size``, ``dst``.

    Raises:
        ModelEncryptionError: unreadable or unsupported input, an input that is already
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
    sd, meta, layout, prefix = load_vit_checkpoint(src, patch_bias, key)
    if isinstance(meta.get(META_KEY), dict):
        raise ModelEncryptionError(
            f'{src} is already encrypted (meta["{META_KEY}"] records key '
            f'{meta[META_KEY].get("key_fingerprint")}); encrypting it again would not '
            'match any images. Start from the plain checkpoint.')
    if backbone_only and prefix:
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items()
                         if k.startswith(prefix))
        prefix = ''
    if encrypted_with(sd[prefix + MMSEG_MARKER], key):
        raise ModelEncryptionError(
            f'{src} has no meta["{META_KEY}"] record, but its patch embedding is already '
            f'encrypted with key {key.fingerprint} (undoing the key\'s permutation makes '
            'it smooth, as plain pre-trained weights are): the record was stripped. '
            'Encrypting it again would match no images. Use it as it is, or start from '
            'the plain checkpoint.')
    try:
        enc = encrypt_vit_state_dict(sd, key, mean, std, prefix=prefix)
    except (KeyError, ValueError) as e:
        raise ModelEncryptionError(f'Cannot adapt {src}: {e}') from None
    block_size = int(enc[prefix + MMSEG_MARKER].shape[-1])
    meta_rec = build_meta(key.fingerprint, block_size, key.flip_compatible, mean, std,
                          patch_embed_sha256=patch_embed_digest(enc[prefix + MMSEG_MARKER]))
    out_meta = {META_KEY: meta_rec,
                'ppenc_model': dict(source_layout=layout, mean=[float(v) for v in mean],
                                    std=[float(v) for v in std],
                                    patch_bias=patch_bias if layout == 'timm' else None)}
    if isinstance(meta.get('dataset_meta'), dict):
        out_meta['dataset_meta'] = meta['dataset_meta']
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    _atomic_save({'state_dict': enc, 'meta': out_meta}, dst)
    return dict(source_layout=layout, output='segmentor' if prefix else 'backbone',
                num_tensors=len(enc), key_fingerprint=key.fingerprint,
                block_size=block_size, dst=dst)


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
