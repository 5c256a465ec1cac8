"""The manifest of an encrypted tree (``ppenc_manifest.json``) and the run journal.

The manifest sits at the root of DST. It records the key fingerprint (never key
material), block size, layout, padding, counts, ``complete`` and one record per output:
its source (path, size, mtime, SHA-256), the key fingerprint, and the output's size and
mtime. A rerun counts an output as done only when that record vouches for it.

This module is the one place that knows the schema: :func:`build_manifest` writes it and
:func:`read_manifest` is the one reader, used by the client (``encrypt_dataset``, on
DST) and the keyless server (:func:`mmseg_ppenc.datasets.keyless.load_manifest`), so both
sides accept and refuse the same files.

The journal (``.ppenc_journal.jsonl``) holds the records of outputs finished by a run
that has not yet rewritten the manifest, one JSON line each; the final manifest absorbs
it. A torn last line (a killed run) is expected; any other damage is reported and the
whole journal ignored (:func:`read_journal`).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional, Tuple

from ppenc import __version__
from ppenc.dataset.paths import CONTROL_FILES, JOURNAL_NAME, atomic_write, safe_rel
from ppenc.errors import DatasetEncryptionError
from ppenc.keys import SecretKey
from ppenc.meta import CIPHER_NAME

__all__ = ['MANIFEST_NAME', 'MANIFEST_FORMAT', 'MANIFEST_VERSION', 'TIME_FIELDS',
           'read_manifest', 'build_manifest', 'write_manifest', 'check_existing_manifest',
           'read_journal', 'journal_line']

#: File name of the manifest at the root of an encrypted tree.
MANIFEST_NAME = 'ppenc_manifest.json'
#: Manifest schema identifier and version.
MANIFEST_FORMAT = 'mmseg_ppenc/encrypted-dataset'
MANIFEST_VERSION = 2
# Per-output record fields that hold times (they differ between equal trees).
TIME_FIELDS = ('src_mtime_ns', 'out_mtime_ns')

# Top-level fields every reader relies on, with their JSON types. "files" is optional:
# version 1 manifests have none (a rerun then vouches for nothing and rewrites all).
_MANIFEST_FIELDS = (('format', str), ('cipher', str), ('key_fingerprint', str),
                    ('flip_compatible', bool), ('block_size', int), ('layout', str),
                    ('pad', bool), ('label_pad_value', int), ('complete', bool),
                    ('files', dict))
_OPTIONAL_FIELDS = ('files',)
_JSON_TYPES = ((bool, 'a boolean'), (int, 'a number'), (float, 'a number'),
               (str, 'a string'), (list, 'an array'), (dict, 'an object'),
               (type(None), 'null'))
_DEFAULT_MANIFEST_FIX = (
    'It was damaged or written by something else. Move DST aside (or delete it) and rerun '
    'into a new DST: without a valid manifest no output in it can be vouched for.')
# Fields that fix the cipher of a tree: a rerun that changes one would mix two ciphers.
_CIPHER_FIELDS = ('key_fingerprint', 'flip_compatible', 'block_size', 'layout', 'pad',
                  'label_pad_value', 'cipher')


# ------------------------------------------------------------------------------ reading
def _json_type(value: object) -> str:
    for t, name in _JSON_TYPES:
        if isinstance(value, t):
            return name
    return type(value).__name__


def _manifest_problem(m: object) -> Optional[str]:
    """What is wrong with the shape of a parsed manifest, or None if nothing."""
    if not isinstance(m, dict):
        return f'expected a JSON object at the top, found {_json_type(m)}'
    if m.get('format') != MANIFEST_FORMAT:
        return f'expected "format": "{MANIFEST_FORMAT}", found {m.get("format")!r}'
    for name, typ in _MANIFEST_FIELDS:
        if name not in m:
            if name in _OPTIONAL_FIELDS:
                continue
            return f'the field "{name}" is missing'
        value = m[name]
        # bool is an int in Python, not in JSON: true is no block size.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            return (f'"{name}" is {_json_type(value)}, expected '
                    f'{dict(_JSON_TYPES)[typ]}')
    for rel, rec in m.get('files', {}).items():
        if not safe_rel(rel):
            return (f'"files" names {rel!r}, expected a relative path inside the tree '
                    '(no "..", not absolute)')
        if not isinstance(rec, dict):
            return f'"files"[{rel!r}] is {_json_type(rec)}, expected an object'
    return None


def read_manifest(root: str, path: Optional[str] = None,
                  fix: Optional[str] = None) -> Optional[dict]:
    """The validated manifest of an encrypted tree, or None if there is none.

    The one reader of manifests: the client (``encrypt_dataset``, on DST) and the server
    (:func:`mmseg_ppenc.datasets.keyless.load_manifest`) both use it, so a manifest of the
    wrong shape gets the same clear refusal everywhere instead of a traceback deep inside.

    Args:
        root (str): Root of the encrypted tree.
        path (str, optional): The manifest file. Defaults to None
            (``root/ppenc_manifest.json``).
        fix (str, optional): What the reader should do about a bad manifest, appended to
            the error. Defaults to None (move DST aside and rerun into a new DST).

    Returns:
        dict | None: The manifest; None if the file does not exist.

    Raises:
        DatasetEncryptionError: the manifest exists but cannot be read, is not UTF-8
            JSON, or has the wrong shape (not an object, a foreign ``format``, a missing
            or mistyped field such as ``"files": "x"``, a record path leaving the tree).
            The message names the file, what was expected and what was found.
    """
    path = path or os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    fix = fix or _DEFAULT_MANIFEST_FIX
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DatasetEncryptionError(f'{path} is unreadable or corrupt ({why}). '
                                     f'{fix}') from None
    problem = _manifest_problem(manifest)
    if problem:
        raise DatasetEncryptionError(f'{path} is not a valid {MANIFEST_NAME}: {problem}. '
                                     f'{fix}')
    return manifest


# ------------------------------------------------------------------------------ writing
def build_manifest(key: SecretKey, block_size: int, layout: str, pad: bool,
                   ignore_index: int, items: Iterable, complete: bool,
                   files: Optional[Dict[str, dict]] = None) -> dict:
    """The manifest of a tree holding ``items``.

    Args:
        key (SecretKey): The key (only its fingerprint and flip flag are recorded).
        block_size (int): Cipher block size.
        layout (str): Tree layout (a key of :data:`ppenc.dataset.plan.LAYOUTS`).
        pad (bool): Whether off-grid images were padded.
        ignore_index (int): Pad value of label maps.
        items (Iterable[WorkItem]): The outputs (counted by kind and padding).
        complete (bool): Whether the tree matches its source.
        files (dict[str, dict], optional): Per-output records by output path. Defaults
            to None (no records).

    Returns:
        dict: The manifest, ready for :func:`write_manifest`.
    """
    items = list(items)
    img_suffix = '_leftImg8bit.png' if layout == 'cityscapes' else '.png'
    return {
        'format': MANIFEST_FORMAT,
        'manifest_version': MANIFEST_VERSION,
        'tool': 'tools/encrypt_dataset.py',
        'tool_version': __version__,
        'cipher': CIPHER_NAME,
        'key_fingerprint': key.fingerprint,
        'flip_compatible': key.flip_compatible,
        'block_size': block_size,
        'layout': layout,
        'image_format': 'png',
        'img_suffix': img_suffix,
        'pad': pad,
        'pad_value': 0,
        'label_pad_value': ignore_index,
        'counts': {
            'images': sum(i.kind == 'encrypt' for i in items),
            'label_maps': sum(i.kind == 'label' for i in items),
            'other_files': sum(i.kind == 'copy' for i in items),
            'padded_images': sum(i.kind == 'encrypt' and i.pad for i in items),
            'padded_label_maps': sum(i.kind == 'label' and i.pad for i in items),
        },
        'complete': complete,
        'files': dict(sorted((files or {}).items())),
    }


def write_manifest(dst: str, manifest: dict) -> None:
    """Write ``manifest`` to ``dst/ppenc_manifest.json`` atomically and fsynced.

    An unchanged manifest is not rewritten, so a no-op rerun touches nothing.

    Args:
        dst (str): Root of the encrypted tree.
        manifest (dict): From :func:`build_manifest`.
    """
    path = os.path.join(dst, MANIFEST_NAME)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + '\n').encode()
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                return  # unchanged: a no-op rerun touches nothing
    except OSError:
        pass
    atomic_write(path, data, fsync=True)


def check_existing_manifest(dst: str, new: dict) -> None:
    """Refuse a DST that this run must not write into.

    Args:
        dst (str): Output root.
        new (dict): The manifest this run would write.

    Raises:
        DatasetEncryptionError: DST is not empty but has no manifest (not a tree of this
            tool), its manifest is invalid (see :func:`read_manifest`), or it was made
            with another key, block size, layout, padding or cipher.
    """
    old = read_manifest(dst)
    if old is None:
        if os.path.isdir(dst) and any(
                n not in CONTROL_FILES for n in os.listdir(dst)):
            raise DatasetEncryptionError(
                f'DST {dst!r} is not empty and has no {MANIFEST_NAME}: it is not an '
                'encrypted tree made by this tool. Choose a new or empty DST.')
        return
    for k in _CIPHER_FIELDS:
        if old.get(k) != new.get(k):
            raise DatasetEncryptionError(
                f'DST {dst!r} was made with {k}={old.get(k)!r}, this run uses '
                f'{k}={new.get(k)!r}. One tree must hold one cipher: use a new DST (or '
                'the same key and options as before to resume).')


# ------------------------------------------------------------------------------ journal
def journal_line(rel: str, record: dict) -> str:
    """One journal line: the output's manifest record plus its path under ``"dst"``.

    Args:
        rel (str): Output path relative to DST.
        record (dict): Its manifest record.

    Returns:
        str: ASCII JSON ending with a newline (a line without one is a torn write).
    """
    return json.dumps(dict(record, dst=rel), sort_keys=True) + '\n'


def read_journal(dst: str) -> Tuple[Dict[str, dict], Optional[str]]:
    """Records of outputs finished by an interrupted run, and what is damaged, if any.

    A torn last line (no newline: the run was killed while writing it) is expected and
    skipped. Anything else that is not a UTF-8 JSON record (the journal is plain ASCII)
    means the file was damaged: it is reported and none of it is trusted.

    Args:
        dst (str): Output root.

    Returns:
        tuple[dict[str, dict], str | None]: The records by output path (empty when
        there is no journal or it is damaged), and the damage (None if none).
    """
    try:
        with open(os.path.join(dst, JOURNAL_NAME), 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f'it cannot be read: {e.strerror or type(e).__name__}'
    lines = raw.split(b'\n')
    lines.pop()  # after the last newline: empty, or a line torn by a crash
    out: Dict[str, dict] = {}
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line.decode('utf-8'))
        except UnicodeDecodeError:
            return {}, f'line {n} is not UTF-8 text'
        except (ValueError, RecursionError):
            return {}, f'line {n} is not JSON'
        if not (isinstance(rec, dict) and isinstance(rec.get('dst'), str)
                and safe_rel(rec['dst'])):
            return {}, f'line {n} is not an output record'
        out[rec.pop('dst')] = rec
    return out, None
