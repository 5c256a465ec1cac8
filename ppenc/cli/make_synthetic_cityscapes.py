"""``ppenc-make-synthetic``: write a synthetic data set in the Cityscapes layout.

Example::

    ppenc-make-synthetic data/synthetic_cityscapes --train 48 --val 12

The output directory is then a ``data_root`` for mmseg's ``CityscapesDataset``
(see :mod:`ppenc.synthetic`).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``OUT [--train N --val M --height H
        --width W --seed S --overwrite]``.
    """
    parser = argparse.ArgumentParser(
        description='Write a deterministic synthetic Cityscapes-layout data set '
                    '(leftImg8bit/ + gtFine/ with labelTrainIds).')
    parser.add_argument('out', help='output directory (the data_root); must be empty '
                                    'or missing unless --overwrite')
    parser.add_argument('--train', type=int, default=48,
                        help='number of training images (default: 48)')
    parser.add_argument('--val', type=int, default=12,
                        help='number of validation images (default: 12)')
    parser.add_argument('--height', type=int, default=128,
                        help='image height, a multiple of 16 (default: 128)')
    parser.add_argument('--width', type=int, default=256,
                        help='image width, a multiple of 16 (default: 256)')
    parser.add_argument('--seed', type=int, default=0, help='base seed (default: 0)')
    parser.add_argument('--overwrite', action='store_true',
                        help='write into a non-empty directory (replaces files of the '
                             'same name, deletes nothing)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Generate the data set and print a one-line summary.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: Exit status 0 (argument and output-directory errors exit with 2 through
        ``argparse``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from ppenc.synthetic import make_synthetic_cityscapes
    try:
        info = make_synthetic_cityscapes(
            args.out, num_train=args.train, num_val=args.val, height=args.height,
            width=args.width, seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        # A usage error, not a crash: show the message without a traceback.
        parser.error(str(exc))
    print(f"wrote {info['train']} train + {info['val']} val images of "
          f"{info['height']}x{info['width']} (HxW) to {info['root']}")
    return 0
