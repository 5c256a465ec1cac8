"""Client-side encryption of a whole dataset tree (``tools/encrypt_dataset.py``).

The model creator runs :func:`encrypt_dataset` on their own machine and uploads only the
output tree (DST), so DST holds only what the server needs:

- every image, encrypted with the secret key and stored as lossless PNG;
- the label maps (PNGs under the layout's label directory), byte for byte;
- ``ppenc_manifest.json`` at the root: key fingerprint, block size, layout, counts and one
  record per output (never key material; see :mod:`ppenc.dataset.manifest`);
- other files only when an ``include`` pattern (``--include``) names them. By default
  nothing else is copied: the server's datasets read images and label maps only, and a
  default that copied "everything else" would upload whatever lies next to the data
  (notes, archives, a key file).

Never copied, whatever the patterns say, and listed with the reason in the summary: key
files, symbolic links leaving SRC or pointing to a directory unless named (see
:mod:`ppenc.dataset.plan`), and files in which the leak scan finds this key's material
(hex, base64, integer lists, ...): label maps and included files are scanned before they
are written (:mod:`ppenc.dataset.pool`).

Guarantees:

- SRC is only read, DST never overlaps it, and every output appears atomically (see
  :mod:`ppenc.dataset.paths`). Each finished output is recorded in a journal
  (``.ppenc_journal.jsonl``), which the final manifest absorbs. A damaged journal (not
  UTF-8, not JSON) is reported, ignored and removed: what it recorded is verified again.
- A rerun counts an output as done only when its manifest record vouches for it: same
  source *content* (the source is hashed again on every rerun, so an in-place edit that
  keeps size and mtime is caught; ``trust_mtime`` skips the hashing and trusts size and
  mtime), same key, output unchanged. Changed sources are encrypted again, outputs whose
  source is gone or now excluded are removed, and the summary says so. So a rerun after a
  crash, or after the source changed, produces the tree a fresh run on the current source
  produces (PNG encoding is deterministic; the manifests differ only in the recorded
  mtimes).
- The manifest says ``complete: false`` while a run has work to do and ``complete: true``
  once the tree matches the source, so a half-done tree is recognisable, and a rerun with
  another key, block size, layout or padding mode is refused instead of mixing two
  ciphers in one tree. A manifest of the wrong shape is refused with the file named.
- One run at a time writes a DST (a lock file at its root).
- With ``pad=True``, off-grid images are padded at the bottom/right with 0 and
  single-channel label maps with the ignore index (255), so labels stay aligned.
"""
from __future__ import annotations

import os
import stat
import time
from typing import Callable, Dict, List, Optional, Sequence

from ppenc.cipher import get_cipher
from ppenc.dataset.images import DEFAULT_MAX_PIXELS, check_output_format
from ppenc.dataset.manifest import (
    MANIFEST_NAME,
    build_manifest,
    check_existing_manifest,
    journal_line,
    read_journal,
    read_manifest,
    write_manifest,
)
from ppenc.dataset.paths import (
    CONTROL_FILES,
    JOURNAL_NAME,
    LOCK_NAME,
    TMP_RE,
    check_dirs,
    check_dst_links,
    inside,
    remove_output,
    remove_stale,
    walk,
)
from ppenc.dataset.plan import (
    IMAGE_EXTENSIONS,
    DatasetPlan,
    SkippedFile,
    WorkItem,
    listing,
    plan_dataset,
    resolve_follow,
)
from ppenc.dataset.pool import WorkerContext, results, sha256_file
from ppenc.dataset.report import EncryptionSummary, progress_bar
from ppenc.errors import DatasetEncryptionError, DatasetWriteError
from ppenc.keys import SecretKey, is_key_file

__all__ = ['encrypt_dataset']


