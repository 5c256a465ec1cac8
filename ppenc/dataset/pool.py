"""Writing outputs: one :class:`WorkerContext` per run, run in this process or a fork pool.

Each output is made by :meth:`WorkerContext.process`: read the source, encrypt it (an
image) or scan it for key material (a label map or included file, on the very bytes that
would be written), write it atomically and return its manifest record.

The context is handed to the workers explicitly, as the initializer argument of a
``fork`` pool: forked children inherit it from the parent's memory, so the key and the
cipher tables never pass through a pipe (nothing is pickled but the small
:class:`~ppenc.dataset.plan.WorkItem` of each task), and a worker starts without
rebuilding them. The parent never stores the context globally, so two runs in one
process (threads, tests) cannot see each other's key.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

from ppenc.cipher import BlockCipher
from ppenc.dataset.images import encode_image, encode_label
from ppenc.dataset.paths import atomic_write
from ppenc.dataset.plan import SKIP_KEY_FILE, SKIP_KEY_MATERIAL, WorkItem
from ppenc.errors import DatasetEncryptionError
from ppenc.keys import SecretKey, looks_like_key_bytes

__all__ = ['WorkerContext', 'Result', 'sha256_file', 'results', 'can_fork']

#: What processing one item gives: ``(item, bytes written, manifest record, None)``, or
#: ``(item, 0, None, reason)`` for a file that must not reach DST.
Result = Tuple[WorkItem, int, Optional[dict], Optional[str]]

# The context of the pool this process works for. Assigned only in a forked pool child,
# by _worker_init from its explicit argument; the parent process never sets it.
_WORKER_CONTEXT: Optional['WorkerContext'] = None


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's content, hex.

    Args:
        path (str): The file (read in 1 MiB chunks).
    """
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class WorkerContext:
    """Everything a worker needs to write outputs of one run.

    Args:
        src (str): Resolved SRC.
        dst (str): Resolved DST.
        key (SecretKey): The key (for the leak scan; never written).
        cipher (BlockCipher): The cipher of the run (its ``block_size`` is the run's).
        ignore_index (int): Pad value of class-index label maps.
        fsync (bool): fsync every output before renaming it into place.
        max_pixels (int, optional): Refuse sources whose header declares more pixels;
            None for no limit.
    """
    src: str
    dst: str
    key: SecretKey = field(repr=False)
    cipher: BlockCipher = field(repr=False)
    ignore_index: int = 255
    fsync: bool = False
    max_pixels: Optional[int] = None
    _scanner: object = field(default=None, init=False, repr=False, compare=False)

    @property
    def scanner(self):
        """The run's :class:`ppenc.leak_scan.KeyScanner`, built on first use.

        Deriving the key's permutations costs about as much as scanning a small file,
        so one scanner serves every file of the run (and every forked worker, when it
        is built before the fork: see :meth:`prepare`).
        """
        if self._scanner is None:
            from ppenc.leak_scan import KeyScanner
            self._scanner = KeyScanner(self.key, block_sizes=(self.cipher.block_size,))
        return self._scanner

    def prepare(self, items: Sequence[WorkItem]) -> None:
        """Build what ``items`` will need once, before workers fork and inherit it.

        Args:
            items (Sequence[WorkItem]): The pending outputs.
        """
        if any(it.kind != 'encrypt' for it in items):
            self.scanner  # noqa: B018 - built here so that forked workers share it

    def withheld(self, data: bytes) -> Optional[str]:
        """Why a file that would be copied byte for byte must stay out of DST, or None.

        Args:
            data (bytes): The bytes that would be written.
        """
        if looks_like_key_bytes(data):
            return SKIP_KEY_FILE
        if self.scanner.contains(data):
            return SKIP_KEY_MATERIAL
        return None

    def process(self, item: WorkItem) -> Result:
        """Write one output.

        Args:
            item (WorkItem): What to write.

        Returns:
            Result: The item, the bytes written, its manifest record and None; or
            ``(item, 0, None, reason)`` for a copy that must not reach DST.

        Raises:
            DatasetEncryptionError: the source cannot be encoded, or changed while it
                was read.
            OSError: DST cannot be written.
        """
        src = os.path.join(self.src, item.src)
        dst = os.path.join(self.dst, item.dst)
        before = os.stat(src)
        if item.kind == 'encrypt':
            digest = sha256_file(src)
            data = encode_image(src, self.cipher, item.pad, self.max_pixels)
        else:
            # Scanned here, on the bytes that would be written, not when planning: a file
            # edited between the two is caught, and the workers share the scanning.
            with open(src, 'rb') as f:
                raw = f.read()
            digest = hashlib.sha256(raw).hexdigest()
            reason = self.withheld(raw)
            if reason is not None:
                return item, 0, None, reason
            if item.kind == 'label' and item.pad:
                data = encode_label(src, self.cipher.block_size, self.ignore_index,
                                    self.max_pixels)
            else:
                data = raw
        after = os.stat(src)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise DatasetEncryptionError(f'{src} changed while it was being encrypted; '
                                         'rerun when the dataset is no longer being '
                                         'written.')
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        atomic_write(dst, data, self.fsync)
        out = os.stat(dst)
        record = dict(src=item.src, kind=item.kind, pad=item.pad, src_size=before.st_size,
                      src_mtime_ns=before.st_mtime_ns, src_sha256=digest,
                      key_fingerprint=self.key.fingerprint, out_size=out.st_size,
                      out_mtime_ns=out.st_mtime_ns)
        if item.kind != 'encrypt':
            record['key_scanned'] = True  # a rerun need not scan these bytes again
        return item, len(data), record, None


def _worker_init(ctx: WorkerContext) -> None:
    global _WORKER_CONTEXT
    # No cv2.setNumThreads here: in a child forked from a process whose OpenCV thread
    # pool is running, reconfiguring the pool waits for threads that were not copied by
    # fork and hangs. PNG coding is single-threaded anyway.
    # Ctrl-C goes to the whole process group; let the parent alone handle it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_CONTEXT = ctx


def _process_in_worker(item: WorkItem) -> Result:
    return _WORKER_CONTEXT.process(item)


def can_fork() -> bool:
    """Whether this platform offers the ``fork`` start method (not Windows)."""
    import multiprocessing as mp
    return 'fork' in mp.get_all_start_methods()


@contextlib.contextmanager
def results(ctx: WorkerContext, pending: List[WorkItem],
            workers: int) -> Iterator[Iterator[Result]]:
    """Process ``pending`` and yield the results as they finish (in any order).

    Used as ``with results(ctx, pending, workers) as it: for r in it: ...``. With more
    than one worker (and item) and ``fork`` available, a fork pool does the work;
    otherwise this process does, in order. Leaving the block early (an error, Ctrl-C)
    terminates the workers; a worker's exception is raised in the parent.

    Args:
        ctx (WorkerContext): The run's context.
        pending (list[WorkItem]): Outputs to write.
        workers (int): Most worker processes.
    """
    ctx.prepare(pending)
    if workers <= 1 or len(pending) <= 1 or not can_fork():
        yield map(ctx.process, pending)
        return
    import multiprocessing as mp
    pool = mp.get_context('fork').Pool(min(workers, len(pending)), _worker_init, (ctx,))
    try:
        yield pool.imap_unordered(_process_in_worker, pending, chunksize=1)
        pool.close()
        pool.join()
        pool = None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
