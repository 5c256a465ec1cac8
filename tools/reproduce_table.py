"""Reproduce the paper's Table I in miniature on this CPU.

The experiment lives in ``tools/analysis/reproduce_table.py``; this entry point keeps the
documented command. Example::

    python tools/reproduce_table.py --out-dir work_dirs/table1
"""
import os.path as osp
import runpy

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(osp.abspath(__file__)), 'analysis',
                            'reproduce_table.py'), run_name='__main__')
