"""tools/collect_table.py (code in tools/analysis/collect_table.py): the full-size Table I
read from the 18 runs' mmengine work_dirs.

One tiny run goes through the real Runner (tools/train.py, then tools/test.py on its last
checkpoint). The 18-run tree is written in the format that run shows mmengine writes
(``test_written_format_is_mmengine_s`` keeps the two in step), with each run's
``vis_data/config.py`` dumped from the shipped full-size config.
"""
import contextlib
import io
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
from mmengine.config import Config

from conftest import REPO, tiny_config

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import collect_table as C  # noqa: E402

ITERS = 4
SHORT = ['--cfg-options', f'train_cfg.max_iters={ITERS}', 'train_cfg.val_interval=2',
         f'param_scheduler.0.end={ITERS}', f'default_hooks.checkpoint.interval={ITERS}',
         'default_hooks.logger.interval=2']
NAMES = list(C.run_names())


# --------------------------------------------------------------------------- a real run
def _is_test_dir(ts_dir):
    return osp.isfile(osp.join(ts_dir, osp.basename(ts_dir) + '.json'))


def _ts_dirs(work_dir):
    return sorted(osp.join(work_dir, n) for n in os.listdir(work_dir)
                  if osp.isdir(osp.join(work_dir, n)) and n[:8].isdigit())


@pytest.fixture(scope='module')
def real_run(tmp_path_factory, session_key_file, synthetic_root):
    """The tiny MLA proposed config trained for ITERS iterations (validation every 2) and
    its last checkpoint evaluated by tools/test.py, both in one work_dir."""
    work_dir = str(tmp_path_factory.mktemp('real_run') / 'work_dir')
    env = dict(os.environ, PPENC_KEY_FILE=session_key_file, PPENC_DATA_ROOT=synthetic_root,
               PYTHONWARNINGS='ignore')
    config = tiny_config('mla', 'proposed')
    for args in (['tools/train.py', config, '--work-dir', work_dir],
                 ['tools/test.py', config, osp.join(work_dir, f'iter_{ITERS}.pth'),
                  '--work-dir', work_dir]):
        res = subprocess.run([sys.executable] + args + SHORT, cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith('Test results: ')][-1]
    printed = {k: float(v) for k, v in (p.split('=') for p in line.split()[2:])}
    return work_dir, printed


def _collect(argv, capsys):
    rc = C.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_real_run_reports_the_test_result(real_run, tmp_path, capsys):
    work_dir, printed = real_run
    name = 'setr_vit-b_mla_cityscapes_proposed'
    rc, out, err = _collect(['--run', f'{name}={work_dir}', '--out-dir', str(tmp_path)],
                            capsys)
    assert rc == 0, err
    with open(tmp_path / 'table1_fullsize.json') as f:
        cell = json.load(f)['backbones']['vit-b']['mla']['proposed']
    assert {m: cell[m] for m in C.METRICS} == printed
    assert (cell['status'], cell['source'], cell['iteration'], cell['max_iters'],
            cell['embed_dims']) == ('ok', 'test', ITERS, ITERS, 64)
    assert cell['checkpoint'] == osp.join(work_dir, f'iter_{ITERS}.pth')
    expected = ' / '.join(f'{printed[m]:.2f}' for m in C.METRICS)
    assert f'| ViT-B | MLA | missing | missing | {expected} |' in out
    # The tiny width is named, not passed off as ViT-B.
    assert 'warning: setr_vit-b_mla_cityscapes_proposed: backbone embed_dims=64' in err


def test_real_run_without_test_reports_the_last_validation(real_run, tmp_path, capsys):
    work_dir, printed = real_run
    train_only = str(tmp_path / 'train_only')
    shutil.copytree(work_dir, train_only)
    for ts_dir in _ts_dirs(train_only):
        if _is_test_dir(ts_dir):
            shutil.rmtree(ts_dir)
    (train_dir,) = _ts_dirs(train_only)
    with open(osp.join(train_dir, 'vis_data', 'scalars.json')) as f:
        vals = [r for r in map(json.loads, f) if 'mIoU' in r]
    assert [r['step'] for r in vals] == [2, ITERS]
    name = 'setr_vit-b_mla_cityscapes_proposed'
    rc, _, err = _collect(['--run', f'{name}={train_only}', '--out-dir',
                           str(tmp_path / 'out')], capsys)
    assert rc == 0, err
    with open(tmp_path / 'out' / 'table1_fullsize.json') as f:
        cell = json.load(f)['backbones']['vit-b']['mla']['proposed']
    assert (cell['source'], cell['iteration'], cell['status']) == ('val', ITERS, 'ok')
    for m in C.METRICS:
        assert cell[m] == round(vals[-1][m], 2)
        # The same weights on the same data: equal to tools/test.py up to its rounding.
        assert cell[m] == pytest.approx(printed[m], abs=0.006)


