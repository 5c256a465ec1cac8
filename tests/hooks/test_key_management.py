"""KeyManagementHook with the real mmengine Runner on generated data."""
import base64
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from ppenc.leak_scan import find_key_material
from ppenc.errors import ConfigError, GridError
from ppenc.keys import InvalidKeyError, SecretKey

from conftest import tiny_config


def _cfg(work_dir, setting='proposed', iters=2):
    cfg = Config.fromfile(tiny_config('mla', setting))
    cfg.work_dir = str(work_dir)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = 1000
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 1
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.train_dataloader.batch_size = 2
    return cfg


def _set_scramble(pipeline, **kwargs):
    for t in pipeline:
        if t['type'] == 'BlockScramble':
            t.update(kwargs)


@pytest.fixture
def other_key_file(tmp_path):
    path = tmp_path / 'other.key'
    SecretKey.generate().save(path)
    return str(path)


def test_checkpoint_meta_and_clean_work_dir(key_env, tmp_path):
    runner = Runner.from_cfg(_cfg(tmp_path / 'wd'))
    runner.train()
    ckpt = torch.load(osp.join(runner.work_dir, 'iter_2.pth'), map_location='cpu')
    assert ckpt['meta']['ppenc'] == dict(key_fingerprint=key_env.fingerprint,
                                         cipher='block-shuffle-v1', block_size=16,
                                         flip_compatible=False,
                                         version=ckpt['meta']['ppenc']['version'],
                                         # the normalisation the backbone is adapted for
                                         mean=[123.675, 116.28, 103.53],
                                         std=[58.395, 57.12, 57.375])
    assert find_key_material([runner.work_dir], key_env) == []


@pytest.mark.parametrize('where', ['train', 'val'])
def test_pipeline_with_other_key_is_refused(key_env, tmp_path, other_key_file, where):
    cfg = _cfg(tmp_path)
    loader = cfg.train_dataloader if where == 'train' else cfg.val_dataloader
    _set_scramble(loader.dataset.pipeline, key_file=other_key_file)
    other_fp = SecretKey.load(other_key_file).fingerprint
    with pytest.raises(InvalidKeyError,
                       match=rf'{where}_pipeline.BlockScramble uses key {other_fp}'):
        Runner.from_cfg(cfg).train()


def test_backbone_with_other_key_is_refused(key_env, tmp_path, other_key_file):
    cfg = _cfg(tmp_path)
    cfg.model.backbone.key_file = other_key_file
    with pytest.raises(InvalidKeyError, match='model.backbone uses key'):
        Runner.from_cfg(cfg).train()


def test_block_size_must_equal_patch_size(key_env, tmp_path):
    cfg = _cfg(tmp_path)
    _set_scramble(cfg.train_dataloader.dataset.pipeline, block_size=8)
    with pytest.raises(InvalidKeyError, match='block size 8, but the backbone patch size '
                       'is 16'):
        Runner.from_cfg(cfg).train()


