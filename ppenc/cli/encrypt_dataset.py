"""``ppenc-encrypt-dataset``: encrypt every image of a dataset tree (client side).

Example::

    python tools/encrypt_dataset.py data/cityscapes data/cityscapes_encrypted \
        --key-file ~/.ppenc/site-a.key --layout cityscapes --workers 4

DST is the tree you upload, so it holds only what the server needs: the images as
lossless PNGs encrypted block-wise, the label maps (unchanged), DST/ppenc_manifest.json
(key fingerprint, block size, counts and one record per output; no key material), and
other files only when ``--include PATTERN`` names them (default: none). Never copied,
whatever the patterns say: key files (found by their header, under any name), files in
which the leak scan finds the key, and symbolic links leaving SRC or pointing to a
directory unless ``--follow-symlink LINK`` names them. The summary lists every file of
SRC left out, with the reason, and the extra files copied.

Rerun the same command to resume an interrupted run or to bring DST up to date after the
source changed: every source is hashed again, so an edit that keeps size and mtime is
caught (``--trust-mtime`` trades that for speed).

Exit status: 0 done; 2 bad input (the ``error:`` line names the file and the fix);
1 DST could not be written (read-only, full): fix it and rerun to resume;
130 interrupted (finished files are kept; rerun to resume).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ppenc.cli import RUN_FAILED, fail

__all__ = ['build_parser', 'main']

#: Exit status after Ctrl-C.
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``SRC DST [options]``.
    """
    from ppenc.dataset import DEFAULT_MAX_PIXELS, LAYOUTS
    parser = argparse.ArgumentParser(
        description='Encrypt a dataset tree block-wise for keyless training on a server.',
        epilog='Exit status: 0 done, 2 bad input, 1 DST not writable (rerun to resume), '
        '130 interrupted (rerun to resume).')
    parser.add_argument('src', help='plain dataset root (only read)')
    parser.add_argument('dst', help='output root (new, or a previous run to resume or '
                        'update)')
    parser.add_argument('--layout', default='cityscapes', choices=sorted(LAYOUTS),
                        help='cityscapes: leftImg8bit/ images, gtFine/ labels; ade20k: '
                        'images/, annotations/; folder: every image file (default: '
                        'cityscapes)')
    parser.add_argument('--key-file', default=None,
                        help='key file (default: $PPENC_KEY_FILE)')
    parser.add_argument('--workers', type=int, default=None,
                        help='worker processes (default: min(4, CPU count))')
    parser.add_argument('--pad', action='store_true',
                        help='pad images whose sides are not multiples of the block size '
                        '(with 0) and their label maps (with the ignore index 255) at the '
                        'bottom/right, instead of refusing them')
    parser.add_argument('--allow-unlabeled', action='store_true',
                        help='accept images without a label map (e.g. a test split); '
                        'refused by default')
    parser.add_argument('--block-size', type=int, default=16,
                        help='cipher block size = ViT patch size (default: 16)')
    parser.add_argument('--format', default='png', dest='out_format',
                        help='output image format; only lossless png is accepted')
    parser.add_argument('--fsync', action='store_true',
                        help='fsync every file before renaming it into place')
    parser.add_argument('--include', action='append', default=[], metavar='PATTERN',
                        help='also copy the other files this glob names, relative to SRC '
                        '(repeatable): a pattern without "/" matches a file or directory '
                        'name at any depth ("*.txt"), one with "/" the path from SRC '
                        '("splits/*.txt", "docs/**"). Each is scanned for key material '
                        'first. Default: none; DST gets images, label maps and the '
                        'manifest only')
    parser.add_argument('--follow-symlink', action='append', default=[], metavar='LINK',
                        dest='follow_symlinks',
                        help='follow this symbolic link in SRC (path relative to SRC, '
                        'repeatable) although it points to a directory or leaves SRC; '
                        'such links are otherwise skipped and listed')
    parser.add_argument('--trust-mtime', action='store_true',
                        help='on a rerun, count a source as unchanged when its size and '
                        'mtime are, without reading it (faster on slow disks). Risk: a '
                        'source rewritten in place that keeps size and mtime (cp -p, '
                        'rsync -t, tar, touch -r, a coarse file system clock) is not '
                        'encrypted again and DST keeps its stale output. Default: hash '
                        'every source')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS,
                        help='refuse images whose header declares more pixels, before '
                        'decoding them (decompression bombs) (default: '
                        f'{DEFAULT_MAX_PIXELS} = 8192x8192; Cityscapes frames have '
                        '2097152)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Encrypt SRC into DST and print a summary.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: The exit status (see the module docstring).
    """
    args = build_parser().parse_args(argv)
    from ppenc.dataset import check_output_format, encrypt_dataset
    from ppenc.errors import DatasetWriteError, PpencError
    from ppenc.keys import resolve_key
    try:
        check_output_format(args.out_format)
        if args.workers is not None and args.workers < 1:
            return fail(f'--workers must be at least 1, got {args.workers}.')
        if args.block_size < 1:
            return fail(f'--block-size must be positive, got {args.block_size}.')
        if args.max_pixels < 1:
            return fail(f'--max-pixels must be positive, got {args.max_pixels}.')
        key = resolve_key(args.key_file)
        summary = encrypt_dataset(args.src, args.dst, key, layout=args.layout,
                                  workers=args.workers, pad=args.pad,
                                  block_size=args.block_size, out_format=args.out_format,
                                  progress=not args.no_progress, fsync=args.fsync,
                                  allow_unlabeled=args.allow_unlabeled,
                                  include=args.include,
                                  follow_symlinks=args.follow_symlinks,
                                  trust_mtime=args.trust_mtime, max_pixels=args.max_pixels)
    except DatasetWriteError as e:
        return fail(e, RUN_FAILED)
    except PpencError as e:
        return fail(e)
    except KeyboardInterrupt:
        return fail('interrupted: finished files are kept; rerun the same command to '
                    'resume.', INTERRUPTED)
    print(summary.format(warnings=False))
    for warning in summary.warnings:
        print(f'warning: {warning}', file=sys.stderr)
    return 0
