"""End to end: the tools train, evaluate, resume and protect the key with the real Runner."""
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ppenc.synthetic import make_synthetic_cityscapes
from ppenc.leak_scan import find_key_material
from ppenc.keys import SecretKey

from conftest import REPO, tiny_config

ITERS = 160
SHORT = ['--cfg-options', f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
         f'param_scheduler.0.end={ITERS}', f'default_hooks.checkpoint.interval={ITERS // 2}',
         'default_hooks.logger.interval=20']


def run_tool(args, env, check=True, cwd=REPO):
    res = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f'{args} failed ({res.returncode}):\n{res.stderr[-3000:]}')
    return res


def scalars(work_dir):
    """Every record of the run's scalars.json (the newest run in work_dir)."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    with open(files[-1]) as f:
        return [json.loads(line) for line in f]


def val_metrics(work_dir):
    return [r for r in scalars(work_dir) if 'mIoU' in r][-1]


@pytest.fixture(scope='module')
def data_and_key(tmp_path_factory):
    root = tmp_path_factory.mktemp('train_data')
    make_synthetic_cityscapes(root, num_train=24, num_val=6, height=64, width=128, seed=1,
                              overwrite=True)
    key_file = str(tmp_path_factory.mktemp('keys') / 'train.key')
    SecretKey.generate().save(key_file)
    env = dict(os.environ, PPENC_KEY_FILE=key_file, PPENC_DATA_ROOT=str(root) + os.sep,
               PYTHONWARNINGS='ignore')
    return str(root), key_file, env


@pytest.fixture(scope='module', params=['baseline', 'proposed'])
def trained(request, data_and_key, tmp_path_factory):
    setting = request.param
    root, key_file, env = data_and_key
    work_dir = str(tmp_path_factory.mktemp(f'wd_{setting}'))
    run_tool(['tools/train.py', tiny_config('mla', setting), '--work-dir', work_dir] + SHORT,
             env)
    return setting, work_dir, env, key_file, root


def _trivial_scores(root):
    """aAcc and mIoU of predicting the most frequent train class everywhere."""
    def labels(split):
        files = glob.glob(osp.join(root, 'gtFine', split, '*', '*_labelTrainIds.png'))
        return np.concatenate([np.asarray(Image.open(f)).ravel() for f in files])
    train, val = labels('train'), labels('val')
    majority = np.bincount(train[train != 255], minlength=19).argmax()
    val = val[val != 255]
    acc = (val == majority).mean() * 100
    present = np.unique(val)
    return acc, acc / len(present)  # IoU of the majority class <= its accuracy


def test_trains_evaluates_and_beats_trivial(trained):
    setting, work_dir, env, key_file, root = trained
    m = val_metrics(work_dir)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(m)
    triv_acc, triv_miou = _trivial_scores(root)
    assert m['aAcc'] > triv_acc + 20, (m, triv_acc)
    assert m['mIoU'] > 3 * triv_miou, (m, triv_miou)
    assert osp.isfile(osp.join(work_dir, f'iter_{ITERS}.pth'))


def test_resume(trained):
    setting, work_dir, env, key_file, root = trained
    res = run_tool(['tools/train.py', tiny_config('mla', setting), '--work-dir', work_dir,
                    '--resume'] + SHORT[:1] + [f'train_cfg.max_iters={ITERS + 20}',
                                               f'train_cfg.val_interval={ITERS + 20}',
                                               'default_hooks.logger.interval=10'], env)
    log = res.stdout + res.stderr
    assert f'resumed epoch: 0, iter: {ITERS}' in log
    assert osp.isfile(osp.join(work_dir, f'iter_{ITERS + 20}.pth'))
    iters = [r['iter'] for r in scalars(work_dir) if 'loss' in r]
    assert min(iters) > ITERS  # continued, not restarted


def val_metrics_at(work_dir, iteration):
    """The validation metrics logged at ``iteration`` (by any run in work_dir)."""
    found = [r for f in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                                  'scalars.json')))
             for r in map(json.loads, open(f)) if 'mIoU' in r and r.get('step') == iteration]
    assert found, f'no validation at iteration {iteration} in {work_dir}'
    return found[0]


def printed_test_results(text):
    """``{'aAcc': .., 'mIoU': .., 'mAcc': ..}`` from the tool's 'Test results:' line."""
    lines = [ln for ln in text.splitlines() if ln.startswith('Test results: ')]
    assert len(lines) == 1, text[-2000:]
    pairs = (item.split('=') for item in lines[0][len('Test results: '):].split())
    return {k: float(v) for k, v in pairs}


def test_test_tool_reproduces_validation(trained, tmp_path):
    """tools/test.py on the iteration-ITERS checkpoint prints the metrics that the
    validation of the training run logged at that iteration (same data, same weights)."""
    setting, work_dir, env, key_file, root = trained
    ckpt = osp.join(work_dir, f'iter_{ITERS}.pth')
    res = run_tool(['tools/test.py', tiny_config('mla', setting), ckpt, '--work-dir',
                    str(tmp_path)], env)
    printed = printed_test_results(res.stdout)
    val = val_metrics_at(work_dir, ITERS)
    assert set(printed) == {'aAcc', 'mIoU', 'mAcc'}
    for name, value in printed.items():
        # IoUMetric rounds to two decimals and the tool prints two: equal up to rounding.
        assert value == pytest.approx(val[name], abs=0.006), (name, printed, val)
    # torch's default weights_only=True loads the Runner's checkpoint (compat layer)
    ck = torch.load(ckpt, map_location='cpu')
    assert 'message_hub' in ck and 'state_dict' in ck


