"""Configs the key adaptation cannot make exact are refused at start, in one line.

- The README recipe's backbone type switch applied to stock mmseg configs whose backbone
  is not a ViT with a non-overlapping patch embedding (PSPNet-R18, SegFormer MiT-B0,
  SegNeXt MSCAN-T, UperNet Swin-T): ``ppenc-check`` and ``tools/train.py`` print one
  ``error:`` line naming the backbone and why it cannot be adapted, exit with 2, and write
  nothing.
- A run that encrypts the images for a backbone not adapted to the key ("conventional 2")
  starts with a warning in its log, unless the config sets
  ``ppenc_setting = 'conventional2'`` (the shipped conventional-2 configs do).
- ``patch_norm=True`` without ``patch_bias`` and ``in_channels != 3`` are refused from the
  config, with the fix.
"""
import copy
import importlib
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmseg_ppenc.start_checks import check_before_start, start_problems
from ppenc.errors import ConfigError

from conftest import REPO, tiny_config

#: id -> (stock mmseg config, name of its backbone as the refusal states it, reason).
STOCK = {
    'pspnet-r18': ('pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py', 'ResNetV1c',
                   'stem convolutions overlap'),
    'segformer-mit-b0': ('segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
                         'MixVisionTransformer', 'patch embeddings overlap'),
    'segnext-mscan-t': ('segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
                        'MSCAN', 'convolution stem overlaps'),
    'upernet-swin-t': ('swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                       'ade20k-512x512.py', 'SwinTransformer', "type='EncryptedSwinTransformer'"),
}
ADAPTABLE = 'a backbone whose input layer is a non-overlapping patch projection'
CONV2 = '"conventional 2"'


def _stock(name: str, tmp_path) -> Config:
    path = tmp_path / 'stock.py'
    path.write_text(f"_base_ = 'mmseg::{name}'\n")
    cfg = Config.fromfile(str(path))
    path.unlink()
    return cfg


def _data_dirs(cfg: Config, root) -> None:
    """Point every dataloader at empty folders under ``root`` (the run is refused before
    any image is read, but the tools check that the folders exist first)."""
    for mode in ('train', 'val', 'test'):
        ds = cfg[f'{mode}_dataloader'].dataset
        ds.data_root = str(root)
        for rel in ds.data_prefix.values():
            os.makedirs(osp.join(str(root), rel), exist_ok=True)


def _recipe(cfg: Config, switch_type: bool = True) -> Config:
    """The README recipe: plugin, PPEncRunner, BlockScramble before PackSegInputs,
    KeyManagementHook and (unless ``switch_type`` is False) the backbone type switch."""
    cfg = copy.deepcopy(cfg)
    cfg.custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
    cfg.runner_type = 'PPEncRunner'
    if switch_type:
        cfg.model.backbone.type = 'EncryptedVisionTransformer'
    for mode in ('train', 'val', 'test'):
        pipe = cfg[f'{mode}_dataloader'].dataset.pipeline
        pipe.insert(len(pipe) - 1, dict(type='BlockScramble'))
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='KeyManagementHook')]
    return cfg


def _write(cfg: Config, tmp_path) -> str:
    path = str(tmp_path / 'user_config.py')
    cfg.dump(path)
    return path


def _error_lines(err: str):
    return [line for line in err.splitlines() if line.startswith('error: ')]


def _check(cfg_path, work_dir, options=()):
    from mmseg_ppenc.cli.check_config import main
    return main([cfg_path, '--work-dir', work_dir] +
                (['--cfg-options', *options] if options else []))


def _train(cfg_path, work_dir, options=()):
    from mmseg_ppenc.cli.train import main
    return main([cfg_path, '--work-dir', work_dir] +
                (['--cfg-options', *options] if options else []))


