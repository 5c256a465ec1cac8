"""The one checkpoint reader, and the check of a checkpoint's record against its weights.

Whoever loads a checkpoint reads it with :func:`read_checkpoint` and checks it with
:func:`check_checkpoint`, so the rules (and their messages) exist once: the pre-trained
``init_cfg``, ``load_from``, ``resume``, ``tools/test.py``, the inference APIs and
``ppenc-infer``, ``tools/encrypt_model.py``, the keyless server hook and the security
analysis. The record's format and the checks that need no weights are in
:mod:`ppenc.meta`.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Type

from mmseg_ppenc.core.keyed import unwrap_model
from ppenc.errors import CheckpointReadError, CheckpointRecordError, InvalidKeyError, PpencError
from ppenc.meta import (
    META_KEY,
    capitalize,
    check_cipher,
    check_meta,
    check_normalization,
    meta_of,
    plain_floats,
)

__all__ = ['state_dict_of', 'read_checkpoint', 'read_weights', 'unsafe_checkpoint_error',
           'read_checkpoint_meta', 'patch_embed_digest', 'patch_embed_keys',
           'permutation_smoothness', 'check_checkpoint', 'check_patch_embed_digest',
           'normalization_of']

# Names of the input patch-embedding weight: mmseg's VisionTransformer, BEiT, MAE and
# SwinTransformer, timm's (convert.py), and Twins' first stage (later stages see features).
_PATCH_KEYS = ('patch_embed.projection.weight', 'patch_embed.proj.weight',
               'patch_embeds.0.projection.weight')
# What every refusal of a record that does not belong to its weights ends with.
_RECORD_FIX = ('The record was copied from another checkpoint, or the weights were changed '
               'after encryption, so they must not be used as encrypted weights. Encrypt '
               'the plain weights again with tools/encrypt_model.py (IN = the plain '
               'checkpoint, without this record) and use its output.')


def state_dict_of(checkpoint: Any) -> Mapping:
    """The state dict of a loaded checkpoint: its ``state_dict``/``model``/``module`` entry,
    or the checkpoint itself (a bare state dict, as timm writes). Empty when there is none.
    """
    if not isinstance(checkpoint, Mapping):
        return {}
    for wrapper in ('state_dict', 'model', 'module'):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            return inner
    return checkpoint


def _first_line(err: BaseException, path: str) -> str:
    lines = str(err).strip().splitlines()
    if lines:
        return f'{type(err).__name__}: {lines[0][:300]}'
    if os.path.getsize(path) == 0:
        return 'the file is empty'
    return type(err).__name__


def unsafe_checkpoint_error(path: str, err: BaseException) -> CheckpointReadError:
    """The error for a checkpoint that ``torch.load(weights_only=True)`` refuses.

    A checkpoint that needs full unpickling can run arbitrary code when loaded, so it is
    refused rather than loaded with ``weights_only=False``.

    Args:
        path (str): The checkpoint.
        err (BaseException): What torch raised (only its type is named: its text may
            quote the refused object at length).

    Returns:
        CheckpointReadError: The error to raise.
    """
    return CheckpointReadError(
        f'Checkpoint {path} was refused by torch.load(weights_only=True) '
        f'({type(err).__name__}): it holds objects other than tensors and plain '
        'containers, and unpickling it could run code. If you trust its origin, re-save '
        'only its weights (torch.save({"state_dict": ckpt["state_dict"], "meta": '
        'ckpt.get("meta", {})}, NEW_PATH) in a separate Python session) and pass '
        'NEW_PATH instead.')


def _refused_as_unsafe(err: BaseException) -> bool:
    # torch reports both a refused global and a damaged pickle stream as "Weights only
    # load failed"; only the first names an unsupported global.
    text = str(err)
    return 'Unsupported global' in text or 'was not an allowed global' in text


def read_checkpoint(path: Any, what: str = 'checkpoint', *, mmap: bool = False) -> Any:
    """Read a local checkpoint file safely: the one reader of every checkpoint path.

    PyTorch files are read with ``torch.load(weights_only=True)`` (tensors and plain
    containers only: a file from elsewhere must not run code on a machine that may hold
    the key), with the few types of mmengine checkpoints allow-listed
    (:func:`mmseg_ppenc.compat.register_safe_globals`); ``.safetensors`` files with
    safetensors.

    Args:
        path (str | os.PathLike): Local checkpoint file.
        what (str): How to name the file in messages, e.g. ``'pre-trained checkpoint'``.
            Defaults to ``'checkpoint'``.
        mmap (bool): Memory-map the tensors (a large checkpoint is then not copied; only
            what is used is read). Falls back to a plain read for legacy (non-zip)
            files. Defaults to False.

    Returns:
        Any: The loaded object (usually a dict with ``state_dict`` and ``meta``).

    Raises:
        CheckpointReadError: the file does not exist, cannot be read as a checkpoint, or
            needs unsafe unpickling. The message names the file and the fix.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        state = 'is a directory, not a file' if os.path.isdir(path) else 'does not exist'
        raise CheckpointReadError(f'The {what} {path} {state}. Check the path (and '
                                  '--cfg-options / the config that names it).')
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors ships with timm
            raise CheckpointReadError(f'The {what} {path} is a safetensors file; install '
                                      '`safetensors` to read it.') from None
        try:
            return load_file(path, device='cpu')
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
            raise CheckpointReadError(
                f'Cannot read the {what} {path} as a safetensors file '
                f'({_first_line(e, path)}). Download or export it again.') from None
    import torch
    try:
        from mmseg_ppenc.compat import register_safe_globals
        register_safe_globals()
    except ImportError:  # pragma: no cover - mmengine missing: plain tensors still load
        pass
    try:
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not (mmap and 'mmap can only be used' in str(e)):
                raise
            # Legacy (non-zip) format, or not a zip at all: the plain read tells which.
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
        if _refused_as_unsafe(e):
            raise unsafe_checkpoint_error(path, e) from None
        raise CheckpointReadError(
            f'Cannot read the {what} {path} ({_first_line(e, path)}). Expected a PyTorch '
            'checkpoint (torch.save, .pth/.pt/.bin) or a .safetensors file: copy or '
            'download it again, or check the path.') from None


