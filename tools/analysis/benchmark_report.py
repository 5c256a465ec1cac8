"""The benchmark's report: headline ratios (:func:`compare`) and Markdown tables
(:func:`format_report`, what ``tools/benchmark.py`` prints).
"""
from __future__ import annotations

import statistics
from typing import List, Optional

from .common import SWITCHES, fmt, markdown_table
from .profile_step import format_profile

__all__ = ['throughput_ratio', 'compare', 'format_report']


def throughput_ratio(train: dict, num: dict, den: dict) -> float:
    """images/s of ``num`` over images/s of ``den`` (two variants of
    :func:`train_speed.bench_train`).

    Interleaved (CPU) runs give the median of the per-round ratios: both steps of a
    round ran back to back, so a burst of load from other processes hits both, and the
    median drops the rounds where it hit only one. Sequential (GPU) runs give the ratio
    of the medians.
    """
    a, b = num.get('samples_ms'), den.get('samples_ms')
    if train.get('interleaved') and a and b and len(a) == len(b):
        per_round = [(tb / den['batch']) / (ta / num['batch']) for ta, tb in zip(a, b)]
        return float(statistics.median(per_round))
    return num['img_per_s'] / den['img_per_s']


def _find(variants: List[dict], **kw) -> Optional[dict]:
    for v in variants:
        if all(v.get(k, '' if k == 'switches' else None) == val for k, val in kw.items()) \
                and 'step' in v:
            return v
    return None


def compare(report: dict) -> List[dict]:
    """The report's headline figures and ratios, each with how it was taken.

    Args:
        report (dict): With optional ``cipher``, ``pipeline`` and ``train`` sections as
            returned by :func:`cipher_cost.bench_cipher`,
            :func:`cipher_cost.bench_pipeline`, :func:`train_speed.bench_train`.

    Returns:
        list[dict]: ``name``, ``value`` (None when a side did not run) and ``note``.
    """
    out = []

    def add(name: str, value: Optional[float], note: str = '') -> None:
        out.append(dict(name=name, value=value, note=note))

    crop = (report.get('cipher') or {}).get('768x768')
    if crop is not None:
        add('BlockScramble ms per 768x768 crop', crop['scramble']['median_ms'],
            f"{crop['scramble']['timer']} time")
    pipe = report.get('pipeline')
    if pipe is not None:
        add('BlockScramble share of the stock train pipeline', pipe['share'],
            'per sample, median')
    train = report.get('train')
    if train is None:
        return out
    vs, b = train['variants'], train['batch']
    how = ('median of per-round ratios' if train.get('interleaved')
           else 'ratio of medians')
    for switches in sorted({v.get('switches', '') for v in vs if 'step' in v}, key=len):
        base = _find(vs, setting='baseline', batch=b, switches=switches)
        extra = ''.join(f' +{SWITCHES[k][0]}' for k in switches)
        for setting, label in (('proposed', 'proposed'), ('conventional2', 'conv. 2')):
            other = _find(vs, setting=setting, batch=b, switches=switches)
            if base and other:
                add(f'{label}/baseline images/s (batch {b}{extra})',
                    throughput_ratio(train, other, base), f'encryption included; {how}')
    # One switch on against off, everything else equal (e.g. FDLM against FDM).
    for v in vs:
        if 'step' not in v or v['setting'] == 'stock':
            continue
        for k in v.get('switches', ''):
            rest = v['switches'].replace(k, '')
            off = _find(vs, setting=v['setting'], batch=v['batch'], switches=rest)
            if off is not None:
                extra = ''.join(f' +{SWITCHES[x][0]}' for x in rest)
                add(f"+{SWITCHES[k][0]} on/off images/s ({v['setting']}{extra} "
                    f"b{v['batch']})", throughput_ratio(train, v, off), how)
    stocks = [v for v in vs if v['setting'] == 'stock' and 'step' in v]
    plugins = [v for v in vs if v['setting'] != 'stock' and 'step' in v]
    if stocks and plugins:
        best_s = max(stocks, key=lambda v: v['img_per_s'])
        best_p = max(plugins, key=lambda v: v['img_per_s'])
        add('best plugin/best stock fp32 images/s', best_p['img_per_s'] /
            best_s['img_per_s'], f"{best_p['name']} vs {best_s['name']}")
        base = _find(vs, setting='baseline', batch=b, switches='')
        if base is not None:
            add('plugin defaults/best stock fp32 images/s',
                base['img_per_s'] / best_s['img_per_s'], f"{base['name']} vs {best_s['name']}")
    for st in stocks:
        p = _find(vs, setting='baseline', batch=st['batch'], switches='')
        if p is not None:
            add('plugin/stock fp32 peak memory (same batch)',
                p['peak_mem_mib'] / st['peak_mem_mib'],
                f"batch {st['batch']}, {st['mem_kind']}")
            break
    return out


