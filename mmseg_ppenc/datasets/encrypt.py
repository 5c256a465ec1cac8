"""Client-side encryption of a whole dataset tree (``tools/encrypt_dataset.py``).

The model creator runs this on their own machine and uploads only the output tree: every
image is encrypted with the secret key and stored as lossless PNG, label maps and other
files are copied byte for byte, and ``ppenc_manifest.json`` at the root records what was
done (key fingerprint, block size, layout, counts and one record per output; never key
material).

Guarantees:

- SRC is only read. DST may not be SRC, lie inside SRC or contain it, and no directory
  of DST may resolve into SRC (a symlinked ``leftImg8bit/``, say); this is checked on
  every run, first or resumed.
- Every output file is written under a temporary name in its final directory
  (``name.tmp-<pid>``) and renamed into place with ``os.replace``, so an existing output
  is always complete. Each finished output is then recorded in a journal
  (``.ppenc_journal.jsonl``), which the final manifest absorbs.
- The manifest records, per output, its source (path, size, mtime, SHA-256), the key
  fingerprint, and the output's size and mtime. A rerun counts an output as done only
  when that record vouches for it: same source content, same key, output unchanged.
  Changed sources are encrypted again, outputs whose source is gone are removed, and the
  summary says so. So a rerun after a crash, or after the source changed, produces the
  tree a fresh run on the current source produces (PNG encoding is deterministic; the
  manifests differ only in the recorded mtimes).
- The manifest says ``complete: false`` while a run has work to do and ``complete: true``
  once the tree matches the source, so a half-done tree is recognisable, and a rerun with
  another key, block size, layout or padding mode is refused instead of mixing two
  ciphers in one tree.
- Images whose sides are not multiples of the block size are refused up front, listed
  all at once, unless ``pad=True``: then images are padded at the bottom/right with 0 and
  single-channel label maps with the ignore index (255), so labels stay aligned. Images
  without a label map (cityscapes and ade20k layouts) and unreadable images are refused
  up front too, listed.

Images are decoded as mmseg's ``LoadImageFromFile`` decodes them (OpenCV, colour, 8 bit,
EXIF orientation applied), so the encrypted file holds exactly what the plain pipeline
would have fed the model, encrypted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..core.errors import DatasetEncryptionError, DatasetWriteError
from ..core.grid import pad_to_grid
from ..core.meta import CIPHER_NAME
from ..cipher import BlockCipher, get_cipher
from ..keys import SecretKey

__all__ = ['MANIFEST_NAME', 'LAYOUTS', 'IMAGE_EXTENSIONS', 'LOSSY_FORMATS',
           'DatasetEncryptionError', 'EncryptionSummary', 'WorkItem', 'plan_dataset',
           'encrypt_dataset', 'read_manifest', 'check_output_format', 'TIME_FIELDS']

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
_LOSSLESS = ('png',)
_TMP_RE = re.compile(r'\.tmp-\d+$')
_LOCK_NAME = '.ppenc_encrypt.lock'
_JOURNAL_NAME = '.ppenc_journal.jsonl'
_CONTROL_FILES = (_LOCK_NAME, _JOURNAL_NAME)
# Per-output record fields that hold times (they differ between equal trees).
TIME_FIELDS = ('src_mtime_ns', 'out_mtime_ns')


@dataclass(frozen=True)
class WorkItem:
    """One output file.

    Attributes:
        kind (str): ``'encrypt'`` (image), ``'label'`` (label map, padded if needed) or
            ``'copy'`` (byte copy).
        src (str): Path relative to SRC.
        dst (str): Path relative to DST.
        pad (bool): Pad to the block grid (``pad=True`` runs, off-grid files only).
    """
    kind: str
    src: str
    dst: str
    pad: bool = False


@dataclass
class EncryptionSummary:
    """What a run did (all counts are of this run, except the ``total_*`` ones).

    Attributes:
        images_encrypted (int): Images encrypted now.
        images_skipped (int): Images whose output already existed.
        files_copied (int): Label maps and other files written now.
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
        removed (list[str]): Outputs deleted because their source is gone.
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
    removed: List[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Encryption throughput of this run."""
        return self.images_encrypted / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """A human-readable multi-line summary."""
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
        if self.removed:
            shown = ', '.join(self.removed[:5])
            more = f' and {len(self.removed) - 5} more' if len(self.removed) > 5 else ''
            lines.append(f'Removed {len(self.removed)} output(s) whose source is gone: '
                         f'{shown}{more}.')
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
    return path == root or path.startswith(root + os.sep)


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


def read_manifest(root: str) -> Optional[dict]:
    """The manifest of an encrypted tree, or None if ``root`` has none.

    Raises:
        DatasetEncryptionError: the manifest exists but is not valid JSON.
    """
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetEncryptionError(f'{path} is unreadable or corrupt ({e}).') from None


# ------------------------------------------------------------------------------ plan
def _walk(root: str) -> Iterable[str]:
    """Relative paths of all files under ``root``, in a fixed (sorted) order."""
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            yield os.path.relpath(os.path.join(dirpath, name), root)


def _under(rel: str, top: Optional[str]) -> bool:
    return top is not None and (rel == top or rel.startswith(top + os.sep))


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) as OpenCV's colour decoding will produce it (EXIF applied).

    Raises:
        DatasetEncryptionError: the file is not a readable image (empty, truncated,
            another format).
    """
    from PIL import Image, UnidentifiedImageError
    try:
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
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF: OpenCV ignores it too
            orientation = 1
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


def plan_dataset(src: str, layout: str = 'cityscapes', block_size: int = 16,
                 pad: bool = False, allow_unlabeled: bool = False) -> List[WorkItem]:
    """List the work for encrypting ``src``: one :class:`WorkItem` per output file.

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

    Raises:
        DatasetEncryptionError: unknown layout, missing image directory, no images,
            SRC already encrypted, two images mapping to one output name, unreadable
            images, images without a label map (unless ``allow_unlabeled``), or (without
            ``pad``) images off the block grid (all listed).
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
    items: List[WorkItem] = []
    off_grid: List[str] = []
    unreadable: List[str] = []
    seen: Dict[str, str] = {}
    labels: Dict[str, List[str]] = {}
    if label_top is not None:
        for rel in _walk(src):
            if _under(rel, label_top):
                labels.setdefault(os.path.dirname(rel), []).append(os.path.basename(rel))
    unlabeled: List[str] = []
    for rel in _walk(src):
        name = os.path.basename(rel)
        if _TMP_RE.search(name) or name in _CONTROL_FILES:
            continue
        ext = os.path.splitext(name)[1].lower()
        is_image = ext in IMAGE_EXTENSIONS and (img_top is None or _under(rel, img_top))
        if is_image:
            out = os.path.splitext(rel)[0] + '.png'
            try:
                h, w = _image_size(os.path.join(src, rel))
            except DatasetEncryptionError as e:
                unreadable.append(f'{rel} ({getattr(e, "reason", e)})')
                h = w = 0
            if label_top is not None and not allow_unlabeled and \
                    not _label_of(rel, layout, labels):
                unlabeled.append(rel)
            bad = bool(h % block_size or w % block_size)
            if bad and not pad:
                off_grid.append(f'{rel} ({h}x{w})')
            kind, item_pad = 'encrypt', bad
        elif _under(rel, label_top) and ext == '.png':
            out = rel
            item_pad = False
            if pad:
                h, w = _image_size(os.path.join(src, rel))
                item_pad = bool(h % block_size or w % block_size)
            kind = 'label'
        else:
            out, kind, item_pad = rel, 'copy', False
        if out in seen:
            raise DatasetEncryptionError(
                f'{seen[out]} and {rel} would both be written to {out} (images are '
                'stored as .png). Rename one of them.')
        seen[out] = rel
        items.append(WorkItem(kind, rel, out, item_pad))
    for problem, names, fix in (
            ('are not readable images', unreadable,
             'Replace them with valid images or remove them from SRC.'),
            ('have no label map', unlabeled,
             f'Add their label maps under {label_top}/ (same directory and stem), remove '
             'the images, or pass --allow-unlabeled (e.g. for a test split).')):
        if names:
            shown = '\n  '.join(names[:20])
            more = f'\n  ... and {len(names) - 20} more' if len(names) > 20 else ''
            raise DatasetEncryptionError(f'{len(names)} image(s) in {src} {problem}:\n  '
                                         f'{shown}{more}\n{fix}')
    if off_grid:
        shown = '\n  '.join(off_grid[:20])
        more = f'\n  ... and {len(off_grid) - 20} more' if len(off_grid) > 20 else ''
        raise DatasetEncryptionError(
            f'{len(off_grid)} image(s) have sides that are not multiples of the '
            f'{block_size}-pixel block size (height x width):\n  {shown}{more}\n'
            'Crop or resize them to multiples of the block size, or rerun with --pad '
            '(pads images with 0 and label maps with the ignore index 255 at the '
            'bottom/right).')
    if not any(i.kind == 'encrypt' for i in items):
        where = f'{img_top}/' if img_top else 'the tree'
        raise DatasetEncryptionError(f'No images found in {where} of {src!r} (extensions '
                                     f'{", ".join(IMAGE_EXTENSIONS)}).')
    return items


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


def _encode_image(src: str, cipher: BlockCipher, pad: bool) -> bytes:
    import cv2
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


def _encode_label(src: str, block: int, ignore_index: int) -> bytes:
    from PIL import Image
    with Image.open(src) as im:
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


def _process(item: WorkItem) -> Tuple[WorkItem, int, dict]:
    """Write one output; return the item, the bytes written and its manifest record."""
    st = _STATE
    src = os.path.join(st['src'], item.src)
    dst = os.path.join(st['dst'], item.dst)
    before = os.stat(src)
    digest = _sha256(src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if item.kind == 'encrypt':
        data = _encode_image(src, st['cipher'], item.pad)
    elif item.kind == 'label' and item.pad:
        data = _encode_label(src, st['cipher'].block_size, st['ignore_index'])
    else:
        with open(src, 'rb') as f:
            data = f.read()
    after = os.stat(src)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise DatasetEncryptionError(f'{src} changed while it was being encrypted; rerun '
                                     'when the dataset is no longer being written.')
    _atomic_write(dst, data, st['fsync'])
    out = os.stat(dst)
    record = dict(src=item.src, kind=item.kind, pad=item.pad, src_size=before.st_size,
                  src_mtime_ns=before.st_mtime_ns, src_sha256=digest,
                  key_fingerprint=st['fingerprint'], out_size=out.st_size,
                  out_mtime_ns=out.st_mtime_ns)
    return item, len(data), record


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
                    on_file_done: Optional[Callable[[str, int], None]] = None
                    ) -> EncryptionSummary:
    """Encrypt every image of the dataset tree ``src`` into ``dst``.

    Args:
        src (str): Plain dataset root (only read).
        dst (str): Output root; created if missing. Reruns bring it up to date.
        key (SecretKey): The secret key.
        layout (str): ``'cityscapes'``, ``'ade20k'`` or ``'folder'`` (see
            :func:`plan_dataset`). Defaults to ``'cityscapes'``.
        workers (int, optional): Worker processes. Defaults to None
            (``min(4, cpu_count)``). 1 runs in this process.
        pad (bool): Pad off-grid images (with 0) and label maps (with
            ``ignore_index``) to the block grid instead of refusing them.
            Defaults to False.
        block_size (int): Cipher block size (the ViT patch size). Defaults to 16.
        ignore_index (int): Label value for padding. Defaults to 255.
        out_format (str): Output image format; only lossless ``'png'`` is accepted.
            Defaults to ``'png'``.
        progress (bool): Show a tqdm progress bar on stderr. Defaults to True.
        fsync (bool): fsync every file before renaming it (slower, survives power
            loss). Defaults to False.
        allow_unlabeled (bool): Accept images without a label map. Defaults to False.
        on_file_done (callable, optional): Called as ``on_file_done(rel_path, n)`` after
            each output is written and recorded (``rel_path`` relative to ``dst``, ``n``
            files so far in this run), e.g. for a progress display. Defaults to None.

    Returns:
        EncryptionSummary: Counts, bytes, throughput, fingerprint and manifest path.

    Raises:
        DatasetEncryptionError: see :func:`plan_dataset` and the module docstring.
        DatasetWriteError: DST cannot be written (read-only, full, a file in the way);
            the message names the path and the fix.
    """
    check_output_format(out_format)
    if not isinstance(key, SecretKey):
        raise TypeError(f'key must be a SecretKey, got {type(key).__name__}')
    src, dst = _check_dirs(os.fspath(src), os.fspath(dst))
    t0 = time.perf_counter()
    items = plan_dataset(src, layout, block_size, pad, allow_unlabeled)
    manifest = _manifest(key, block_size, layout, pad, ignore_index, items, False)
    _check_dst_links(src, dst, items)
    _check_existing_manifest(dst, manifest)
    summary = EncryptionSummary(key_fingerprint=key.fingerprint,
                                manifest=os.path.join(dst, MANIFEST_NAME))
    lock_fd = None
    try:
        os.makedirs(dst, exist_ok=True)
        lock_fd = _lock(dst)
        summary.stale_removed = _remove_stale(dst)
        _update(src, dst, key, items, manifest, summary, block_size, ignore_index, fsync,
                workers or _default_workers(), progress, on_file_done)
    except OSError as e:
        raise DatasetWriteError(_write_error(e, dst)) from None
    finally:
        if lock_fd is not None:
            try:
                os.remove(os.path.join(dst, _LOCK_NAME))
            except OSError:
                pass
            os.close(lock_fd)
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


def _read_journal(dst: str) -> Dict[str, dict]:
    """Records of outputs finished by an interrupted run (a torn last line is skipped)."""
    out: Dict[str, dict] = {}
    try:
        with open(os.path.join(dst, _JOURNAL_NAME), encoding='utf-8') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get('dst'), str):
                    out[rec.pop('dst')] = rec
    except OSError:
        pass
    return out


def _vouch(rec: Optional[dict], item: WorkItem, src: str, dst: str, fp: str) -> str:
    """``'done'``, ``'touched'`` (same content, new mtime), ``'changed'`` or ``'new'``."""
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
    sst = os.stat(os.path.join(src, item.src))
    if (sst.st_dev, sst.st_ino) == (ost.st_dev, ost.st_ino):
        return 'unvouched'  # a hard link to the source is no output
    if (sst.st_size, sst.st_mtime_ns) == (rec.get('src_size'), rec.get('src_mtime_ns')):
        return 'done'
    if sst.st_size == rec.get('src_size') and \
            _sha256(os.path.join(src, item.src)) == rec.get('src_sha256'):
        rec['src_mtime_ns'] = sst.st_mtime_ns
        return 'touched'
    return 'changed'


def _remove_output(dst: str, rel: str) -> None:
    path = os.path.join(dst, rel)
    if os.path.lexists(path):
        os.remove(path)
    d = os.path.dirname(path)
    while d != dst and os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
        d = os.path.dirname(d)


def _update(src: str, dst: str, key: SecretKey, items: List[WorkItem], manifest: dict,
            summary: EncryptionSummary, block_size: int, ignore_index: int, fsync: bool,
            workers: int, progress: bool,
            on_file_done: Optional[Callable[[str, int], None]]) -> None:
    old = read_manifest(dst) or {}
    records: Dict[str, dict] = dict(old.get('files') or {})
    journal = _read_journal(dst)
    records.update(journal)
    planned = {it.dst for it in items}
    gone = sorted(set(records) - planned)
    pending = []
    for it in items:
        state = _vouch(records.get(it.dst), it, src, dst, key.fingerprint)
        if state in ('done', 'touched'):
            if it.kind == 'encrypt':
                summary.images_skipped += 1
            else:
                summary.files_skipped += 1
            continue
        records.pop(it.dst, None)
        summary.changed += state == 'changed'
        summary.unvouched += state == 'unvouched'
        pending.append(it)
    summary.images_padded = manifest['counts']['padded_images']
    summary.labels_padded = manifest['counts']['padded_label_maps']
    if pending or gone or journal or not old:
        # Not complete until the tree matches the source again.
        _write_manifest(dst, dict(manifest, complete=False, files=dict(sorted(
            records.items()))))
    for rel in gone:
        _remove_output(dst, rel)
        records.pop(rel)
        summary.removed.append(rel)
    journal_path = os.path.join(dst, _JOURNAL_NAME)
    if pending:
        with open(journal_path, 'a', encoding='utf-8') as jf:
            def done(item: WorkItem, record: dict) -> None:
                records[item.dst] = record
                jf.write(json.dumps(dict(record, dst=item.dst), sort_keys=True) + '\n')
                jf.flush()
                if fsync:
                    os.fsync(jf.fileno())

            _run(pending, src, dst, key, block_size, ignore_index, fsync, workers,
                 progress, summary, on_file_done, done)
    final = _manifest(key, block_size, manifest['layout'], manifest['pad'], ignore_index,
                      items, True, records)
    _write_manifest(dst, final)
    if os.path.exists(journal_path):
        os.remove(journal_path)


def _run(pending: List[WorkItem], src: str, dst: str, key: SecretKey, block_size: int,
         ignore_index: int, fsync: bool, workers: int, progress: bool,
         summary: EncryptionSummary, on_file_done: Optional[Callable[[str, int], None]],
         done) -> None:
    from tqdm import tqdm
    _STATE.clear()
    _STATE.update(src=src, dst=dst, cipher=get_cipher(key, block_size),
                  ignore_index=ignore_index, fsync=fsync, fingerprint=key.fingerprint)
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
        for item, nbytes, record in results:
            count += 1
            done(item, record)
            if item.kind == 'encrypt':
                summary.images_encrypted += 1
            else:
                summary.files_copied += 1
            summary.bytes_written += nbytes
            bar.update(1)
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

