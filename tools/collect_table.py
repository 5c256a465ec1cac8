"""Collect the full-size Table I from the work_dirs of the 18 Cityscapes runs.

The code lives in ``tools/analysis/collect_table.py``; this entry point keeps the
documented command (see ``docs/table1_fullsize.md``). Example::

    python tools/collect_table.py --work-dirs work_dirs --out-dir work_dirs/table1_fullsize
"""
import os.path as osp
import runpy

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(osp.abspath(__file__)), 'analysis',
                            'collect_table.py'), run_name='__main__')
