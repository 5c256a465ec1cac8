"""Table I at full size: collect the 18 Cityscapes runs' metrics from their work_dirs.

Experiment code, not library code: it reads what ``tools/train.py`` and ``tools/test.py``
(mmengine 0.10's Runner) leave in each run's work_dir and writes the table in the layout
of the miniature (``docs/table1.md``) next to the paper's numbers. Run it as
``python tools/collect_table.py --work-dirs work_dirs``; the commands that produce the
runs are in ``docs/table1_fullsize.md``.

Layout read: one work_dir per config of
``configs/ppenc/setr_vit-{b,l}_{mla,pup,naive}_cityscapes_{baseline,conventional2,proposed}.py``,
either ``ROOT/<config stem>/`` (``--work-dirs ROOT``; ``tools/train.py``'s default
``work_dirs/<config stem>/`` with ``ROOT=work_dirs``) or given one by one
(``--run <config stem>=DIR``). In a work_dir, every run of the Runner has a
``<timestamp>/`` directory:

- training: ``<timestamp>/vis_data/scalars.json``, one JSON object per line; validation
  lines carry ``aAcc``, ``mIoU``, ``mAcc`` and ``step`` (the iteration);
- ``tools/test.py``: ``<timestamp>/<timestamp>.json``, one line with ``aAcc``, ``mIoU``,
  ``mAcc``, and ``Load checkpoint from PATH`` in ``<timestamp>/<timestamp>.log``;
- both: ``<timestamp>/vis_data/config.py``, the config that run used.

Which number a run gets: the newest ``tools/test.py`` result, unless training validated
a later iteration than the checkpoint it tested; else the validation at the highest
iteration over all training runs (a resumed run has several).
A run whose number comes from before the schedule's ``train_cfg.max_iters`` is marked
incomplete. The config each number came from is checked against the run's name (decoder,
setting and backbone width), so a work_dir given under the wrong name is refused instead
of filling the wrong cell.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .common import (BACKBONE_TITLES, BACKBONES, DECODER_TITLES, DECODERS, METRICS,
                     PAPER_TABLE1, SETTING_TITLES, SETTINGS, markdown_table)

__all__ = [
    'BACKBONES', 'DECODERS', 'SETTINGS', 'METRICS', 'PAPER_TABLE1', 'RunResult',
    'CollectError', 'config_stem', 'run_names', 'identify_config', 'read_run',
    'collect', 'format_markdown', 'build_parser', 'main'
]

# Backbone width of each backbone: a run's config says which one it trained.
_EMBED_DIMS = {'vit-b': 768, 'vit-l': 1024}

# mmengine names a run's directory with time.strftime('%Y%m%d_%H%M%S').
_TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')
_LOAD_CHECKPOINT = re.compile(r'Load checkpoint from (\S+)')
_ITER_CHECKPOINT = re.compile(r'iter_(\d+)\.pth$')


class CollectError(ValueError):
    """Bad arguments or a work_dir that belongs to another run; the message says how to
    fix it."""


def config_stem(backbone: str, decoder: str, setting: str) -> str:
    """The config name of one cell, e.g. ``setr_vit-b_mla_cityscapes_baseline``.

    Args:
        backbone (str): One of :data:`BACKBONES`.
        decoder (str): One of :data:`DECODERS`.
        setting (str): One of :data:`SETTINGS`.

    Returns:
        str: The file name of ``configs/ppenc/<stem>.py`` without ``.py``.
    """
    return f'setr_{backbone}_{decoder}_cityscapes_{setting}'


def run_names() -> Dict[str, Tuple[str, str, str]]:
    """The 18 config stems in table order, each with its ``(backbone, decoder, setting)``.

    Returns:
        dict[str, tuple[str, str, str]]: Stem to cell.
    """
    return {config_stem(b, d, s): (b, d, s)
            for b in BACKBONES for d in DECODERS for s in SETTINGS}


@dataclass
class RunResult:
    """What one run's work_dir says.

    Args:
        work_dir (str): The run's work_dir.
        status (str): ``'ok'``, ``'incomplete'`` (the number is from before the end of the
            schedule) or ``'missing'``.
        aAcc (float, optional): Overall pixel accuracy, %. Defaults to None.
        mIoU (float, optional): Mean IoU, %. Defaults to None.
        mAcc (float, optional): Mean class accuracy, %. Defaults to None.
        source (str, optional): ``'test'`` (``tools/test.py``) or ``'val'`` (validation
            during training). Defaults to None.
        file (str, optional): The file the metrics were read from. Defaults to None.
        iteration (int, optional): Iteration of the weights evaluated (the validation's
            step, or the ``iter_N.pth`` tested); None when unknown. Defaults to None.
        max_iters (int, optional): ``train_cfg.max_iters`` of the run's config. Defaults
            to None.
        checkpoint (str, optional): Checkpoint ``tools/test.py`` loaded. Defaults to None.
        embed_dims (int, optional): Backbone width of the run's config. Defaults to None.
        reason (str, optional): Why the run is missing or incomplete. Defaults to None.
        skipped_lines (int): Lines of ``scalars.json`` that were not JSON (a line being
            written while training runs). Defaults to 0.
        warnings (list[str]): What could not be checked. Defaults to an empty list.
    """

    work_dir: str
    status: str
    aAcc: Optional[float] = None
    mIoU: Optional[float] = None
    mAcc: Optional[float] = None
    source: Optional[str] = None
    file: Optional[str] = None
    iteration: Optional[int] = None
    max_iters: Optional[int] = None
    checkpoint: Optional[str] = None
    embed_dims: Optional[int] = None
    reason: Optional[str] = None
    skipped_lines: int = 0
    warnings: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading
def _timestamp_dirs(work_dir: str) -> List[str]:
    """The Runner's per-run directories, oldest first (names sort by time)."""
    return sorted(osp.join(work_dir, n) for n in os.listdir(work_dir)
                  if _TIMESTAMP.match(n) and osp.isdir(osp.join(work_dir, n)))


