"""The miniature Table I experiment (tools/analysis/reproduce_table.py, run as
tools/reproduce_table.py).

Runs the real pipeline (pre-training, mmengine Runner fine-tunes, IoUMetric) at toy size:
8 train / 3 val images of 64x128, a few iterations, the MLA decoder, all three settings.
"""
import json
import os
import os.path as osp
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mmseg_ppenc.keys import SecretKey

from conftest import REPO, load_tool

R = load_tool('analysis/reproduce_table')

SMALL = dict(num_train=8, num_val=3, height=64, width=128, pretrain_iters=10,
             pretrain_pool=16, pretrain_batch_size=16, iters=6, log_interval=2,
             decoders=['mla'], scratch_reference=False)


def _run(out_dir, key_file, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return R.run_experiment(R.ExperimentConfig(out_dir=str(out_dir), seed=seed,
                                                   key_file=key_file, **SMALL),
                                log=lambda msg: None)


@pytest.fixture(scope='module')
def small_run(tmp_path_factory, session_key_file):
    out = tmp_path_factory.mktemp('table1_a')
    return out, _run(out, session_key_file)


def _metric_values(result):
    return {d: {s: {m: r[m] for m in ('aAcc', 'mIoU', 'mAcc', 'final_loss', 'loss_curve')}
                for s, r in row.items()} for d, row in result['results'].items()}


def test_outputs(small_run):
    out, result = small_run
    for name in ('table1.md', 'table1.json', 'table1.png', 'pretrained_tiny_vit.pth'):
        assert osp.isfile(osp.join(out, name)), name
    with open(osp.join(out, 'table1.json')) as f:
        saved = json.load(f)
    for setting in R.SETTINGS:
        res = saved['results']['mla'][setting]
        for m in ('aAcc', 'mIoU', 'mAcc'):
            assert isinstance(res[m], float) and 0.0 <= res[m] <= 100.0, (setting, m, res)
        logged = [it for it, _ in res['loss_curve']]
        step = SMALL['log_interval']
        assert set(range(step, SMALL['iters'] + 1, step)) <= set(logged), logged
    assert saved['settings']['seed'] == 0 and saved['settings']['iters'] == SMALL['iters']
    assert saved['settings']['key_file'] is None  # paths of keys are not recorded
    assert len(saved['key_fingerprint']) == 16
    assert saved['timings']['total_s'] > 0
    # An mmseg-layout backbone checkpoint: what init_cfg=Pretrained loads.
    ckpt = torch.load(osp.join(out, 'pretrained_tiny_vit.pth'), weights_only=True)
    assert {'patch_embed.projection.weight', 'pos_embed', 'cls_token'} <= set(
        ckpt['state_dict'])
    # The adaptation is exact, so the adapted weights solve the pre-training task on
    # encrypted crops exactly as the plain ones do on plain crops.
    pre = saved['pretrain']
    assert abs(pre['heldout_acc_encrypted_adapted_weights'] - pre['heldout_acc']) <= 0.01
    # The PNG is a real image (8-byte signature).
    with open(osp.join(out, 'table1.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_markdown_shape(small_run):
    out, result = small_run
    text = open(osp.join(out, 'table1.md')).read()
    lines = text.splitlines()
    start = lines.index('| backbone | decoder | baseline | conventional 2 | proposed |')
    rows = []
    for ln in lines[start:]:  # the first table ends at the first non-table line
        if not ln.startswith('|'):
            break
        rows.append(ln)
    assert rows[0] == '| backbone | decoder | baseline | conventional 2 | proposed |'
    assert set(rows[1].replace('|', '')) == {'-'}
    assert len(rows) == 2 + len(SMALL['decoders'])
    cells = [c.strip() for c in rows[2].strip('|').split('|')]
    assert cells[:2] == ['tiny ViT', 'MLA']
    for setting, cell in zip(R.SETTINGS, cells[2:]):
        r = result['results']['mla'][setting]
        assert cell == f'{r["aAcc"]:.2f} / {r["mIoU"]:.2f} / {r["mAcc"]:.2f}'


def test_key_is_never_written(small_run, session_key_file):
    """Only the fingerprint reaches the outputs (JSON, markdown, run dirs)."""
    from mmseg_ppenc.leak_scan import find_key_material
    out, result = small_run
    key = SecretKey.load(session_key_file)
    assert result['key_fingerprint'] == key.fingerprint
    assert find_key_material([str(out)], key) == []


def test_default_key_file_is_private_and_reused(tmp_path):
    path1, key1 = R.prepare_key(str(tmp_path), None, lambda m: None)
    assert stat.S_IMODE(os.stat(path1).st_mode) == 0o600
    path2, key2 = R.prepare_key(str(tmp_path), None, lambda m: None)
    assert path1 == path2 and key1 == key2


def test_pretrained_weights_reach_every_setting(small_run, session_key_file):
    """Proposed starts from the same function as baseline; conventional 2 does not.

    Right after init_weights() (no fine-tuning), the proposed model on encrypted images
    and the baseline model on plain images give the same logits up to float32 rounding,
    hence the same predictions, because the adaptation of the pre-trained weights is
    exact; conventional 2 feeds encrypted images to the plain weights.
    """
    out, _ = small_run
    data_root = osp.join(out, 'data', 'synthetic_s0_8x3_64x128')
    ckpt = osp.join(out, 'pretrained_tiny_vit.pth')
    at_init = {}
    for setting in R.SETTINGS:
        cfg = R.make_finetune_config('mla', setting, data_root=data_root, pretrained=ckpt,
                                     work_dir=str(out / 'init' / setting), iters=1, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            at_init[setting] = R.evaluate_at_init(cfg, session_key_file, keep_logits=True)
    base, conv, prop = (at_init[s] for s in R.SETTINGS)
    assert len(base['preds']) == SMALL['num_val']
    for lb, lp in zip(base['logits'], prop['logits']):
        scale = np.abs(lb).max()
        assert np.abs(lb - lp).max() <= 1e-4 * scale, np.abs(lb - lp).max() / scale
    for pb, pp in zip(base['preds'], prop['preds']):
        np.testing.assert_array_equal(pb, pp)
    assert base['metrics'] == prop['metrics']
    changed = np.mean(np.concatenate([(pb != pc).ravel() for pb, pc in
                                      zip(base['preds'], conv['preds'])]))
    assert changed > 0.05, changed


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match=r"decoders must be distinct values among"):
        R.ExperimentConfig(decoders=['mla', 'fcn']).validate()
    with pytest.raises(ValueError, match='iters must be >= 1, got 0'):
        R.ExperimentConfig(iters=0).validate()


def test_configs_come_from_the_repository():
    """The driver reads the checkout's configs, not a path relative to the package."""
    assert R.default_config_dir() == osp.join(REPO, 'configs', 'ppenc', 'tiny')
    assert R.tiny_config_path('pup', 'proposed') == osp.join(
        REPO, 'configs', 'ppenc', 'tiny', 'setr_tiny_pup_synthetic_proposed.py')
    with pytest.raises(FileNotFoundError, match='pass config_dir'):
        R.tiny_config_path('mla', 'proposed', config_dir=REPO)


def test_entry_point_forwards_to_the_driver(tmp_path):
    """``tools/reproduce_table.py`` runs the driver: a bad flag value is its error."""
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'reproduce_table.py'),
                           '--out-dir', str(tmp_path / 'out'), '--iters', '0'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == 'error: iters must be >= 1, got 0.'
    assert not (tmp_path / 'out').exists()


def test_tool_arguments():
    """The tool's flags map onto ExperimentConfig (parsed in-process: no mmseg start-up)."""
    tool = R
    args = tool.parse_args([])
    default = R.ExperimentConfig()
    assert (args.out_dir, args.iters, args.pretrain_iters, args.train, args.val) == (
        'work_dirs/table1', default.iters, default.pretrain_iters, default.num_train,
        default.num_val)
    assert args.decoders == list(R.DECODERS) and args.settings == list(R.SETTINGS)
    assert args.key_file is None and args.scratch
    args = tool.parse_args(['--out-dir', 'x', '--seed', '3', '--iters', '5',
                            '--pretrain-iters', '7', '--decoders', 'pup', '--settings',
                            'proposed', 'baseline', '--train', '4', '--val', '2',
                            '--key-file', 'k.key', '--no-scratch'])
    assert (args.out_dir, args.seed, args.iters, args.pretrain_iters, args.decoders,
            args.settings, args.train, args.val, args.key_file, args.scratch) == (
        'x', 3, 5, 7, ['pup'], ['proposed', 'baseline'], 4, 2, 'k.key', False)
    with pytest.raises(SystemExit):
        tool.parse_args(['--decoders', 'fcn'])


@pytest.mark.slow
def test_same_seed_same_metrics(small_run, session_key_file, tmp_path):
    """A second run with the same seed (and key) reproduces every metric and loss."""
    out, first = small_run
    second = _run(tmp_path / 'b', session_key_file)
    assert _metric_values(second) == _metric_values(first)
    for name in ('final_loss', 'heldout_acc', 'heldout_acc_encrypted_plain_weights'):
        assert second['pretrain'][name] == first['pretrain'][name]
    a = torch.load(osp.join(out, 'pretrained_tiny_vit.pth'), weights_only=True)
    b = torch.load(tmp_path / 'b' / 'pretrained_tiny_vit.pth', weights_only=True)
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])


