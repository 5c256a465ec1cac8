"""Client-side encryption of a whole dataset tree (``tools/encrypt_dataset.py``).

The model creator runs this on their own machine and uploads only the output tree (DST),
so DST holds only what the server needs:

- every image, encrypted with the secret key and stored as lossless PNG;
- the label maps (PNGs under the layout's label directory), byte for byte;
- ``ppenc_manifest.json`` at the root: key fingerprint, block size, layout, counts and one
  record per output (never key material);
- other files only when an ``include`` pattern (``--include``) names them. By default
  nothing else is copied: the server's datasets read images and label maps only, and a
  default that copied "everything else" would upload whatever lies next to the data
  (notes, archives, a key file).

Never copied, whatever the patterns say, and listed with the reason in the summary:

- a key file, recognised by its header (:func:`mmseg_ppenc.keys.is_key_file`), under any
  name or behind any link;
- a file in which the leak scan (:func:`mmseg_ppenc.leak_scan.data_contains_key`) finds
  this key's material (hex, base64, integer lists, ...): label maps and included files
  are scanned before they are written;
- a symbolic link that leaves SRC, or any symbolic link to a directory, unless it is
  named with ``follow_symlinks`` (``--follow-symlink``); FIFOs, sockets and devices.

Guarantees:

- SRC is only read. DST may not be SRC, lie inside SRC or contain it, and no directory
  of DST may resolve into SRC (a symlinked ``leftImg8bit/``, say); this is checked on
  every run, first or resumed.
- Every output file is written under a temporary name in its final directory
  (``name.tmp-<pid>``) and renamed into place with ``os.replace``, so an existing output
  is always complete. Each finished output is then recorded in a journal
  (``.ppenc_journal.jsonl``), which the final manifest absorbs. A damaged journal (not
  UTF-8, not JSON) is reported, ignored and removed: what it recorded is verified again.
- The manifest records, per output, its source (path, size, mtime, SHA-256), the key
  fingerprint, and the output's size and mtime. A rerun counts an output as done only
  when that record vouches for it: same source *content* (the source is hashed again on
  every rerun, so an in-place edit that keeps size and mtime is caught; ``trust_mtime``
  skips the hashing and trusts size and mtime), same key, output unchanged. Changed
  sources are encrypted again, outputs whose source is gone or now excluded are removed,
  and the summary says so. So a rerun after a crash, or after the source changed,
  produces the tree a fresh run on the current source produces (PNG encoding is
  deterministic; the manifests differ only in the recorded mtimes).
- The manifest says ``complete: false`` while a run has work to do and ``complete: true``
  once the tree matches the source, so a half-done tree is recognisable, and a rerun with
  another key, block size, layout or padding mode is refused instead of mixing two
  ciphers in one tree. A manifest of the wrong shape is refused with the file named.
- Images whose sides are not multiples of the block size are refused up front, listed
  all at once, unless ``pad=True``: then images are padded at the bottom/right with 0 and
  single-channel label maps with the ignore index (255), so labels stay aligned. Images
  without a label map (cityscapes and ade20k layouts), unreadable images and images whose
  header declares more than ``max_pixels`` pixels (decompression bombs; checked before
  anything is decoded) are refused up front too, listed.

Images are decoded as mmseg's ``LoadImageFromFile`` decodes them (OpenCV, colour, 8 bit,
EXIF orientation applied), so the encrypted file holds exactly what the plain pipeline
would have fed the model, encrypted.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import DatasetEncryptionError, DatasetWriteError
from ..core.grid import pad_to_grid
from ..core.meta import CIPHER_NAME
from ..cipher import BlockCipher, get_cipher
from ..keys import SecretKey, is_key_file, looks_like_key_bytes

__all__ = ['MANIFEST_NAME', 'LAYOUTS', 'IMAGE_EXTENSIONS', 'LOSSY_FORMATS',
           'DEFAULT_MAX_PIXELS', 'DatasetEncryptionError', 'EncryptionSummary', 'WorkItem',
           'SkippedFile', 'DatasetPlan', 'plan_dataset', 'encrypt_dataset', 'read_manifest',
           'check_output_format', 'TIME_FIELDS']

#: File name of the manifest at the root of an encrypted tree.
MANIFEST_NAME = 'ppenc_manifest.json'
#: Manifest schema identifier and version.
MANIFEST_FORMAT = 'mmseg_ppenc/encrypted-dataset'
MANIFEST_VERSION = 2
#: Supported tree layouts: where the images are and where the label maps are.
LAYOUTS: Dict[str, Tuple[Optional[str], Optional[str]]] = {
    'cityscapes': ('leftImg8bit', 'gtFine'),
    'ade20k': ('images', 'annotations'),
    'folder': (None, None),
}
#: File extensions treated as images (lower case).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pnm')
#: Output formats refused because lossy compression changes pixel values, and a block
#: cipher whose values are altered no longer decrypts to the image (nor matches the model).
LOSSY_FORMATS = ('jpg', 'jpeg', 'jpe', 'jfif', 'webp', 'jp2', 'j2k', 'heic', 'heif',
                 'avif', 'jxl')
#: Most pixels an image header may declare (``--max-pixels``): 8192 x 8192 = 67.1 Mpx.
#: Cityscapes frames (2048 x 1024 = 2.1 Mpx) fit 32 times over, as do ADE20K, Mapillary
#: Vistas and 8k aerial tiles. One decoded copy of a 67 Mpx colour image is 200 MB and a
#: worker holds a few (decoded, padded, encrypted, PNG buffer), so each of the default 4
#: workers stays under 1 GB; a 1 MB PNG declaring 20000 x 20000 (400 Mpx, 1.2 GB per copy)
#: is refused before it is decoded.
DEFAULT_MAX_PIXELS = 8192 * 8192
_LOSSLESS = ('png',)
_TMP_RE = re.compile(r'\.tmp-\d+$')
_LOCK_NAME = '.ppenc_encrypt.lock'
_JOURNAL_NAME = '.ppenc_journal.jsonl'
_CONTROL_FILES = (_LOCK_NAME, _JOURNAL_NAME)
# Per-output record fields that hold times (they differ between equal trees).
TIME_FIELDS = ('src_mtime_ns', 'out_mtime_ns')

# Why a file of SRC is not in DST (SkippedFile.reason).
SKIP_NOT_INCLUDED = 'not an image or label map, and no --include pattern names it'
SKIP_KEY_FILE = 'a key file (it starts with the PPENCKEY header)'
SKIP_KEY_MATERIAL = 'the leak scan found key material in it'
SKIP_LINK_OUTSIDE = ('a symbolic link leaving SRC; name it with --follow-symlink to include '
                     'what it points to')
SKIP_DIR_LINK = ('a symbolic link to a directory inside SRC (its files are encrypted where '
                 'they lie); name it with --follow-symlink to include it under this name too')
SKIP_BROKEN_LINK = 'a broken symbolic link'
SKIP_SPECIAL = 'not a regular file (a FIFO, socket or device)'
SKIP_CONTROL = 'a temporary or control file of an encrypt_dataset run'
SKIP_UNREADABLE = 'cannot be read'


@dataclass(frozen=True)
class WorkItem:
    """One output file.

    Attributes:
        kind (str): ``'encrypt'`` (image), ``'label'`` (label map, padded if needed) or
            ``'copy'`` (byte copy of a file named by an include pattern).
        src (str): Path relative to SRC.
        dst (str): Path relative to DST.
        pad (bool): Pad to the block grid (``pad=True`` runs, off-grid files only).
    """
    kind: str
    src: str
    dst: str
    pad: bool = False


@dataclass(frozen=True)
class SkippedFile:
    """A file (or linked directory) of SRC that is not written to DST, and why.

    Attributes:
        path (str): Path relative to SRC (a directory ends with ``/``).
        reason (str): Why it is skipped (one of the ``SKIP_*`` texts of this module).
        detail (str): The link target (``-> target``) or the read error, or ``''``. Never
            file content.
    """
    path: str
    reason: str
    detail: str = ''

    def __str__(self) -> str:
        return f'{self.path} {self.detail}'.rstrip()


@dataclass
class DatasetPlan:
    """What :func:`plan_dataset` found.

    Attributes:
        items (list[WorkItem]): One per output file, in walk order.
        skipped (list[SkippedFile]): Files of SRC left out, with the reason.
        followed (dict[str, str]): Symbolic links followed because they were named
            (path relative to SRC -> resolved target).
    """
    items: List[WorkItem]
    skipped: List[SkippedFile] = field(default_factory=list)
    followed: Dict[str, str] = field(default_factory=dict)


def _listing(names: Sequence[str], limit: Optional[int] = None, indent: str = '  ') -> str:
    """One name per line; with ``limit``, the first ``limit`` and a count of the rest."""
    shown = list(names) if limit is None else list(names[:limit])
    more = len(names) - len(shown)
    tail = f'\n{indent}... and {more} more' if more > 0 else ''
    return indent + f'\n{indent}'.join(shown) + tail


@dataclass
class EncryptionSummary:
    """What a run did (all counts are of this run, except the ``total_*`` ones).

    Attributes:
        images_encrypted (int): Images encrypted now.
        images_skipped (int): Images whose output already existed.
        files_copied (int): Label maps and included files written now.
        files_skipped (int): Copies whose output already existed.
        images_padded (int): Images padded to the grid (whole tree).
        labels_padded (int): Label maps padded to the grid (whole tree).
        bytes_written (int): Bytes written now.
        seconds (float): Wall time.
        key_fingerprint (str): Fingerprint of the key used.
        manifest (str): Path of the manifest.
        stale_removed (int): Partial files of an interrupted run deleted now.
        changed (int): Outputs written again because their source changed.
        unvouched (int): Existing outputs the manifest does not vouch for (written by an
            interrupted run before it recorded them, or altered since), written again.
        rescanned (int): Existing copies recorded by an older version, which did not
            scan for key material, scanned and written again.
        removed (list[str]): Outputs deleted because their source is gone.
        withdrawn (list[str]): Outputs deleted because their source is now skipped (a
            key file, key material, a link, no longer named by an include pattern).
        skipped (list[SkippedFile]): Every file of SRC not in DST, with the reason.
        extra_files (list[str]): Files in DST because an include pattern names them
            (whole tree, not only this run's).
        warnings (list[str]): Things to look at that did not stop the run (a damaged
            journal, files in DST this tool did not write, plain images included).
    """
    images_encrypted: int = 0
    images_skipped: int = 0
    files_copied: int = 0
    files_skipped: int = 0
    images_padded: int = 0
    labels_padded: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    key_fingerprint: str = ''
    manifest: str = ''
    stale_removed: int = 0
    changed: int = 0
    unvouched: int = 0
    rescanned: int = 0
    removed: List[str] = field(default_factory=list)
    withdrawn: List[str] = field(default_factory=list)
    skipped: List[SkippedFile] = field(default_factory=list)
    extra_files: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Encryption throughput of this run."""
        return self.images_encrypted / self.seconds if self.seconds > 0 else 0.0

    def format(self, warnings: bool = True) -> str:
        """A human-readable multi-line summary.

        Every skipped file is listed under its reason; file names and link targets are
        shown, file content never is.

        Args:
            warnings (bool): Append the warnings as ``warning: ...`` lines. Defaults to
                True (the command-line tool prints them on stderr instead).
        """
        mb = self.bytes_written / 1e6
        lines = [
            f'Encrypted {self.images_encrypted} images ({self.images_skipped} already '
            f'done), copied {self.files_copied} files ({self.files_skipped} already done) '
            f'in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s, '
            f'{mb:.1f} MB written.',
            f'Key fingerprint: {self.key_fingerprint}. Manifest: {self.manifest}',
        ]
        if self.images_padded or self.labels_padded:
            lines.append(f'Padded to the block grid: {self.images_padded} images, '
                         f'{self.labels_padded} label maps.')
        if self.stale_removed:
            lines.append(f'Removed {self.stale_removed} partial file(s) of an interrupted '
                         'run.')
        if self.changed:
            lines.append(f'Source changed since the last run: {self.changed} output(s) '
                         'written again.')
        if self.unvouched:
            lines.append(f'{self.unvouched} existing output(s) not vouched for by the '
                         'manifest (interrupted or altered) were written again.')
        if self.rescanned:
            lines.append(f'{self.rescanned} copied file(s) recorded by an older version '
                         'were scanned for key material and written again.')
        if self.removed:
            shown = ', '.join(self.removed[:5])
            more = f' and {len(self.removed) - 5} more' if len(self.removed) > 5 else ''
            lines.append(f'Removed {len(self.removed)} output(s) whose source is gone: '
                         f'{shown}{more}.')
        if self.withdrawn:
            lines.append(f'Removed {len(self.withdrawn)} output(s) from DST whose source is '
                         'now skipped (reasons below):\n' + _listing(self.withdrawn))
        if self.extra_files:
            lines.append(f'DST holds {len(self.extra_files)} extra file(s) named by '
                         '--include (scanned, no key material):\n'
                         + _listing(self.extra_files))
        if self.skipped:
            lines.append(f'Skipped {len(self.skipped)} file(s) of SRC; they are not in DST:')
            by_reason: Dict[str, List[str]] = {}
            for s in self.skipped:
                by_reason.setdefault(s.reason, []).append(str(s))
            for reason, names in by_reason.items():
                lines.append(f'  {reason}:\n' + _listing(names, indent='    '))
        if warnings:
            lines += [f'warning: {w}' for w in self.warnings]
        return '\n'.join(lines)


# ------------------------------------------------------------------------------ checks
def check_output_format(fmt: str) -> str:
    """Normalise an output format name; refuse lossy ones.

    Args:
        fmt (str): e.g. ``'png'``, ``'.PNG'``, ``'jpg'``.

    Returns:
        str: ``'png'``.

    Raises:
        DatasetEncryptionError: a lossy or unsupported format.
    """
    f = fmt.lower().lstrip('.')
    if f in LOSSY_FORMATS:
        raise DatasetEncryptionError(
            f'Output format {fmt!r} is lossy: its compression changes pixel values, which '
            'destroys block-encrypted images (they would no longer decrypt, and the '
            'encrypted model would see noise). Use png (lossless).')
    if f not in _LOSSLESS:
        raise DatasetEncryptionError(f'Output format {fmt!r} is not supported; use png.')
    return f


def _check_dirs(src: str, dst: str) -> Tuple[str, str]:
    if not os.path.isdir(src):
        raise DatasetEncryptionError(f'SRC {src!r} is not a directory.')
    rs, rd = os.path.realpath(src), os.path.realpath(dst)
    if rs == rd:
        raise DatasetEncryptionError(f'SRC and DST are the same directory ({src}); write '
                                     'the encrypted tree to a new directory.')
    if rd.startswith(rs + os.sep):
        raise DatasetEncryptionError(f'DST {dst!r} lies inside SRC {src!r}; the encrypted '
                                     'tree would become part of the dataset. Choose a DST '
                                     'outside SRC.')
    if rs.startswith(rd + os.sep):
        raise DatasetEncryptionError(f'SRC {src!r} lies inside DST {dst!r}; outputs could '
                                     'overwrite source files. Choose a DST outside SRC.')
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise DatasetEncryptionError(f'DST {dst!r} exists and is not a directory.')
    return rs, rd


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_dst_links(rs: str, rd: str, items: Iterable['WorkItem']) -> None:
    """Refuse a DST with a directory that resolves elsewhere (into SRC, typically).

    Outputs are written through their directories: a ``DST/leftImg8bit`` that is a
    symlink into SRC would put encrypted files into the plain dataset, and its plain
    files would look like finished outputs.
    """
    bad = []
    if os.path.isdir(rd):
        for dirpath, dirnames, _ in os.walk(rd):
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    bad.append((os.path.relpath(path, rd), os.path.realpath(path)))
            dirnames[:] = [n for n in dirnames if not os.path.islink(os.path.join(dirpath, n))]
    for rel_dir in sorted({os.path.dirname(i.dst) for i in items}):
        path = os.path.join(rd, rel_dir)
        if os.path.isdir(path) and os.path.realpath(path) != os.path.normpath(path):
            bad.append((rel_dir, os.path.realpath(path)))
    if bad:
        rel, target = sorted(set(bad))[0]
        where = 'into SRC' if _inside(target, rs) else 'outside DST'
        raise DatasetEncryptionError(
            f'DST directory {os.path.join(rd, rel)!r} is a link that resolves {where} '
            f'({target}); outputs written through it would land there (and source files '
            'could pass for finished outputs). Replace the link with a real directory, '
            'or choose a new DST.')


# ------------------------------------------------------------------------------ manifest
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


def _json_type(value: object) -> str:
    for t, name in _JSON_TYPES:
        if isinstance(value, t):
            return name
    return type(value).__name__


def _safe_rel(path: str) -> bool:
    """Whether ``path`` is a relative path that stays inside its root (no ``..``)."""
    if not path or os.path.isabs(path) or '\0' in path:
        return False
    return not any(part in ('..', '') for part in path.replace('\\', '/').split('/'))


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
        if not _safe_rel(rel):
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


# ------------------------------------------------------------------------------ plan
def _walk(root: str) -> Iterable[str]:
    """Relative paths of all files under ``root``, in a fixed (sorted) order."""
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            yield os.path.relpath(os.path.join(dirpath, name), root)


def _under(rel: str, top: Optional[str]) -> bool:
    return top is not None and (rel == top or rel.startswith(top + os.sep))


def _resolve_follow(src: str, follow: Iterable[str]) -> Dict[str, str]:
    """Named symbolic links (relative to SRC, or absolute) -> their resolved targets."""
    out: Dict[str, str] = {}
    for raw in follow:
        raw = os.fspath(raw)
        if os.path.isabs(raw):
            # Resolve the parents only: the link itself must stay a link.
            parent = os.path.realpath(os.path.dirname(raw.rstrip(os.sep)))
            rel = os.path.relpath(os.path.join(parent, os.path.basename(raw.rstrip(os.sep))),
                                  src)
        else:
            rel = os.path.normpath(raw)
        if rel in ('.', '..') or rel.startswith('..' + os.sep) or os.path.isabs(rel):
            raise DatasetEncryptionError(
                f'--follow-symlink {raw!r} is not inside SRC {src!r}. Name a symbolic link '
                'inside SRC by its path relative to SRC, as the skipped list shows it.')
        path = os.path.join(src, rel)
        if not os.path.islink(path):
            found = 'does not exist' if not os.path.lexists(path) else 'is not a symbolic link'
            raise DatasetEncryptionError(
                f'--follow-symlink {raw!r}: {path} {found}, expected a symbolic link inside '
                'SRC (as the skipped list shows it). Drop the option or fix the path.')
        if not os.path.exists(path):
            raise DatasetEncryptionError(
                f'--follow-symlink {raw!r}: {path} is a broken link (-> '
                f'{os.readlink(path)}). Fix the link or drop the option.')
        out[rel] = os.path.realpath(path)
    return out


def _scan_src(src: str, follow: Dict[str, str]) -> Tuple[List[str], List[SkippedFile]]:
    """Regular files of SRC to consider (relative paths, files of a directory before its
    subdirectories, each sorted), and the entries skipped with the reason.

    Symbolic links to files inside SRC (or inside a followed link's target) are read
    through; links leaving it, and links to directories, are skipped unless named in
    ``follow``. Nothing is skipped silently.
    """
    roots = [src] + sorted(set(follow.values()))
    files: List[str] = []
    skipped: List[SkippedFile] = []
    reached = set()

    def visit(rel_dir: str) -> None:
        top = os.path.join(src, rel_dir) if rel_dir else src
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append(SkippedFile(rel_dir + os.sep, SKIP_UNREADABLE,
                                       f'({e.strerror or type(e).__name__})'))
            return
        subdirs = []
        for e in entries:
            rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
            try:
                if e.is_symlink():
                    named = rel in follow
                    reached.add(rel)
                    target = f'-> {os.readlink(e.path)}'
                    if not os.path.exists(e.path):
                        skipped.append(SkippedFile(rel, SKIP_BROKEN_LINK, target))
                        continue
                    is_dir = os.path.isdir(e.path)
                    real = os.path.realpath(e.path)
                    inside = any(_inside(real, r) for r in roots)
                    if is_dir and not named:
                        reason = SKIP_DIR_LINK if inside else SKIP_LINK_OUTSIDE
                        skipped.append(SkippedFile(rel + os.sep, reason, target))
                        continue
                    if not is_dir and not inside and not named:
                        skipped.append(SkippedFile(rel, SKIP_LINK_OUTSIDE, target))
                        continue
                    if is_dir:
                        subdirs.append(rel)
                        continue
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append(rel)
                    continue
                mode = os.stat(e.path).st_mode
            except OSError as err:
                skipped.append(SkippedFile(rel, SKIP_UNREADABLE,
                                           f'({err.strerror or type(err).__name__})'))
                continue
            if stat.S_ISREG(mode):
                files.append(rel)
            else:
                skipped.append(SkippedFile(rel, SKIP_SPECIAL))
        for d in subdirs:
            visit(d)

    visit('')
    unreached = sorted(set(follow) - reached)
    if unreached:
        raise DatasetEncryptionError(
            f'--follow-symlink {unreached[0]!r} lies under a directory that is not walked '
            '(a symbolic link that is not followed). Name that link with --follow-symlink '
            'too, or drop the option.')
    return files, skipped


def _include_regex(pattern: str) -> 're.Pattern[str]':
    """A glob as a regex on ``/``-separated paths: ``*`` and ``?`` stay within one
    directory level, ``**`` spans any number, ``[...]`` is a character class."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith('**/', i):
            out.append('(?:.*/)?')
            i += 3
        elif pattern.startswith('**', i):
            out.append('.*')
            i += 2
        elif pattern[i] == '*':
            out.append('[^/]*')
            i += 1
        elif pattern[i] == '?':
            out.append('[^/]')
            i += 1
        elif pattern[i] == '[' and ']' in pattern[i + 2:]:
            j = pattern.index(']', i + 2)
            body = pattern[i + 1:j]
            body = '^' + body[1:] if body.startswith('!') else body
            out.append('[' + body.replace('\\', '\\\\') + ']')
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile(''.join(out) + r'\Z')


def _compile_includes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate on paths relative to SRC: does an include pattern name the file?

    A pattern without ``/`` matches a file or directory name at any depth (``*.txt``,
    ``README.md``); one with ``/`` matches the path from SRC's root (``splits/*.txt``,
    ``docs/**``). A pattern that names a directory includes everything under it.
    """
    compiled = []
    for p in patterns:
        norm = p.replace(os.sep, '/').strip('/')
        if not norm or os.path.isabs(p) or '..' in norm.split('/'):
            raise DatasetEncryptionError(
                f'--include {p!r} is not a pattern relative to SRC (expected e.g. '
                "'*.txt' or 'splits/*.txt', without '..' or a leading '/').")
        compiled.append(('/' in norm, _include_regex(norm)))
    if not compiled:
        return lambda rel: False

    def included(rel: str) -> bool:
        parts = rel.replace(os.sep, '/').split('/')
        prefixes = ['/'.join(parts[:k]) for k in range(1, len(parts) + 1)]
        for has_slash, rx in compiled:
            candidates = prefixes if has_slash else parts
            if any(rx.match(c) for c in candidates):
                return True
        return False
    return included


@contextlib.contextmanager
def _own_pixel_limit():
    """Turn Pillow's process-wide decompression-bomb limit off for a moment.

    This module applies its own limit (``max_pixels``), from the header, before anything
    is decoded; Pillow's would otherwise raise first (with no file name or size) or
    refuse an image the user allowed with ``--max-pixels``. The planner and each worker
    are single-threaded, so the switch is not seen by other code.
    """
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _too_large(path: str, w: int, h: int, max_pixels: int) -> DatasetEncryptionError:
    err = DatasetEncryptionError(
        f'{path} declares {w}x{h} pixels ({w * h / 1e6:.1f} Mpx), more than --max-pixels '
        f'allows ({max_pixels} = {max_pixels / 1e6:.1f} Mpx). Remove it from SRC, or raise '
        '--max-pixels if it is genuine.')
    err.too_large = f'{w}x{h} = {w * h / 1e6:.1f} Mpx'
    err.pixels = w * h
    return err


def _png_exif_after_idat(path: str) -> Optional[bytes]:
    """The eXIf chunk of a PNG that stores it after the image data, or None.

    Pillow reads an eXIf chunk that follows IDAT only by decoding the whole image, and
    OpenCV honours it; walking the chunk headers finds it without decoding.
    """
    with open(path, 'rb') as f:
        f.seek(8)  # signature
        for _ in range(1 << 20):  # bounded: a corrupt length cannot loop forever
            head = f.read(8)
            if len(head) < 8:
                return None
            length, ctype = struct.unpack('>I4s', head)
            if ctype == b'eXIf':
                return f.read(length)
            if ctype == b'IEND':
                return None
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return None


def _orientation(im, path: str) -> int:
    """The EXIF orientation OpenCV will apply (1 = none), read without decoding pixels."""
    from PIL import Image
    try:
        if im.format == 'PNG' and 'exif' not in im.info:
            data = _png_exif_after_idat(path)
            if data is None:
                return 1
            exif = Image.Exif()
            exif.load(data)
            return exif.get(0x0112, 1)
        return im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: OpenCV ignores it too
        return 1


def _image_size(path: str, max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """(height, width) as OpenCV's colour decoding will produce it (EXIF applied), from
    the header alone.

    Raises:
        DatasetEncryptionError: the file is not a readable image (empty, truncated,
            another format), or (``err.too_large`` set) its header declares more than
            ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with _own_pixel_limit():
            im = Image.open(path)
        im.size  # noqa: B018 - header parsed
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = 'empty file' if os.path.getsize(path) == 0 else \
            f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        err = DatasetEncryptionError(f'{path} is not a readable image ({reason}). Replace '
                                     'it with a valid image or remove it from SRC, then '
                                     'rerun.')
        err.reason = reason
        raise err from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise _too_large(path, w, h, max_pixels)
        orientation = _orientation(im, path)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        h, w = w, h
    return h, w


def _label_of(rel_img: str, layout: str, labels: Dict[str, List[str]]) -> bool:
    """Whether the image ``rel_img`` has a label map among ``labels`` (dir -> names)."""
    img_top, label_top = LAYOUTS[layout]
    sub = os.path.relpath(rel_img, img_top)
    d, name = os.path.split(sub)
    stem = os.path.splitext(name)[0]
    names = labels.get(os.path.join(label_top, d) if d else label_top, [])
    if layout == 'cityscapes':
        base = stem[:-len('_leftImg8bit')] if stem.endswith('_leftImg8bit') else stem
        return any(n.startswith(base + '_gtFine_') and n.endswith('.png') for n in names)
    return stem + '.png' in names


def _refuse_listed(problems: Sequence[Tuple[str, List[str], str]]) -> None:
    for problem, names, fix in problems:
        if names:
            raise DatasetEncryptionError(f'{len(names)} {problem}:\n'
                                         f'{_listing(names, 20)}\n{fix}')


def plan_dataset(src: str, layout: str = 'cityscapes', block_size: int = 16,
                 pad: bool = False, allow_unlabeled: bool = False,
                 include: Sequence[str] = (), follow_symlinks: Sequence[str] = (),
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> DatasetPlan:
    """List the work for encrypting ``src``: what goes into DST, and what does not.

    Args:
        src (str): Dataset root.
        layout (str): ``'cityscapes'`` (images under ``leftImg8bit/``, labels under
            ``gtFine/``), ``'ade20k'`` (``images/``, ``annotations/``) or ``'folder'``
            (every image file is encrypted). Defaults to ``'cityscapes'``.
        block_size (int): Cipher block size. Defaults to 16.
        pad (bool): Plan padding of off-grid images and label maps instead of refusing
            them. Defaults to False.
        allow_unlabeled (bool): Accept images without a label map (cityscapes: no
            ``gtFine/<same dir>/<stem>_gtFine_*.png``; ade20k: no
            ``annotations/<same dir>/<stem>.png``), e.g. a test split. Defaults to False.
        include (Sequence[str]): Glob patterns, relative to ``src``, of other files to
            copy. A pattern without ``/`` matches a file or directory name at any depth
            (``'*.txt'``), one with ``/`` the path from ``src`` (``'splits/*.txt'``,
            ``'docs/**'``); ``*`` stays within a directory, ``**`` spans any number. A
            file they name is still skipped if it is a key file or a link leaving SRC.
            Defaults to ``()``: nothing else.
        follow_symlinks (Sequence[str]): Symbolic links (relative to ``src``) to follow
            although they point to a directory or leave SRC. Defaults to ``()``.
        max_pixels (int, optional): Refuse images whose header declares more pixels.
            Defaults to :data:`DEFAULT_MAX_PIXELS`; None for no limit.

    Returns:
        DatasetPlan: The work items, the skipped files with their reasons, and the
        followed links.

    Raises:
        DatasetEncryptionError: unknown layout, missing image directory, no images,
            SRC already encrypted, two images mapping to one output name, a bad
            ``include`` pattern or ``follow_symlinks`` entry, unreadable images or label
            maps, images above ``max_pixels``, images without a label map (unless
            ``allow_unlabeled``), or (without ``pad``) images off the block grid (all
            listed).
    """
    if layout not in LAYOUTS:
        raise DatasetEncryptionError(f'Unknown layout {layout!r}; choose one of '
                                     f'{sorted(LAYOUTS)}.')
    img_top, label_top = LAYOUTS[layout]
    if img_top is not None and not os.path.isdir(os.path.join(src, img_top)):
        raise DatasetEncryptionError(
            f'{src!r} does not look like a {layout} tree: it has no {img_top}/ directory. '
            f'Pass the dataset root (the mmseg data_root) or choose another --layout '
            f'({", ".join(sorted(LAYOUTS))}).')
    if os.path.isfile(os.path.join(src, MANIFEST_NAME)):
        raise DatasetEncryptionError(
            f'{src!r} is already an encrypted tree ({MANIFEST_NAME} found); encrypting it '
            'twice would need both keys to undo. Pass the plain dataset.')
    included = _compile_includes(include)
    follow = _resolve_follow(src, follow_symlinks)
    files, skipped = _scan_src(src, follow)
    roles: List[Tuple[str, str]] = []
    labels: Dict[str, List[str]] = {}
    cannot_read: List[str] = []
    for rel in files:
        name = os.path.basename(rel)
        if _TMP_RE.search(name) or name in _CONTROL_FILES:
            skipped.append(SkippedFile(rel, SKIP_CONTROL))
            continue
        ext = os.path.splitext(name)[1].lower()
        if ext in IMAGE_EXTENSIONS and (img_top is None or _under(rel, img_top)):
            role = 'image'
        elif _under(rel, label_top) and ext == '.png':
            role = 'label'
        else:
            role = 'other'
        try:
            # Every file, named by a pattern or not: a key file is reported as such.
            key_file = is_key_file(os.path.join(src, rel))
        except OSError as e:
            if role == 'other':
                skipped.append(SkippedFile(rel, SKIP_UNREADABLE,
                                           f'({e.strerror or type(e).__name__})'))
            else:
                cannot_read.append(f'{rel} ({e.strerror or type(e).__name__})')
            continue
        if key_file:
            link = os.path.join(src, rel)
            skipped.append(SkippedFile(rel, SKIP_KEY_FILE, f'-> {os.readlink(link)}'
                                       if os.path.islink(link) else ''))
        elif role == 'other' and not included(rel):
            skipped.append(SkippedFile(rel, SKIP_NOT_INCLUDED))
        else:
            roles.append((rel, role))
            if role == 'label':
                labels.setdefault(os.path.dirname(rel), []).append(name)
    items: List[WorkItem] = []
    off_grid: List[str] = []
    unreadable: List[str] = []
    too_large: List[str] = []
    largest = 0
    unlabeled: List[str] = []
    seen: Dict[str, str] = {}
    for rel, role in roles:
        item_pad = False
        if role in ('image', 'label') and (role == 'image' or pad):
            try:
                h, w = _image_size(os.path.join(src, rel), max_pixels)
            except DatasetEncryptionError as e:
                if hasattr(e, 'too_large'):
                    too_large.append(f'{rel} ({e.too_large})')
                    largest = max(largest, e.pixels)
                elif role == 'image':
                    unreadable.append(f'{rel} ({getattr(e, "reason", e)})')
                else:
                    cannot_read.append(f'{rel} ({getattr(e, "reason", e)})')
                h = w = 0
            item_pad = bool(h % block_size or w % block_size)
        if role == 'image':
            out = os.path.splitext(rel)[0] + '.png'
            if label_top is not None and not allow_unlabeled and \
                    not _label_of(rel, layout, labels):
                unlabeled.append(rel)
            if item_pad and not pad:
                off_grid.append(f'{rel} ({h}x{w})')
            kind = 'encrypt'
        else:
            out, kind = rel, ('label' if role == 'label' else 'copy')
        if out in seen:
            raise DatasetEncryptionError(
                f'{seen[out]} and {rel} would both be written to {out} (images are '
                'stored as .png). Rename one of them.')
        seen[out] = rel
        items.append(WorkItem(kind, rel, out, item_pad))
    limit = 'no limit' if max_pixels is None else \
        f'{max_pixels} = {max_pixels / 1e6:.1f} Mpx'
    _refuse_listed((
        (f'file(s) in {src} cannot be read, and DST needs them (images or label maps)',
         cannot_read, 'Make them readable (check their permissions) or remove them from '
         'SRC, then rerun.'),
        (f'image(s) in {src} are not readable images', unreadable,
         'Replace them with valid images or remove them from SRC.'),
        (f'file(s) in {src} declare more pixels than --max-pixels allows ({limit}); '
         'decoding them could exhaust memory (a decompression bomb, or a mistake)',
         too_large, 'Remove them from SRC, or raise --max-pixels (e.g. --max-pixels '
         f'{largest}) if they are genuine.'),
        (f'image(s) in {src} have no label map', unlabeled,
         f'Add their label maps under {label_top}/ (same directory and stem), remove '
         'the images, or pass --allow-unlabeled (e.g. for a test split).')))
    if off_grid:
        raise DatasetEncryptionError(
            f'{len(off_grid)} image(s) have sides that are not multiples of the '
            f'{block_size}-pixel block size (height x width):\n{_listing(off_grid, 20)}\n'
            'Crop or resize them to multiples of the block size, or rerun with --pad '
            '(pads images with 0 and label maps with the ignore index 255 at the '
            'bottom/right).')
    if not any(i.kind == 'encrypt' for i in items):
        where = f'{img_top}/' if img_top else 'the tree'
        links = [str(s) for s in skipped if s.reason in (SKIP_LINK_OUTSIDE, SKIP_DIR_LINK)]
        hint = (f'\nThese symbolic links were not followed:\n{_listing(links, 20)}\nName '
                'the ones that hold the images with --follow-symlink.') if links else ''
        raise DatasetEncryptionError(f'No images found in {where} of {src!r} (extensions '
                                     f'{", ".join(IMAGE_EXTENSIONS)}).{hint}')
    skipped.sort(key=lambda s: s.path)
    return DatasetPlan(items, skipped, follow)



# ------------------------------------------------------------------------------ workers
# Set in the parent before the pool forks, so the key reaches workers by inheritance
# and is never pickled into a pipe.
_STATE: dict = {}


def _atomic_write(path: str, data: bytes, fsync: bool) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_pixels(path: str, max_pixels: Optional[int]) -> None:
    """Refuse a source whose header declares too many pixels, before it is decoded.

    The planner checked already; this catches a file replaced since, because the decoder
    below would allocate whatever the header asks for.
    """
    if max_pixels is None:
        return
    from PIL import Image
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError):
        return  # not readable by Pillow: the decoder below reports it
    if w * h > max_pixels:
        raise _too_large(path, w, h, max_pixels)


def _encode_image(src: str, cipher: BlockCipher, pad: bool,
                  max_pixels: Optional[int] = None) -> bytes:
    import cv2
    _check_pixels(src, max_pixels)
    # IMREAD_COLOR is what mmcv's LoadImageFromFile uses (color_type='color', cv2
    # backend): 3-channel 8-bit BGR with EXIF orientation applied.
    bgr = cv2.imread(src, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetEncryptionError(f'Cannot decode image {src!r}.')
    if pad:
        bgr = pad_to_grid(bgr, cipher.block_size, 0)
    try:
        enc = cipher.encrypt(bgr, channel_order='bgr')
    except ValueError as e:
        raise DatasetEncryptionError(f'{src}: {e}') from None
    ok, buf = cv2.imencode('.png', enc, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DatasetEncryptionError(f'PNG encoding failed for {src!r}.')
    return buf.tobytes()


def _encode_label(src: str, block: int, ignore_index: int,
                  max_pixels: Optional[int] = None) -> bytes:
    from PIL import Image
    _check_pixels(src, max_pixels)
    with _own_pixel_limit(), Image.open(src) as im:
        mode, palette = im.mode, im.getpalette() if im.mode == 'P' else None
        arr = np.asarray(im)
    # Class-index maps get the ignore index; colour/instance images get 0 (unlabeled).
    value = ignore_index if arr.ndim == 2 and arr.dtype == np.uint8 else 0
    out = Image.fromarray(pad_to_grid(arr, block, value), mode=mode)
    if palette is not None:
        out.putpalette(palette)
    buf = io.BytesIO()
    out.save(buf, format='PNG')
    return buf.getvalue()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _withheld(data: bytes) -> Optional[str]:
    """Why a file that would be copied byte for byte must stay out of DST, or None."""
    if looks_like_key_bytes(data):
        return SKIP_KEY_FILE
    from ..leak_scan import data_contains_key
    if data_contains_key(data, _STATE['key'], block_sizes=(_STATE['cipher'].block_size,)):
        return SKIP_KEY_MATERIAL
    return None


def _process(item: WorkItem) -> Tuple[WorkItem, int, Optional[dict], Optional[str]]:
    """Write one output; return the item, the bytes written, its manifest record and
    None, or (item, 0, None, reason) for a copy that must not reach DST."""
    st = _STATE
    src = os.path.join(st['src'], item.src)
    dst = os.path.join(st['dst'], item.dst)
    before = os.stat(src)
    if item.kind == 'encrypt':
        digest = _sha256(src)
        data = _encode_image(src, st['cipher'], item.pad, st['max_pixels'])
    else:
        # Scanned here, on the bytes that would be written, not when planning: a file
        # edited between the two is caught, and the workers share the scanning.
        with open(src, 'rb') as f:
            raw = f.read()
        digest = hashlib.sha256(raw).hexdigest()
        reason = _withheld(raw)
        if reason is not None:
            return item, 0, None, reason
        if item.kind == 'label' and item.pad:
            data = _encode_label(src, st['cipher'].block_size, st['ignore_index'],
                                 st['max_pixels'])
        else:
            data = raw
    after = os.stat(src)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise DatasetEncryptionError(f'{src} changed while it was being encrypted; rerun '
                                     'when the dataset is no longer being written.')
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    _atomic_write(dst, data, st['fsync'])
    out = os.stat(dst)
    record = dict(src=item.src, kind=item.kind, pad=item.pad, src_size=before.st_size,
                  src_mtime_ns=before.st_mtime_ns, src_sha256=digest,
                  key_fingerprint=st['fingerprint'], out_size=out.st_size,
                  out_mtime_ns=out.st_mtime_ns)
    if item.kind != 'encrypt':
        record['key_scanned'] = True  # a rerun need not scan these bytes again
    return item, len(data), record, None


def _worker_init() -> None:
    # No cv2.setNumThreads here: in a child forked from a process whose OpenCV thread
    # pool is running, reconfiguring the pool waits for threads that were not copied by
    # fork and hangs. PNG coding is single-threaded anyway.
    # Ctrl-C goes to the whole process group; let the parent alone handle it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------------------ driver
def _manifest(key: SecretKey, block_size: int, layout: str, pad: bool, ignore_index: int,
              items: List[WorkItem], complete: bool,
              files: Optional[Dict[str, dict]] = None) -> dict:
    from .. import __version__
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


def _write_manifest(dst: str, manifest: dict) -> None:
    path = os.path.join(dst, MANIFEST_NAME)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + '\n').encode()
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                return  # unchanged: a no-op rerun touches nothing
    except OSError:
        pass
    _atomic_write(path, data, fsync=True)


def _check_existing_manifest(dst: str, new: dict) -> None:
    old = read_manifest(dst)
    if old is None:
        if os.path.isdir(dst) and any(
                n not in _CONTROL_FILES for n in os.listdir(dst)):
            raise DatasetEncryptionError(
                f'DST {dst!r} is not empty and has no {MANIFEST_NAME}: it is not an '
                'encrypted tree made by this tool. Choose a new or empty DST.')
        return
    for k in ('key_fingerprint', 'flip_compatible', 'block_size', 'layout', 'pad',
              'label_pad_value', 'cipher'):
        if old.get(k) != new.get(k):
            raise DatasetEncryptionError(
                f'DST {dst!r} was made with {k}={old.get(k)!r}, this run uses '
                f'{k}={new.get(k)!r}. One tree must hold one cipher: use a new DST (or '
                'the same key and options as before to resume).')


def _lock(dst: str):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no concurrent-run protection
        return None
    fd = os.open(os.path.join(dst, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatasetEncryptionError(f'Another encrypt_dataset run is writing {dst!r}; '
                                     'wait for it to finish.') from None
    return fd


def _remove_stale(dst: str) -> int:
    n = 0
    for rel in _walk(dst):
        if _TMP_RE.search(rel):
            os.remove(os.path.join(dst, rel))
            n += 1
    return n


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def encrypt_dataset(src: str, dst: str, key: SecretKey, layout: str = 'cityscapes',
                    workers: Optional[int] = None, pad: bool = False,
                    block_size: int = 16, ignore_index: int = 255,
                    out_format: str = 'png', progress: bool = True,
                    fsync: bool = False, allow_unlabeled: bool = False,
                    on_file_done: Optional[Callable[[str, int], None]] = None,
                    include: Sequence[str] = (), follow_symlinks: Sequence[str] = (),
                    trust_mtime: bool = False,
                    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> EncryptionSummary:
    """Encrypt every image of the dataset tree ``src`` into ``dst`` (the upload tree).

    DST receives the encrypted images, the label maps, the manifest and the files named
    by ``include``; never a key file, a file holding key material, or what a symbolic
    link leaving SRC points to (unless named in ``follow_symlinks``). Everything left
    out is listed in :attr:`EncryptionSummary.skipped` with the reason.

    Args:
        src (str): Plain dataset root (only read).
        dst (str): Output root; created if missing. Reruns bring it up to date.
        key (SecretKey): The secret key.
        layout (str): ``'cityscapes'``, ``'ade20k'`` or ``'folder'`` (see
            :func:`plan_dataset`). Defaults to ``'cityscapes'``.
        workers (int, optional): Worker processes (and threads hashing sources on a
            rerun). Defaults to None (``min(4, cpu_count)``). 1 runs in this process.
        pad (bool): Pad off-grid images (with 0) and label maps (with
            ``ignore_index``) to the block grid instead of refusing them.
            Defaults to False.
        block_size (int): Cipher block size (the ViT patch size). Defaults to 16.
        ignore_index (int): Label value for padding. Defaults to 255.
        out_format (str): Output image format; only lossless ``'png'`` is accepted.
            Defaults to ``'png'``.
        progress (bool): Show a tqdm progress bar on stderr. Defaults to True.
        fsync (bool): fsync every file before renaming it into place (slower, survives
            power loss). Defaults to False.
        allow_unlabeled (bool): Accept images without a label map. Defaults to False.
        on_file_done (callable, optional): Called as ``on_file_done(rel_path, n)`` after
            each output is written and recorded (``rel_path`` relative to ``dst``, ``n``
            files so far in this run), e.g. for a progress display. Defaults to None.
        include (Sequence[str]): Glob patterns (relative to ``src``) of other files to
            copy, e.g. ``('*.txt',)`` for split lists; each is scanned for key material
            first. Defaults to ``()``: images and label maps only.
        follow_symlinks (Sequence[str]): Symbolic links (paths relative to ``src``) to
            follow although they point to a directory or leave SRC. Defaults to ``()``.
        trust_mtime (bool): On a rerun, count a source as unchanged when its size and
            mtime are, without reading it. Faster on slow disks; a source rewritten in
            place with the same size and mtime (restored by ``cp -p``, ``rsync -t``,
            ``tar``, ``touch -r``) keeps its stale output. Defaults to False: every
            source is hashed (SHA-256) and compared with the manifest.
        max_pixels (int, optional): Refuse images (and label maps to pad) whose header
            declares more pixels. Defaults to :data:`DEFAULT_MAX_PIXELS` (8192 x 8192);
            None for no limit.

    Returns:
        EncryptionSummary: Counts, bytes, throughput, fingerprint, manifest path, and
        the skipped, removed and extra files.

    Raises:
        DatasetEncryptionError: see :func:`plan_dataset` and the module docstring; also
            a DST manifest of the wrong shape, or a followed link overlapping DST.
        DatasetWriteError: DST cannot be written (read-only, full, a file in the way);
            the message names the path and the fix.
    """
    check_output_format(out_format)
    if not isinstance(key, SecretKey):
        raise TypeError(f'key must be a SecretKey, got {type(key).__name__}')
    if max_pixels is not None and max_pixels < 1:
        raise DatasetEncryptionError(f'max_pixels must be positive, got {max_pixels}.')
    src, dst = _check_dirs(os.fspath(src), os.fspath(dst))
    for rel, target in _resolve_follow(src, follow_symlinks).items():
        if _inside(dst, target) or _inside(target, dst):
            raise DatasetEncryptionError(
                f'--follow-symlink {rel!r} resolves to {target}, which overlaps DST {dst}: '
                'outputs would be read back as sources. Choose a DST outside it.')
    t0 = time.perf_counter()
    plan = plan_dataset(src, layout, block_size, pad, allow_unlabeled, include=include,
                        follow_symlinks=follow_symlinks, max_pixels=max_pixels)
    manifest = _manifest(key, block_size, layout, pad, ignore_index, plan.items, False)
    _check_dst_links(src, dst, plan.items)
    _check_existing_manifest(dst, manifest)
    summary = EncryptionSummary(key_fingerprint=key.fingerprint,
                                manifest=os.path.join(dst, MANIFEST_NAME),
                                skipped=list(plan.skipped))
    lock_fd = None
    try:
        os.makedirs(dst, exist_ok=True)
        lock_fd = _lock(dst)
        summary.stale_removed = _remove_stale(dst)
        _update(src, dst, key, plan, manifest, summary, block_size, ignore_index, fsync,
                workers or _default_workers(), progress, on_file_done, trust_mtime,
                max_pixels)
    except OSError as e:
        raise DatasetWriteError(_write_error(e, dst)) from None
    finally:
        if lock_fd is not None:
            try:
                os.remove(os.path.join(dst, _LOCK_NAME))
            except OSError:
                pass
            os.close(lock_fd)
    summary.skipped.sort(key=lambda s: s.path)
    summary.seconds = time.perf_counter() - t0
    return summary


def _write_error(e: OSError, dst: str) -> str:
    import errno
    where = e.filename or dst
    why = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
           errno.EROFS: 'the file system is read-only',
           errno.EACCES: 'permission denied', errno.EPERM: 'permission denied'
           }.get(e.errno, e.strerror or type(e).__name__)
    return (f'Cannot write {where}: {why}. Make DST writable and free some space (or '
            'choose another DST), then rerun the same command: finished outputs are kept '
            'and no partial file is left.')


def _read_journal(dst: str) -> Tuple[Dict[str, dict], Optional[str]]:
    """Records of outputs finished by an interrupted run, and what is damaged, if any.

    A torn last line (no newline: the run was killed while writing it) is expected and
    skipped. Anything else that is not a UTF-8 JSON record (the journal is plain ASCII)
    means the file was damaged: it is reported and none of it is trusted.
    """
    try:
        with open(os.path.join(dst, _JOURNAL_NAME), 'rb') as f:
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
                and _safe_rel(rec['dst'])):
            return {}, f'line {n} is not an output record'
        out[rec.pop('dst')] = rec
    return out, None


def _vouch(rec: Optional[dict], item: WorkItem, src: str, dst: str, fp: str,
           trust_mtime: bool = False) -> str:
    """``'done'``, ``'touched'`` (same content, new mtime), ``'changed'``, ``'new'``,
    ``'unvouched'`` or ``'unscanned'`` (a copy recorded before copies were scanned)."""
    out = os.path.join(dst, item.dst)
    try:
        ost = os.lstat(out)
    except OSError:
        return 'new'
    if rec is None:
        return 'unvouched'
    if (rec.get('src'), rec.get('kind'), rec.get('pad'), rec.get('key_fingerprint')) != \
            (item.src, item.kind, item.pad, fp):
        return 'changed'
    if not stat.S_ISREG(ost.st_mode) or (ost.st_size, ost.st_mtime_ns) != \
            (rec.get('out_size'), rec.get('out_mtime_ns')):
        return 'unvouched'  # altered or replaced after it was written
    path = os.path.join(src, item.src)
    sst = os.stat(path)
    if (sst.st_dev, sst.st_ino) == (ost.st_dev, ost.st_ino):
        return 'unvouched'  # a hard link to the source is no output
    if item.kind != 'encrypt' and rec.get('key_scanned') is not True:
        return 'unscanned'
    if sst.st_size != rec.get('src_size'):
        return 'changed'
    if trust_mtime and sst.st_mtime_ns == rec.get('src_mtime_ns'):
        return 'done'
    # Size and mtime prove nothing: an in-place edit can keep both (cp -p, rsync -t,
    # touch -r, a coarse clock). The content decides.
    if _sha256(path) != rec.get('src_sha256'):
        return 'changed'
    if sst.st_mtime_ns != rec.get('src_mtime_ns'):
        rec['src_mtime_ns'] = sst.st_mtime_ns
        return 'touched'
    return 'done'


def _vouch_all(records: Dict[str, dict], items: List[WorkItem], src: str, dst: str,
               fp: str, trust_mtime: bool, workers: int) -> List[str]:
    def one(it: WorkItem) -> str:
        return _vouch(records.get(it.dst), it, src, dst, fp, trust_mtime)
    if workers > 1 and len(items) > 1:
        # Threads suffice: reading and hashlib release the GIL on large buffers.
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(one, items))
    return [one(it) for it in items]


def _remove_output(dst: str, rel: str) -> None:
    path = os.path.join(dst, rel)
    if os.path.lexists(path):
        os.remove(path)
    d = os.path.dirname(path)
    while d != dst and os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
        d = os.path.dirname(d)


def _skipped_test(skipped: List[SkippedFile]) -> Callable[[object], bool]:
    """A predicate: is a recorded source among the skipped files (or under a skipped
    link to a directory)?"""
    files = {s.path for s in skipped}
    dirs = tuple(s.path for s in skipped if s.path.endswith(os.sep))

    def test(src_rel: object) -> bool:
        return isinstance(src_rel, str) and (src_rel in files or src_rel.startswith(dirs))
    return test


def _update(src: str, dst: str, key: SecretKey, plan: DatasetPlan, manifest: dict,
            summary: EncryptionSummary, block_size: int, ignore_index: int, fsync: bool,
            workers: int, progress: bool,
            on_file_done: Optional[Callable[[str, int], None]], trust_mtime: bool,
            max_pixels: Optional[int]) -> None:
    items = plan.items
    old = read_manifest(dst) or {}
    records: Dict[str, dict] = {k: dict(v) for k, v in (old.get('files') or {}).items()}
    journal_path = os.path.join(dst, _JOURNAL_NAME)
    journal, damage = _read_journal(dst)
    if damage:
        summary.warnings.append(
            f'{journal_path} is damaged ({damage}); it was ignored and removed. The '
            'outputs it recorded are not vouched for, so they are written again.')
        if os.path.lexists(journal_path):
            os.remove(journal_path)
    records.update(journal)
    planned = {it.dst for it in items}
    gone = sorted(set(records) - planned)
    pending = []
    states = _vouch_all(records, items, src, dst, key.fingerprint, trust_mtime, workers)
    for it, state in zip(items, states):
        if state in ('done', 'touched'):
            if it.kind == 'encrypt':
                summary.images_skipped += 1
            else:
                summary.files_skipped += 1
            continue
        records.pop(it.dst, None)
        summary.changed += state == 'changed'
        summary.unvouched += state == 'unvouched'
        summary.rescanned += state == 'unscanned'
        pending.append(it)
    summary.images_padded = manifest['counts']['padded_images']
    summary.labels_padded = manifest['counts']['padded_label_maps']
    if pending or gone or journal or damage or not old:
        # Not complete until the tree matches the source again.
        _write_manifest(dst, dict(manifest, complete=False, files=dict(sorted(
            records.items()))))
    now_skipped = _skipped_test(plan.skipped)
    for rel in gone:
        _remove_output(dst, rel)
        rec = records.pop(rel)
        if now_skipped(rec.get('src')):
            summary.withdrawn.append(rel)
        else:
            summary.removed.append(rel)
    withheld = set()
    if pending:
        with open(journal_path, 'a', encoding='utf-8') as jf:
            def done(item: WorkItem, record: dict) -> None:
                records[item.dst] = record
                jf.write(json.dumps(dict(record, dst=item.dst), sort_keys=True) + '\n')
                jf.flush()
                if fsync:
                    os.fsync(jf.fileno())

            def skip(item: WorkItem, reason: str) -> None:
                withheld.add(item.dst)
                summary.skipped.append(SkippedFile(item.src, reason))
                if os.path.lexists(os.path.join(dst, item.dst)):
                    _remove_output(dst, item.dst)  # written by an earlier run or version
                    summary.withdrawn.append(item.dst)

            _run(pending, src, dst, key, block_size, ignore_index, fsync, workers,
                 progress, summary, on_file_done, done, skip, max_pixels)
    kept = [it for it in items if it.dst not in withheld]
    final = _manifest(key, block_size, manifest['layout'], manifest['pad'], ignore_index,
                      kept, True, records)
    _write_manifest(dst, final)
    if os.path.exists(journal_path):
        os.remove(journal_path)
    summary.extra_files = sorted(it.dst for it in kept if it.kind == 'copy')
    plain = [p for p in summary.extra_files
             if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    if plain:
        summary.warnings.append(
            f'{len(plain)} file(s) named by --include are images outside the image '
            'directory and were copied as they are, NOT encrypted:\n' + _listing(plain, 20)
            + '\nNarrow the --include patterns if the server must not see them.')
    foreign = [rel for rel in _walk(dst) if rel not in records and rel != MANIFEST_NAME
               and rel not in _CONTROL_FILES and not _TMP_RE.search(rel)]
    if foreign:
        shown = []
        for rel in foreign:
            try:
                mark = ' (a key file!)' if is_key_file(os.path.join(dst, rel)) else ''
            except OSError:
                mark = ''
            shown.append(rel + mark)
        summary.warnings.append(
            f'DST holds {len(foreign)} file(s) this tool did not write (not in the '
            'manifest); they would be uploaded too. Delete them before uploading:\n'
            + _listing(shown, 20))


def _run(pending: List[WorkItem], src: str, dst: str, key: SecretKey, block_size: int,
         ignore_index: int, fsync: bool, workers: int, progress: bool,
         summary: EncryptionSummary, on_file_done: Optional[Callable[[str, int], None]],
         done, skip, max_pixels: Optional[int]) -> None:
    from tqdm import tqdm
    _STATE.clear()
    _STATE.update(src=src, dst=dst, key=key, cipher=get_cipher(key, block_size),
                  ignore_index=ignore_index, fsync=fsync, fingerprint=key.fingerprint,
                  max_pixels=max_pixels)
    bar = tqdm(total=len(pending), unit='file', desc='encrypting', disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    pool = None
    try:
        if workers > 1 and len(pending) > 1 and _can_fork():
            import multiprocessing as mp
            pool = mp.get_context('fork').Pool(min(workers, len(pending)), _worker_init)
            results = pool.imap_unordered(_process, pending, chunksize=1)
        else:
            results = map(_process, pending)
        count = 0
        for item, nbytes, record, reason in results:
            bar.update(1)
            if record is None:
                skip(item, reason)
                continue
            count += 1
            done(item, record)
            if item.kind == 'encrypt':
                summary.images_encrypted += 1
            else:
                summary.files_copied += 1
            summary.bytes_written += nbytes
            if on_file_done is not None:
                on_file_done(item.dst, count)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _STATE.clear()


def _can_fork() -> bool:
    import multiprocessing as mp
    return 'fork' in mp.get_all_start_methods()
