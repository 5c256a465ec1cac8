"""Every load path checks a checkpoint with the one function, core.meta.check_checkpoint.

A forged checkpoint (plain weights carrying the ``meta['ppenc']`` record copied from a
genuine encrypted one) is refused on every path with the same message, and the genuine
one is accepted: the pre-trained ``init_cfg``, ``load_from`` (tools/train.py), ``resume``,
tools/test.py, ppenc-infer, the APIs, tools/encrypt_model.py and the keyless server.
"""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from ppenc.errors import CheckpointRecordError
from mmseg_ppenc.core.checkpoint import patch_embed_digest
from ppenc.keys import SecretKey
from mmseg_ppenc.model_encryption import (encrypt_model_checkpoint,
                                          normalization_from_config)

from conftest import REPO, tiny_config

PROPOSED = tiny_config('mla', 'proposed')
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
PATCH = 'patch_embed.projection.weight'
# One CPU iteration, no worker processes.
SHORT = ['train_cfg.max_iters=1', 'train_cfg.val_interval=1000', 'param_scheduler.0.end=1',
         'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
         'train_dataloader.batch_size=2'] + [
    f'{loader}_dataloader.{k}' for loader in ('train', 'val', 'test')
    for k in ('num_workers=0', 'persistent_workers=False')]
# What the refusal says after naming the checkpoint: the same on every path.
RECORD = re.compile(r'its meta\["ppenc"\] record does not belong to its weights: .*')


@pytest.fixture(scope='module')
def files(tmp_path_factory, session_key_file, synthetic_root):
    """Plain, genuine encrypted and forged checkpoints (segmentor and backbone layouts),
    and a genuine run trained from the genuine segmentor with load_from."""
    root = tmp_path_factory.mktemp('load_paths')
    key = SecretKey.load(session_key_file)
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))  # same state dict, no key
    torch.manual_seed(0)
    plain = MODELS.build(cfg.model)
    plain.init_weights()
    f = {k: str(root / f'{k}.pth') for k in ('plain', 'plain_backbone', 'genuine',
                                               'genuine_backbone', 'forged',
                                               'forged_backbone')}
    torch.save({'state_dict': plain.state_dict(), 'meta': {}}, f['plain'])
    torch.save({'state_dict': plain.backbone.state_dict()}, f['plain_backbone'])
    mean, std = normalization_from_config(PROPOSED)
    encrypt_model_checkpoint(f['plain'], f['genuine'], key, mean, std)
    encrypt_model_checkpoint(f['plain'], f['genuine_backbone'], key, mean, std,
                             backbone_only=True)
    for src, dst in (('plain', 'forged'), ('plain_backbone', 'forged_backbone')):
        genuine = torch.load(f[dst.replace('forged', 'genuine')], weights_only=True)
        forged = torch.load(f[src], weights_only=True)
        forged['meta'] = {'ppenc': genuine['meta']['ppenc']}  # the record, copied
        torch.save(forged, f[dst])
    rec = torch.load(f['genuine'], weights_only=True)['meta']['ppenc']
    want = rec['patch_embed_sha256']
    assert want == torch.load(f['genuine_backbone'], weights_only=True)[
        'meta']['ppenc']['patch_embed_sha256']
    found = patch_embed_digest(plain.backbone.patch_embed.projection.weight)
    message = (f'its meta["ppenc"] record does not belong to its weights: the record '
               f'expects a patch embedding with SHA-256 {want[:16]}, found {found[:16]}. ')
    return dict(root=root, key=key, key_file=session_key_file, files=f, message=message,
                data=synthetic_root)


def _refusal(text):
    """The part of a refusal after the checkpoint's name."""
    m = RECORD.search(text)
    assert m, text
    return m.group(0)


def _cli(main, argv, capsys):
    """Run a tool's main in-process: (exit status, its last stderr line, stdout).

    An exception the tool did not turn into an ``error:`` line propagates from here. (Not
    every line of stderr is the tool's: two Runners started in one second share
    mmengine's logger, whose stream may be an earlier test's closed capture.)
    """
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return rc, (lines[-1] if lines else ''), out