def test_markdown_reference_table(small_run):
    """The no-pre-training reference is listed below the Table I-shaped table."""
    _, result = small_run
    result = json.loads(json.dumps(result))
    base = result['results']['mla']['baseline']
    result['reference'] = {'baseline_without_pretraining': {
        'mla': dict(aAcc=50.0, mIoU=base['mIoU'] - 1.5, mAcc=20.0)}}
    text = R.format_markdown(result)
    assert '| backbone | decoder | baseline, no pre-training | baseline minus it (mIoU) |' \
        in text
    assert f'| tiny ViT | MLA | 50.00 / {base["mIoU"] - 1.5:.2f} / 20.00 | +1.50 |' in text


def test_silently_skipped_pretrained_weights_are_caught():
    """mmseg loads init_cfg checkpoints with strict=False; the run checks what arrived."""
    from types import SimpleNamespace
    backbone = torch.nn.Linear(2, 2)
    runner = SimpleNamespace(model=SimpleNamespace(backbone=backbone))
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    R._check_backbone_init(runner, state, 'run')  # the same weights: accepted
    with pytest.raises(RuntimeError, match=r"missing \['pos_embed'\]"):
        R._check_backbone_init(runner, dict(state, pos_embed=torch.zeros(1)), 'run')
    with pytest.raises(RuntimeError, match=r"different \['weight'\]"):
        R._check_backbone_init(runner, dict(state, weight=state['weight'] + 1), 'run')
