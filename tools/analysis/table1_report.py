"""The outputs of the miniature Table I: statistics over seeds, markdown, figure.

:func:`summarise` gives one cell's per-seed values, mean and sample standard deviation
(val, and test under ``test``); :func:`paired_statistics` the per-seed paired
differences with 95 % t-intervals, the TOST of proposed − baseline and the frozen probe
(:mod:`stats`); :func:`compare` (version 1, kept for the record) sets two cells'
difference against the seed spread;
:func:`format_markdown` and :func:`plot_miou` write ``table1.md`` and ``table1.png``
(:func:`write_outputs` also ``table1.json``).
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import stats, textures_v2
from .common import PAPER_TABLE1 as PAPER_FULL_SIZE
from .common import SETTING_TITLES, SETTINGS, TITLES, markdown_table

__all__ = ['PAPER_TABLE1', 'COMPARISONS', 'summarise', 'compare', 'paired_statistics',
           'format_markdown', 'plot_miou', 'write_outputs']

#: The paper's Table I, ViT-B on Cityscapes val: aAcc / mIoU / mAcc (%).
PAPER_TABLE1: Dict[str, Dict[str, Tuple[float, float, float]]] = PAPER_FULL_SIZE['vit-b']


def _metric_stats(runs: Sequence[dict]) -> dict:
    out: dict = {}
    for metric, name in (('mIoU', 'miou'), ('aAcc', 'aacc'), ('mAcc', 'macc')):
        vals = [float(r[metric]) for r in runs]
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        prefix = '' if name == 'miou' else name + '_'
        out[name] = vals
        out[prefix + 'mean'] = round(mean, 2)
        out[prefix + 'std'] = round(std, 2)
    return out


def summarise(runs: Sequence[dict]) -> dict:
    """Per-seed values, mean and sample standard deviation of one cell.

    Args:
        runs (Sequence[dict]): One :func:`finetune.finetune` result per seed (in seed
            order), each with a ``seed`` field and, optionally, ``test`` metrics.

    Returns:
        dict: ``miou`` (per-seed list), ``mean``, ``std`` (sample std, ddof=1; 0.0 for a
        single seed), the same for aAcc and mAcc as ``aacc``/``aacc_mean``/
        ``aacc_std`` and ``macc``/..., all on the val split; ``test`` (the same fields
        on the test split, when every run has them); and ``runs`` (the full results).
    """
    out = _metric_stats(runs)
    if runs and all('test' in r for r in runs):
        out['test'] = _metric_stats([r['test'] for r in runs])
    out['runs'] = list(runs)
    return out


#: The paired differences reported: (a, b, what) for a - b per seed.
COMPARISONS: Tuple[Tuple[str, str, str], ...] = (
    ('proposed', 'baseline', 'proposed − baseline'),
    ('conventional2', 'baseline', 'conventional 2 − baseline'),
    ('baseline', 'scratch', 'baseline − scratch (what pre-training is worth)'))


def paired_statistics(result: dict, margin: float, alpha: float = 0.05) -> dict:
    """Paired per-seed differences on the test split, the TOST and the frozen probe.

    Args:
        result (dict): With ``decoders`` and ``frozen`` grids of :func:`summarise` cells
            (runs in the same seed order in every cell).
        margin (float): TOST margin (mIoU), fixed before the run.
        alpha (float): TOST level. Defaults to 0.05.

    Returns:
        dict: ``paired`` (``{grid: {decoder: {'a-b': stats.paired(...) + verdict}}}``),
        ``tost`` (``{margin, alpha, split, comparison, decoders: {decoder: ...},
        frozen: {...}}``) and ``frozen_before_finetune`` (``{decoder: {...}}``).
    """
    paired: Dict[str, Dict[str, dict]] = {}
    tost = dict(margin=float(margin), alpha=float(alpha), split='test',
                comparison='proposed − baseline (mIoU, per-seed pairs)')
    for grid in ('decoders', 'frozen'):
        paired[grid] = {}
        tost[grid] = {}
        for d, row in (result.get(grid) or {}).items():
            paired[grid][d] = {}
            for a, b, what in COMPARISONS:
                if a not in row or b not in row:
                    continue
                pa = stats.paired(row[a]['test']['miou'], row[b]['test']['miou'])
                eq = None
                if (a, b) == ('proposed', 'baseline') and pa['n'] >= 2:
                    eq = stats.tost(pa['diffs'], margin, alpha)
                    tost[grid][d] = eq
                pa.update(what=what, verdict=stats.verdict(
                    pa['ci95'], bool(eq and eq['equivalent'])))
                paired[grid][d][f'{a}-{b}'] = pa
    probe = {}
    for d, row in (result.get('frozen') or {}).items():
        full = (result.get('decoders') or {}).get(d, {})
        if 'baseline' not in row:
            continue
        entry = dict(what='frozen pre-trained backbone, decoder trained (test mIoU)',
                     miou=row['baseline']['test']['miou'],
                     mean=row['baseline']['test']['mean'],
                     std=row['baseline']['test']['std'])
        if 'scratch' in row:
            entry['frozen_random_backbone_mean'] = row['scratch']['test']['mean']
        if 'baseline' in full:
            entry['full_finetune_mean'] = full['baseline']['test']['mean']
            entry['full_minus_frozen'] = stats.paired(full['baseline']['test']['miou'],
                                                      row['baseline']['test']['miou'])
        probe[d] = entry
    return dict(paired=paired, tost=tost, frozen_before_finetune=probe)


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
def _lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return markdown_table(headers, rows, align=False).split('\n')


def _ci(c: Optional[Sequence[float]]) -> str:
    return '–' if c is None else f'[{c[0]:+.2f}, {c[1]:+.2f}]'


def _test_grid(grid: Dict[str, Dict[str, dict]], cells: Sequence[str],
               split: str = 'test') -> List[str]:
    def pm(cell):
        if not cell:
            return '–'
        c = cell['test'] if split == 'test' else cell
        return f'{c["mean"]:.2f} ± {c["std"]:.2f}'
    return _lines(['decoder'] + [TITLES[c] for c in cells],
                  [[TITLES[d]] + [pm(row.get(c)) for c in cells] for d, row in grid.items()])


def format_markdown(result: dict) -> str:
    """The miniature Table I as markdown: test-split grids (full fine-tuning, frozen
    backbone), paired differences with 95 % t-intervals and verdicts, the TOST, the frozen
    probe, the val split (tuning) and the paper's layout.

    Args:
        result (dict): What :func:`reproduce_table.run_experiment` returns (or
            ``table1.json``).
    """
    s = result['settings']
    pre = result['pretrain']
    seeds = result['seeds']
    cells = s['cells']
    tost = result.get('tost', {})
    dep = result.get('label_dependence')
    enc = ''
    if 'heldout_orientation_acc_encrypted_plain_weights' in pre:
        enc = (f'; on encrypted images '
               f'{pre["heldout_orientation_acc_encrypted_plain_weights"]:.1f} % with the plain '
               f'weights and {pre["heldout_orientation_acc_encrypted_adapted_weights"]:.1f} % '
               'with the adapted ones')
    lines = [
        '# Table I in miniature (version 2)',
        '',
        f'mIoU (%) on the test split ({s["num_test"]} mosaics of {s["height"]}x{s["width"]} '
        f'per seed, {textures_v2.NUM_CLASSES} classes: {", ".join(textures_v2.CLASS_NAMES)}; '
        f'{s["num_train"]} train and {s["num_val"]} val images per seed), mean ± sample '
        f'std over {len(seeds)} independent seeds {seeds} (a seed draws its own data, '
        f'pre-training run and key). SETR with the tiny ViT of `configs/ppenc/tiny` '
        f'({result["backbone"]["summary"]}), pre-trained per seed for {pre["iters"]} '
        f'iterations ({pre["images_seen"]} images) on {pre["description"]} (held-out '
        f'accuracy {pre["heldout_orientation_acc"]:.1f} %, chance '
        f'{100 / textures_v2.NUM_PT_CLASSES:.1f} %{enc}); fine-tuned {s["iters"]} '
        f'iterations at batch {s["batch_size"]}, SGD lr {s["lr"]}. Total '
        f'{result["seconds"] / 60:.1f} min.',
    ]
    if dep:
        lines += ['', f'Fine-tuning classes given the pre-training labelling of the same '
                  f'regions ({dep["n"]} sampled regions): H(FT) = {dep["h_ft"]:.2f} bits, '
                  f'H(FT | PT) = {dep["h_ft_given_pt"]:.2f} bits; '
                  f'{100 * dep["share_ambiguous"]:.0f} % of regions have a pre-training '
                  'label shared by at least two fine-tuning classes.']
    if result.get('chance_test_miou'):
        lines += ['', f'Chance floor: uniform random guessing scores '
                  f'{result["chance_test_miou"]["mean"]:.2f} mIoU on the test splits '
                  '(mean over seeds).']
    lines += ['', '## Full fine-tuning (test split)', '']
    lines += _test_grid(result['decoders'], cells)
    if result.get('frozen'):
        lines += ['', '## Frozen backbone, only the decoder trained (test split)', '']
        lines += _test_grid(result['frozen'], cells)
    rows = []
    for grid, title in (('decoders', 'full'), ('frozen', 'frozen')):
        for d, comps in result.get('paired', {}).get(grid, {}).items():
            for pa in comps.values():
                rows.append([title, TITLES[d], pa['what'],
                             ', '.join(f'{x:+.2f}' for x in pa['diffs']),
                             f'{pa["mean"]:+.2f}', _ci(pa.get('ci95')), pa['verdict']])
    lines += ['', '## Paired differences per seed (test mIoU)', '',
              f'95 % t-interval over the {len(seeds)} per-seed differences. Verdict: '
              f'"equivalent" when the TOST shows |difference| < {tost.get("margin")} '
              f'mIoU at α = {tost.get("alpha")}; otherwise "worse" / "better" when the '
              '95 % interval excludes 0; otherwise "not shown".', '']
    lines += _lines(['grid', 'decoder', 'difference', 'per seed', 'mean', '95 % CI',
                     'verdict'], rows)
    rows = []
    for grid, title in (('decoders', 'full'), ('frozen', 'frozen')):
        for d, t in tost.get(grid, {}).items():
            rows.append([title, TITLES[d], f'{t["mean"]:+.2f}', _ci(t['ci90']),
                         f'{t["p"]:.4f}', 'yes' if t['equivalent'] else 'no'])
    lines += ['', f'## Equivalence test (TOST) of proposed − baseline, margin '
              f'±{tost.get("margin")} mIoU, α = {tost.get("alpha")}', '',
              'The margin and α were written to `plan.json` before the run started.', '']
    lines += _lines(['grid', 'decoder', 'mean difference', '90 % CI', 'TOST p',
                     'equivalent?'], rows)
    rows = []
    for d, p in result.get('frozen_before_finetune', {}).items():
        fm = p.get('full_minus_frozen')
        rows.append([TITLES[d], f'{p["mean"]:.2f} ± {p["std"]:.2f}',
                     f'{p.get("frozen_random_backbone_mean", float("nan")):.2f}',
                     f'{p.get("full_finetune_mean", float("nan")):.2f}',
                     f'{fm["mean"]:+.2f} {_ci(fm.get("ci95"))}' if fm else '–'])
    if rows:
        lines += ['', '## Frozen probe before fine-tuning (test mIoU)', '',
                  'The pre-trained backbone frozen, only the decoder trained: how much of '
                  'the task the pre-trained features already solve.', '']
        lines += _lines(['decoder', 'frozen pre-trained backbone', 'frozen random backbone',
                         'full fine-tuning (baseline)', 'full − frozen (95 % CI)'], rows)
    lines += ['', '## Val split (used for the design only): mIoU, mean ± std', '']
    lines += _test_grid(result['decoders'], cells, split='val')
    headers = ['backbone', 'decoder'] + [SETTING_TITLES[c] for c in SETTINGS]
    rows = []
    for d, row in result['decoders'].items():
        vals = []
        for c in SETTINGS:
            r = row.get(c, {}).get('test')
            vals.append(f'{r["aacc_mean"]:.2f} / {r["mean"]:.2f} / {r["macc_mean"]:.2f}'
                        if r else '–')
        rows.append(['tiny ViT', TITLES[d]] + vals)
    lines += ['', '## In the paper\'s layout: aAcc / mIoU / mAcc (%), test means', '']
    lines += _lines(headers, rows)
    lines += ['', 'The paper (ViT-B, Cityscapes val):', '']
    lines += _lines(headers, [['ViT-B', TITLES[d]] + [
        ' / '.join(f'{v:.2f}' for v in PAPER_TABLE1[d][c]) for c in SETTINGS]
        for d in result['decoders']])
    return '\n'.join(lines) + '\n'


def plot_miou(result: dict, path: str) -> None:
    """Bars of mean test mIoU with ±std error bars, per decoder and cell; full fine-tuning
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
            ds = [d for d in decoders if d in grid]
            xs = xs[:len(ds)]
            ys = [grid[d][c]['test']['mean'] for d in ds]
            es = [grid[d][c]['test']['std'] for d in ds]
            bars = ax.bar(xs, ys, width, yerr=es, capsize=2, label=TITLES[c],
                          color=colours[c])
            ax.bar_label(bars, fmt='%.1f', fontsize=6, padding=1)
        ds = [d for d in decoders if d in grid]
        ax.set_xticks(range(len(ds)), [TITLES[d] for d in ds])
        ax.set_ylabel('mIoU (%)')
        ax.set_ylim(0, 100)
        ax.set_title(f'{title}: test mIoU, mean ± std over {len(result["seeds"])} seeds',
                     fontsize=9)
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
