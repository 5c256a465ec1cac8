"""Console scripts (mmseg_ppenc.cli) and the tools/*.py shims over them."""
import importlib
import os.path as osp
import stat

import pytest

from ppenc.keys import SecretKey

from conftest import REPO, load_tool

# tools/<name>.py -> mmseg_ppenc.cli.<module>, and its console script.
SHIMS = {
    'keygen': ('keygen', 'ppenc-keygen'),
    'train': ('train', 'ppenc-train'),
    'test': ('test', 'ppenc-test'),
    'infer_encrypted': ('infer_encrypted', 'ppenc-infer'),
    'visualize': ('visualize', 'ppenc-visualize'),
    'convert_timm_vit': ('convert_timm_vit', 'ppenc-convert-timm'),
    'make_synthetic_cityscapes': ('make_synthetic_cityscapes', 'ppenc-make-synthetic'),
    'encrypt_dataset': ('encrypt_dataset', 'ppenc-encrypt-dataset'),
    'encrypt_model': ('encrypt_model', 'ppenc-encrypt-model'),
}


def _scripts():
    tomllib = pytest.importorskip('tomllib')
    with open(osp.join(REPO, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)['project']['scripts']


CLIENT_TOOLS = ('keygen', 'encrypt_dataset', 'make_synthetic_cityscapes')


@pytest.mark.parametrize('tool', sorted(SHIMS))
def test_tool_is_a_shim_over_the_cli(tool):
    module, script = SHIMS[tool]
    # Client tools are in the framework-free package, server tools in the plugin.
    package = 'ppenc' if module in CLIENT_TOOLS else 'mmseg_ppenc'
    cli = importlib.import_module(f'{package}.cli.{module}')
    assert load_tool(tool).main is cli.main
    assert _scripts()[script] == f'{package}.cli.{module}:main'


@pytest.mark.parametrize('script', ['ppenc-keygen', 'ppenc-train', 'ppenc-test',
                                    'ppenc-infer', 'ppenc-visualize', 'ppenc-convert-timm',
                                    'ppenc-make-synthetic', 'ppenc-encrypt-dataset',
                                    'ppenc-encrypt-model'])
def test_console_script_resolves(script, capsys):
    """Every console script names an importable ``main`` with a ``build_parser``."""
    target = _scripts()[script]
    module_name, func = target.split(':')
    module = importlib.import_module(module_name)
    assert callable(getattr(module, func)), target
    parser = module.build_parser()
    assert parser.description, f'{script} has no description'
    with pytest.raises(SystemExit) as exit_:
        getattr(module, func)(['--help'])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: ') and parser.description.split()[0] in out


def test_keygen_writes_once_and_refuses_to_overwrite(tmp_path, capsys):
    from ppenc.cli import keygen
    path = tmp_path / 'sub' / 'site.key'
    assert keygen.main([str(path), '--flip-compatible']) == 0
    out = capsys.readouterr().out
    key = SecretKey.load(str(path))
    assert key.flip_compatible and key.fingerprint in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert keygen.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'already exists' in err and err.count('\n') == 1
    assert path.read_bytes() == before  # the old key is intact


@pytest.mark.parametrize('module,argv', [
    ('train', ['missing_config.py']),
    ('test', ['missing_config.py', 'missing.pth']),
])
def test_missing_config_is_a_usage_error(module, argv, tmp_path, capsys):
    cli = importlib.import_module(f'mmseg_ppenc.cli.{module}')
    code = cli.main([str(tmp_path / a) for a in argv] + ['--work-dir', str(tmp_path / 'w')])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('error: Config file') and 'not found' in err, err
    assert 'Traceback' not in err


def test_cfg_options_are_parsed_as_mmengine_does():
    from mmseg_ppenc.cli import train
    args = train.build_parser().parse_args(
        ['c.py', '--cfg-options', 'train_cfg.max_iters=7', 'model.backbone.drop=[1,2]'])
    assert args.cfg_options == {'train_cfg.max_iters': 7, 'model.backbone.drop': [1, 2]}
    assert args.launcher == 'none' and args.local_rank == 0


def test_test_summary_line():
    from mmseg_ppenc.cli.test import format_metrics
    assert format_metrics({'aAcc': 91.234, 'mIoU': 40.0, 'mAcc': 55.556,
                           'per_class': [1.0, 2.0]}) == \
        'Test results: aAcc=91.23  mIoU=40.00  mAcc=55.56'
