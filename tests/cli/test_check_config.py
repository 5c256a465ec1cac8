"""``ppenc-check CONFIG --tta``: the start checks of the test-time augmentation setup that
``tools/test.py --tta`` runs (the config switched by the same ``use_tta``), printing ``ok``
or one ``error:`` line per refusal, exiting 0 or 2, and writing nothing."""
import os
import os.path as osp

from mmengine.config import Config

from mmseg_ppenc.cli.check_config import main
from mmseg_ppenc.runner import load_config, use_tta
from mmseg_ppenc.start_checks import start_problems

from conftest import REPO, tiny_config

PROPOSED = tiny_config('mla', 'proposed')
SERVER = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
#: The BlockScramble slot of the shipped encrypted TTA pipeline's TestTimeAug lists.
SCRAMBLE = 'tta_pipeline.1.transforms.4'


def _check(argv, capsys):
    """ppenc-check in-process: (exit status, stdout lines, ``error:`` lines)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out.strip().splitlines(), [x for x in err.splitlines()
                                          if x.startswith('error: ')]


def test_tta_of_a_shipped_config_is_ok(key_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    work_dir = tmp_path / 'work_dirs' / 'run'
    rc, out, errors = _check([PROPOSED, '--tta', '--work-dir', work_dir], capsys)
    assert (rc, errors) == (0, []) and out[-1] == 'ok'
    # mmseg's default work_dir (./work_dirs/<config name>) is not created either.
    rc, out, errors = _check([PROPOSED, '--tta'], capsys)
    assert (rc, errors) == (0, []) and out[-1] == 'ok'
    assert os.listdir(tmp_path) == []


def test_tta_branch_without_block_scramble_is_refused(key_env, tmp_path, monkeypatch,
                                                      capsys):
    """Every branch loses its BlockScramble (--cfg-options), or half of them (a config
    inheriting the shipped one): one error line, exit 2, nothing written. The test
    pipeline without --tta is not affected, so the same config passes without it."""
    monkeypatch.chdir(tmp_path)
    work_dir = tmp_path / 'work_dirs' / 'run'
    options = ['--cfg-options', f'{SCRAMBLE}.0.type=LoadAnnotations']
    rc, out, errors = _check([PROPOSED, '--tta', '--work-dir', work_dir, *options], capsys)
    assert rc == 2 and 'ok' not in out and len(errors) == 1
    assert 'test_pipeline (6 of 6 TestTimeAug branches' in errors[0]
    assert 'has no BlockScramble, so the encrypted backbone would get plain images' \
        in errors[0]
    assert 'every branch of tta_pipeline' in errors[0]  # the fix
    # The same refusal tools/test.py --tta gets from the start checks.
    cfg = use_tta(load_config(PROPOSED, {f'{SCRAMBLE}.0.type': 'LoadAnnotations'},
                              str(work_dir)))
    assert [f'error: {e}' for e in start_problems(cfg)] == errors
    rc, out, errors = _check([PROPOSED, '--work-dir', work_dir, *options], capsys)
    assert (rc, errors) == (0, []) and out[-1] == 'ok'

    lists = Config.fromfile(PROPOSED).to_dict()['tta_pipeline']
    branches = lists[1]['transforms']
    assert branches[4] == [dict(type='BlockScramble')]
    branches[4] = [dict(type='BlockScramble'), dict(type='LoadAnnotations')]
    half = tmp_path / 'half_encrypted_tta.py'
    half.write_text(f'_base_ = {PROPOSED!r}\ntta_pipeline = {lists!r}\n')
    rc, out, errors = _check([half, '--tta', '--work-dir', work_dir], capsys)
    assert rc == 2 and len(errors) == 1
    assert 'test_pipeline (6 of 12 TestTimeAug branches' in errors[0]
    assert os.listdir(tmp_path) == [half.name]


def test_tta_without_a_tta_pipeline_is_refused(tmp_path, monkeypatch, capsys):
    """Keyless server configs have none (resizing ciphertext does not commute with the
    cipher): the refusal of tools/test.py --tta, as one line."""
    monkeypatch.chdir(tmp_path)
    rc, out, errors = _check([SERVER, '--tta', '--skip-paths'], capsys)
    assert rc == 2 and len(errors) == 1
    assert errors[0].startswith('error: --tta needs tta_pipeline in the config')
    assert os.listdir(tmp_path) == []
