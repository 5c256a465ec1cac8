"""Reproduce the paper's Table I in miniature on this CPU.

The experiment lives in ``tools/analysis/reproduce_table.py`` (pre-training in
``pretrain.py``, the runs in ``finetune.py``, the outputs in ``table1_report.py``); this
entry point keeps the documented command. Example::

    python tools/reproduce_table.py --out-dir work_dirs/table1
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.reproduce_table import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
