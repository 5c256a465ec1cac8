"""Encrypt a plain ViT checkpoint for the secret key (client side).

Example::

    python tools/encrypt_model.py pretrain/vit_large_patch16_384.pth \
        pretrain/vit_large_patch16_384_encrypted.pth --key-file ~/.ppenc/site-a.key

IN may be a timm ViT checkpoint (vit_base_patch16_384 / vit_large_patch16_384 layout), an
mmseg VisionTransformer backbone, or a whole mmseg segmentor (e.g. fine-tuned on plain
images). OUT is an mmseg checkpoint that a stock VisionTransformer loads without this
package; its meta records the key fingerprint (never the key).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.adaptation import IMAGENET_MEAN, IMAGENET_STD
    from mmseg_ppenc.keys import InvalidKeyError, resolve_key
    from mmseg_ppenc.model_encryption import (ModelEncryptionError,
                                              encrypt_model_checkpoint)
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def _three_floats(text):
    try:
        vals = [float(v) for v in text.replace(',', ' ').split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected three numbers (R G B), got {text!r}')
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f'expected three numbers (R G B), got {text!r}')
    return vals


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Encrypt a ViT checkpoint (timm or mmseg) for a key, exactly.')
    parser.add_argument('input', metavar='IN', help='plain checkpoint (local file)')
    parser.add_argument('output', metavar='OUT', help='encrypted mmseg checkpoint to write')
    parser.add_argument('--key-file', default=None,
                        help='key file (default: $PPENC_KEY_FILE)')
    parser.add_argument('--mean', type=_three_floats, default=list(IMAGENET_MEAN),
                        help='data preprocessor mean, RGB, e.g. "123.675,116.28,103.53" '
                        '(default: mmseg ImageNet values)')
    parser.add_argument('--std', type=_three_floats, default=list(IMAGENET_STD),
                        help='data preprocessor std, RGB (default: mmseg ImageNet values)')
    parser.add_argument('--patch-bias', choices=['fold', 'keep'], default='fold',
                        help='timm inputs: fold the patch-embedding bias into pos_embed '
                        '(for mmseg\'s default patch_bias=False; exact) or keep it (for '
                        'patch_bias=True backbones) (default: fold)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='segmentor inputs: write only the backbone (for init_cfg)')
    parser.add_argument('--force', action='store_true', help='overwrite OUT')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        key = resolve_key(args.key_file)
        info = encrypt_model_checkpoint(args.input, args.output, key, mean=args.mean,
                                        std=args.std, patch_bias=args.patch_bias,
                                        backbone_only=args.backbone_only, force=args.force)
    except (ModelEncryptionError, InvalidKeyError) as e:
        sys.exit(f'error: {e}')
    print(f'Wrote {info["output"]} checkpoint {info["dst"]} ({info["num_tensors"]} tensors, '
          f'from a {info["source_layout"]} checkpoint), encrypted for key '
          f'{info["key_fingerprint"]} with block size {info["block_size"]}.')


if __name__ == '__main__':
    main()
