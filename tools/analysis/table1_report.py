"""The outputs of the miniature Table I: statistics over seeds, markdown, figure.

:func:`summarise` gives one cell's per-seed values, mean and sample standard deviation;
:func:`compare` sets two cells' difference against the seed spread;
:func:`format_markdown` and :func:`plot_miou` write ``table1.md`` and ``table1.png``
(:func:`write_outputs` also ``table1.json``).
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import textures
from .common import PAPER_TABLE1 as PAPER_FULL_SIZE
from .common import SETTING_TITLES, SETTINGS, TITLES, markdown_table

__all__ = ['PAPER_TABLE1', 'summarise', 'compare', 'format_markdown', 'plot_miou',
           'write_outputs']

#: The paper's Table I, ViT-B on Cityscapes val: aAcc / mIoU / mAcc (%).
PAPER_TABLE1: Dict[str, Dict[str, Tuple[float, float, float]]] = PAPER_FULL_SIZE['vit-b']


def summarise(runs: Sequence[dict]) -> dict:
    """Per-seed values, mean and sample standard deviation of one cell.

    Args:
        runs (Sequence[dict]): One :func:`finetune.finetune` result per seed (in seed order), each
            with a ``seed`` field.

    Returns:
        dict: ``miou`` (per-seed list), ``mean``, ``std`` (sample std, ddof=1; 0.0 for a
        single seed), the same for aAcc and mAcc as ``aacc``/``aacc_mean``/
        ``aacc_std`` and ``macc``/..., and ``runs`` (the full per-seed results).
    """
    out: dict = {}
    for metric, name in (('mIoU', 'miou'), ('aAcc', 'aacc'), ('mAcc', 'macc')):
        vals = [float(r[metric]) for r in runs]
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        prefix = '' if name == 'miou' else name + '_'
        out[name] = vals
        out[prefix + 'mean'] = round(mean, 2)
        out[prefix + 'std'] = round(std, 2)
    out['runs'] = list(runs)
    return out


def compare(a: dict, b: dict) -> dict:
    """Difference of two cells' mean mIoU and whether it exceeds the seed spread.

    The spread is the sum of the two standard deviations: the difference counts as
    exceeding it when the mean ± std intervals do not overlap.

    Returns:
        dict: ``delta`` (a mean - b mean), ``spread`` (std a + std b), ``exceeds``.
    """
    delta = round(a['mean'] - b['mean'], 2)
    spread = round(a['std'] + b['std'], 2)
    return dict(delta=delta, spread=spread, exceeds=bool(abs(delta) > spread))


# --------------------------------------------------------------------------- outputs
def _pm(cell: Optional[dict], prefix: str = '') -> str:
    if not cell:
        return '–'
    return f'{cell[prefix + "mean"]:.2f} ± {cell[prefix + "std"]:.2f}'


_COMPARISONS = (('baseline', 'scratch', 'pre-training is worth (baseline − scratch)'),
                ('conventional2', 'baseline', 'conventional 2 − baseline'),
                ('proposed', 'baseline', 'proposed − baseline'),
                ('proposed', 'conventional2', 'proposed − conventional 2'))


def _lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return markdown_table(headers, rows, align=False).split('\n')


def _grid_markdown(grid: Dict[str, Dict[str, dict]], decoders: Sequence[str],
                   cells: Sequence[str]) -> List[str]:
    lines = _lines(['decoder'] + [TITLES[c] for c in cells],
                   [[TITLES[d]] + [_pm(grid.get(d, {}).get(c)) for c in cells]
                    for d in decoders])
    rows = []
    for d in decoders:
        row = grid.get(d, {})
        for a, b, what in _COMPARISONS:
            if row.get(a) and row.get(b):
                c = compare(row[a], row[b])
                rows.append([TITLES[d], what, f'{c["delta"]:+.2f}', f'{c["spread"]:.2f}',
                             'yes' if c['exceeds'] else 'no'])
    return lines + [''] + _lines(['decoder', 'difference of mean mIoU', 'value',
                                  'seed spread (std + std)', 'exceeds the spread?'], rows)


def format_markdown(result: dict) -> str:
    """The miniature Table I as markdown: the full fine-tuning grid, the frozen-backbone
    grid, the differences against the seed spread, and the paper's layout.

    Args:
        result (dict): What :func:`reproduce_table.run_experiment` returns (or
            ``table1.json``).
    """
    s = result['settings']
    pre = result['pretrain']
    seeds = result['seeds']
    decoders, cells = s['decoders'], s['cells']
    enc = ''
    if 'heldout_orientation_acc_encrypted_plain_weights' in pre:
        enc = (f'; on encrypted mosaics '
               f'{pre["heldout_orientation_acc_encrypted_plain_weights"]:.1f}'
               f' / {pre["heldout_period_acc_encrypted_plain_weights"]:.1f} % with these plain '
               f'weights and {pre["heldout_orientation_acc_encrypted_adapted_weights"]:.1f} / '
               f'{pre["heldout_period_acc_encrypted_adapted_weights"]:.1f} % with the adapted '
               'ones')
    lines = [
        '# Table I in miniature',
        '',
        f'mIoU (%) on the texture-mosaic val split ({s["num_val"]} images of '
        f'{s["height"]}x{s["width"]}, {textures.NUM_CLASSES} classes; {s["num_train"]} '
        f'train images), mean ± sample std over {len(seeds)} seeds {seeds} (a seed sets the '
        f'fine-tuning seed and the key). SETR with the tiny ViT of `configs/ppenc/tiny` '
        f'({result["backbone"]["summary"]}), pre-trained for {pre["iters"]} iterations '
        f'({pre["images_seen"]} plain mosaics) on {pre["description"]} (held-out '
        f'orientation / period accuracy {pre["heldout_orientation_acc"]:.1f} / '
        f'{pre["heldout_period_acc"]:.1f} %{enc}); fine-tuned {s["iters"]} iterations at '
        f'batch {s["batch_size"]}, SGD lr {s["lr"]}. Total {result["seconds"] / 60:.1f} min.',
        '',
        '## Full fine-tuning',
        '',
    ]
    lines += _grid_markdown(result['decoders'], decoders, cells)
    if result.get('frozen'):
        lines += ['', '## Frozen backbone (only the decoder is trained)', '']
        lines += _grid_markdown(result['frozen'], decoders, cells)
    headers = ['backbone', 'decoder'] + [SETTING_TITLES[c] for c in SETTINGS]
    rows = []
    for d in decoders:
        row = result['decoders'].get(d, {})
        vals = []
        for c in SETTINGS:
            r = row.get(c)
            vals.append(f'{r["aacc_mean"]:.2f} / {r["mean"]:.2f} / {r["macc_mean"]:.2f}'
                        if r else '–')
        rows.append(['tiny ViT', TITLES[d]] + vals)
    lines += ['', '## In the paper\'s layout: aAcc / mIoU / mAcc (%), means', '']
    lines += _lines(headers, rows)
    lines += ['', 'The paper (ViT-B, Cityscapes val):', '']
    lines += _lines(headers, [['ViT-B', TITLES[d]] + [
        ' / '.join(f'{v:.2f}' for v in PAPER_TABLE1[d][c]) for c in SETTINGS]
        for d in decoders])
    return '\n'.join(lines) + '\n'


def plot_miou(result: dict, path: str) -> None:
    """Bars of mean mIoU with ±std error bars, per decoder and cell; full fine-tuning
    left, frozen backbone right (Agg canvas, no GUI backend).

    Args:
        result (dict): What :func:`reproduce_table.run_experiment` returns.
        path (str): PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result['settings']
    decoders, cells = list(s['decoders']), list(s['cells'])
    colours = {'baseline': '#4c72b0', 'conventional2': '#c44e52', 'proposed': '#55a868',
               'scratch': '#8c8c8c'}
    panels = [('full fine-tuning', result['decoders'])]
    if result.get('frozen'):
        panels.append(('frozen backbone', result['frozen']))
    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    width = 0.8 / max(1, len(cells))
    for k, (title, grid) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for j, c in enumerate(cells):
            xs = [i + (j - (len(cells) - 1) / 2) * width for i in range(len(decoders))]
            ys = [grid[d][c]['mean'] for d in decoders]
            es = [grid[d][c]['std'] for d in decoders]
            bars = ax.bar(xs, ys, width, yerr=es, capsize=2, label=TITLES[c],
                          color=colours[c])
            ax.bar_label(bars, fmt='%.1f', fontsize=6, padding=1)
        ax.set_xticks(range(len(decoders)), [TITLES[d] for d in decoders])
        ax.set_ylabel('mIoU (%)')
        ax.set_ylim(0, 100)
        ax.set_title(f'{title}: mean ± std over {len(result["seeds"])} seeds', fontsize=9)
        ax.grid(axis='y', alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, ncol=2, loc='upper left')
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(result: dict, out_dir: str) -> None:
    """Write ``table1.json``, ``table1.md`` and ``table1.png`` of ``result`` to
    ``out_dir``."""
    with open(osp.join(out_dir, 'table1.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(osp.join(out_dir, 'table1.md'), 'w') as f:
        f.write(format_markdown(result))
    plot_miou(result, osp.join(out_dir, 'table1.png'))