def test_real_run_under_another_name_is_refused(real_run, tmp_path, capsys):
    work_dir, _ = real_run
    rc, out, err = _collect(['--run', f'setr_vit-b_mla_cityscapes_baseline={work_dir}',
                             '--out-dir', str(tmp_path / 'out')], capsys)
    assert rc == 2 and out == ''
    assert err.startswith('error: setr_vit-b_mla_cityscapes_baseline: ') and \
        err.count('\n') == 1, err
    assert "setting 'proposed' (expected 'baseline')" in err
    assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------- written runs
def _train_line(it):
    return {'base_lr': 0.01, 'lr': 0.01, 'data_time': 0.01, 'loss': 1.0,
            'decode.loss_ce': 0.5, 'decode.acc_seg': 80.0, 'time': 0.1, 'iter': it,
            'step': it}


def _val_line(step, metrics):
    return dict(metrics, data_time=0.01, time=0.05, step=step)


def write_train_run(work_dir, ts, config, vals, tail=''):
    """A training run as mmengine 0.10 leaves it: ``<ts>/<ts>.log`` and ``vis_data/``
    with ``scalars.json``, ``<ts>.json`` (the same lines) and ``config.py``; ``vals`` is
    ``[(step, metrics), ...]``."""
    vis = osp.join(work_dir, ts, 'vis_data')
    os.makedirs(vis)
    lines = []
    for step, metrics in vals:
        lines += [json.dumps(_train_line(step)), json.dumps(_val_line(step, metrics))]
    text = ''.join(ln + '\n' for ln in lines) + tail
    for name in ('scalars.json', f'{ts}.json'):
        with open(osp.join(vis, name), 'w') as f:
            f.write(text)
    config.dump(osp.join(vis, 'config.py'))
    with open(osp.join(work_dir, ts, f'{ts}.log'), 'w') as f:
        f.write('2026/01/01 00:00:00 - mmengine - INFO - Iter(train) ...\n')


def write_test_run(work_dir, ts, config, metrics, checkpoint):
    """A tools/test.py run: ``<ts>/<ts>.json`` (one line), ``<ts>/<ts>.log`` with the
    checkpoint it loaded and ``vis_data/config.py``."""
    os.makedirs(osp.join(work_dir, ts, 'vis_data'))
    with open(osp.join(work_dir, ts, f'{ts}.json'), 'w') as f:
        f.write(json.dumps(dict(metrics, data_time=0.02, time=0.6)) + '\n')
    with open(osp.join(work_dir, ts, f'{ts}.log'), 'w') as f:
        f.write(f'2026/01/02 00:00:00 - mmengine - INFO - Load checkpoint from {checkpoint}\n')
    config.dump(osp.join(work_dir, ts, 'vis_data', 'config.py'))


def test_written_format_is_mmengine_s(real_run, tmp_path):
    """The files the writers above make are those (names and record keys) of the real
    Runner's work_dir."""
    work_dir, _ = real_run
    real = {}
    for ts_dir in _ts_dirs(work_dir):
        kind = 'test' if _is_test_dir(ts_dir) else 'train'
        real[kind] = sorted(osp.relpath(osp.join(d, f), ts_dir).replace(
            osp.basename(ts_dir), 'TS') for d, _, fs in os.walk(ts_dir) for f in fs)
        if kind == 'train':
            with open(osp.join(ts_dir, 'vis_data', 'scalars.json')) as f:
                real_val_keys = {tuple(sorted(r)) for r in map(json.loads, f) if 'mIoU' in r}
        else:
            with open(osp.join(ts_dir, osp.basename(ts_dir) + '.json')) as f:
                real_test_keys = set(json.loads(f.readline()))
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    metrics = dict(aAcc=90.0, mIoU=60.0, mAcc=70.0)
    write_train_run(str(tmp_path), '20260101_000000', cfg, [(2, metrics)])
    write_test_run(str(tmp_path), '20260102_000000', cfg, metrics, 'x/iter_2.pth')
    for kind, ts in (('train', '20260101_000000'), ('test', '20260102_000000')):
        ts_dir = osp.join(tmp_path, ts)
        mine = sorted(osp.relpath(osp.join(d, f), ts_dir).replace(ts, 'TS')
                      for d, _, fs in os.walk(ts_dir) for f in fs)
        assert mine == real[kind], kind
    assert real_val_keys == {tuple(sorted(_val_line(2, metrics)))}
    with open(osp.join(tmp_path, '20260102_000000', '20260102_000000.json')) as f:
        assert set(json.loads(f.readline())) == real_test_keys