def _json_lines(path: str) -> Tuple[List[dict], int]:
    """Every JSON object of a JSON-lines file and the count of lines that are not one."""
    records, bad = [], 0
    # Line by line in bytes: mmengine writes ASCII JSON, so a line that is not UTF-8 is
    # damaged and is counted, not decoded leniently into a plausible record.
    with open(path, 'rb') as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def _has_metrics(rec: Mapping) -> bool:
    return all(isinstance(rec.get(m), (int, float)) for m in METRICS)


def _load_config(path: str):
    """A run's dumped config, without importing its ``custom_imports``."""
    from mmengine.config import Config
    return Config.fromfile(path, import_custom_modules=False)


def _type_name(cfg: Mapping) -> str:
    return str(cfg.get('type', '')).split('.')[-1]


def identify_config(cfg: Mapping) -> Dict[str, object]:
    """Decoder, setting and backbone width of a dumped run config.

    Args:
        cfg (Mapping): The config (``mmengine.config.Config`` or a dict).

    Returns:
        dict: ``decoder`` (``'mla'``, ``'pup'``, ``'naive'`` or None when it is neither),
        ``setting`` (``'proposed'`` for an ``EncryptedVisionTransformer``,
        ``'conventional2'`` when the test pipeline has ``BlockScramble``, else
        ``'baseline'``), ``embed_dims`` (int or None) and ``max_iters`` (int or None).
    """
    model = cfg.get('model') or {}
    backbone = model.get('backbone') or {}
    head = model.get('decode_head') or {}
    decoder = None
    if _type_name(head) == 'SETRMLAHead':
        decoder = 'mla'
    elif _type_name(head) == 'SETRUPHead':
        # mmseg's SETR heads: PUP upsamples in 4 conv stages, Naive in one.
        decoder = {4: 'pup', 1: 'naive'}.get(head.get('num_convs'))
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    pipeline = (loader.get('dataset') or {}).get('pipeline') or []
    if _type_name(backbone) == 'EncryptedVisionTransformer':
        setting = 'proposed'
    elif any(_type_name(t) == 'BlockScramble' for t in pipeline):
        setting = 'conventional2'
    else:
        setting = 'baseline'
    train_cfg = cfg.get('train_cfg') or {}
    max_iters = train_cfg.get('max_iters')
    return dict(decoder=decoder, setting=setting, embed_dims=backbone.get('embed_dims'),
                max_iters=int(max_iters) if max_iters is not None else None)


