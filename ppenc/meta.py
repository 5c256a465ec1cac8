"""The ``meta['ppenc']`` record that ties encrypted weights to a key, and its checks.

Every checkpoint an encrypted run or tool writes carries, under ``meta[META_KEY]``, the key
*fingerprint* (never the key), the cipher, the block size, whether the key is
flip-compatible and, when known, the normalisation the weights were adapted for and the
SHA-256 of the encrypted patch embedding. This module owns the record's format
(:func:`build_meta`, :func:`meta_of`) and the checks that need no weights
(:func:`check_meta`, :func:`check_cipher`, :func:`check_normalization`); reading a
checkpoint file and checking the record against its weights needs torch and lives in
``mmseg_ppenc.core.checkpoint``.

The normalisation constants are here too: :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`
(mmseg's defaults) and :func:`plain_floats`, the one rule that turns a preprocessor's
float32 buffers back into the values a config wrote.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Type

from ppenc import __version__
from ppenc.errors import InvalidKeyError, PpencError

__all__ = ['CIPHER_NAME', 'META_KEY', 'IMAGENET_MEAN', 'IMAGENET_STD', 'build_meta',
           'meta_of', 'check_meta', 'check_cipher', 'check_normalization', 'plain_floats',
           'same_values', 'NORM_RTOL',
           'capitalize']

#: Name and version of the block cipher (recorded in checkpoints and dataset manifests).
CIPHER_NAME = 'block-shuffle-v1'
#: Key of the record inside a checkpoint's ``meta``.
META_KEY = 'ppenc'
#: mmseg's ImageNet RGB normalisation (``SegDataPreProcessor`` in the stock ViT configs).
IMAGENET_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)
#: Relative tolerance for comparing normalisation constants (float32 buffers, JSON).
NORM_RTOL = 1e-6


def same_values(a: Sequence[float], b: Sequence[float], rtol: float = NORM_RTOL) -> bool:
    """Whether two lists of normalisation constants are equal up to ``rtol``.

    The one comparison of normalisations: a checkpoint's record against the model, and a
    backbone's explicit mean/std against its data preprocessor's.

    Args:
        a (Sequence[float]): Constants.
        b (Sequence[float]): Constants to compare with.
        rtol (float): Relative tolerance. Defaults to :data:`NORM_RTOL`.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    return len(a) == len(b) and all(abs(x - y) <= rtol * max(abs(x), abs(y), 1.0)
                                    for x, y in zip(a, b))


def plain_floats(values: Any) -> List[float]:
    """Normalisation constants as plain floats, float32 rounding undone.

    Data preprocessors keep their mean and std as float32 tensors, so ``123.675`` comes
    back as ``123.67500305``. Each value is replaced by the shortest decimal that has the
    same float32 value, which is the config's number whenever the config wrote at most
    float32 precision, and within 1e-7 of it otherwise (CLIP's ``122.7709383`` becomes
    ``122.77094``); :func:`check_normalization` compares at 1e-6.

    Args:
        values (Iterable[float] | torch.Tensor | np.ndarray): The constants, any shape.

    Returns:
        list[float]: One float per value, in order.
    """
    import numpy as np
    flat = values.flatten().tolist() if hasattr(values, 'flatten') else list(values)
    return [float(np.format_float_positional(np.float32(v), unique=True, trim='-'))
            for v in flat]


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
            weight (:func:`patch_embed_digest`), so that the record can be checked
            against the weights it was made for (:func:`check_checkpoint`). Defaults to
            None (not recorded).

    Returns:
        dict: The record (plain Python types only, so it pickles safely).
    """
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
        PpencError: (``error``) missing record, another key, another cipher or another
        block size. The message names both fingerprints.
    """
    if meta is None:
        if allow_missing:
            return False
        raise error(f'{capitalize(what)} records no key (no mmseg_ppenc key fingerprint), so it '
                    f'is not known to belong to key {fingerprint}. {missing_fix}'.rstrip())
    fp = meta.get('key_fingerprint')
    if fp != fingerprint:
        raise error(f'Key fingerprint mismatch: {what} was made for key {fp}, but this '
                    f'run uses key {fingerprint}. {mismatch_fix}'.rstrip())
    check_cipher(meta, block_size, what, error)
    return True



def check_cipher(meta: Mapping, block_size: Optional[int], what: str,
                  error: Type[PpencError]) -> None:
    cipher = meta.get('cipher')
    if cipher is not None and cipher != CIPHER_NAME:
        raise error(f'{capitalize(what)} was encrypted with cipher {cipher!r}, but this version '
                    f'of mmseg_ppenc uses {CIPHER_NAME!r}. Encrypt the plain weights (and '
                    'the data) again with this version\'s tools.')
    rec_block = meta.get('block_size')
    if block_size is not None and rec_block is not None and int(rec_block) != block_size:
        raise error(f'{capitalize(what)} was encrypted with block size {rec_block}, but this '
                    f'model uses {block_size}-pixel blocks (its patch size). Use a '
                    'checkpoint made for this patch size.')



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
        if not same_values(rec, cur):
            raise error(
                f'{capitalize(what)} was adapted for normalisation {name}={rec}, but this model '
                f'normalises with {name}={cur} (its data preprocessor). The adaptation '
                'folds the normalisation into the weights, so they would be wrong here. '
                'Re-encrypt the plain checkpoint for this config (tools/encrypt_model.py '
                '--config CONFIG), or use the matching data preprocessor.')



def capitalize(s: str) -> str:
    """``s`` with its first letter upper-cased (messages start with a checkpoint's name)."""
    return s[:1].upper() + s[1:]
