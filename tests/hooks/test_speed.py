"""Speed switches keep float32 results: channels-last heads, fused optimizer, the fast loss
path, compiled forward (the one compile switch), deferred log copies (with the real
mmengine Runner on generated data)."""
import argparse
import copy
import os
import sys

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.hooks import (ChannelsLastHook, CompileModelHook, DeferredLogRuntimeInfoHook,
                               FastLossHook, to_channels_last)
from mmseg_ppenc.models.fast_loss import (enable_fast_loss, is_fast_loss_enabled,
                                          loss_heads)
from ppenc.errors import ConfigError

from conftest import REPO, tiny_config

sys.path.insert(0, os.path.join(REPO, 'tools'))
from analysis.variants import synthetic_batch  # noqa: E402

register_all_modules(init_default_scope=True)


def _model(seed=0):
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.train(), cfg


def _train(model, optim_cfg, steps=2):
    wrapper = build_optim_wrapper(model, optim_cfg)
    data = synthetic_batch(2, 64, 19, seed=0)
    losses = [model.train_step(data, wrapper)['loss'].item() for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('switch', ['channels_last', 'fused', 'compile_model', 'fast_loss',
                                    'fast_loss+compile_model'])
def test_switch_keeps_fp32_training(switch):
    """Two steps with the switch on give the stock losses and weights (float32)."""
    ref_model, cfg = _model()
    optim = cfg.optim_wrapper.to_dict()
    ref = _train(ref_model, optim)
    model, _ = _model()
    sw_optim = copy.deepcopy(optim)
    if switch == 'channels_last':
        assert to_channels_last(model) == ['neck', 'decode_head', 'auxiliary_head']
        convs = [p for p in model.decode_head.parameters() if p.dim() == 4 and p.shape[-1] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last)
                             and not w.is_contiguous() for w in convs)
    elif switch.startswith('fast_loss'):
        assert len(enable_fast_loss(model)[0]) == 5
    if switch.endswith('compile_model'):
        # The eager backend traces the whole forward with dynamo (graph breaks included)
        # without inductor's compile time; parameter names must not change.
        names = list(model.state_dict())
        CompileModelHook(dict(backend='eager')).before_train(
            type('RunnerView', (), {'model': model})())
        assert list(model.state_dict()) == names
    elif switch == 'fused':
        sw_optim['optimizer']['fused'] = True
    got = _train(model, sw_optim)
    assert got[0] == pytest.approx(ref[0], rel=1e-5)
    for k, v in ref[1].items():
        torch.testing.assert_close(got[1][k], v, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize('compile_cfg', [True, dict(backend='eager')])
def test_compile_model_hook_refuses_mmengine_compile(compile_cfg):
    """One compile path: with mmengine's ``compile`` also set, the hook stops the run
    before anything is compiled twice."""
    model, cfg = _model()
    cfg.compile = compile_cfg
    runner = type('RunnerView', (), {'model': model, 'cfg': cfg})()
    with pytest.raises(ConfigError, match="CompileModelHook and mmengine's compile=... "
                                          'both compile the model'):
        CompileModelHook(dict(backend='eager')).before_train(runner)
    assert model._compiled_call_impl is None  # not compiled


def test_channels_last_guards():
    model, _ = _model()
    with pytest.raises(ValueError, match=r"None of \['head'\] is a submodule"):
        to_channels_last(model, ['head'])
    with pytest.raises(ValueError, match="non-empty list of submodule names, got 'neck'"):
        ChannelsLastHook(parts='neck')
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match='interval must be a positive integer'):
            DeferredLogRuntimeInfoHook(interval=bad)


def _run(work_dir, synthetic_root, hooks, iters=5, cfg_options=None):
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.dataset.data_root = synthetic_root
    cfg.val_dataloader.dataset.data_root = synthetic_root
    cfg.test_dataloader.dataset.data_root = synthetic_root
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = 1000
    cfg.default_hooks.logger.interval = 2
    cfg.randomness = dict(seed=0)  # same weights and augmentations in both runs
    cfg.default_hooks.checkpoint.interval = 3
    cfg.default_hooks.update(hooks.get('default', {}))
    cfg.custom_hooks = hooks.get('custom', [])
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.train_dataloader.batch_size = 2
    runner = Runner.from_cfg(cfg)
    runner.train()
    ckpt = torch.load(f'{runner.work_dir}/iter_3.pth', map_location='cpu',
                      weights_only=False)
    return runner, ckpt


@pytest.mark.slow
def test_switches_in_a_real_run_log_the_same(tmp_path, synthetic_root):
    """Deferred log copies and channels-last heads: same logs, checkpoints, weights."""
    ref, ref_ckpt = _run(tmp_path / 'ref', synthetic_root, {})
    got, got_ckpt = _run(tmp_path / 'got', synthetic_root, dict(
        default=dict(runtime_info=dict(type='DeferredLogRuntimeInfoHook', interval=2)),
        custom=[dict(type='ChannelsLastHook')]))
    assert any(isinstance(h, DeferredLogRuntimeInfoHook) for h in got.hooks)
    for key in ('train/loss', 'train/decode.loss_ce', 'train/aux_3.acc_seg'):
        a = ref.message_hub.get_scalar(key).data[0]
        b = got.message_hub.get_scalar(key).data[0]
        assert len(a) == len(b) == 5
        assert b == pytest.approx(a, rel=1e-4)
    # The checkpoint at iteration 3 (between two log intervals) holds all 3 values.
    hist = got_ckpt['message_hub']['log_scalars']['train/loss']
    assert len(hist._log_history) == 3
    assert hist._log_history == pytest.approx(
        ref_ckpt['message_hub']['log_scalars']['train/loss']._log_history, rel=1e-4)
    convs = [p for p in got.model.neck.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(not w.is_contiguous() for w in convs)


@pytest.mark.slow
def test_fast_loss_hook_from_the_command_line_option(tmp_path, synthetic_root):
    """The documented ``--cfg-options default_hooks.fast_loss.type=FastLossHook`` in a real
    run: every head switched, the same losses and accuracies logged as without it."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(
        ['--cfg-options', 'default_hooks.fast_loss.type=FastLossHook']).cfg_options
    ref, _ = _run(tmp_path / 'ref', synthetic_root, {})
    got, _ = _run(tmp_path / 'got', synthetic_root, {}, cfg_options=options)
    hooks = [h for h in got.hooks if isinstance(h, FastLossHook)]
    assert len(hooks) == 1 and not any(isinstance(h, FastLossHook) for h in ref.hooks)
    assert all(is_fast_loss_enabled(h) for _, h in loss_heads(got.model))
    assert not any(is_fast_loss_enabled(h) for _, h in loss_heads(ref.model))
    for key in ('train/loss', 'train/decode.loss_ce', 'train/aux_3.loss_ce',
                'train/decode.acc_seg', 'train/aux_0.acc_seg'):
        a = ref.message_hub.get_scalar(key).data[0]
        b = got.message_hub.get_scalar(key).data[0]
        assert len(a) == len(b) == 5
        assert b == pytest.approx(a, rel=1e-4), key