# --------------------------------------------------------------------------- the paths
def _init_cfg(ctx, which, tmp_path, capsys):
    from mmseg_ppenc.models.encrypted_vit import bind_normalization
    cfg = Config.fromfile(PROPOSED)
    path = ctx['files'][f'{which}_backbone']
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    model = MODELS.build(cfg.model)
    bind_normalization(model)
    if which == 'forged':
        with pytest.raises(CheckpointRecordError) as info:
            model.backbone.init_weights()
        msg = str(info.value)
        assert msg.startswith(f'The pre-trained checkpoint {path}: ')
        return msg
    model.backbone.init_weights()  # already encrypted: loaded as is
    enc = torch.load(path, weights_only=True)['state_dict'][PATCH]
    assert torch.equal(model.backbone.patch_embed.projection.weight, enc)


def _train(ctx, ckpt, work_dir, capsys, *extra, iters=1):
    from mmseg_ppenc.cli.train import main
    return _cli(main, [PROPOSED, '--work-dir', str(work_dir), *extra, '--cfg-options',
                       f'load_from={ckpt}', *SHORT, f'train_cfg.max_iters={iters}'], capsys)


@pytest.fixture(scope='module')
def genuine_run(files, tmp_path_factory):
    """tools/train.py with load_from = the genuine encrypted segmentor (one iteration)."""
    from mmseg_ppenc.cli.train import main
    work_dir = str(tmp_path_factory.mktemp('genuine_run'))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PPENC_KEY_FILE', files['key_file'])
        mp.setenv('PPENC_DATA_ROOT', files['data'])
        rc = main([PROPOSED, '--work-dir', work_dir, '--cfg-options',
                   f'load_from={files["files"]["genuine"]}', *SHORT])
    return rc, work_dir


def _load_from(ctx, which, tmp_path, capsys, genuine_run=None):
    if which == 'genuine':
        rc, work_dir = genuine_run
        assert rc == 0 and osp.isfile(osp.join(work_dir, 'iter_1.pth'))
        return
    rc, err, _ = _train(ctx, ctx['files']['forged'], tmp_path / 'wd', capsys)
    assert rc == 2 and err.startswith('error: The checkpoint being loaded: ')
    return err


def _resume(ctx, which, tmp_path, capsys, genuine_run=None):
    rc, work_dir = genuine_run
    assert rc == 0
    ckpt = torch.load(osp.join(work_dir, 'iter_1.pth'), weights_only=False)
    if which == 'forged':  # a real training checkpoint, with plain weights and the record
        ckpt['state_dict'] = torch.load(ctx['files']['plain'], weights_only=True)[
            'state_dict']
        ckpt['meta']['ppenc'] = torch.load(ctx['files']['genuine'], weights_only=True)[
            'meta']['ppenc']
    path = str(tmp_path / f'{which}_iter_1.pth')
    torch.save(ckpt, path)
    rc, err, _ = _train(ctx, path, tmp_path / 'wd', capsys, '--resume', iters=2)
    if which == 'forged':
        assert rc == 2 and err.startswith('error: The checkpoint being loaded: ')
        return err
    # Resumed at iteration 1: only the second iteration ran.
    assert rc == 0 and sorted(p.name for p in (tmp_path / 'wd').glob('*.pth')) == [
        'iter_2.pth']


def _test(ctx, which, tmp_path, capsys, genuine_run=None):
    from mmseg_ppenc.cli.test import main
    rc, err, out = _cli(main, [PROPOSED, ctx['files'][which], '--work-dir',
                               str(tmp_path / 'wd')], capsys)
    if which == 'forged':
        assert rc == 2 and err.startswith('error: The checkpoint being loaded: ')
        return err
    assert rc == 0 and 'mIoU' in out


def _infer(ctx, which, tmp_path, capsys, genuine_run=None):
    from mmseg_ppenc.cli.infer_encrypted import main
    image = sorted(glob.glob(osp.join(ctx['data'], 'leftImg8bit', 'val', '*', '*.png')))[0]
    path = ctx['files'][which]
    rc, err, out = _cli(main, [image, '--config', SERVER_CFG, '--checkpoint', path,
                               '--out', str(tmp_path / 'pred'), '--key-file',
                               ctx['key_file'], '--device', 'cpu'], capsys)
    if which == 'forged':
        assert rc == 2 and err == f'error: The checkpoint {path}: ' + _refusal(err)
        return err
    assert rc == 0 and glob.glob(str(tmp_path / 'pred' / '*_pred.png'))


