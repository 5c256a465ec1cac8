"""Convert a timm ViT checkpoint to mmseg's VisionTransformer layout (plain, no key).

Example::

    python tools/convert_timm_vit.py vit_large_patch16_384.pth \
        pretrain/vit_large_patch16_384.pth

The baseline and conventional-2 configs load this file; tools/encrypt_model.py makes the
encrypted counterpart from the same input, so all settings start from one function.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.model_encryption import (ModelEncryptionError,
                                              convert_plain_checkpoint)
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='timm ViT checkpoint (local file)')
    parser.add_argument('dst', help='output mmseg checkpoint')
    parser.add_argument('--force', action='store_true', help='overwrite DST')
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    try:
        info = convert_plain_checkpoint(args.src, args.dst, force=args.force)
    except ModelEncryptionError as e:
        sys.exit(f'error: {e}')
    print(f'Converted {info["num_tensors"]} tensors ({info["source_layout"]}) to '
          f'{info["dst"]}')


if __name__ == '__main__':
    main()