def test_off_grid_slide_window_is_refused(key_env, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.model.test_cfg.stride = (40, 40)
    with pytest.raises(GridError, match=r'stride=\(40, 40\) is off the 16-pixel block grid.*'
                                        r'use 32 or 48'):
        Runner.from_cfg(cfg).train()


@pytest.mark.parametrize('encode', [
    lambda k: k.hex(), lambda k: k.hex().upper(),
    lambda k: base64.b64encode(k).decode(), lambda k: base64.urlsafe_b64encode(k).decode()
])
def test_key_material_in_config_fails_loudly(key_env, tmp_path, encode):
    cfg = _cfg(tmp_path)
    cfg.notes = f'my key is {encode(key_env._key)}'
    with pytest.raises(RuntimeError, match='KEY MATERIAL LEAKED'):
        Runner.from_cfg(cfg).train()


def _perm(key):
    return [int(v) for v in key.block_permutation(16)]


# Forms of the key a user might paste into a config; each must stop the run at its start.
PASTED_FORMS = {
    'latin-1 string': lambda k: k._key.decode('latin-1'),
    'bytes literal text': lambda k: repr(k._key),
    'decimal list': lambda k: list(k._key),
    'decimal string': lambda k: ' '.join(str(b) for b in k._key),
    'hex, colons': lambda k: ':'.join(f'{b:02x}' for b in k._key),
    'hex, spaces': lambda k: ' '.join(f'{b:02X}' for b in k._key),
    'hex, dashes': lambda k: '-'.join(f'{b:02x}' for b in k._key),
    'hex ints': lambda k: [hex(b) for b in k._key],
    'permutation': _perm,
    'permutation as text': lambda k: ', '.join(map(str, _perm(k))),
    'inverse permutation': lambda k: [int(v) for v in np.argsort(_perm(k))],
}


@pytest.mark.parametrize('form', sorted(PASTED_FORMS))
def test_pasted_key_forms_are_refused_at_start(key_env, tmp_path, form):
    cfg = _cfg(tmp_path)
    cfg.notes = PASTED_FORMS[form](key_env)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(RuntimeError, match='KEY MATERIAL LEAKED'):
        runner.train()
    assert not osp.exists(osp.join(runner.work_dir, 'iter_2.pth'))  # stopped before work


@pytest.mark.parametrize('value', ['key', 'slice of the key file', 'other bytes'])
def test_bytes_in_config_are_refused_at_start(key_env, tmp_path, value):
    cfg = _cfg(tmp_path)
    raw = open(os.environ['PPENC_KEY_FILE'], 'rb').read()
    cfg.notes = dict(pasted={'key': key_env._key, 'slice of the key file': raw[10:42],
                            'other bytes': b'not a key'}[value])
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ConfigError, match=r'holds bytes at notes\.pasted.*'
                                          r'name the key by file'):
        runner.train()
    assert not osp.exists(osp.join(runner.work_dir, 'iter_2.pth'))


def test_unkeyed_and_foreign_checkpoints(key_env, tmp_path, other_key_file, monkeypatch):
    base = Runner.from_cfg(_cfg(tmp_path / 'base', 'baseline'))
    base.train()
    plain_ckpt = osp.join(base.work_dir, 'iter_2.pth')

    cfg = _cfg(tmp_path / 'p1')
    cfg.load_from = plain_ckpt
    with pytest.raises(InvalidKeyError, match='records no key'):
        Runner.from_cfg(cfg).train()

    cfg = _cfg(tmp_path / 'p2')
    cfg.load_from = plain_ckpt
    cfg.custom_hooks = [dict(type='KeyManagementHook', allow_unkeyed_checkpoint=True)]
    Runner.from_cfg(cfg).train()  # accepted when asked for

    # A checkpoint of another key: made under the other key, loaded under ours.
    ours = os.environ['PPENC_KEY_FILE']
    monkeypatch.setenv('PPENC_KEY_FILE', other_key_file)
    other = Runner.from_cfg(_cfg(tmp_path / 'o'))
    other.train()
    monkeypatch.setenv('PPENC_KEY_FILE', ours)
    cfg = _cfg(tmp_path / 'p3')
    cfg.load_from = osp.join(other.work_dir, 'iter_2.pth')
    with pytest.raises(InvalidKeyError, match='fingerprint mismatch'):
        Runner.from_cfg(cfg).train()


def test_find_key_material(tmp_path):
    key = SecretKey.generate()
    (tmp_path / 'a.log').write_text('fingerprint ' + key.fingerprint)
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'b.bin').write_bytes(b'xx' + key._key + b'yy')
    (tmp_path / 'c.txt').write_text(base64.b64encode(key._key).decode())
    hits = find_key_material([str(tmp_path)], key)
    assert sorted(osp.basename(h) for h in hits) == ['b.bin', 'c.txt']


