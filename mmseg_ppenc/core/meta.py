"""The ``meta['ppenc']`` record that ties a checkpoint to a key.

Every checkpoint an encrypted run or tool writes carries, under ``meta['ppenc']``, the key
*fingerprint* (never the key), the cipher, the block size, whether the key is
flip-compatible and, when known, the normalisation the weights were adapted for. Whoever
loads a checkpoint checks the record here, so the rules (and their messages) exist once.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Type

from .errors import InvalidKeyError, PpencError

__all__ = ['CIPHER_NAME', 'META_KEY', 'build_meta', 'meta_of', 'read_checkpoint_meta',
           'check_meta', 'check_normalization', 'normalization_of']

#: Name and version of the block cipher (recorded in checkpoints and dataset manifests).
CIPHER_NAME = 'block-shuffle-v1'
#: Key of the record inside a checkpoint's ``meta``.
META_KEY = 'ppenc'
# Relative tolerance for comparing normalisation constants read back from JSON/pickles.
_NORM_RTOL = 1e-6


def build_meta(fingerprint: str, block_size: int, flip_compatible: bool = False,
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None,
               patch_embed_sha256: Optional[str] = None) -> dict:
    """The ``meta['ppenc']`` record.

    Args:
        fingerprint (str): Key fingerprint (safe to store).
        block_size (int): Cipher block size (= ViT patch size).
        flip_compatible (bool): Whether the key commutes with horizontal flips.
            Defaults to False.
        mean (Sequence[float], optional): RGB normalisation mean the weights are adapted
            for. Defaults to None (not recorded).
        std (Sequence[float], optional): RGB normalisation std. Defaults to None.
        patch_embed_sha256 (str, optional): SHA-256 of the adapted patch-embedding
            weight (see :func:`mmseg_ppenc.model_encryption.patch_embed_digest`), so the
            record can be checked against the weights it was made for. Defaults to None
            (not recorded).

    Returns:
        dict: The record (plain Python types only, so it pickles safely).
    """
    from .. import __version__
    meta = dict(key_fingerprint=str(fingerprint), cipher=CIPHER_NAME,
                block_size=int(block_size), flip_compatible=bool(flip_compatible),
                version=__version__)
    if mean is not None and std is not None:
        meta['mean'] = [float(v) for v in mean]
        meta['std'] = [float(v) for v in std]
    if patch_embed_sha256 is not None:
        meta['patch_embed_sha256'] = str(patch_embed_sha256)
    return meta


def meta_of(checkpoint: Any) -> Optional[dict]:
    """The ``meta['ppenc']`` record of a loaded checkpoint dict, or None."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    rec = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    return dict(rec) if isinstance(rec, Mapping) else None


