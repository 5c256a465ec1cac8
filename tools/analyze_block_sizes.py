"""What the block size costs in privacy: thumbnail leakage, ciphertext-only and
known-plaintext attacks at block sizes 4 (Swin, Twins), 8 and 16 (ViT, BEiT, MAE) on the
same images.

The code is ``tools/analysis/block_size_privacy.py``; this entry point keeps the
documented command. Examples::

    python tools/analyze_block_sizes.py
    python tools/analyze_block_sizes.py --out docs/privacy_block_sizes.json \\
        --md docs/privacy_block_sizes.md
    python tools/analyze_block_sizes.py --quick
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.block_size_privacy import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