def _metrics(k):
    """Distinct, recognisable numbers for run k (two decimals, as IoUMetric gives)."""
    return dict(aAcc=round(90 + k * 0.25, 2), mIoU=round(50 + k * 1.25, 2),
                mAcc=round(60 + k * 0.5, 2))


SCHEDULE = list(range(8000, 80001, 8000))  # the configs' val_interval and max_iters
MISSING_DIR = 'setr_vit-l_pup_cityscapes_proposed'        # no work_dir at all
NO_METRICS = 'setr_vit-b_naive_cityscapes_conventional2'  # started, no validation yet
INCOMPLETE = 'setr_vit-l_mla_cityscapes_baseline'         # validated up to 40000 only
TESTED = 'setr_vit-b_mla_cityscapes_proposed'             # tools/test.py after training
OLD_TEST = 'setr_vit-b_mla_cityscapes_conventional2'      # tested at 40000, trained on
RESUMED = 'setr_vit-b_pup_cityscapes_baseline'            # two training runs
TRUNCATED = 'setr_vit-l_naive_cityscapes_baseline'        # last line being written


@pytest.fixture(scope='module')
def full_tree(tmp_path_factory):
    """ROOT/<config stem>/ for the 18 runs, each with its shipped config's dump, and the
    metrics each cell should get."""
    root = str(tmp_path_factory.mktemp('work_dirs'))
    expected = {}
    for k, name in enumerate(NAMES):
        if name == MISSING_DIR:
            continue
        wd = osp.join(root, name)
        os.makedirs(wd)
        if name == NO_METRICS:
            continue
        cfg = Config.fromfile(osp.join(REPO, 'configs', 'ppenc', name + '.py'))
        final = _metrics(k)
        early = _metrics(k + 100)  # what an earlier iteration or run would give
        vals = [(s, early) for s in SCHEDULE[:-1]] + [(SCHEDULE[-1], final)]
        if name == INCOMPLETE:
            write_train_run(wd, '20260101_000000', cfg, [(s, early) for s in SCHEDULE[:4]]
                            + [(40000, final)])
            expected[name] = (final, 'val', 40000)
        elif name == RESUMED:
            write_train_run(wd, '20260101_000000', cfg, vals[:5])
            # The resumed run logs 40000 again (mmengine resumes at the checkpoint).
            write_train_run(wd, '20260102_000000', cfg, vals[4:])
            expected[name] = (final, 'val', 80000)
        elif name == TRUNCATED:
            write_train_run(wd, '20260101_000000', cfg, vals, tail='{"base_lr": 0.0')
            expected[name] = (final, 'val', 80000)
        elif name == TESTED:
            write_train_run(wd, '20260101_000000', cfg, [(s, early) for s in SCHEDULE])
            write_test_run(wd, '20260105_000000', cfg, final, osp.join(wd, 'iter_80000.pth'))
            expected[name] = (final, 'test', 80000)
        elif name == OLD_TEST:
            write_train_run(wd, '20260101_000000', cfg, vals[:5])
            write_test_run(wd, '20260102_000000', cfg, early, osp.join(wd, 'iter_40000.pth'))
            write_train_run(wd, '20260103_000000', cfg, vals[5:])
            expected[name] = (final, 'val', 80000)
        else:
            write_train_run(wd, '20260101_000000', cfg, vals)
            expected[name] = (final, 'val', 80000)
    return root, expected


@pytest.fixture(scope='module')
def collected(full_tree, tmp_path_factory):
    root, expected = full_tree
    out = str(tmp_path_factory.mktemp('table'))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = C.main(['--work-dirs', root, '--out-dir', out])
    assert rc == 0, stderr.getvalue()
    with open(osp.join(out, 'table1_fullsize.json')) as f:
        data = json.load(f)
    with open(osp.join(out, 'table1_fullsize.md')) as f:
        md = f.read()
    return root, expected, data, md, stdout.getvalue(), stderr.getvalue()


