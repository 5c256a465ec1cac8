"""Run every start check of a config without starting a run (prints "ok" or refusals).

Thin entry point for a checkout; installed, the same command is ``ppenc-check``. The code
is :mod:`mmseg_ppenc.cli.check_config`.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root goes first on sys.path.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    from mmseg_ppenc.cli.check_config import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
