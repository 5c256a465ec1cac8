"""Measure what the block encryption protects and what it does not.

The report lives in ``tools/analysis/security_report.py``; this entry point keeps the
documented command. Examples::

    python tools/analyze_security.py
    python tools/analyze_security.py --images my_photos/ --out results/security.json
    python tools/analyze_security.py --work-dir work_dirs/run1 --key-file keys/run1.key
"""
import os.path as osp
import runpy

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(osp.abspath(__file__)), 'analysis',
                            'security_report.py'), run_name='__main__')
