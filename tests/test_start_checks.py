"""Start checks run before anything is written, on every entry point.

A config holding the key in any generated encoding, a work_dir named after the key, a
config holding bytes, a missing key file or a non-exact setting is refused by
``tools/train.py``, ``tools/test.py``, mmseg's own ``tools/train.py`` (what ``mim train``,
``dist_train.sh`` and the slurm launchers run), ``PPEncRunner.from_cfg`` and
``ppenc-check``; afterwards the work_dir does not exist and no file under the test's
folder holds key material.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from ppenc.errors import ConfigError, GridError, InvalidKeyError, KeyLeakError
from ppenc.keys import SecretKey
from ppenc.leak_scan import find_key_material
from mmseg_ppenc.start_checks import check_before_start, start_problems

from conftest import tiny_config
from key_encodings import key_encodings

PROPOSED = tiny_config('mla', 'proposed')
# A spread of classes: separators, base-N at an offset, integers in other bases, strides.
FORMS = ['hex with separators', 'base85', 'one big integer', 'numpy repr in a string',
         'hex, reversed string', 'interleaved fields, decimal', 'permutation, chunk of 7',
         'base64 at an offset', 'bit string', 'numpy int8 repr']


def _write_config(tmp_path, body: str) -> str:
    path = tmp_path / 'user_config.py'
    path.write_text(f'_base_ = {PROPOSED!r}\n' + body)
    return str(path)


def _key_config(tmp_path, key, form: str) -> str:
    text = key_encodings(key, seed=7)[form]
    return _write_config(tmp_path, f'notes = {text!r}\n')


def _nothing_written(tmp_path, key, work_dir) -> None:
    assert not osp.exists(work_dir)
    leaked = [p for p in find_key_material([str(tmp_path)], key)
              if osp.basename(p) != 'user_config.py']
    assert leaked == []
    # Nothing but the user's own config (and a checkpoint the test made) is in the folder.
    made = {f for _, _, fs in os.walk(tmp_path) for f in fs}
    assert made <= {'user_config.py', 'ckpt.pth'}


def _train(cfg_path, work_dir, options=()):
    from mmseg_ppenc.cli.train import main
    args = [cfg_path, '--work-dir', work_dir]
    return main(args + (['--cfg-options', *options] if options else []))


def _test(cfg_path, work_dir, options=()):
    from mmseg_ppenc.cli.test import main
    ckpt = osp.join(osp.dirname(cfg_path), 'ckpt.pth')
    torch.save({'state_dict': {}}, ckpt)  # never read: the run is refused first
    args = [cfg_path, ckpt, '--work-dir', work_dir]
    return main(args + (['--cfg-options', *options] if options else []))


def _check(cfg_path, work_dir, options=()):
    from mmseg_ppenc.cli.check_config import main
    args = [cfg_path, '--work-dir', work_dir]
    return main(args + (['--cfg-options', *options] if options else []))


ENTRY_POINTS = {'tools/train.py': _train, 'tools/test.py': _test, 'ppenc-check': _check}


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
@pytest.mark.parametrize('form', FORMS)
def test_key_in_config_refused_before_writing(key_env, tmp_path, monkeypatch, capsys, entry,
                                              form):
    monkeypatch.chdir(tmp_path)
    cfg_path = _key_config(tmp_path, key_env, form)
    work_dir = str(tmp_path / 'work_dirs' / 'run')
    assert ENTRY_POINTS[entry](cfg_path, work_dir) == 2
    err = capsys.readouterr().err
    assert 'Key material' in err and key_env.fingerprint in err
    _nothing_written(tmp_path, key_env, work_dir)


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
def test_key_derived_work_dir_refused_before_it_exists(key_env, tmp_path, monkeypatch,
                                                       capsys, entry):
    monkeypatch.chdir(tmp_path)
    cfg_path = _write_config(tmp_path, '')
    work_dir = str(tmp_path / f'run_{key_env._key[:12].hex()}')
    assert ENTRY_POINTS[entry](cfg_path, work_dir) == 2
    assert 'the work_dir path' in capsys.readouterr().err
    assert os.listdir(tmp_path) == ['user_config.py'] or \
        sorted(os.listdir(tmp_path)) == ['ckpt.pth', 'user_config.py']


@pytest.mark.parametrize('body, error', [
    ("model = dict(backbone=dict(note=b'\\x01\\x02'))\n", 'holds bytes at model.backbone.note'),
    ("model = dict(backbone=dict(key_file='/nonexistent/site.key'))\n", 'does not exist'),
    ("model = dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(40, 40)))\n",
     'off the 16-pixel block grid'),
    ("model = dict(data_preprocessor=dict(bgr_to_rgb=False))\n", "set channel_order='rgb'"),
])
@pytest.mark.parametrize('entry', ['tools/train.py', 'ppenc-check'])
def test_bad_configs_refused_before_writing(key_env, tmp_path, monkeypatch, capsys, body,
                                            error, entry):
    monkeypatch.chdir(tmp_path)
    cfg_path = _write_config(tmp_path, body)
    work_dir = str(tmp_path / 'work_dirs' / 'run')
    assert ENTRY_POINTS[entry](cfg_path, work_dir) == 2
    # The refusal is the last line (mmengine's logger may report a stream an earlier test
    # closed before it, which is not ours to assert on).
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('error: ') and error in last
    _nothing_written(tmp_path, key_env, work_dir)


def test_other_key_in_config_is_refused_too(key_env, tmp_path, monkeypatch):
    """A config naming a second key file is scanned for that key as well."""
    other_path = tmp_path / 'keys' / 'other.key'
    other_path.parent.mkdir()
    other = SecretKey.generate()
    other.save(other_path)
    cfg = Config.fromfile(PROPOSED)
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.custom_hooks = [dict(type='KeyManagementHook', key_file=str(other_path))]
    cfg.notes = other._key[8:20].hex()
    with pytest.raises(KeyLeakError, match=other.fingerprint):
        check_before_start(cfg)
    assert not osp.exists(cfg.work_dir)


def test_runner_class_refuses_before_init(key_env, tmp_path):
    """PPEncRunner.from_cfg (what RUNNERS.build calls for runner_type='PPEncRunner')."""
    from mmseg.registry import RUNNERS
    cfg = Config.fromfile(PROPOSED)
    assert cfg.runner_type == 'PPEncRunner'
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.notes = list(key_env._key)
    with pytest.raises(KeyLeakError):
        RUNNERS.build(cfg)
    assert not osp.exists(cfg.work_dir)
    cfg.notes = 'nothing secret'
    runner = RUNNERS.build(cfg)
    assert type(runner).__name__ == 'PPEncRunner' and osp.isdir(cfg.work_dir)


@pytest.mark.parametrize('error_type, options', [
    (GridError, dict(model=dict(test_cfg=dict(mode='slide', crop_size=(64, 64),
                                              stride=(24, 24))))),
    (InvalidKeyError, dict(train_dataloader=dict(dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='BlockScramble', key_file='OTHER'), dict(type='PackSegInputs')])))),
    (ConfigError, dict(model=dict(backbone=dict(mean=[0., 0., 0.], std=[1., 1., 1.])))),
])
def test_problems_are_collected_with_their_types(key_env, tmp_path, error_type, options):
    other = tmp_path / 'other.key'
    SecretKey.generate().save(other)
    cfg = Config.fromfile(PROPOSED)
    cfg.work_dir = str(tmp_path / 'wd')
    for step in options.get('train_dataloader', {}).get('dataset', {}).get('pipeline', []):
        if step.get('key_file') == 'OTHER':
            step['key_file'] = str(other)
    cfg.merge_from_dict(options)
    problems = start_problems(cfg)
    assert problems and isinstance(problems[0], error_type)
    with pytest.raises(error_type):
        check_before_start(cfg)
    assert not osp.exists(cfg.work_dir)


def test_shipped_tiny_config_passes(key_env, tmp_path, capsys):
    assert _check(PROPOSED, str(tmp_path / 'wd')) == 0
    assert capsys.readouterr().out.strip().endswith('ok')
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.slow
@pytest.mark.parametrize('entry, form', [('mim train', 'base85'),
                                         ('mmseg tools/train.py', 'one big integer')])
def test_mmseg_train_tool_refuses_before_writing(key_env, tmp_path, entry, form):
    """``mim train`` and mmseg's own tools/train.py (what mim runs) use the config's
    runner_type, so they refuse before writing too."""
    import mmseg
    cfg_path = _key_config(tmp_path, key_env, form)
    work_dir = str(tmp_path / 'work_dirs' / 'run')
    if entry == 'mim train':
        cmd = [osp.join(osp.dirname(sys.executable), 'mim'), 'train', 'mmsegmentation']
    else:
        cmd = [sys.executable, osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools',
                                        'train.py')]
    proc = subprocess.run(cmd + [cfg_path, '--work-dir', work_dir], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'KeyLeakError' in proc.stderr and key_env.fingerprint in proc.stderr
    _nothing_written(tmp_path, key_env, work_dir)


@pytest.mark.slow
def test_dist_train_refuses_before_writing(key_env, tmp_path):
    """tools/dist_train.sh (torchrun, two CPU processes): every rank refuses."""
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg_path = _key_config(tmp_path, key_env, 'hex, reversed string')
    work_dir = str(tmp_path / 'work_dirs' / 'run')
    env = dict(os.environ, PORT='29631', PYTHON=sys.executable)
    proc = subprocess.run(['bash', osp.join(root, 'tools', 'dist_train.sh'), cfg_path, '2',
                           '--work-dir', work_dir], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'error: Key material' in proc.stderr
    _nothing_written(tmp_path, key_env, work_dir)