def _check_identity(name: str, found: Mapping, work_dir: str, config_path: str,
                    warnings: List[str]) -> None:
    """Refuse a run whose config is another cell's; warn about an unknown width."""
    backbone, decoder, setting = run_names()[name]
    wrong = []
    if found['decoder'] != decoder:
        wrong.append(f'decoder {found["decoder"]!r} (expected {decoder!r})')
    if found['setting'] != setting:
        wrong.append(f'setting {found["setting"]!r} (expected {setting!r})')
    other = {v: k for k, v in _EMBED_DIMS.items() if k != backbone}
    if found['embed_dims'] in other:
        wrong.append(f'backbone {other[found["embed_dims"]]} (embed_dims='
                     f'{found["embed_dims"]}; expected {backbone}, embed_dims='
                     f'{_EMBED_DIMS[backbone]})')
    if wrong:
        raise CollectError(
            f'{name}: the run in {work_dir} was made with '
            f'another config: {", ".join(wrong)} according to {config_path}. Give each '
            f'run its own work_dir: --run {name}=DIR with the work_dir of '
            f'configs/ppenc/{name}.py.')
    if found['embed_dims'] != _EMBED_DIMS[backbone]:
        warnings.append(f'{name}: backbone embed_dims={found["embed_dims"]} in '
                        f'{config_path} is not {backbone}\'s {_EMBED_DIMS[backbone]}; '
                        'its numbers are not comparable with the paper\'s.')


def _test_results(ts_dir: str) -> Optional[dict]:
    """The metrics ``tools/test.py`` wrote in ``ts_dir``, with the checkpoint it loaded."""
    path = osp.join(ts_dir, osp.basename(ts_dir) + '.json')
    if not osp.isfile(path):
        return None
    records, _ = _json_lines(path)
    records = [r for r in records if _has_metrics(r)]
    if not records:
        return None
    checkpoint = None
    log = osp.join(ts_dir, osp.basename(ts_dir) + '.log')
    if osp.isfile(log):
        with open(log, encoding='utf-8', errors='replace') as f:
            for line in f:
                m = _LOAD_CHECKPOINT.search(line)
                if m:
                    checkpoint = m.group(1)
    it = _ITER_CHECKPOINT.search(checkpoint or '')
    return dict(record=records[-1], file=path, checkpoint=checkpoint,
                iteration=int(it.group(1)) if it else None)


