"""Encrypt every image of a dataset tree with the secret key (client side).

Example::

    python tools/encrypt_dataset.py data/cityscapes data/cityscapes_encrypted \
        --key-file ~/.ppenc/site-a.key --layout cityscapes --workers 4

The output tree has the same layout: images become lossless PNGs encrypted block-wise,
label maps and other files are copied unchanged, and DST/ppenc_manifest.json records the
key fingerprint, block size and counts (no key material). Interrupted runs resume: rerun
the same command.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.datasets.encrypt import (LAYOUTS, DatasetEncryptionError,
                                              check_output_format, encrypt_dataset)
    from mmseg_ppenc.keys import InvalidKeyError, resolve_key
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Encrypt a dataset tree block-wise for keyless training on a server.')
    parser.add_argument('src', help='plain dataset root (only read)')
    parser.add_argument('dst', help='output root (new, or a previous run to resume)')
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
    parser.add_argument('--block-size', type=int, default=16,
                        help='cipher block size = ViT patch size (default: 16)')
    parser.add_argument('--format', default='png', dest='out_format',
                        help='output image format; only lossless png is accepted')
    parser.add_argument('--fsync', action='store_true',
                        help='fsync every file before renaming it into place')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    # Testing hook: simulate a crash (SIGKILL) after N files.
    parser.add_argument('--_kill-after', dest='kill_after', type=int, default=None,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_output_format(args.out_format)
        if args.workers is not None and args.workers < 1:
            raise DatasetEncryptionError(f'--workers must be at least 1, got {args.workers}.')
        key = resolve_key(args.key_file)
        summary = encrypt_dataset(args.src, args.dst, key, layout=args.layout,
                                  workers=args.workers, pad=args.pad,
                                  block_size=args.block_size, out_format=args.out_format,
                                  progress=not args.no_progress, fsync=args.fsync,
                                  _kill_after=args.kill_after)
    except (DatasetEncryptionError, InvalidKeyError) as e:
        sys.exit(f'error: {e}')
    except KeyboardInterrupt:
        sys.exit('interrupted: finished files are kept; rerun the same command to resume.')
    print(summary.format())


if __name__ == '__main__':
    main()
