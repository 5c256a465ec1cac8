"""Path safety of an encryption run: where SRC and DST may lie, and how DST is written.

- SRC is only read. DST may not be SRC, lie inside SRC or contain it, and no directory of
  DST may resolve into SRC (a symlinked ``leftImg8bit/``, say): :func:`check_dirs` and
  :func:`check_dst_links` refuse such trees on every run, first or resumed.
- Every output is written under a temporary name in its final directory
  (``name.tmp-<pid>``, :data:`TMP_RE`) and renamed into place with ``os.replace``
  (:func:`atomic_write`), so an existing output is always complete; a temporary left by a
  killed run is deleted by :func:`remove_stale`.
- The control files of a run (:data:`LOCK_NAME`, :data:`JOURNAL_NAME`) live at DST's root
  and are never taken for data, on either side.

This module imports nothing else of :mod:`ppenc.dataset`: every other module may use it.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Iterator, Tuple

from ppenc.errors import DatasetEncryptionError

__all__ = ['TMP_RE', 'LOCK_NAME', 'JOURNAL_NAME', 'CONTROL_FILES', 'check_dirs', 'inside',
           'check_dst_links', 'safe_rel', 'walk', 'atomic_write', 'remove_output',
           'remove_stale']

#: Names of temporaries (``name.tmp-<pid>``): outputs before their rename into place.
TMP_RE = re.compile(r'\.tmp-\d+$')
#: Lock file at DST's root, held while a run writes DST.
LOCK_NAME = '.ppenc_encrypt.lock'
#: Journal at DST's root: one record per output finished by the running run.
JOURNAL_NAME = '.ppenc_journal.jsonl'
#: Control files of a run: never copied from SRC, never reported as foreign in DST.
CONTROL_FILES = (LOCK_NAME, JOURNAL_NAME)


def check_dirs(src: str, dst: str) -> Tuple[str, str]:
    """Refuse SRC/DST pairs where outputs could land in (or overwrite) the dataset.

    Args:
        src (str): Plain dataset root.
        dst (str): Output root (need not exist yet).

    Returns:
        tuple[str, str]: ``(src, dst)`` resolved (``os.path.realpath``).

    Raises:
        DatasetEncryptionError: SRC is no directory, SRC and DST are the same, one lies
            inside the other, or DST exists and is no directory.
    """
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


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it.

    A string comparison, so both must be resolved (``os.path.realpath``) first.

    Args:
        path (str): A resolved path.
        root (str): A resolved directory.
    """
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_dst_links(rs: str, rd: str, items: Iterable) -> None:
    """Refuse a DST with a directory that resolves elsewhere (into SRC, typically).

    Outputs are written through their directories: a ``DST/leftImg8bit`` that is a
    symlink into SRC would put encrypted files into the plain dataset, and its plain
    files would look like finished outputs.

    Args:
        rs (str): Resolved SRC.
        rd (str): Resolved DST.
        items (Iterable[WorkItem]): The planned outputs (their ``dst`` paths are checked).

    Raises:
        DatasetEncryptionError: a directory of DST (existing, or one an output goes
            into) is a link; the first one is named.
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
        where = 'into SRC' if inside(target, rs) else 'outside DST'
        raise DatasetEncryptionError(
            f'DST directory {os.path.join(rd, rel)!r} is a link that resolves {where} '
            f'({target}); outputs written through it would land there (and source files '
            'could pass for finished outputs). Replace the link with a real directory, '
            'or choose a new DST.')


def safe_rel(path: str) -> bool:
    """Whether ``path`` is a relative path that stays inside its root (no ``..``).

    Args:
        path (str): A path read from a manifest or journal (untrusted).
    """
    if not path or os.path.isabs(path) or '\0' in path:
        return False
    return not any(part in ('..', '') for part in path.replace('\\', '/').split('/'))


def walk(root: str) -> Iterator[str]:
    """Relative paths of all files under ``root``, in a fixed (sorted) order.

    Args:
        root (str): Directory to walk (links to directories are not followed).
    """
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            yield os.path.relpath(os.path.join(dirpath, name), root)


def atomic_write(path: str, data: bytes, fsync: bool) -> None:
    """Write ``data`` to ``path`` through a temporary in the same directory.

    The rename is atomic, so ``path`` never holds a partial file; the temporary is
    removed on any error (a full disk, Ctrl-C).

    Args:
        path (str): Final path.
        data (bytes): Content.
        fsync (bool): fsync before the rename (survives power loss).
    """
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


def remove_output(dst: str, rel: str) -> None:
    """Delete the output ``dst/rel`` and the directories it leaves empty.

    Args:
        dst (str): Output root (never removed itself).
        rel (str): Output path relative to ``dst``.
    """
    path = os.path.join(dst, rel)
    if os.path.lexists(path):
        os.remove(path)
    d = os.path.dirname(path)
    while d != dst and os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
        d = os.path.dirname(d)


def remove_stale(dst: str) -> int:
    """Delete the temporaries a killed run left in ``dst``.

    Args:
        dst (str): Output root (the caller holds its lock, so no run is writing).

    Returns:
        int: How many were deleted.
    """
    n = 0
    for rel in walk(dst):
        if TMP_RE.search(rel):
            os.remove(os.path.join(dst, rel))
            n += 1
    return n