def _lock(dst: str) -> Optional[int]:
    """Hold DST's lock file (``flock``) for this run; return its descriptor.

    Two runs writing one DST would interleave their journals and remove each other's
    temporaries as stale, so the second is refused.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no concurrent-run protection
        return None
    fd = os.open(os.path.join(dst, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatasetEncryptionError(f'Another encrypt_dataset run is writing {dst!r}; '
                                     'wait for it to finish.') from None
    return fd


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
    src, dst = check_dirs(os.fspath(src), os.fspath(dst))
    for rel, target in resolve_follow(src, follow_symlinks).items():
        if inside(dst, target) or inside(target, dst):
            raise DatasetEncryptionError(
                f'--follow-symlink {rel!r} resolves to {target}, which overlaps DST {dst}: '
                'outputs would be read back as sources. Choose a DST outside it.')
    t0 = time.perf_counter()
    plan = plan_dataset(src, layout, block_size, pad, allow_unlabeled, include=include,
                        follow_symlinks=follow_symlinks, max_pixels=max_pixels)
    manifest = build_manifest(key, block_size, layout, pad, ignore_index, plan.items,
                              False)
    check_dst_links(src, dst, plan.items)
    check_existing_manifest(dst, manifest)
    summary = EncryptionSummary(key_fingerprint=key.fingerprint,
                                manifest=os.path.join(dst, MANIFEST_NAME),
                                skipped=list(plan.skipped))
    lock_fd = None
    try:
        os.makedirs(dst, exist_ok=True)
        lock_fd = _lock(dst)
        summary.stale_removed = remove_stale(dst)
        _update(src, dst, key, plan, manifest, summary, block_size, ignore_index, fsync,
                workers or _default_workers(), progress, on_file_done, trust_mtime,
                max_pixels)
    except OSError as e:
        raise DatasetWriteError(_write_error(e, dst)) from None
    finally:
        if lock_fd is not None:
            try:
                os.remove(os.path.join(dst, LOCK_NAME))
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
    if sha256_file(path) != rec.get('src_sha256'):
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
    """Bring DST up to date with ``plan``: vouch for existing outputs, remove those
    whose source is gone, write the rest (journalled), then write the final manifest
    and record what the summary reports."""
    items = plan.items
    old = read_manifest(dst) or {}
    records: Dict[str, dict] = {k: dict(v) for k, v in (old.get('files') or {}).items()}
    journal_path = os.path.join(dst, JOURNAL_NAME)
    journal, damage = read_journal(dst)
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
        write_manifest(dst, dict(manifest, complete=False, files=dict(sorted(
            records.items()))))
    now_skipped = _skipped_test(plan.skipped)
    for rel in gone:
        remove_output(dst, rel)
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
                jf.write(journal_line(item.dst, record))
                jf.flush()
                if fsync:
                    os.fsync(jf.fileno())

            def skip(item: WorkItem, reason: str) -> None:
                withheld.add(item.dst)
                summary.skipped.append(SkippedFile(item.src, reason))
                if os.path.lexists(os.path.join(dst, item.dst)):
                    remove_output(dst, item.dst)  # written by an earlier run or version
                    summary.withdrawn.append(item.dst)

            _run(pending, src, dst, key, block_size, ignore_index, fsync, workers,
                 progress, summary, on_file_done, done, skip, max_pixels)
    kept = [it for it in items if it.dst not in withheld]
    final = build_manifest(key, block_size, manifest['layout'], manifest['pad'],
                           ignore_index, kept, True, records)
    write_manifest(dst, final)
    if os.path.exists(journal_path):
        os.remove(journal_path)
    summary.extra_files = sorted(it.dst for it in kept if it.kind == 'copy')
    plain = [p for p in summary.extra_files
             if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    if plain:
        summary.warnings.append(
            f'{len(plain)} file(s) named by --include are images outside the image '
            'directory and were copied as they are, NOT encrypted:\n' + listing(plain, 20)
            + '\nNarrow the --include patterns if the server must not see them.')
    foreign = [rel for rel in walk(dst) if rel not in records and rel != MANIFEST_NAME
               and rel not in CONTROL_FILES and not TMP_RE.search(rel)]
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
            + listing(shown, 20))


def _run(pending: List[WorkItem], src: str, dst: str, key: SecretKey, block_size: int,
         ignore_index: int, fsync: bool, workers: int, progress: bool,
         summary: EncryptionSummary, on_file_done: Optional[Callable[[str, int], None]],
         done: Callable[[WorkItem, dict], None], skip: Callable[[WorkItem, str], None],
         max_pixels: Optional[int]) -> None:
    """Write ``pending`` (in workers), reporting each output to ``done`` or ``skip``."""
    ctx = WorkerContext(src=src, dst=dst, key=key, cipher=get_cipher(key, block_size),
                        ignore_index=ignore_index, fsync=fsync, max_pixels=max_pixels)
    bar = progress_bar(len(pending), progress)
    try:
        with results(ctx, pending, workers) as finished:
            count = 0
            for item, nbytes, record, reason in finished:
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
    finally:
        bar.close()
