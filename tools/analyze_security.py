"""Measure what the block encryption protects and what it does not.

The report is :mod:`analysis.security_report` (``tools/analysis/``); this entry point
keeps the documented command. Examples::

    python tools/analyze_security.py
    python tools/analyze_security.py --images my_photos/ --out results/security.json
    python tools/analyze_security.py --work-dir work_dirs/run1 --key-file keys/run1.key
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.security_report import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