def test_parsed_numbers(collected):
    root, expected, data, _, _, err = collected
    assert err == ''  # full-size widths: no warning
    for name, (b, d, s) in C.run_names().items():
        cell = data['backbones'][b][d][s]
        if name in (MISSING_DIR, NO_METRICS):
            assert cell['status'] == 'missing' and cell['mIoU'] is None, name
            continue
        metrics, source, iteration = expected[name]
        assert {m: cell[m] for m in C.METRICS} == metrics, name
        assert (cell['source'], cell['iteration'], cell['max_iters'], cell['embed_dims']) \
            == (source, iteration, 80000, 768 if b == 'vit-b' else 1024), name
        assert cell['work_dir'] == osp.join(root, name)
        assert cell['status'] == ('incomplete' if name == INCOMPLETE else 'ok'), name
    tested = data['backbones']['vit-b']['mla']['proposed']
    assert tested['checkpoint'] == osp.join(root, TESTED, 'iter_80000.pth')
    assert data['backbones']['vit-l']['naive']['baseline']['skipped_lines'] == 1
    assert data['paper']['vit-l']['pup']['conventional2'] == dict(aAcc=89.25, mIoU=38.59,
                                                                   mAcc=44.63)


def test_missing_and_incomplete_runs_are_listed(collected):
    root, _, data, md, _, _ = collected
    assert data['missing'] == [NO_METRICS, MISSING_DIR]  # table order
    assert data['incomplete'] == [INCOMPLETE]
    missing = md.split('Missing runs (2):\n\n')[1].split('\n\n')[0].splitlines()
    assert missing == [
        f'- `{NO_METRICS}`: no metrics in {osp.join(root, NO_METRICS)} yet: neither a '
        'validation in <timestamp>/vis_data/scalars.json nor a tools/test.py result in '
        '<timestamp>/<timestamp>.json',
        f'- `{MISSING_DIR}`: {osp.join(root, MISSING_DIR)} does not exist']
    assert f'- `{INCOMPLETE}`: validation at iteration 40000 of 80000' in md


DECODER_TITLES = {'mla': 'MLA', 'pup': 'PUP', 'naive': 'Naive'}  # as the paper writes them


