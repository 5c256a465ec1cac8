"""The leak scan measured both ways: false positives, detection rate and cost.

    python tools/benchmark_leak_scan.py [--logs DIR ...] [--keys 3] [--detect-keys 50]
                                        [--log-mb 15] [--out work_dirs/benchmark/leak_scan.json]

False positives are counted on the pretty-printed text of every stock mmseg config and on
every file under ``--logs`` (point it at the work_dirs and temporary folders of a test
run); detection on the generator of encodings kept in ``tests/key_encodings.py``; cost on
a synthetic training log. Prints a table and writes JSON. The code is
``tools/analysis/leak_scan_report.py``.
"""
import os.path as osp
import sys

# Run from a checkout without installing: the repository root (mmseg_ppenc, ppenc) and
# tools/ (the analysis package) go first on sys.path; see tools/analysis/__init__.py.
_TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(_TOOLS), _TOOLS]
try:
    from analysis.leak_scan_report import main
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')

if __name__ == '__main__':
    sys.exit(main())
