"""Measure the training command end to end: img/s with data loading, GPU idle share,
validation time per image, and baseline/proposed agreement at step 0.

    python tools/benchmark_e2e.py --data-root data/synthetic_cityscapes \
        --work-dir work_dirs/e2e --key-file keys/bench.key --out work_dirs/e2e/e2e.json

The driver is tools/analysis/e2e.py; docs/benchmarks.md shows the figures.
"""
import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TOOLS))
sys.path.insert(0, _TOOLS)

from analysis.e2e import main_e2e  # noqa: E402

if __name__ == '__main__':
    sys.exit(main_e2e())