@pytest.mark.parametrize('tta', [False, True], ids=['plain_test_pipeline', 'tta'])
def test_pipeline_without_encryption_is_refused(key_env, tmp_path, tta):
    """An encrypted backbone fed by a pipeline that never encrypts (e.g. a stock
    tta_pipeline under tools/test.py --tta) is refused at start, naming the fix."""
    cfg = _cfg(tmp_path / 'wd')
    plain = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] != 'BlockScramble']
    if tta:
        pack = plain.pop()
        plain = plain + [dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=0.0), dict(type='RandomFlip', prob=1.0)],
            [pack]])]
    cfg.test_dataloader.dataset.pipeline = plain
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='has no BlockScramble, so the encrypted backbone '
                                         'would get plain images'):
        runner.test()


def test_config_scan_is_cached_per_config_not_per_hook(key_env):
    """The hook formats a clean config once per run, but a second config (same hook)
    holding the key is still caught."""
    from types import SimpleNamespace

    from mmseg_ppenc.hooks.key_management import KeyManagementHook
    hook = KeyManagementHook()
    clean = Config(dict(notes='nothing secret'))
    runner = SimpleNamespace(cfg=clean, log_dir=None, work_dir=None, model=torch.nn.Module())
    hook._scan(runner)
    hook._scan(runner)  # cached: no second formatting, still no error
    leaked = Config(dict(notes=key_env._key.hex()))
    with pytest.raises(RuntimeError, match='KEY MATERIAL LEAKED: .*the run config'):
        hook._scan(SimpleNamespace(cfg=leaked, log_dir=None, work_dir=None,
                                   model=torch.nn.Module()))


def test_loaded_checkpoint_is_checked_against_the_run(key_env, tmp_path):
    """after_load_checkpoint runs core.meta.check_checkpoint: the record must belong to the
    weights, and state this run's key, cipher, block size and normalisation."""
    from ppenc.errors import CheckpointRecordError
    from ppenc.meta import build_meta
    from mmseg_ppenc.core.checkpoint import patch_embed_digest
    runner = Runner.from_cfg(_cfg(tmp_path / 'wd'))
    sd = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    digest = patch_embed_digest(sd['backbone.patch_embed.projection.weight'])
    norm = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    path = str(tmp_path / 'ckpt.pth')

    def load(**changes):
        rec = build_meta(key_env.fingerprint, 16, False, *norm, patch_embed_sha256=digest)
        rec.update(changes)
        torch.save({'state_dict': sd, 'meta': {'ppenc': rec}}, path)
        runner.load_checkpoint(path)

    load()  # the genuine record
    with pytest.raises(CheckpointRecordError, match='does not belong to its weights: the '
                       f'record expects a patch embedding with SHA-256 {"0" * 16}, '
                       f'found {digest[:16]}'):
        load(patch_embed_sha256='0' * 64)
    with pytest.raises(InvalidKeyError, match='block size 8, but this model uses 16-pixel'):
        load(block_size=8)
    with pytest.raises(InvalidKeyError, match="cipher 'block-shuffle-v0'"):
        load(cipher='block-shuffle-v0')
    with pytest.raises(InvalidKeyError, match=r'normalisation mean=\[0\.0, 0\.0, 0\.0\]'):
        load(mean=[0.0] * 3)


@pytest.mark.parametrize('flag', [None, 'conventional2'])
def test_plain_backbone_on_encrypted_images_is_logged(key_env, tmp_path, flag):
    """With mmengine's own Runner (no start checks) the hook logs, once, that the backbone
    is not adapted to the key, unless the config says conventional 2 is meant."""
    from mmengine.logging import MMLogger
    cfg = _cfg(tmp_path / 'wd', setting='conventional2', iters=1)
    cfg.ppenc_setting = flag
    cfg.custom_hooks = [dict(type='KeyManagementHook')]
    cfg.experiment_name = f'hook_conventional2_{flag}'
    cfg.visualizer.name = f'hook_conventional2_{flag}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    for handler in MMLogger.get_current_instance().handlers:
        handler.flush()
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        lines = [line for line in f if '"conventional 2"' in line]
    assert len(lines) == (1 if flag is None else 0)
    if lines:
        assert 'WARNING' in lines[0] and 'is not adapted to the key' in lines[0]