def read_run(name: str, work_dir: Optional[str]) -> RunResult:
    """Read one run's metrics from its work_dir.

    Args:
        name (str): The run's config stem (see :func:`run_names`).
        work_dir (str, optional): Its work_dir; None when it was not given.

    Returns:
        RunResult: ``status='missing'`` with a reason when the directory or its metrics
        do not exist yet.

    Raises:
        CollectError: the config the metrics came from is another cell's.
    """
    if work_dir is None:
        return RunResult('', 'missing', reason=f'not given (--run {name}=DIR)')
    if not osp.isdir(work_dir):
        return RunResult(work_dir, 'missing', reason=f'{work_dir} does not exist')
    tests, vals, skipped = [], [], 0
    for ts_dir in _timestamp_dirs(work_dir):
        test = _test_results(ts_dir)
        if test:
            tests.append(dict(test, ts_dir=ts_dir))
        scalars = osp.join(ts_dir, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            records, bad = _json_lines(scalars)
            skipped += bad
            vals += [dict(record=r, file=scalars, ts_dir=ts_dir, iteration=int(r['step']))
                     for r in records if _has_metrics(r) and 'step' in r]
    # max() keeps the first of equal steps; the newest run should win, so reverse.
    last_val = max(reversed(vals), key=lambda v: v['iteration']) if vals else None
    test = tests[-1] if tests else None
    if test and not (last_val and test['iteration'] is not None
                     and last_val['iteration'] > test['iteration']):
        chosen, source = test, 'test'
    elif last_val:
        chosen, source = last_val, 'val'
    else:
        return RunResult(work_dir, 'missing', skipped_lines=skipped, reason=(
            f'no metrics in {work_dir} yet: neither a validation in '
            '<timestamp>/vis_data/scalars.json nor a tools/test.py result in '
            '<timestamp>/<timestamp>.json'))
    rec = chosen['record']
    res = RunResult(work_dir, 'ok', source=source, file=chosen['file'],
                    iteration=chosen['iteration'], checkpoint=chosen.get('checkpoint'),
                    skipped_lines=skipped,
                    **{m: round(float(rec[m]), 2) for m in METRICS})
    config_path = osp.join(chosen['ts_dir'], 'vis_data', 'config.py')
    cfg = None
    if osp.isfile(config_path):
        try:
            cfg = _load_config(config_path)
        except Exception as e:  # whatever a broken dump raises while it is executed
            res.warnings.append(f'{name}: cannot read {config_path} ({type(e).__name__}: '
                                f'{e}); the run\'s decoder, setting and schedule are '
                                'unchecked.')
    else:
        res.warnings.append(f'{name}: no {config_path}; the run\'s decoder, setting and '
                            'schedule are unchecked.')
    if cfg is not None:
        found = identify_config(cfg)
        _check_identity(name, found, work_dir, config_path, res.warnings)
        res.embed_dims, res.max_iters = found['embed_dims'], found['max_iters']
    if res.iteration is not None and res.max_iters is not None and \
            res.iteration < res.max_iters:
        res.status = 'incomplete'
        what = 'validation' if source == 'val' else f'tools/test.py of {res.checkpoint}'
        res.reason = f'{what} at iteration {res.iteration} of {res.max_iters}'
    elif source == 'test' and res.iteration is None:
        res.warnings.append(f'{name}: the iteration of the tested checkpoint '
                            f'({res.checkpoint}) is unknown; completeness unchecked.')
    return res


# --------------------------------------------------------------------------- table
def collect(runs: Mapping[str, Optional[str]]) -> dict:
    """Read the runs and arrange them as ``{backbones: {vit-b: {mla: {baseline: ...}}}}``.

    Args:
        runs (Mapping[str, str]): Config stem to work_dir; a stem that is absent or maps
            to None is reported missing.

    Returns:
        dict: ``backbones`` (per cell: the metrics, ``status``, ``work_dir``, ``source``,
        ``file``, ``iteration``, ``max_iters``, ...), ``paper`` (the paper's numbers in the
        same shape), ``missing`` and ``incomplete`` (config stems) and ``warnings``.

    Raises:
        CollectError: a run's config is another cell's.
    """
    table: Dict[str, Dict[str, Dict[str, dict]]] = {}
    missing, incomplete, warnings = [], [], []
    for name, (b, d, s) in run_names().items():
        res = read_run(name, runs.get(name))
        table.setdefault(b, {}).setdefault(d, {})[s] = asdict(res)
        warnings += res.warnings
        if res.status == 'missing':
            missing.append(name)
        elif res.status == 'incomplete':
            incomplete.append(name)
    paper = {b: {d: {s: dict(zip(METRICS, v)) for s, v in row.items()}
                 for d, row in dec.items()} for b, dec in PAPER_TABLE1.items()}
    return dict(backbones=table, paper=paper, missing=missing, incomplete=incomplete,
                warnings=warnings)


def _cell(res: Optional[Mapping]) -> str:
    if not res or res.get('status') == 'missing' or res.get('mIoU') is None:
        return 'missing'
    text = ' / '.join(f'{res[m]:.2f}' for m in METRICS)
    return text + (' *' if res.get('status') == 'incomplete' else '')


def _grid(rows: Mapping[str, Mapping[str, Mapping[str, Mapping]]], cell) -> List[str]:
    """Lines of one backbone x decoder by setting table; ``cell(res, b, d, s)`` fills it."""
    headers = ['backbone', 'decoder'] + [SETTING_TITLES[s] for s in SETTINGS]
    body = [[BACKBONE_TITLES[b], DECODER_TITLES[d]] +
            [cell(rows.get(b, {}).get(d, {}).get(s), b, d, s) for s in SETTINGS]
            for b in BACKBONES for d in DECODERS]
    return markdown_table(headers, body, align=False).split('\n')


def format_markdown(result: Mapping, source: str = '') -> str:
    """The collected Table I as markdown, with the paper's table and the mIoU gaps.

    Args:
        result (Mapping): What :func:`collect` returns (or the JSON it was saved as).
        source (str): Where the runs were read from, for the caption. Defaults to ''.

    Returns:
        str: Markdown text.
    """
    paper = result['paper']

    def gap(res, b, d, s):
        if not res or res.get('status') == 'missing' or res.get('mIoU') is None:
            return '–'
        return f'{res["mIoU"] - paper[b][d][s]["mIoU"]:+.2f}'

    lines = ['# Table I, full size (Cityscapes val)', '',
             'aAcc / mIoU / mAcc (%) of the 18 runs' + (f' in {source}' if source else '')
             + '; `*`: not at the end of its schedule (see "Incomplete runs").', '']
    lines += _grid(result['backbones'], lambda r, b, d, s: _cell(r))
    lines += ['', "The paper's Table I (Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730):", '']
    lines += _grid(paper, lambda r, b, d, s: _cell(dict(r, status='ok')))
    lines += ['', 'mIoU, these runs minus the paper:', '']
    lines += _grid(result['backbones'], gap)
    for title, names in (('Missing runs', result['missing']),
                         ('Incomplete runs', result['incomplete'])):
        if names:
            lines += ['', f'{title} ({len(names)}):', '']
            for name in names:
                b, d, s = run_names()[name]
                lines.append(f'- `{name}`: {result["backbones"][b][d][s]["reason"]}')
    lines += ['', 'Sources:', '', '| run | from | iteration | file |', '|---|---|---|---|']
    for name, (b, d, s) in run_names().items():
        res = result['backbones'][b][d][s]
        if res['status'] == 'missing':
            continue
        it = '?' if res['iteration'] is None else str(res['iteration'])
        if res['max_iters'] is not None:
            it += f' of {res["max_iters"]}'
        origin = 'validation' if res['source'] == 'val' else 'tools/test.py'
        lines.append(f'| `{name}` | {origin} | {it} | `{res["file"]}` |')
    if result['warnings']:
        lines += ['', 'Warnings:', ''] + [f'- {w}' for w in result['warnings']]
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``[--work-dirs ROOT] [--run NAME=DIR ...]
        [--out-dir DIR]``.
    """
    p = argparse.ArgumentParser(
        description="Collect the full-size Table I (Cityscapes val) from the 18 runs' "
                    'mmengine work_dirs, next to the paper\'s numbers.')
    p.add_argument('--work-dirs', metavar='ROOT',
                   help='directory holding one work_dir per run, named after its config: '
                   'ROOT/setr_vit-b_mla_cityscapes_baseline/ ... (tools/train.py\'s default '
                   'is work_dirs/<config stem>/, i.e. ROOT=work_dirs)')
    p.add_argument('--run', action='append', default=[], metavar='NAME=DIR',
                   help='the work_dir of one run, NAME its config stem (e.g. '
                   'setr_vit-l_pup_cityscapes_proposed); overrides ROOT/NAME; repeatable')
    p.add_argument('--out-dir', default='work_dirs/table1_fullsize',
                   help='where table1_fullsize.md and table1_fullsize.json are written '
                   '(replacing those of an earlier collection; default: %(default)s)')
    return p


def _run_dirs(args: argparse.Namespace) -> Dict[str, Optional[str]]:
    """Config stem to work_dir from ``--work-dirs`` and ``--run``."""
    names = run_names()
    if not args.work_dirs and not args.run:
        raise CollectError('nothing to read: give --work-dirs ROOT (one work_dir per run, '
                           'ROOT/<config stem>/) and/or --run NAME=DIR.')
    runs: Dict[str, Optional[str]] = {n: None for n in names}
    if args.work_dirs:
        root = args.work_dirs
        if not osp.isdir(root):
            what = 'is not a directory' if osp.exists(root) else 'does not exist'
            raise CollectError(
                f'--work-dirs {root!r} {what}; expected a directory with one work_dir per '
                f'run named after its config, e.g. {osp.join(root, next(iter(names)))}/ '
                '(tools/train.py writes work_dirs/<config stem>/ by default).')
        runs = {n: osp.join(root, n) for n in names}
    given = set()
    for item in args.run:
        name, sep, path = item.partition('=')
        if not sep or not name or not path:
            raise CollectError(f'--run {item!r}: expected NAME=DIR, e.g. '
                               f'--run {next(iter(names))}=work_dirs/my_run.')
        if name not in names:
            raise CollectError(f'--run {item!r}: {name!r} is not one of the 18 config '
                               'stems setr_vit-{b,l}_{mla,pup,naive}_cityscapes_'
                               '{baseline,conventional2,proposed}.')
        if name in given:
            raise CollectError(f'--run {name}= is given twice; give each run once.')
        if not osp.isdir(path):
            raise CollectError(f'--run {item!r}: the work_dir {path!r} does not exist or '
                               'is not a directory.')
        given.add(name)
        runs[name] = path
    return runs


def _write(path: str, text: str) -> None:
    """Write through a temporary file so that a reader never sees half a table."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Collect the table, print it and write the markdown and JSON files.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 when written (missing runs are listed, not an error); 2 for bad arguments,
        a missing ROOT, a run under another run's name, or no metrics at all; 1 when
        ``--out-dir`` cannot be written (one ``error: ...`` line on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        result = collect(_run_dirs(args))
    except CollectError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    total = len(run_names())
    if len(result['missing']) == total:
        where = args.work_dirs or 'the --run directories'
        print(f'error: none of the 18 runs has metrics in {where}; expected '
              '<work_dir>/<timestamp>/vis_data/scalars.json (validation during training) '
              'or <work_dir>/<timestamp>/<timestamp>.json (tools/test.py) in each '
              'ROOT/<config stem>/ work_dir.', file=sys.stderr)
        return 2
    for w in result['warnings']:
        print(f'warning: {w}', file=sys.stderr)
    text = format_markdown(result, args.work_dirs or '')
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        _write(osp.join(args.out_dir, 'table1_fullsize.json'), json.dumps(result, indent=1))
        _write(osp.join(args.out_dir, 'table1_fullsize.md'), text)
    except OSError as e:
        print(f'error: cannot write the table to --out-dir {args.out_dir!r}: '
              f'{e.strerror or e}; choose a writable directory.', file=sys.stderr)
        return 1
    print(text)
    print(f'Wrote {osp.join(args.out_dir, "table1_fullsize.md")} and table1_fullsize.json; '
          f'{total - len(result["missing"])} of {total} runs found, '
          f'{len(result["missing"])} missing, '
          f'{len(result["incomplete"])} incomplete.')
    return 0

