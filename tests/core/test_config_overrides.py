"""merge_cfg_options: --cfg-options that mmengine cannot merge become a ConfigError with a
fix that works through mmengine's DictAction."""
import argparse

import pytest
from mmengine.config import Config, DictAction

from mmseg_ppenc.core.config_overrides import merge_cfg_options
from ppenc.errors import ConfigError

from conftest import tiny_config


def _parse(*options):
    """What tools/train.py's --cfg-options gives (mmengine's DictAction)."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


@pytest.fixture
def cfg(key_env):
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    assert cfg.model.backbone.init_cfg is None  # trains from scratch
    return cfg


def test_keys_inside_none_are_refused_with_a_fix_that_works(cfg):
    options = _parse('model.backbone.init_cfg.type=Pretrained',
                     'model.backbone.init_cfg.checkpoint=pretrain/vit.pth',
                     'train_cfg.max_iters=3')
    # What mmengine does on its own: a TypeError about inheriting from the base config.
    with pytest.raises(TypeError, match='cannot inherit from base'):
        cfg.copy().merge_from_dict(options)
    with pytest.raises(ConfigError) as info:
        merge_cfg_options(cfg, options)
    msg = str(info.value)
    assert msg.startswith('--cfg-options model.backbone.init_cfg.type=Pretrained '
                          'model.backbone.init_cfg.checkpoint=pretrain/vit.pth: '
                          'model.backbone.init_cfg is None (NoneType) in the config')
    fix = ('model.backbone.init_cfg._delete_=True model.backbone.init_cfg.type=Pretrained '
           'model.backbone.init_cfg.checkpoint=pretrain/vit.pth')
    assert msg.endswith(f'Replace the whole value instead: --cfg-options {fix}')
    assert cfg.train_cfg.max_iters == 400  # nothing merged
    # The fix, parsed as the tools parse it, merges.
    merge_cfg_options(cfg, _parse(*fix.split(), 'train_cfg.max_iters=3'))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained',
                                               checkpoint='pretrain/vit.pth')
    assert cfg.train_cfg.max_iters == 3


def test_dict_syntax_is_not_the_fix():
    """The spelling the fix avoids: mmengine 0.10's DictAction cannot parse dict(...)."""
    with pytest.raises(RecursionError):
        _parse("model.backbone.init_cfg=dict(type='Pretrained',checkpoint='x.pth')")


def test_ordinary_options_merge(cfg):
    merge_cfg_options(cfg, _parse('model.auxiliary_head.0.in_index=2',
                                  'custom_hooks.0.allow_unkeyed_checkpoint=True',
                                  'model.data_preprocessor.mean=[1,2,3]',
                                  'model.backbone.init_cfg=None', 'new_key.sub=1'))
    assert cfg.model.auxiliary_head[0].in_index == 2
    assert cfg.custom_hooks[0].allow_unkeyed_checkpoint is True
    assert cfg.model.data_preprocessor.mean == [1, 2, 3]
    assert cfg.new_key.sub == 1
    assert merge_cfg_options(cfg, None) is cfg


def test_other_unmergeable_options_are_config_errors(cfg):
    with pytest.raises(ConfigError, match=r'train_cfg\.max_iters is 400 \(int\)'):
        merge_cfg_options(cfg, _parse('train_cfg.max_iters.x=3'))
    with pytest.raises(ConfigError, match=r'cannot be merged into the config: Index 9 '
                                          r'exceeds the length of list'):
        merge_cfg_options(cfg, _parse('model.auxiliary_head.9.in_index=2'))
