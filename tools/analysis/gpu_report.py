"""Merge the parts of a ``tools/benchmark_gpu.sh`` run into one JSON report and a table.

The script writes ``env.json`` (card and versions), ``bench_eager.json`` and
``bench_compile.json`` (``tools/benchmark.py`` reports) and ``e2e.json``
(``tools/benchmark_e2e.py``) into one folder; any of them may be missing when a section
failed or ran out of time. :func:`merge` combines what is there.
"""
from __future__ import annotations

import json
import os.path as osp
import sys
from typing import List, Optional

from .benchmark_report import compare, format_report
from .common import fmt, markdown_table, write_json

__all__ = ['merge', 'format_merged', 'main']


def _load(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def merge(folder: str) -> dict:
    """One report from the parts in ``folder`` (see the module docstring).

    Returns:
        dict: ``env``, ``train`` (all variants of both benchmark parts, in run order),
        ``profile``, ``comparisons`` (:func:`benchmark_report.compare` over all variants),
        ``e2e`` and ``parts`` (which files were found).
    """
    parts = {name: _load(osp.join(folder, f'{name}.json'))
             for name in ('env', 'bench_eager', 'bench_compile', 'e2e')}
    variants: List[dict] = []
    train_meta: dict = {}
    profile = None
    for name in ('bench_eager', 'bench_compile'):
        rep = parts[name]
        if not rep:
            continue
        train = rep.get('train') or {}
        variants += train.get('variants', [])
        train_meta = train_meta or {k: v for k, v in train.items() if k != 'variants'}
        profile = profile or rep.get('profile')
    train = dict(train_meta, variants=variants, partial=any(
        (parts[n] or {}).get('train', {}).get('partial') for n in ('bench_eager',
                                                                    'bench_compile')))
    report = dict(env=parts['env'], train=train, profile=profile, e2e=parts['e2e'],
                  parts={k: v is not None for k, v in parts.items()})
    report['comparisons'] = compare(dict(train=train)) if 'batch' in train else []
    return report


def format_merged(report: dict) -> str:
    """The merged report as text: versions, variant table, profile, comparisons, e2e."""
    env = report.get('env') or {}
    lines = ['Card: {gpu}; driver {driver}; torch {torch}; CUDA {cuda}; cuDNN {cudnn}; '
             'Python {python}'.format(**{k: env.get(k) for k in (
                 'gpu', 'driver', 'torch', 'cuda', 'cudnn', 'python')})]
    train = report.get('train') or {}
    body = {}
    if train.get('variants') and 'batch' in train:
        body['train'] = train
    if report.get('profile'):
        body['profile'] = report['profile']
    body['comparisons'] = report.get('comparisons')
    lines.append(format_report(body))
    e2e = report.get('e2e')
    if e2e:
        rows = []
        for name, r in (e2e.get('runs') or {}).items():
            rows.append([name, str(r.get('returncode')), fmt(r.get('img_per_s')),
                         fmt(r.get('gpu_idle_share'), 3),
                         fmt(r.get('val_s_per_img'), 3), fmt(r.get('wall_s'), 0),
                         r.get('error', '')])
        lines.append(
            f"End to end: tools/train.py, {e2e.get('iters')} iterations at batch "
            f"{e2e.get('batch')}, {e2e.get('workers')} workers, synthetic "
            'Cityscapes-layout data, random weights\n\n' + markdown_table(
                ['config', 'exit', 'img/s (with data)', 'data wait share',
                 's per val image', 'run s', 'error'], rows))
        s0 = e2e.get('step0') or {}
        if 'differ_fraction' in s0:
            lines.append(f"Step 0, {s0['precision']}: {100 * s0['differ_fraction']:.4f} % "
                         f"of {s0['pixels']} predicted pixels differ (proposed vs "
                         f"baseline, {s0['images']} images)")
        elif s0:
            lines.append(f"Step 0 comparison failed: {s0.get('error')}")
    return '\n\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/gpu_report.py FOLDER``: write FOLDER/benchmarks.json and
    FOLDER/benchmarks.txt.

    Args:
        argv (list[str], optional): ``[FOLDER]``. Defaults to None (``sys.argv``).

    Returns:
        int: 0 when written, 2 for a missing folder (usage on stderr).
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not osp.isdir(argv[0]):
        print('usage: gpu_report.py FOLDER (the output folder of tools/benchmark_gpu.sh)',
              file=sys.stderr)
        return 2
    report = merge(argv[0])
    write_json(report, osp.join(argv[0], 'benchmarks.json'))
    text = format_merged(report)
    with open(osp.join(argv[0], 'benchmarks.txt'), 'w') as f:
        f.write(text + '\n')
    print(text)
    return 0