def read_weights(path: Any, what: str = 'checkpoint', *,
                 mmap: bool = False) -> Tuple['OrderedDict[str, Any]', dict]:
    """Read a checkpoint file and return its tensors and its ``meta`` dict.

    The one way tools read weights (model encryption, the security analysis): the file is
    read by :func:`read_checkpoint`, and one that holds no tensors gets the same
    :class:`~ppenc.errors.CheckpointReadError` wherever it is read.

    Args:
        path (str | os.PathLike): Local checkpoint file.
        what (str): How to name the file in messages. Defaults to ``'checkpoint'``.
        mmap (bool): Memory-map the tensors. Defaults to False.

    Returns:
        tuple[OrderedDict[str, Tensor], dict]: The tensors of its state dict
        (:func:`state_dict_of`), in file order, and its ``meta`` (``{}`` when it has none).

    Raises:
        CheckpointReadError: the file is missing, unreadable, unsafe, or holds no tensors.
    """
    import torch
    checkpoint = read_checkpoint(path, what, mmap=mmap)
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    tensors = OrderedDict((k, v) for k, v in state_dict_of(checkpoint).items()
                          if isinstance(v, torch.Tensor))
    if not tensors:
        raise CheckpointReadError(
            f'The {what} {os.fspath(path)} holds no state dict (expected a dict of tensors, '
            'possibly under "state_dict" or "model"). Check that the file is a model '
            'checkpoint.')
    return tensors, dict(meta) if isinstance(meta, Mapping) else {}


def read_checkpoint_meta(path: Any) -> Optional[dict]:
    """The ``meta['ppenc']`` record of a local checkpoint file, or None.

    Reads the file with :func:`read_checkpoint` (memory-mapped, weights only), so reading
    the record of a large checkpoint neither copies its tensors nor runs code from it.

    Args:
        path (str): Checkpoint file. A remote one (``scheme://...``) gives None.

    Returns:
        dict | None: The record, or None when the file has none or is remote.

    Raises:
        CheckpointReadError: a local file that is missing, unreadable or unsafe.
    """
    if not isinstance(path, (str, os.PathLike)) or '://' in os.fspath(path):
        return None
    return meta_of(read_checkpoint(path, mmap=True))


