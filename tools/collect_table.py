"""Collect the full-size Table I from the work_dirs of the 18 Cityscapes runs.

The code lives in ``tools/analysis/collect_table.py``; this entry point keeps the
documented command (see ``docs/table1_fullsize.md``). Example::

    python tools/collect_table.py --work-dirs work_dirs --out-dir work_dirs/table1_fullsize
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.collect_table import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