def test_table_layout(collected):
    _, expected, _, md, out, _ = collected
    assert md in out

    def cell(name):
        if name not in expected:
            return 'missing'
        text = ' / '.join(f'{expected[name][0][m]:.2f}' for m in C.METRICS)
        return text + (' *' if name == INCOMPLETE else '')

    rows = [f'| {b.upper().replace("VIT", "ViT")} | {DECODER_TITLES[d]} | '
            + ' | '.join(cell(C.config_stem(b, d, s)) for s in C.SETTINGS) + ' |'
            for b in C.BACKBONES for d in C.DECODERS]
    header = ['| backbone | decoder | baseline | conventional 2 | proposed |',
              '|---|---|---|---|---|']
    tables = [block.splitlines() for block in md.split('\n\n') if block.startswith('| b')]
    assert tables[0] == header + rows
    paper = [f'| {b.upper().replace("VIT", "ViT")} | {DECODER_TITLES[d]} | '
             + ' | '.join(' / '.join(f'{v:.2f}' for v in C.PAPER_TABLE1[b][d][s])
                          for s in C.SETTINGS) + ' |'
             for b in C.BACKBONES for d in C.DECODERS]
    assert tables[1] == header + paper
    assert tables[1][2] == '| ViT-B | MLA | 94.74 / 71.79 / 81.50 | 89.09 / 39.87 / 46.61 ' \
                           '| 94.54 / 70.99 / 80.85 |'
    gaps = tables[2]
    k = NAMES.index(TESTED)
    assert gaps[2].split(' | ')[-1] == f'{_metrics(k)["mIoU"] - 70.99:+.2f} |'
    assert gaps[4].split(' | ')[3] == '–'  # ViT-B Naive conventional 2 is missing


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize('name,source,message', [
    ('setr_vit-b_mla_cityscapes_baseline', 'setr_vit-b_mla_cityscapes_proposed',
     "setting 'proposed' (expected 'baseline')"),
    ('setr_vit-b_pup_cityscapes_proposed', 'setr_vit-b_mla_cityscapes_proposed',
     "decoder 'mla' (expected 'pup')"),
    ('setr_vit-b_naive_cityscapes_baseline', 'setr_vit-b_pup_cityscapes_baseline',
     "decoder 'pup' (expected 'naive')"),
    ('setr_vit-l_mla_cityscapes_proposed', 'setr_vit-b_mla_cityscapes_proposed',
     'backbone vit-b (embed_dims=768; expected vit-l, embed_dims=1024)'),
])
def test_run_under_another_name_is_refused(full_tree, tmp_path, capsys, name, source,
                                           message):
    root, _ = full_tree
    rc, out, err = _collect(['--run', f'{name}={osp.join(root, source)}', '--out-dir',
                             str(tmp_path / 'out')], capsys)
    assert rc == 2 and out == '' and err.count('\n') == 1, err
    assert err.startswith(f'error: {name}: the run in {osp.join(root, source)} was made '
                          'with another config: ') and message in err, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('argv,message', [
    ([], 'nothing to read: give --work-dirs ROOT'),
    (['--work-dirs', '{tmp}/nope'], "--work-dirs '{tmp}/nope' does not exist; expected a "
     'directory with one work_dir per run named after its config, e.g. '
     '{tmp}/nope/setr_vit-b_mla_cityscapes_baseline/'),
    (['--work-dirs', '{tmp}/file'], "--work-dirs '{tmp}/file' is not a directory"),
    (['--work-dirs', '{tmp}/empty'], 'none of the 18 runs has metrics in {tmp}/empty'),
    (['--run', 'setr_vit-b_mla_cityscapes_baseline'], 'expected NAME=DIR'),
    (['--run', 'setr_vit-x_mla_cityscapes_baseline={tmp}/empty'],
     "'setr_vit-x_mla_cityscapes_baseline' is not one of the 18 config stems"),
    (['--run', 'setr_vit-b_mla_cityscapes_baseline={tmp}/nope'],
     "the work_dir '{tmp}/nope' does not exist"),
    (['--run', 'setr_vit-b_mla_cityscapes_baseline={tmp}/empty', '--run',
      'setr_vit-b_mla_cityscapes_baseline={tmp}/empty'], 'is given twice'),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'file').write_text('')
    argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
    rc, out, err = _collect(argv + ['--out-dir', str(tmp_path / 'out')], capsys)
    assert rc == 2 and out == '' and err.count('\n') == 1, err
    assert err.startswith('error: ') and message.replace('{tmp}', str(tmp_path)) in err, err
    assert not (tmp_path / 'out').exists()


def test_shim_runs_the_tool(tmp_path):
    res = subprocess.run([sys.executable, 'tools/collect_table.py', '--work-dirs',
                          str(tmp_path / 'nope')], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: --work-dirs '{tmp_path / 'nope'}' does not exist")


def _one_run(tmp_path, name='setr_vit-b_mla_cityscapes_baseline'):
    wd = str(tmp_path / 'root' / name)
    os.makedirs(wd)
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    write_train_run(wd, '20260101_000000', cfg, [(2, _metrics(1)), (4, _metrics(2))])
    return wd


def test_unreadable_parts_are_reported_not_guessed(tmp_path, capsys):
    """A line in another encoding is skipped and counted; a config that does not execute
    leaves the run unchecked, with a warning, rather than stopping the table."""
    wd = _one_run(tmp_path)
    vis = osp.join(wd, '20260101_000000', 'vis_data')
    with open(osp.join(vis, 'scalars.json'), 'ab') as f:
        f.write('{"aAcc": 1.0, "mIoU": 2.0, "mAcc": 3.0, "step": 9, "x": "é"}\n'
                .encode('latin-1'))
    with open(osp.join(vis, 'config.py'), 'w') as f:
        f.write('model = dict(\n')
    rc, out, err = _collect(['--work-dirs', str(tmp_path / 'root'), '--out-dir',
                             str(tmp_path / 'out')], capsys)
    assert rc == 0, err
    with open(tmp_path / 'out' / 'table1_fullsize.json') as f:
        cell = json.load(f)['backbones']['vit-b']['mla']['baseline']
    assert {m: cell[m] for m in C.METRICS} == _metrics(2)
    assert (cell['iteration'], cell['skipped_lines'], cell['max_iters']) == (4, 1, None)
    assert f'warning: setr_vit-b_mla_cityscapes_baseline: cannot read {vis}' in err
    assert "decoder, setting and schedule are unchecked" in out


def test_unwritable_out_dir(tmp_path, capsys):
    _one_run(tmp_path)
    (tmp_path / 'taken').write_text('')
    rc, out, err = _collect(['--work-dirs', str(tmp_path / 'root'), '--out-dir',
                             str(tmp_path / 'taken')], capsys)
    assert rc == 1 and out == ''
    assert err.splitlines()[-1].startswith(
        f"error: cannot write the table to --out-dir '{tmp_path / 'taken'}'")
    assert (tmp_path / 'taken').read_text() == ''
