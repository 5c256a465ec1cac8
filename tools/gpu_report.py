"""Merge the parts of a ``tools/benchmark_gpu.sh`` run into one report and a table.

    python tools/gpu_report.py FOLDER

Writes FOLDER/benchmarks.json and FOLDER/benchmarks.txt. The code is
``tools/analysis/gpu_report.py``.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.gpu_report import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
