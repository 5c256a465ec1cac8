"""Write a synthetic data set in the Cityscapes layout.

Thin entry point for a checkout; installed, the same command is ``ppenc-make-synthetic``. The code
is :mod:`ppenc.cli.make_synthetic_cityscapes`.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root goes first on sys.path.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    from ppenc.cli.make_synthetic_cityscapes import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