def patch_embed_digest(weight: Any) -> str:
    """SHA-256 of a patch-embedding weight (dtype, shape and values).

    Args:
        weight (torch.Tensor): The weight.

    Returns:
        str: 64 hex digits.
    """
    import torch
    w = weight.detach().to('cpu').contiguous()
    h = hashlib.sha256(f'{w.dtype}/{tuple(w.shape)}/'.encode())
    h.update(w.view(torch.uint8).numpy().tobytes() if w.numel() else b'')
    return h.hexdigest()


def patch_embed_keys(state_dict: Mapping) -> List[str]:
    """The keys of every input patch-embedding weight in a state dict (mmseg's ViT, BEiT,
    MAE, Swin and Twins names, or timm's; any prefix)."""
    return [k for k in state_dict if isinstance(k, str) and any(
        k == name or k.endswith('.' + name) for name in _PATCH_KEYS)]


def _record_error(what: str, found: str) -> CheckpointRecordError:
    return CheckpointRecordError(
        f'{capitalize(what)}: its meta["{META_KEY}"] record does not belong to its weights: '
        f'{found}. '
        + _RECORD_FIX)


def check_patch_embed_digest(meta: Optional[Mapping], state_dict: Mapping,
                             what: str = 'the checkpoint') -> bool:
    """Refuse weights that are not the ones a ``meta['ppenc']`` record was made for.

    Args:
        meta (Mapping | None): The record. One without ``patch_embed_sha256`` (training
            checkpoints, older files) is accepted.
        state_dict (Mapping[str, Tensor]): The weights (any ViT key prefix).
        what (str): How to name the checkpoint. Defaults to ``'the checkpoint'``.

    Returns:
        bool: True when a digest was recorded and matches, False when none is recorded.

    Raises:
        CheckpointRecordError: the weights have another patch embedding, or none.
    """
    want = meta.get('patch_embed_sha256') if isinstance(meta, Mapping) else None
    if want is None:
        return False
    keys = patch_embed_keys(state_dict)
    if not keys:
        raise _record_error(what, f'the record expects a patch embedding with SHA-256 '
                                  f'{str(want)[:16]}, found no patch embedding')
    for k in keys:
        got = patch_embed_digest(state_dict[k])
        if got != want:
            raise _record_error(what, f'the record expects a patch embedding with SHA-256 '
                                      f'{str(want)[:16]}, found {got[:16]}')
    return True


def permutation_smoothness(weight: Any, key: Any) -> Tuple[float, float]:
    """How smooth a patch embedding is as it is, and after undoing ``key``'s permutation.

    Pre-trained patch embeddings are smooth: the columns of neighbouring pixels are
    similar. The key adaptation permutes the columns, which destroys that; undoing the
    permutation restores it. So plain pre-trained weights give ``(high, low)``, weights
    encrypted with ``key`` ``(low, high)`` and random weights ``(~0, ~0)``.

    Args:
        weight (torch.Tensor): ``(D, C, b, b)`` patch-embedding weight.
        key (SecretKey): The key.

    Returns:
        tuple[float, float]: Mean cosine similarity of horizontally adjacent pixel
        columns as stored and after undoing the permutation.
    """
    import numpy as np
    import torch
    d, c, b, _ = weight.shape
    w = weight.detach().to('cpu', torch.float64).reshape(d, -1).numpy()
    undone = np.empty_like(w)
    undone[:, key.block_permutation(b, c)] = w  # adapted column k is plain column perm[k]

    def neighbours(m) -> float:
        cols = m.reshape(d, -1, b, b)
        a, n = cols[..., :-1].reshape(d, -1), cols[..., 1:].reshape(d, -1)
        den = np.linalg.norm(a, axis=0) * np.linalg.norm(n, axis=0)
        return float(np.mean((a * n).sum(0) / np.maximum(den, 1e-30)))

    return neighbours(w), neighbours(undone)


def _check_claimed_adaptation(meta: Mapping, state_dict: Mapping, key: Any,
                              what: str) -> None:
    """Refuse weights that look plain while a digest-less record says they are adapted."""
    for k in patch_embed_keys(state_dict):
        w = state_dict[k]
        if getattr(w, 'dim', lambda: 0)() != 4:
            continue
        as_is, undone = permutation_smoothness(w, key)
        if as_is > 0.2 and as_is > undone + 0.2:
            raise _record_error(
                what, f'the record says the weights are encrypted with key '
                f'{key.fingerprint}, but the patch embedding is plain (neighbouring pixel '
                f'columns have cosine similarity {as_is:.2f} as stored and {undone:.2f} '
                "after undoing this key's permutation; encrypted weights are the other "
                'way round)')


