"""Measure the training command end to end: img/s with data loading, GPU idle share,
validation time per image, and baseline/proposed agreement at step 0.

    python tools/benchmark_e2e.py --data-root data/synthetic_cityscapes \
        --work-dir work_dirs/e2e --key-file keys/bench.key --out work_dirs/e2e/e2e.json

The driver is tools/analysis/e2e.py; docs/benchmarks.md shows the figures.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.e2e import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
