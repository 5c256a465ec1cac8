"""Speed benchmark: cipher cost, train throughput of the three settings, stock vs plugin.

CPU defaults (tiny shapes, a few minutes on 2 cores):
    python tools/benchmark.py
The real size on a GPU:
    python tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8

Prints Markdown tables and writes the JSON report (``--out``, default
``work_dirs/benchmark/benchmark.json``), rewritten after every variant. The drivers live
in ``tools/analysis/`` (the command line is :mod:`analysis.benchmark`).
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.benchmark import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python (on a GPU machine: tools/benchmark_gpu.sh).')

if __name__ == '__main__':
    sys.exit(main())
