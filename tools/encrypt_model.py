"""Encrypt a plain checkpoint (ViT/DeiT, BEiT, MAE, Swin, Twins) for the secret key (client side).

Thin entry point for a checkout; installed, the same command is ``ppenc-encrypt-model``.
The code is :mod:`mmseg_ppenc.cli.encrypt_model`.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root goes first on sys.path.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    from mmseg_ppenc.cli.encrypt_model import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
