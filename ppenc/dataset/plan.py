"""Planning an encryption run: what of SRC goes into DST, under which name, and why not.

:func:`plan_dataset` walks SRC once and returns a :class:`DatasetPlan`: one
:class:`WorkItem` per output (an image to encrypt, a label map to copy or pad, a file an
``include`` pattern names) and one :class:`SkippedFile` per file left out, with the reason.
Nothing is skipped silently. Never planned, whatever the patterns say:

- a key file, recognised by its header (:func:`ppenc.keys.is_key_file`), under any
  name or behind any link;
- a symbolic link that leaves SRC, or any symbolic link to a directory, unless it is
  named with ``follow_symlinks`` (``--follow-symlink``); FIFOs, sockets and devices;
- the temporaries and control files of a run.

Images whose sides are not multiples of the block size are refused up front, listed all
at once, unless ``pad=True``. Images without a label map (cityscapes and ade20k layouts),
unreadable images and images whose header declares more than ``max_pixels`` pixels are
refused up front too, listed.

(Files of SRC that the leak scan finds key material in are withheld later, by the
workers, on the bytes they would write: see :mod:`ppenc.dataset.pool`.)
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ppenc.dataset.images import DEFAULT_MAX_PIXELS, image_size
from ppenc.dataset.manifest import MANIFEST_NAME
from ppenc.dataset.paths import CONTROL_FILES, TMP_RE, inside
from ppenc.errors import DatasetEncryptionError
from ppenc.grid import grid_rule, is_off_grid
from ppenc.keys import is_key_file

__all__ = ['LAYOUTS', 'IMAGE_EXTENSIONS', 'WorkItem', 'SkippedFile', 'DatasetPlan',
           'plan_dataset', 'listing', 'SKIP_NOT_INCLUDED', 'SKIP_KEY_FILE',
           'SKIP_KEY_MATERIAL', 'SKIP_LINK_OUTSIDE', 'SKIP_DIR_LINK', 'SKIP_BROKEN_LINK',
           'SKIP_SPECIAL', 'SKIP_CONTROL', 'SKIP_UNREADABLE']

#: Supported tree layouts: where the images are and where the label maps are.
LAYOUTS: Dict[str, Tuple[Optional[str], Optional[str]]] = {
    'cityscapes': ('leftImg8bit', 'gtFine'),
    'ade20k': ('images', 'annotations'),
    'folder': (None, None),
}
#: File extensions treated as images (lower case).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pnm')

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


def listing(names: Sequence[str], limit: Optional[int] = None, indent: str = '  ') -> str:
    """One name per line; with ``limit``, the first ``limit`` and a count of the rest.

    Used by the planner's refusals and by the run summary, so long lists look alike.

    Args:
        names (Sequence[str]): What to list.
        limit (int, optional): Most names shown. Defaults to None (all).
        indent (str): Prefix of each line. Defaults to two spaces.
    """
    shown = list(names) if limit is None else list(names[:limit])
    more = len(names) - len(shown)
    tail = f'\n{indent}... and {more} more' if more > 0 else ''
    return indent + f'\n{indent}'.join(shown) + tail


# ------------------------------------------------------------------------------ scanning
def _under(rel: str, top: Optional[str]) -> bool:
    return top is not None and (rel == top or rel.startswith(top + os.sep))


def resolve_follow(src: str, follow: Iterable[str]) -> Dict[str, str]:
    """Named symbolic links (relative to SRC, or absolute) -> their resolved targets.

    Args:
        src (str): Dataset root.
        follow (Iterable[str]): The ``follow_symlinks`` entries.

    Returns:
        dict[str, str]: Path relative to SRC -> resolved target.

    Raises:
        DatasetEncryptionError: an entry outside SRC, not a symbolic link, or broken.
    """
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
                    within = any(inside(real, r) for r in roots)
                    if is_dir and not named:
                        reason = SKIP_DIR_LINK if within else SKIP_LINK_OUTSIDE
                        skipped.append(SkippedFile(rel + os.sep, reason, target))
                        continue
                    if not is_dir and not within and not named:
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
                                         f'{listing(names, 20)}\n{fix}')


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
    follow = resolve_follow(src, follow_symlinks)
    files, skipped = _scan_src(src, follow)
    roles: List[Tuple[str, str]] = []
    labels: Dict[str, List[str]] = {}
    cannot_read: List[str] = []
    for rel in files:
        name = os.path.basename(rel)
        if TMP_RE.search(name) or name in CONTROL_FILES:
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
                h, w = image_size(os.path.join(src, rel), max_pixels)
            except DatasetEncryptionError as e:
                if hasattr(e, 'too_large'):
                    too_large.append(f'{rel} ({e.too_large})')
                    largest = max(largest, e.pixels)
                elif role == 'image':
                    unreadable.append(f'{rel} ({getattr(e, "reason", e)})')
                else:
                    cannot_read.append(f'{rel} ({getattr(e, "reason", e)})')
                h = w = 0
            item_pad = h > 0 and is_off_grid(h, w, block_size)  # h == 0: unreadable
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
            f'{len(off_grid)} image(s) are off the {block_size}-pixel block grid '
            f'({grid_rule(block_size)}; height x width):\n{listing(off_grid, 20)}\n'
            'Crop or resize them to multiples of the block size, or rerun with --pad '
            '(pads images with 0 and label maps with the ignore index 255 at the '
            'bottom/right).')
    if not any(i.kind == 'encrypt' for i in items):
        where = f'{img_top}/' if img_top else 'the tree'
        links = [str(s) for s in skipped if s.reason in (SKIP_LINK_OUTSIDE, SKIP_DIR_LINK)]
        hint = (f'\nThese symbolic links were not followed:\n{listing(links, 20)}\nName '
                'the ones that hold the images with --follow-symlink.') if links else ''
        raise DatasetEncryptionError(f'No images found in {where} of {src!r} (extensions '
                                     f'{", ".join(IMAGE_EXTENSIONS)}).{hint}')
    skipped.sort(key=lambda s: s.path)
    return DatasetPlan(items, skipped, follow)