def check_checkpoint(checkpoint: Any, what: str = 'the checkpoint', *,
                     fingerprint: Optional[str] = None, block_size: Optional[int] = None,
                     mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None,
                     allow_missing: bool = False, missing_fix: str = '',
                     mismatch_fix: str = '', adapted_key: Any = None,
                     error: Type[PpencError] = InvalidKeyError) -> Optional[dict]:
    """Check a loaded checkpoint against the run: the one check of every load path.

    In this order:

    1. the record belongs to the weights: the patch-embedding digest it records (from
       ``tools/encrypt_model.py``) is recomputed from the state dict; with
       ``adapted_key``, a record without a digest is checked against the weights
       themselves (:func:`permutation_smoothness`);
    2. the record (:func:`check_meta`): the key fingerprint (when ``fingerprint`` is
       given), the cipher and the block size (when ``block_size`` is given);
    3. the normalisation the weights were adapted for (:func:`check_normalization`, when
       ``mean``/``std`` are given).

    A record copied onto other weights is refused with the same
    :class:`~ppenc.errors.CheckpointRecordError` message on every path, before
    any other check (what such a record says cannot be trusted).

    Args:
        checkpoint (Mapping): A loaded checkpoint (:func:`read_checkpoint`, or the dict
            mmengine passes to ``after_load_checkpoint``).
        what (str): How to name the checkpoint in messages. Defaults to
            ``'the checkpoint'``.
        fingerprint (str, optional): The key fingerprint the record must state. Defaults
            to None (the key is not checked, e.g. on a keyless inference server).
        block_size (int, optional): The model's block (patch) size. Defaults to None.
        mean (Sequence[float], optional): The model's RGB mean. Defaults to None.
        std (Sequence[float], optional): The model's RGB std. Defaults to None.
        allow_missing (bool): Accept a checkpoint without a record. Defaults to False.
        missing_fix (str): What to do when the record is missing. Defaults to ``''``.
        mismatch_fix (str): What to do on another key. Defaults to ``''``.
        adapted_key (SecretKey, optional): Give the run's key where the record decides
            whether the weights are adapted again (the pre-trained ``init_cfg`` path,
            ``tools/encrypt_model.py``): a record of this key without a digest is then
            refused when the weights look plain. Defaults to None.
        error (type): Exception class of key, cipher and normalisation mismatches.
            Defaults to :class:`~ppenc.errors.InvalidKeyError`.

    Returns:
        dict | None: The record (None when the checkpoint has none and that is allowed).

    Raises:
        CheckpointRecordError: the record does not belong to the weights.
        PpencError: (``error``) another key, cipher, block size or normalisation, or no
            record where one is required.
    """
    meta = meta_of(checkpoint)
    weights = state_dict_of(checkpoint)
    digest_checked = check_patch_embed_digest(meta, weights, what)
    if (adapted_key is not None and meta is not None and not digest_checked
            and meta.get('key_fingerprint') == adapted_key.fingerprint):
        _check_claimed_adaptation(meta, weights, adapted_key, what)
    if fingerprint is not None:
        check_meta(meta, fingerprint, what, allow_missing=allow_missing,
                   missing_fix=missing_fix, mismatch_fix=mismatch_fix,
                   block_size=block_size, error=error)
    elif meta is not None:
        check_cipher(meta, block_size, what, error)
    if mean is not None and std is not None:
        check_normalization(meta, mean, std, what, error=error)
    return meta


def normalization_of(model: Any) -> Tuple[Optional[list], Optional[list]]:
    """The RGB ``(mean, std)`` a model's encrypted backbone is adapted for, else its data
    preprocessor's, else ``(None, None)``.

    Args:
        model (nn.Module): A segmentor (possibly wrapped: DDP, ``SegTTAModel``) or a
            backbone.
    """
    model = unwrap_model(model)
    backbone = getattr(model, 'backbone', model)
    mean, std = getattr(backbone, 'norm_mean', None), getattr(backbone, 'norm_std', None)
    if mean is None or std is None:
        pre = getattr(model, 'data_preprocessor', None)
        mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is None or std is None:
        return None, None
    return plain_floats(mean), plain_floats(std)


