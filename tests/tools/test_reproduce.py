"""The miniature Table I experiment (tools/analysis/reproduce_table.py, run as
tools/reproduce_table.py).

Runs the real pipeline (per-seed data and pre-training, mmengine Runner fine-tunes with
full and frozen backbones, IoUMetric on val and test, paired statistics) in the driver's
``--quick`` sizes, for the Naive decoder: every stage, every cell, two seeds.
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

from ppenc.keys import SecretKey

from conftest import REPO

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import reproduce_table as R  # noqa: E402
from analysis import textures_v2  # noqa: E402
from analysis.finetune import check_backbone_init  # noqa: E402
from analysis.pretrain import load_backbone_config  # noqa: E402


def _quick(out_dir, key_dir, **kw):
    cfg = dict(R.ExperimentConfig.QUICK, decoders=['naive'], frozen_decoders=['naive'])
    cfg.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return R.run_experiment(R.ExperimentConfig(out_dir=str(out_dir),
                                                   key_dir=str(key_dir), **cfg),
                                log=lambda msg: None)


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('table1_a')
    keys = tmp_path_factory.mktemp('table1_keys')
    return out, keys, _quick(out, keys)


def _ckpt(out, seed=0):
    return osp.join(out, f'pretrained_tiny_vit_seed{seed}.pth')


def test_json_fields(quick_run):
    """table1.json: decoders -> decoder -> cell -> {miou per seed, mean, std, test};
    frozen the same; paired differences, TOST, frozen probe; seconds, seeds; plan.json
    with the margin."""
    out, _, result = quick_run
    seeds = list(R.ExperimentConfig.QUICK['seeds'])
    for name in ['table1.md', 'table1.json', 'table1.png', 'plan.json'] + [
            f'pretrained_tiny_vit_seed{s}.pth' for s in seeds]:
        assert osp.isfile(osp.join(out, name)), name
    with open(osp.join(out, 'table1.json')) as f:
        saved = json.load(f)
    with open(osp.join(out, 'plan.json')) as f:
        plan = json.load(f)
    assert plan['tost'] == dict(plan['tost'], margin=3.0, alpha=0.05)
    assert saved['seeds'] == seeds
    assert saved['seconds'] > 0
    for grid in ('decoders', 'frozen'):
        assert set(saved[grid]) == {'naive'}, grid
        assert set(saved[grid]['naive']) == set(R.CELLS), grid
        for cell, res in saved[grid]['naive'].items():
            assert len(res['miou']) == len(seeds)
            assert [r['seed'] for r in res['runs']] == seeds
            assert res['miou'] == [r['mIoU'] for r in res['runs']]
            assert res['test']['miou'] == [r['test']['mIoU'] for r in res['runs']]
            assert all(0.0 <= v <= 100.0 for v in res['miou'] + res['test']['miou'])
            assert res['mean'] == pytest.approx(np.mean(res['miou']), abs=0.006)
            assert res['std'] == pytest.approx(np.std(res['miou'], ddof=1), abs=0.006)
            assert res['test']['mean'] == pytest.approx(np.mean(res['test']['miou']),
                                                        abs=0.006)
            # Each seed ran with its own key.
            assert [r['key_fingerprint'] for r in res['runs']] == [
                saved['key_fingerprints'][str(s)] for s in seeds]
        for name, pa in saved['paired'][grid]['naive'].items():
            a, b = name.split('-')
            expected = np.subtract(saved[grid]['naive'][a]['test']['miou'],
                                   saved[grid]['naive'][b]['test']['miou'])
            assert pa['diffs'] == pytest.approx(expected.tolist())
            assert pa['ci95'][0] <= pa['mean'] <= pa['ci95'][1]
        assert saved['tost'][grid]['naive']['margin'] == 3.0
    assert saved['tost']['margin'] == 3.0 and saved['tost']['split'] == 'test'
    probe = saved['frozen_before_finetune']['naive']
    assert probe['miou'] == saved['frozen']['naive']['baseline']['test']['miou']
    assert len(set(saved['key_fingerprints'].values())) == len(seeds)
    assert saved['settings']['key_dir'] is None  # paths of keys are not recorded
    assert saved['label_dependence']['h_ft_given_pt'] > 1.5
    # An mmseg-layout backbone checkpoint: what init_cfg=Pretrained loads.
    ckpt = torch.load(_ckpt(out), weights_only=True)
    assert {'patch_embed.projection.weight', 'pos_embed', 'cls_token'} <= set(
        ckpt['state_dict'])
    with open(osp.join(out, 'table1.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_seeds_are_independent(quick_run):
    """Each seed has its own images (train, val and test), its own pre-training run and
    its own key."""
    from PIL import Image
    out, _, result = quick_run
    q = R.ExperimentConfig.QUICK
    roots = [osp.join(out, 'data', f'seed{s}_{q["num_train"]}x{q["num_val"]}x'
                      f'{q["num_test"]}_64x128') for s in q['seeds']]
    for split in ('train', 'val', 'test'):
        a, b = (np.asarray(Image.open(osp.join(r, 'img_dir', split, '00000.png')))
                for r in roots)
        assert not np.array_equal(a, b), split
    wa, wb = (torch.load(_ckpt(out, s), weights_only=True)['state_dict']
              for s in q['seeds'])
    assert not torch.equal(wa['patch_embed.projection.weight'],
                           wb['patch_embed.projection.weight'])
    per_seed = result['pretrain']['per_seed']
    assert set(per_seed) == {str(s) for s in q['seeds']}
    assert len(set(result['key_fingerprints'].values())) == len(q['seeds'])


def test_pretraining_adaptation_is_exact(quick_run):
    """The adapted weights solve the pre-training task on encrypted mosaics exactly as
    the plain ones do on plain mosaics.

    Computed here, apart from the driver: the saved pre-trained backbone on plain mosaics
    and its adaptation to each seed's key on the same mosaics encrypted give the same
    tokens up to float32 rounding (the plain weights on encrypted mosaics do not), so the
    reported held-out accuracies are equal, not merely close.
    """
    from mmseg.registry import MODELS

    from mmseg_ppenc.adaptation import encrypt_vit_state_dict
    from ppenc.cipher import encrypt_image
    out, keys, result = quick_run
    pre = result['pretrain']
    for p in pre['per_seed'].values():
        assert p['heldout_orientation_acc_encrypted_adapted_weights'] == \
            p['heldout_orientation_acc'], p
    backbone_cfg, pre_cfg = load_backbone_config()
    mean, std = (np.asarray(pre_cfg[k], np.float32) for k in ('mean', 'std'))

    def tokens(weights, imgs):
        model = MODELS.build(dict(backbone_cfg, init_cfg=None))
        model.load_state_dict(weights)
        model.eval()  # mmseg's VisionTransformer.train() returns None: no chaining
        x = torch.from_numpy((imgs.astype(np.float32) - mean) / std).permute(0, 3, 1, 2)
        with torch.no_grad():
            return model(x.contiguous())[-1]

    imgs = textures_v2.sample_pretrain_images(np.random.default_rng(11), 4, (64, 64))[0]
    for seed in result['seeds']:
        state = torch.load(_ckpt(out, seed), weights_only=True)['state_dict']
        plain = tokens(state, imgs)
        scale = float(plain.abs().max())
        key = SecretKey.load(osp.join(keys, f'table1_seed{seed}.key'))
        enc = np.stack([encrypt_image(im, key, 16) for im in imgs.astype(np.uint8)])
        adapted = tokens(encrypt_vit_state_dict(state, key, mean, std, prefix=''), enc)
        assert float((adapted - plain).abs().max()) <= 1e-5 * scale, seed
        assert float((tokens(state, enc) - plain).abs().max()) > 0.1 * scale, seed


def test_frozen_proposed_equals_frozen_baseline(quick_run):
    """With the backbone frozen, proposed on encrypted images computes what baseline
    computes on plain images at every step: same losses, same metrics."""
    _, _, result = quick_run
    base, prop = (result['frozen']['naive'][c] for c in ('baseline', 'proposed'))
    for rb, rp in zip(base['runs'], prop['runs']):
        for (ib, lb), (ip, lp) in zip(rb['loss_curve'], rp['loss_curve']):
            assert ib == ip and lp == pytest.approx(lb, rel=1e-3), (rb['seed'], ib)
        assert rb['mIoU'] == pytest.approx(rp['mIoU'], abs=0.05)


def test_frozen_runs_keep_the_backbone(quick_run):
    """The frozen grid's checkpoints hold the initial backbone; the full grid's do not."""
    out, _, _ = quick_run
    plain = torch.load(_ckpt(out), weights_only=True)['state_dict']

    def backbone_of(grid):
        path, = [osp.join(d, f) for d, _, fs in os.walk(
            osp.join(out, 'runs', grid, 'seed0', 'naive_baseline')) for f in fs
            if f.endswith('.pth')]
        state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
        return {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}

    frozen, full = backbone_of('frozen'), backbone_of('decoders')
    key = 'patch_embed.projection.weight'
    assert torch.equal(frozen[key], plain[key])
    assert not torch.equal(full[key], plain[key])


def test_markdown(quick_run):
    """table1.md holds the statistics of the per-seed test results in table1.json,
    computed here: means, sample std, paired differences with their t-interval."""
    from scipy.stats import t
    out, _, _ = quick_run
    lines = open(osp.join(out, 'table1.md'), encoding='utf-8').read().splitlines()
    with open(osp.join(out, 'table1.json')) as f:
        saved = json.load(f)
    cells = ('baseline', 'conventional2', 'proposed', 'scratch')
    header = '| decoder | baseline | conventional 2 | proposed | scratch (no pre-training) |'
    starts = [i for i, line in enumerate(lines) if line == header]
    assert len(starts) == 3  # full fine-tuning and frozen backbone (test), val
    for grid, start, split in zip(('decoders', 'frozen', 'decoders'), starts,
                                  ('test', 'test', 'val')):
        runs = {c: saved[grid]['naive'][c]['runs'] for c in cells}
        miou = {c: [(r['test'] if split == 'test' else r)['mIoU'] for r in runs[c]]
                for c in cells}
        assert lines[start + 1:start + 3] == [
            '|---|---|---|---|---|',
            '| Naive | ' + ' | '.join(f'{np.mean(miou[c]):.2f} ± '
                                     f'{np.std(miou[c], ddof=1):.2f}' for c in cells) + ' |']
        if split == 'val':
            continue
        title = 'full' if grid == 'decoders' else 'frozen'
        for a, b in (('proposed', 'baseline'), ('conventional2', 'baseline'),
                     ('baseline', 'scratch')):
            d = np.subtract(miou[a], miou[b])
            half = t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
            row = [line for line in lines if line.startswith(f'| {title} | Naive | ') and
                   line.split(' | ')[2].startswith(R.TITLES.get(a, a)[:8]) and
                   ', '.join(f'{x:+.2f}' for x in d) in line]
            assert len(row) == 1, (grid, a, b)
            assert (f'| {d.mean():+.2f} | [{d.mean() - half:+.2f}, '
                    f'{d.mean() + half:+.2f}] |') in row[0], row[0]
    # The paper's layout: aAcc / mIoU / mAcc test means of the full fine-tuning grid.
    full = saved['decoders']['naive']
    means = [' / '.join(f'{np.mean([r["test"][m] for r in full[c]["runs"]]):.2f}'
                        for m in ('aAcc', 'mIoU', 'mAcc')) for c in cells[:3]]
    assert '| tiny ViT | Naive | ' + ' | '.join(means) + ' |' in lines
    assert '| ViT-B | Naive | 93.79 / 68.14 / 78.39 | 88.78 / 40.59 / 49.94 | ' \
           '94.52 / 70.64 / 80.80 |' in lines
    assert not [line for line in lines if line.startswith(('| ViT-B | MLA', '| ViT-B | PUP'))]


@pytest.mark.parametrize('a,b,exceeds', [
    ((50.0, 1.0), (40.0, 2.0), True),    # 10 apart, spread 3
    ((50.0, 4.0), (45.0, 2.0), False),   # 5 apart, spread 6
    ((40.0, 0.0), (40.5, 0.0), True),    # no spread at all: any difference exceeds it
])
def test_compare_against_seed_spread(a, b, exceeds):
    c = R.compare(dict(mean=a[0], std=a[1]), dict(mean=b[0], std=b[1]))
    assert c['delta'] == pytest.approx(a[0] - b[0])
    assert c['spread'] == pytest.approx(a[1] + b[1])
    assert c['exceeds'] is exceeds


def test_summarise_statistics():
    runs = [dict(seed=s, mIoU=m, aAcc=m + 10, mAcc=m + 5) for s, m in
            enumerate([40.0, 44.0, 48.0])]
    s = R.summarise(runs)
    assert s['miou'] == [40.0, 44.0, 48.0] and s['mean'] == 44.0 and s['std'] == 4.0
    assert s['aacc_mean'] == 54.0 and s['macc_std'] == 4.0
    assert R.summarise(runs[:1])['std'] == 0.0


def test_key_is_never_written(quick_run):
    """Only fingerprints reach the outputs (JSON, markdown, run dirs, checkpoints)."""
    from ppenc.leak_scan import find_key_material
    out, keys, result = quick_run
    for seed in result['seeds']:
        key = SecretKey.load(osp.join(keys, f'table1_seed{seed}.key'))
        assert result['key_fingerprints'][str(seed)] == key.fingerprint
        assert find_key_material([str(out)], key) == []


def test_keys_are_private_and_reused(tmp_path):
    first = R.prepare_keys(str(tmp_path), [0, 3], lambda m: None)
    for path, _ in first.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = R.prepare_keys(str(tmp_path), [3, 0], lambda m: None)
    assert again == first
    assert first[0][1] != first[3][1]


def test_pretrained_weights_reach_every_setting(quick_run):
    """Proposed starts from the same function as baseline; conventional 2 does not.

    Right after init_weights() (no fine-tuning), the proposed model on encrypted images
    and the baseline model on plain images give the same logits up to float32 rounding,
    hence the same predictions, because the adaptation of the pre-trained weights is
    exact; conventional 2 feeds encrypted images to the plain weights.
    """
    out, keys, _ = quick_run
    q = R.ExperimentConfig.QUICK
    data_root = osp.join(out, 'data', f'seed0_{q["num_train"]}x{q["num_val"]}x'
                         f'{q["num_test"]}_64x128')
    ckpt = _ckpt(out)
    key_file = osp.join(keys, 'table1_seed0.key')
    at_init = {}
    for setting in R.SETTINGS:
        cfg = R.make_finetune_config('mla', setting, data_root=data_root, pretrained=ckpt,
                                     work_dir=str(out / 'init' / setting), iters=1, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            at_init[setting] = R.evaluate_at_init(cfg, key_file, keep_logits=True)
    base, conv, prop = (at_init[s] for s in R.SETTINGS)
    assert len(base['preds']) == q['num_val']
    for lb, lp in zip(base['logits'], prop['logits']):
        scale = np.abs(lb).max()
        assert np.abs(lb - lp).max() <= 1e-4 * scale, np.abs(lb - lp).max() / scale
    for pb, pp in zip(base['preds'], prop['preds']):
        np.testing.assert_array_equal(pb, pp)
    assert base['metrics'] == prop['metrics']
    # Conventional 2 computes another function: its logits move by far more than the
    # rounding that separates proposed from baseline (with a briefly pre-trained
    # backbone and a fresh decoder the arg-max may still agree).
    moved = max(float(np.abs(lb - lc).max() / np.abs(lb).max())
                for lb, lc in zip(base['logits'], conv['logits']))
    assert moved > 1e-2, moved


@pytest.mark.parametrize('field,value,message', [
    ('decoders', ['mla', 'fcn'], 'decoders must be distinct values among'),
    ('cells', ['baseline', 'baseline'], 'cells must be distinct values among'),
    ('seeds', [0, 0], r'seeds must be distinct non-negative integers, got \[0, 0\]'),
    ('seeds', [-1], 'seeds must be distinct non-negative integers'),
    ('iters', 0, 'iters must be >= 1, got 0'),
    ('height', 72, 'height must be a multiple of 16 and at least 64'),
    ('width', 48, 'width must be a multiple of 16 and at least 64'),
])
def test_bad_settings_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        R.ExperimentConfig(**{field: value}).validate()


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
    """Flags map onto ExperimentConfig: defaults, --quick, explicit flags over --quick."""
    default = R.ExperimentConfig()
    exp = R.config_from_args(R.parse_args([]))
    assert (exp.out_dir, exp.iters, exp.pretrain_iters, exp.num_train, exp.num_val,
            tuple(exp.seeds), exp.frozen) == (
        'work_dirs/table1', default.iters, default.pretrain_iters, default.num_train,
        default.num_val, tuple(default.seeds), True)
    assert list(exp.decoders) == list(R.DECODERS) and list(exp.cells) == list(R.CELLS)
    quick = R.config_from_args(R.parse_args(['--quick']))
    for name, value in R.ExperimentConfig.QUICK.items():
        assert getattr(quick, name) == value, name
    mixed = R.config_from_args(R.parse_args(
        ['--quick', '--iters', '5', '--seeds', '3', '4', '--decoders', 'pup', '--cells',
         'proposed', 'baseline', '--no-frozen', '--key-dir', 'k']))
    assert (mixed.iters, list(mixed.seeds), mixed.decoders, mixed.cells, mixed.frozen,
            mixed.key_dir, mixed.num_train) == (
        5, [3, 4], ['pup'], ['proposed', 'baseline'], False, 'k',
        R.ExperimentConfig.QUICK['num_train'])
    with pytest.raises(SystemExit):
        R.parse_args(['--decoders', 'fcn'])


@pytest.mark.slow
def test_same_seed_same_metrics(quick_run, tmp_path):
    """A second run with the same seed (and key) reproduces every metric and loss of the
    first: pre-training, and the fine-tunes of two cells (a subset, to keep it short)."""
    out, keys, first = quick_run
    seed = R.ExperimentConfig.QUICK['seeds'][0]
    cells = ['proposed', 'scratch']
    second = _quick(tmp_path / 'b', keys, seeds=(seed,), cells=cells, frozen=False)
    assert second['pretrain']['per_seed'][str(seed)]['final_loss'] == \
        first['pretrain']['per_seed'][str(seed)]['final_loss']
    a = torch.load(_ckpt(out, seed), weights_only=True)
    b = torch.load(_ckpt(tmp_path / 'b', seed), weights_only=True)
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    for cell in cells:
        ra = first['decoders']['naive'][cell]['runs'][0]
        rb = second['decoders']['naive'][cell]['runs'][0]
        assert ra['seed'] == rb['seed'] == seed
        assert (ra['mIoU'], ra['loss_curve']) == (rb['mIoU'], rb['loss_curve']), cell


def test_silently_skipped_pretrained_weights_are_caught():
    """mmseg loads init_cfg checkpoints with strict=False; the run checks what arrived."""
    from types import SimpleNamespace
    backbone = torch.nn.Linear(2, 2)
    runner = SimpleNamespace(model=SimpleNamespace(backbone=backbone))
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    check_backbone_init(runner, state, 'run')  # the same weights: accepted
    with pytest.raises(RuntimeError, match=r"missing \['pos_embed'\]"):
        check_backbone_init(runner, dict(state, pos_embed=torch.zeros(1)), 'run')
    with pytest.raises(RuntimeError, match=r"different \['weight'\]"):
        check_backbone_init(runner, dict(state, weight=state['weight'] + 1), 'run')


def test_committed_table_is_one_consistent_default_run():
    """docs/table1.json is a default run with the promised fields (test figures, paired
    differences with 95 % intervals, the TOST at the margin fixed beforehand, the frozen
    probe); docs/table1.md and the README quote it."""
    with open(osp.join(REPO, 'docs', 'table1.json')) as f:
        saved = json.load(f)
    default = R.ExperimentConfig()
    s = saved['settings']
    assert saved['seeds'] == list(default.seeds)
    for name in ('iters', 'pretrain_iters', 'num_train', 'num_val', 'num_test',
                 'tost_margin', 'alpha'):
        assert s[name] == getattr(default, name), name
    assert s['tost'] == dict(s['tost'], margin=3.0, alpha=0.05)
    assert 0 < saved['seconds'] <= 45 * 60
    assert len(set(saved['key_fingerprints'].values())) == len(saved['seeds'])
    assert set(saved['pretrain']['per_seed']) == {str(x) for x in saved['seeds']}
    assert saved['label_dependence']['h_ft_given_pt'] > 1.5
    doc = open(osp.join(REPO, 'docs', 'table1.md'), encoding='utf-8').read()
    readme = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    assert set(saved['decoders']) == set(R.DECODERS)
    assert set(saved['frozen']) == set(default.frozen_decoders)
    for grid in ('decoders', 'frozen'):
        for d, row in saved[grid].items():
            assert set(row) == set(R.CELLS)
            for cell in row.values():
                for part in (cell, cell['test']):
                    assert len(part['miou']) == len(saved['seeds'])
                    assert part['mean'] == pytest.approx(np.mean(part['miou']), abs=0.006)
                    assert part['std'] == pytest.approx(np.std(part['miou'], ddof=1),
                                                        abs=0.006)
            line = f'| {R.TITLES[d]} | ' + ' | '.join(
                f'{row[c]["test"]["mean"]:.2f} ± {row[c]["test"]["std"]:.2f}'
                for c in R.CELLS) + ' |'
            assert line in doc, (grid, line)
            t = saved['tost'][grid][d]
            assert t['margin'] == 3.0
            for name, pa in saved['paired'][grid][d].items():
                assert len(pa['diffs']) == len(saved['seeds']) and len(pa['ci95']) == 2
                assert pa['verdict'] in ('equivalent', 'worse', 'better', 'not shown')
    for d, row in saved['decoders'].items():
        for c in R.SETTINGS:
            assert f'{row[c]["test"]["mean"]:.2f} ± {row[c]["test"]["std"]:.2f}' in readme
        pa = saved['paired']['decoders'][d]['proposed-baseline']
        assert (f'{pa["mean"]:+.2f} [{pa["ci95"][0]:+.2f}, {pa["ci95"][1]:+.2f}], '
                f'{pa["verdict"]}') in readme, d
    probe = saved['frozen_before_finetune']
    assert set(probe) == set(default.frozen_decoders)
    for d, p in probe.items():
        assert f'{p["mean"]:.2f} ± {p["std"]:.2f}' in readme, d