def _apis(ctx, which, tmp_path, capsys, genuine_run=None):
    from mmseg_ppenc.apis import check_model_key, load_encrypted_model
    path = ctx['files'][which]
    if which == 'forged':
        with pytest.raises(CheckpointRecordError) as info:
            load_encrypted_model(SERVER_CFG, path)
        return str(info.value)
    model = load_encrypted_model(SERVER_CFG, path)
    check_model_key(model, ctx['key'])
    assert model.ppenc_meta['key_fingerprint'] == ctx['key'].fingerprint


def _encrypt_model(ctx, which, tmp_path, capsys, genuine_run=None):
    from mmseg_ppenc.cli.encrypt_model import main
    src = ctx['files']['forged' if which == 'forged' else 'plain']
    out = str(tmp_path / 'out.pth')
    rc, err, _ = _cli(main, [src, out, '--key-file', ctx['key_file'], '--config', PROPOSED],
                      capsys)
    if which == 'forged':
        assert rc == 2 and not osp.exists(out)
        assert err.startswith(f'error: The checkpoint {src}: ')
        return err
    assert rc == 0 and osp.isfile(out)
    # The genuine encrypted checkpoint is recognised as such (not as a forgery).
    rc, err, _ = _cli(main, [ctx['files']['genuine'], str(tmp_path / 'again.pth'),
                             '--key-file', ctx['key_file']], capsys)
    assert rc == 2 and 'is already encrypted' in err and not RECORD.search(err)


def _keyless(ctx, which, tmp_path, capsys, genuine_run=None):
    from mmseg_ppenc.cli.train import main
    from ppenc.dataset import encrypt_dataset
    enc = str(tmp_path / 'enc')
    encrypt_dataset(ctx['data'], enc, ctx['key'], workers=1, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv('PPENC_KEY_FILE')  # the server has no key
        mp.setenv('PPENC_DATA_ROOT', enc)
        mp.setenv('PPENC_PRETRAINED', ctx['files'][f'{which}_backbone'])
        rc, err, _ = _cli(main, [SERVER_CFG, '--work-dir', str(tmp_path / 'wd'),
                                 '--cfg-options', *SHORT], capsys)
    if which == 'forged':
        assert rc == 2
        assert err.startswith('error: The initial checkpoint '
                              f'({ctx["files"]["forged_backbone"]}): ')
        return err
    assert rc == 0 and osp.isfile(tmp_path / 'wd' / 'iter_1.pth')


PATHS = {'init_cfg': _init_cfg, 'load_from': _load_from, 'resume': _resume,
         'tools/test.py': _test, 'infer_encrypted': _infer, 'apis': _apis,
         'encrypt_model': _encrypt_model, 'keyless_server': _keyless}


@pytest.mark.parametrize('which', ['forged', 'genuine'])
@pytest.mark.parametrize('path', list(PATHS))
def test_every_load_path_refuses_a_copied_record(files, key_env, tmp_path, capsys,
                                                 request, path, which):
    monkey = pytest.MonkeyPatch()
    monkey.setenv('PPENC_DATA_ROOT', files['data'])
    try:
        extra = {}
        if path in ('load_from', 'resume'):
            extra['genuine_run'] = request.getfixturevalue('genuine_run')
        msg = PATHS[path](files, which, tmp_path, capsys, **extra)
    finally:
        monkey.undo()
    if which == 'genuine':
        assert msg is None
        return
    # The same refusal everywhere: found vs expected digest, and the fix.
    assert _refusal(msg) == files['message'] + (
        'The record was copied from another checkpoint, or the weights were changed after '
        'encryption, so they must not be used as encrypted weights. Encrypt the plain '
        'weights again with tools/encrypt_model.py (IN = the plain checkpoint, without '
        'this record) and use its output.')
    assert files['key']._key.hex() not in msg