def read_checkpoint_meta(path: Any) -> Optional[dict]:
    """The ``meta['ppenc']`` record of a local checkpoint file, or None.

    Uses a memory-mapped, weights-only ``torch.load``, so reading the record of a large
    checkpoint neither copies its tensors nor runs code from it. Returns None for
    non-local paths, legacy (non-zip) files and files without a record.

    Args:
        path (str): Checkpoint file.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    import torch
    try:
        ckpt = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001  (the caller's own load reports a bad file)
        return None
    return meta_of(ckpt)


def check_meta(meta: Optional[Mapping], fingerprint: str, what: str = 'the checkpoint',
               *, allow_missing: bool = False, missing_fix: str = '',
               mismatch_fix: str = '', block_size: Optional[int] = None,
               error: Type[PpencError] = InvalidKeyError) -> bool:
    """Check that a ``meta['ppenc']`` record belongs to the key ``fingerprint``.

    Args:
        meta (Mapping | None): The record (None when the checkpoint has none).
        fingerprint (str): The fingerprint it must record.
        what (str): How to name the checkpoint in messages. Defaults to
            ``'the checkpoint'``.
        allow_missing (bool): Accept a checkpoint without a record (returns False).
            Defaults to False.
        missing_fix (str): What to do when the record is missing. Defaults to ``''``.
        mismatch_fix (str): What to do on another key. Defaults to ``''``.
        block_size (int, optional): The block size the record must state, when it states
            one. Defaults to None (not checked).
        error (type): Exception class to raise. Defaults to :class:`InvalidKeyError`.

    Returns:
        bool: True when the record matches, False when it is missing and allowed.

    Raises:
        PpencError: (``error``) missing record, another key, or another block size. The
        message names both fingerprints.
    """
    if meta is None:
        if allow_missing:
            return False
        raise error(f'{_cap(what)} records no key (no mmseg_ppenc key fingerprint), so it '
                    f'is not known to belong to key {fingerprint}. {missing_fix}'.rstrip())
    fp = meta.get('key_fingerprint')
    if fp != fingerprint:
        raise error(f'Key fingerprint mismatch: {what} was made for key {fp}, but this '
                    f'run uses key {fingerprint}. {mismatch_fix}'.rstrip())
    rec_block = meta.get('block_size')
    if block_size is not None and rec_block is not None and int(rec_block) != block_size:
        raise error(f'{_cap(what)} was encrypted with block size {rec_block}, but this '
                    f'model uses {block_size}-pixel blocks (its patch size). Use a '
                    'checkpoint made for this patch size.')
    return True


def check_normalization(meta: Optional[Mapping], mean: Sequence[float],
                        std: Sequence[float], what: str = 'the checkpoint',
                        error: Type[PpencError] = InvalidKeyError) -> None:
    """Refuse a checkpoint adapted for another normalisation than the model's.

    The exact adaptation folds the data preprocessor's mean and std into the patch
    embedding, so weights adapted for one normalisation are wrong under another. Records
    that state no normalisation (older files) are accepted.

    Args:
        meta (Mapping | None): The ``meta['ppenc']`` record.
        mean (Sequence[float]): The model's RGB mean.
        std (Sequence[float]): The model's RGB std.
        what (str): How to name the checkpoint. Defaults to ``'the checkpoint'``.
        error (type): Exception class to raise. Defaults to :class:`InvalidKeyError`.
    """
    if not meta or meta.get('mean') is None or meta.get('std') is None:
        return
    for name, rec, cur in (('mean', meta['mean'], mean), ('std', meta['std'], std)):
        rec = [float(v) for v in rec]
        cur = [float(v) for v in cur]
        if len(rec) != len(cur) or any(
                abs(a - b) > _NORM_RTOL * max(abs(a), abs(b), 1.0) for a, b in zip(rec, cur)):
            raise error(
                f'{_cap(what)} was adapted for normalisation {name}={rec}, but this model '
                f'normalises with {name}={cur} (its data preprocessor). The adaptation '
                'folds the normalisation into the weights, so they would be wrong here. '
                'Re-encrypt the plain checkpoint for this config (tools/encrypt_model.py '
                '--config CONFIG), or use the matching data preprocessor.')


def normalization_of(model: Any) -> Tuple[Optional[list], Optional[list]]:
    """The RGB ``(mean, std)`` a model's encrypted backbone is adapted for, else its data
    preprocessor's, else ``(None, None)``.

    Args:
        model (nn.Module): A segmentor or a backbone.
    """
    backbone = getattr(model, 'backbone', model)
    mean, std = getattr(backbone, 'norm_mean', None), getattr(backbone, 'norm_std', None)
    if mean is None or std is None:
        pre = getattr(model, 'data_preprocessor', None)
        mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is None or std is None:
        return None, None
    def flat(v) -> list:
        # Preprocessors keep float32 tensors; 6 significant digits give back the config's
        # values (123.67500305 -> 123.675).
        vals = v.flatten().tolist() if hasattr(v, 'flatten') else v
        return [float(f'{float(x):.6g}') for x in vals]

    return flat(mean), flat(std)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]