# ------------------------------------------------------------------ recipe on non-ViTs
@pytest.mark.parametrize('case', sorted(STOCK))
def test_type_switch_on_a_non_vit_is_refused_in_one_line(key_env, tmp_path, monkeypatch,
                                                         capsys, case):
    name, backbone, why = STOCK[case]
    monkeypatch.chdir(tmp_path)
    cfg = _recipe(_stock(name, tmp_path))
    _data_dirs(cfg, tmp_path / 'data')
    cfg_path = _write(cfg, tmp_path)
    work_dir = str(tmp_path / 'work_dirs' / 'run')

    # From the config, before anything is built: one refusal, not a build failure too.
    loaded = Config.fromfile(cfg_path)
    loaded.work_dir = work_dir
    problems = start_problems(loaded)
    assert len(problems) == 1 and type(problems[0]) is ConfigError
    message = str(problems[0])
    assert backbone in message and why in message and ADAPTABLE in message
    assert 'unexpected keyword' not in message
    with pytest.raises(ConfigError, match=backbone):
        check_before_start(loaded)

    capsys.readouterr()
    assert _check(cfg_path, work_dir) == 2
    out, err = capsys.readouterr()
    assert _error_lines(err) == [f'error: {message}']
    assert 'Traceback' not in out + err
    assert not osp.exists(work_dir)

    assert _train(cfg_path, work_dir) == 2
    out, err = capsys.readouterr()
    assert _error_lines(err) == [f'error: {message}']
    assert 'Traceback' not in out + err
    assert not osp.exists(work_dir)
    assert not osp.exists(tmp_path / 'work_dirs')


def test_type_switch_refused_by_the_tool_process(key_env, tmp_path):
    """``tools/check_config.py`` as a process: exit 2, one ``error:`` line, no traceback."""
    name, backbone, _ = STOCK['pspnet-r18']
    cfg = _recipe(_stock(name, tmp_path))
    _data_dirs(cfg, tmp_path / 'data')
    cfg_path = _write(cfg, tmp_path)
    work_dir = str(tmp_path / 'wd')
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'check_config.py'),
                           cfg_path, '--work-dir', work_dir], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and backbone in errors[0] and ADAPTABLE in errors[0]
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert not osp.exists(work_dir)


def test_unknown_backbone_arguments_are_refused_too(key_env, tmp_path):
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.model.backbone.emb_dims = 32
    with pytest.raises(ConfigError, match=r'\(emb_dims\).*no mmseg backbone takes them'):
        check_before_start(cfg)


# ------------------------------------------------------------------ conventional 2
def _log_of_runner(cfg: Config) -> str:
    """Build the Runner as the tools do and return its log file's text."""
    from mmengine.logging import MMLogger
    from mmseg.registry import RUNNERS
    runner = RUNNERS.build(cfg)
    for handler in MMLogger.get_current_instance().handlers:
        handler.flush()
    log = osp.join(runner.log_dir, f'{runner.timestamp}.log')
    with open(log) as f:
        return f.read()


@pytest.mark.parametrize('flag', [None, 'conventional2'])
def test_conventional2_warning_unless_the_config_says_so(key_env, tmp_path, flag):
    shipped = Config.fromfile(tiny_config('mla', 'conventional2'))
    assert shipped.ppenc_setting == 'conventional2'
    cfg = copy.deepcopy(shipped)
    cfg.ppenc_setting = flag
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.experiment_name = f'conventional2_flag_{flag}'
    if cfg.get('visualizer'):
        cfg.visualizer.name = f'visualizer_{flag}'  # mmengine keeps one per name
    warnings = check_before_start(cfg)
    assert (len(warnings) == 1) == (flag is None)
    log = _log_of_runner(cfg)
    lines = [line for line in log.splitlines() if CONV2 in line]
    if flag is None:
        assert len(lines) == 1 and 'WARNING' in lines[0]
        assert 'train_pipeline.BlockScramble' in lines[0]
        assert 'FastVisionTransformer is not adapted to the key' in lines[0]
        assert "ppenc_setting = 'conventional2'" in lines[0]
    else:
        assert lines == []


def test_proposed_configs_do_not_warn(key_env, tmp_path):
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    assert cfg.ppenc_setting == 'proposed'
    cfg.work_dir = str(tmp_path / 'wd')
    assert check_before_start(cfg) == []


def test_unknown_setting_is_refused(key_env, tmp_path):
    cfg = Config.fromfile(tiny_config('mla', 'conventional2'))
    cfg.work_dir = str(tmp_path / 'wd')
    cfg.ppenc_setting = 'conv2'
    with pytest.raises(ConfigError, match="ppenc_setting='conv2' is not a setting"):
        check_before_start(cfg)


def test_every_shipped_conventional2_config_is_marked():
    configs = [osp.join(root, f) for root, _, files in os.walk(osp.join(REPO, 'configs'))
               for f in files if f.endswith('.py') and ('conventional2' in f or 'conv2' in f)]
    assert len(configs) >= 13
    for path in configs:
        assert Config.fromfile(path).get('ppenc_setting') == 'conventional2', path
    for path in [p.replace('conventional2', 'proposed') for p in configs]:
        assert Config.fromfile(path).get('ppenc_setting') == 'proposed', path


