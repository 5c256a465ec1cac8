"""``ppenc-encrypt-model``: encrypt a plain checkpoint for the secret key (client side).

Example::

    python tools/encrypt_model.py pretrain/vit_large_patch16_384.pth \
        pretrain/vit_large_patch16_384_encrypted.pth --key-file ~/.ppenc/site-a.key
    python tools/encrypt_model.py pretrain/swin_tiny_patch4_window7_224.pth \
        pretrain/swin_tiny_encrypted.pth --key-file ~/.ppenc/site-a.key --block-size 4

IN may be a timm ViT checkpoint (vit_base_patch16_384 / vit_large_patch16_384 layout), an
mmseg backbone of a supported family (VisionTransformer, BEiT, MAE, SwinTransformer, Twins
PCPVT/SVT: the backbones whose first layer is a non-overlapping patch projection), or a
whole mmseg segmentor with one (e.g. fine-tuned on plain images). The family is detected
from the keys, or given with --family; the block size (--block-size, default the family's
patch size: 16 for ViT/BEiT/MAE, 4 for Swin/Twins) must equal the patch size. OUT is an
mmseg checkpoint that the stock backbone loads without this package, and that the
encrypted variant loads as it is; its meta records the key fingerprint (never the key).
OUT is never IN, however it is reached (symlink, hard link, another spelling of the path).

Exit status: 0 done; 2 bad input (the ``error:`` line names the file and the fix);
1 OUT could not be written (read-only or full disk).
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from ppenc.cli import RUN_FAILED, fail
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['build_parser', 'main']


def _three_floats(text: str) -> List[float]:
    try:
        vals = [float(v) for v in text.replace(',', ' ').split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected three numbers (R G B), got {text!r}')
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f'expected three numbers (R G B), got {text!r}')
    return vals


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``IN OUT [options]``.
    """
    parser = argparse.ArgumentParser(
        description='Encrypt a checkpoint of a patch-projection backbone (ViT/DeiT, BEiT, '
        'MAE, Swin, Twins; mmseg layout, or timm for a ViT) for a key, exactly.',
        epilog='Exit status: 0 done, 2 bad input, 1 OUT could not be written.')
    parser.add_argument('input', metavar='IN', help='plain checkpoint (local file)')
    parser.add_argument('output', metavar='OUT', help='encrypted mmseg checkpoint to write')
    parser.add_argument('--key-file', default=None,
                        help='key file (default: $PPENC_KEY_FILE)')
    parser.add_argument('--config', default=None,
                        help='the config the model will be trained with: mean/std are '
                        'read from its model.data_preprocessor (recommended)')
    parser.add_argument('--mean', type=_three_floats, default=None,
                        help='data preprocessor mean, RGB, e.g. "123.675,116.28,103.53" '
                        '(default: from --config, else mmseg\'s ImageNet values)')
    parser.add_argument('--std', type=_three_floats, default=None,
                        help='data preprocessor std, RGB (default: from --config, else '
                        'mmseg\'s ImageNet values)')
    parser.add_argument('--patch-bias', choices=['fold', 'keep'], default='fold',
                        help='timm inputs: fold the patch-embedding bias into pos_embed '
                        '(for mmseg\'s default patch_bias=False; exact) or keep it (for '
                        'patch_bias=True backbones) (default: fold)')
    parser.add_argument('--family', metavar='NAME', default=None,
                        help='backbone family of IN: vit, beit, mae, swin or twins '
                        '(default: detected from its keys; needed when they fit several)')
    parser.add_argument('--block-size', type=int, default=None,
                        help='block size the images are encrypted with; must equal the '
                        'patch size (default: the family\'s, 16 for ViT/BEiT/MAE, 4 for '
                        'Swin/Twins)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='segmentor inputs: write only the backbone (for init_cfg)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT (never IN, however it is reached)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Encrypt IN for the key and write OUT.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: The exit status (see the module docstring).
    """
    args = build_parser().parse_args(argv)
    from mmseg_ppenc.model_encryption import encrypt_model_checkpoint
    from ppenc.errors import PpencError
    from ppenc.keys import resolve_key
    try:
        mean, std = _normalization(args)
        key = resolve_key(args.key_file)
        info = encrypt_model_checkpoint(args.input, args.output, key, mean=mean,
                                        std=std, patch_bias=args.patch_bias,
                                        backbone_only=args.backbone_only, force=args.force,
                                        family=args.family, block_size=args.block_size)
    except PpencError as e:
        return fail(e)
    except OSError as e:
        return fail(f'Cannot write {e.filename or args.output}: {e.strerror or e}. Make '
                    'the directory writable and free some space, or choose another OUT; '
                    'nothing was written.', RUN_FAILED)
    print(f'Wrote {info["output"]} checkpoint {info["dst"]} ({info["num_tensors"]} tensors, '
          f'from a {info["source_layout"]} {info["family"]} checkpoint), encrypted for key '
          f'{info["key_fingerprint"]} with block size {info["block_size"]}, adapted for '
          f'mean={list(mean)} std={list(std)} (recorded in the checkpoint; a model with '
          'another normalisation refuses it).')
    return 0


def _normalization(args) -> tuple:
    """mean/std from --config, --mean/--std (which must agree), else ImageNet's."""
    from ppenc.errors import ModelEncryptionError
    given = (args.mean, args.std)
    if (args.mean is None) != (args.std is None):
        raise ModelEncryptionError('Pass both --mean and --std, or neither.')
    if args.config is None:
        return given if args.mean is not None else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    from mmseg_ppenc.core.exactness import normalization_problem
    from mmseg_ppenc.model_encryption import normalization_from_config
    mean, std = normalization_from_config(args.config)
    if args.mean is not None:
        problem = normalization_problem(given, (mean, std), '--mean/--std')
        if problem:
            raise ModelEncryptionError(f'{problem} (read from {args.config}). Drop '
                                       '--mean/--std, or use the config they belong to.')
    return mean, std