def format_report(report: dict) -> str:
    """The report as Markdown tables (what ``tools/benchmark.py`` prints)."""
    parts = []
    meta = report.get('meta', {})
    if meta:
        parts.append(f"Device: {meta.get('device_name')}; torch {meta.get('torch')}; "
                     f"Python {meta.get('python')}; {meta.get('cpu_count')} CPU cores")
    cipher = report.get('cipher')
    if cipher:
        rows = []
        for size, r in cipher.items():
            rows.append([size, fmt(r['copy']['median_ms'], 3),
                         fmt(r['scramble']['median_ms'], 3),
                         fmt(r['full_map']['median_ms'], 3),
                         fmt(r['scramble_over_copy'], 1)])
        timer = next(iter(cipher.values()))['copy']['timer']
        parts.append(f'1. Cipher cost (median ms, {timer} time)\n\n' + markdown_table(
            ['image', 'copy', 'BlockScramble', 'full-size map (previous)',
             'scramble/copy'], rows))
    pipe = report.get('pipeline')
    if pipe:
        parts.append(f"Stock Cityscapes train pipeline, per sample (median ms, "
                     f"{pipe['plain']['timer']} time)\n\n" + markdown_table(
            ['plain pipeline', 'with BlockScramble', 'BlockScramble alone', 'share'],
            [[fmt(pipe['plain']['median_ms'], 1), fmt(pipe['encrypted']['median_ms'], 1),
              fmt(pipe['scramble']['median_ms'], 3), f"{100 * pipe['share']:.2f} %"]]))
    train = report.get('train')
    if train:
        stock = [v['img_per_s'] for v in train['variants']
                 if v['setting'] == 'stock' and 'step' in v]
        best_stock = max(stock) if stock else None
        rows = []
        for v in train['variants']:
            if 'step' in v:
                rows.append([v['name'], v['backbone'], v['attention'], v['precision'],
                             str(v['batch']), fmt(v['step']['median_ms'], 1),
                             fmt(v['img_per_s'], 2),
                             fmt(v['img_per_s'] / best_stock) if best_stock else '-',
                             fmt(v['peak_mem_mib'], 0)])
            else:
                rows.append([v['name'], '', '', '', str(v['batch']), v.get('error', ''),
                             '', '', ''])
        kind = next((v['mem_kind'] for v in train['variants'] if 'mem_kind' in v), '')
        parts.append(
            f"2./3. Training step: {train['arch']} + {train['decoder']}, "
            f"{train['size']}x{train['size']}, {train['device']}, median of "
            f"{train['steps']} steps after {train['warmup']} warm-up, "
            f"{train['timer']} time, {train['torch_threads']} torch thread(s)"
            f"{', interleaved' if train['interleaved'] else ''}\n\n" + markdown_table(
                ['variant', 'backbone', 'attention', 'precision', 'batch', 'ms/step',
                 'img/s', 'x best stock', f'memory MiB ({kind})'], rows))
    prof = report.get('profile')
    if prof and 'segments' in prof:
        parts.append(format_profile(prof))
    elif prof:
        parts.append(f"Profile: {prof.get('error')}")
    comparisons = report.get('comparisons')
    if comparisons:
        rows = [[c['name'], fmt(c['value'], 3), c['note']] for c in comparisons]
        parts.append('Comparisons\n\n' + markdown_table(['figure', 'value', 'how'], rows))
    return '\n\n'.join(parts)