def test_non_vit_left_plain_on_encrypted_images_warns(key_env, tmp_path, monkeypatch,
                                                      capsys):
    """BlockScramble and the hook on PSPNet-R18 with its own backbone: it may run (a plain
    model on encrypted images), but ``ppenc-check`` says it is conventional 2."""
    monkeypatch.chdir(tmp_path)
    cfg = _recipe(_stock(STOCK['pspnet-r18'][0], tmp_path), switch_type=False)
    cfg.model.pretrained = None  # nothing is loaded; avoids ResNet's deprecation warning
    # The recipe's uint8 padding, so that the run is on the block grid.
    crop = tuple(cfg.crop_size)
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=crop), dict(type='PadToGrid', size=crop),
        dict(type='BlockScramble'), dict(type='PackSegInputs')]
    cfg.val_dataloader.dataset.pipeline = cfg.test_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='BlockScramble'), dict(type='PackSegInputs')]
    _data_dirs(cfg, tmp_path / 'data')
    cfg_path = _write(cfg, tmp_path)
    capsys.readouterr()
    assert _check(cfg_path, str(tmp_path / 'wd')) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith('warning: ')]
    assert len(warnings) == 1 and CONV2 in warnings[0] and 'ResNetV1c' in warnings[0]
    assert out.strip().endswith('ok')
    assert not osp.exists(tmp_path / 'wd')


# ------------------------------------------------------------------ patch embedding
@pytest.mark.parametrize('options, error', [
    (['model.backbone.patch_norm=True'],
     'has patch_norm=True and patch_bias=False: the LayerNorm after the projection'),
    (['model.backbone.in_channels=4'], 'model.backbone.in_channels=4: the cipher'),
])
def test_patch_embedding_refused_from_the_config(key_env, tmp_path, monkeypatch, capsys,
                                                 options, error):
    monkeypatch.chdir(tmp_path)
    work_dir = str(tmp_path / 'wd')
    cfg_path = tiny_config('mla', 'proposed')
    for entry in (_check, _train):
        capsys.readouterr()
        assert entry(cfg_path, work_dir, options) == 2
        out, err = capsys.readouterr()
        errors = _error_lines(err)
        assert len(errors) == 1 and error in errors[0]
        assert ('patch_bias=True' if 'patch_norm' in error else 'set in_channels=3') \
            in errors[0]
        assert 'Traceback' not in out + err
        assert not osp.exists(work_dir)


def test_patch_norm_with_bias_passes(key_env, tmp_path, capsys):
    options = ['model.backbone.patch_norm=True', 'model.backbone.patch_bias=True']
    assert _check(tiny_config('mla', 'proposed'), str(tmp_path / 'wd'), options) == 0
    assert capsys.readouterr().out.strip().endswith('ok')


def test_encrypted_vit_built_directly_raises_config_error(key_env):
    from mmseg_ppenc.models import EncryptedVisionTransformer
    kw = dict(img_size=32, embed_dims=32, num_layers=1, num_heads=2)
    with pytest.raises(ConfigError, match='has 4 input channels, not 3'):
        EncryptedVisionTransformer(in_channels=4, **kw)
    with pytest.raises(ConfigError, match='Set patch_bias=True'):
        EncryptedVisionTransformer(patch_norm=True, **kw)


#: mmseg's backbones that have an encrypted variant (exact), by the variant's stock type.
ADAPTED = {'VisionTransformer', 'BEiT', 'MAE', 'SwinTransformer', 'PCPVT', 'SVT'}


@pytest.mark.parametrize('name', sorted(
    set(importlib.import_module('mmseg.models.backbones').__all__) - ADAPTED))
def test_every_other_mmseg_backbone_is_refused_with_its_reason(name):
    """The README family table's "refused" rows: each of mmseg's other backbones gets a
    reason of its own (why its first layer cannot be adapted), never the generic
    fallback; a new mmseg backbone fails here until the table and the reasons say why."""
    from mmseg_ppenc import start_checks
    cls = getattr(importlib.import_module('mmseg.models.backbones'), name)
    why = start_checks._why_not_adaptable([cls])
    assert why != start_checks._why_not_adaptable([object])
    assert 'overlap' in why or 'timm' in why
