"""``ppenc-convert-timm``: convert a timm ViT checkpoint to mmseg's VisionTransformer
layout (plain, no key).

Example::

    ppenc-convert-timm vit_large_patch16_384.pth pretrain/vit_large_patch16_384.pth

The baseline and conventional-2 configs load this file; ``ppenc-encrypt-model`` makes the
encrypted counterpart from the same input, so all settings start from one function.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ppenc.cli import fail

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``SRC DST [--force]``.
    """
    parser = argparse.ArgumentParser(
        description="Convert a timm ViT checkpoint to mmseg's VisionTransformer layout "
                    '(plain, no key).')
    parser.add_argument('src', help='timm ViT checkpoint (local file)')
    parser.add_argument('dst', help='output mmseg checkpoint')
    parser.add_argument('--force', action='store_true', help='overwrite DST')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert ``SRC`` and write ``DST``.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 when the source is unusable or ``DST`` exists.
    """
    args = build_parser().parse_args(argv)
    from mmseg_ppenc.model_encryption import ModelEncryptionError, convert_plain_checkpoint
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    try:
        info = convert_plain_checkpoint(args.src, args.dst, force=args.force)
    except ModelEncryptionError as e:
        return fail(e)
    print(f'Converted {info["num_tensors"]} tensors ({info["source_layout"]}) to '
          f'{info["dst"]}')
    return 0
