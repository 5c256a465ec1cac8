"""``ppenc-keygen``: create a new secret key file and print its fingerprint.

Imports only :mod:`ppenc.keys` (no torch, no mmseg), so it starts quickly on the
client machine that holds the key.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ppenc.cli import fail
from ppenc.keys import KEY_ENV_VAR, SecretKey

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``OUT [--flip-compatible]``.
    """
    parser = argparse.ArgumentParser(
        description='Create a new secret key file and print its fingerprint.')
    parser.add_argument('out', help='path of the new key file (must not exist)')
    parser.add_argument('--flip-compatible', action='store_true',
                        help='derive permutations that commute with horizontal flips, '
                        'so a keyless server may flip encrypted images')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write a new key (mode 600) to ``OUT``; refuse to overwrite an existing file.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 when ``OUT`` exists.
    """
    args = build_parser().parse_args(argv)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    key = SecretKey.generate(flip_compatible=args.flip_compatible)
    try:
        key.save(args.out)
    except FileExistsError as e:
        return fail(e)
    print(f'Wrote key {key.fingerprint} to {args.out} (mode 600). Select it with: '
          f'export {KEY_ENV_VAR}={os.path.abspath(args.out)}')
    return 0
