"""The security report is honest about runs from pre-trained weights: replaying the random
initialisation does not apply to them, the weight-matching attack does."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import MODELS

from mmseg_ppenc.security import weights as W

from conftest import load_tool, tiny_config

report = load_tool('analysis/security_report')


def _cfg_text(**changes):
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    for key, value in changes.items():
        *parents, name = key.split('.')
        node = cfg
        for p in parents:
            node = node[p]
        node[name] = value
    return cfg.pretty_text


@pytest.mark.parametrize('changes,expected', [
    ({}, None),
    ({'model.backbone.init_cfg': dict(type='Pretrained', checkpoint='pre/vit.pth')},
     'model.backbone.init_cfg.checkpoint=pre/vit.pth'),
    ({'model.backbone.init_cfg': [dict(type='Normal', layer='Linear'),
                                  dict(type='Pretrained', checkpoint='pre/vit.pth')]},
     'model.backbone.init_cfg.checkpoint=pre/vit.pth'),
    ({'model.backbone.pretrained': 'pre/vit.pth'}, 'model.backbone.pretrained=pre/vit.pth'),
    ({'load_from': 'enc/segmentor.pth'}, 'load_from=enc/segmentor.pth'),
    ({'load_from': 'work/iter_2.pth', 'resume': True}, None),  # its own earlier checkpoint
])
def test_pretrained_start_is_read_from_the_config(key_env, changes, expected):
    assert W.pretrained_start(_cfg_text(**changes)) == expected


@pytest.fixture(scope='module')
def pretrained_run(tmp_path_factory, session_key_file, synthetic_root):
    """One iteration of the proposed tiny config from (plain) pre-trained weights."""
    root = tmp_path_factory.mktemp('pretrained_run')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PPENC_KEY_FILE', session_key_file)
        mp.setenv('PPENC_DATA_ROOT', synthetic_root)
        cfg = Config.fromfile(tiny_config('mla', 'proposed'))
        torch.manual_seed(0)
        backbone = MODELS.build(dict(Config.fromfile(tiny_config('mla', 'baseline'))
                                     .model.backbone))
        backbone.init_weights()
        plain = str(root / 'plain_vit.pth')
        torch.save({'state_dict': backbone.state_dict()}, plain)
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=plain)
        cfg.work_dir = str(root / 'work')
        cfg.train_cfg.max_iters = 1
        cfg.train_cfg.val_interval = 1000
        cfg.default_hooks.checkpoint.interval = 1
        for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
            loader.num_workers = 0
            loader.persistent_workers = False
        cfg.train_dataloader.batch_size = 2
        Runner.from_cfg(cfg).train()
    return plain, cfg.work_dir


def test_replay_is_not_applicable_to_a_run_from_pretrained_weights(pretrained_run,
                                                                   session_key_file):
    plain, work = pretrained_run
    start = f'model.backbone.init_cfg.checkpoint={plain}'
    assert W.pretrained_start_of_work_dir(work) == start
    res = W.replay_attack_work_dir(work)
    assert res['applicable'] is False and res['pretrained'] == start
    assert res['max_recovery'] is None and res['at_chance'] is None


def test_report_points_to_weight_matching(pretrained_run, session_key_file, tmp_path,
                                         capsys, monkeypatch):
    plain, work = pretrained_run
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    out = tmp_path / 'security.json'
    base = ['--num-val', '2', '--num-pool', '2', '--size', '64', '128', '--coa-counts', '1',
            '--kpa-pairs', '1', '--no-vit-b', '--variants', 'shuffle', '--work-dir', work,
            '--key-file', session_key_file, '--out', str(out)]
    ckpt = osp.join(work, 'iter_1.pth')
    assert report.main(base + ['--plain-checkpoint', plain,
                               '--encrypted-checkpoint', ckpt]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    replay = res['key_handling']['work_dir']['replay_attack']
    assert replay['applicable'] is False and replay['max_recovery'] is None
    recovered = res['checkpoint_attack']['recovered']
    assert recovered > 0.9  # the public weights give the key away
    row = next(line for line in text.splitlines()
               if line.startswith('| key from checkpoints by replaying the initialisation'))
    assert 'not applicable: the run starts from pre-trained weights' in row
    assert f'({W.pretrained_start_of_work_dir(work)})' in row
    assert f'{100 * recovered:.1f} % of key ' in row and '--plain-checkpoint' in row
    assert 'chance' not in row
    # Without --plain-checkpoint the row gives section 4's figure and how to measure it.
    del res['checkpoint_attack']
    row = next(line for line in report.format_report(res).splitlines()
               if line.startswith('| key from checkpoints by replaying the initialisation'))
    assert 'not applicable' in row
    none = res['weights']['tiny']['rows'][0]
    assert none['mitigation'] == 'none'
    assert (f'{100 * none["recovered"]:.1f} % recovered without mitigation in section 4; '
            'measure this run with --plain-checkpoint PUBLIC_WEIGHTS') in row