def test_key_handling(trained, tmp_path):
    setting, work_dir, env, key_file, root = trained
    key = SecretKey.load(key_file)
    ckpt = osp.join(work_dir, f'iter_{ITERS}.pth')
    meta = torch.load(ckpt, map_location='cpu')['meta']
    if setting == 'proposed':
        assert meta['ppenc']['key_fingerprint'] == key.fingerprint
        assert meta['ppenc']['block_size'] == 16
        other = str(tmp_path / 'other.key')
        SecretKey.generate().save(other)
        res = run_tool(['tools/test.py', tiny_config('mla', setting), ckpt, '--work-dir',
                        str(tmp_path / 'wd')], dict(env, PPENC_KEY_FILE=other), check=False)
        assert res.returncode != 0
        assert 'fingerprint mismatch' in res.stderr and key.fingerprint in res.stderr
        resumed = str(tmp_path / 'resume_wd')
        shutil.copytree(work_dir, resumed)
        res = run_tool(['tools/train.py', tiny_config('mla', setting), '--work-dir', resumed,
                        '--resume'], dict(env, PPENC_KEY_FILE=other), check=False)
        assert res.returncode != 0 and 'fingerprint mismatch' in res.stderr
    else:
        assert 'ppenc' not in meta
    # Nothing in the work_dir (config dump, logs, checkpoints) holds key material.
    assert find_key_material([work_dir], key) == []
    assert osp.isfile(osp.join(work_dir, osp.basename(tiny_config('mla', setting))))


def test_clear_errors(data_and_key, tmp_path):
    root, key_file, env = data_and_key
    res = run_tool(['tools/train.py', tiny_config('mla', 'baseline'), '--work-dir',
                    str(tmp_path / 'a')], dict(env, PPENC_DATA_ROOT=str(tmp_path / 'none/')),
                   check=False)
    assert res.returncode != 0 and 'make_synthetic_cityscapes' in res.stderr
    assert 'Traceback' not in res.stderr
    res = run_tool(['tools/train.py', tiny_config('mla', 'proposed'), '--work-dir',
                    str(tmp_path / 'b')], dict(env, PPENC_KEY_FILE=str(tmp_path / 'no.key')),
                   check=False)
    assert res.returncode != 0 and 'tools/keygen.py' in res.stderr
    res = run_tool(['tools/train.py', tiny_config('mla', 'baseline'), '--work-dir',
                    str(tmp_path / 'c'), '--cfg-options',
                    "model.backbone.init_cfg.type=Pretrained",
                    'model.backbone.init_cfg.checkpoint=pretrain/missing.pth'], env,
                   check=False)
    assert res.returncode != 0 and 'pretrain/missing.pth' in res.stderr
    res = run_tool(['tools/test.py', tiny_config('mla', 'baseline'), 'nope.pth'], env,
                   check=False)
    assert res.returncode != 0 and "'nope.pth' does not exist" in res.stderr


def test_broken_environment_message(tmp_path):
    """A tool run outside the environment says how to set it up."""
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    (tmp_path / 'mmseg').mkdir()
    (tmp_path / 'mmseg' / '__init__.py').write_text('raise ImportError("broken mmseg")')
    res = run_tool(['tools/train.py', tiny_config('mla', 'baseline')], env, check=False)
    assert res.returncode != 0 and 'tools/setup_env.sh' in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize('setting', ['baseline', 'proposed'])
def test_mim_train(data_and_key, tmp_path, setting):
    root, key_file, env = data_and_key
    mim = osp.join(osp.dirname(sys.executable), 'mim')
    work_dir = str(tmp_path / 'mim')
    res = subprocess.run([mim, 'train', 'mmsegmentation', tiny_config('mla', setting),
                          '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=20',
                          'train_cfg.val_interval=20', 'default_hooks.logger.interval=10'],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert osp.isfile(osp.join(work_dir, 'iter_20.pth'))
    assert 'mIoU' in val_metrics(work_dir)
    assert find_key_material([work_dir], SecretKey.load(key_file)) == []


@pytest.mark.slow
@pytest.mark.parametrize('setting', ['baseline', 'proposed'])
def test_dist_train_two_cpu_processes(data_and_key, tmp_path, setting):
    root, key_file, env = data_and_key
    work_dir = str(tmp_path / 'dist')
    res = subprocess.run(['bash', 'tools/dist_train.sh', tiny_config('mla', setting), '2',
                          '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=20',
                          'train_cfg.val_interval=20', 'default_hooks.logger.interval=10',
                          'model.decode_head.norm_cfg.type=SyncBN'],
                         cwd=REPO, env=dict(env, PORT='29517', PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    run_log = open(glob.glob(osp.join(work_dir, '*', '*.log'))[0]).read()
    assert 'Distributed training: True' in run_log and 'GPU number: 2' in run_log
    assert osp.isfile(osp.join(work_dir, 'iter_20.pth'))
    assert 'mIoU' in val_metrics(work_dir)
    ck = torch.load(osp.join(work_dir, 'iter_20.pth'), map_location='cpu')
    if setting == 'proposed':
        assert ck['meta']['ppenc']['key_fingerprint'] == SecretKey.load(key_file).fingerprint
    # The head asked for SyncBN (see the command); without CUDA it ran with BN.
    assert 'replaced 1 SyncBN' in log
    dumped = open(osp.join(work_dir, osp.basename(tiny_config('mla', setting)))).read()
    assert 'SyncBN' not in dumped
