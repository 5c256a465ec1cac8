"""tools/benchmark.py and its drivers in tools/analysis (no timed assertions), the speed
switches, and the bf16 AMP fallback."""
import copy
import json
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.optim import BF16AmpOptimWrapper, bf16_autocast_supported

from conftest import REPO, tiny_config

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import benchmark as bm  # noqa: E402
from analysis import cipher_cost, common  # noqa: E402
from analysis.variants import Variant, synthetic_batch, variant_plan  # noqa: E402

register_all_modules(init_default_scope=True)


# --------------------------------------------------------------------------- variants
@pytest.mark.parametrize('spec,expected', [
    ('stock', ('stock', '')),
    ('baseline', ('baseline', '')),
    ('proposed+DCF', ('proposed', 'FCD')),
    ('baseline+F+C+B', ('baseline', 'FCB')),
    ('conventional2+S', ('conventional2', 'S')),
    ('baseline+LFD+M', ('baseline', 'FDLM')),
])
def test_parse_variant(spec, expected):
    assert bm.parse_variant(spec) == expected


@pytest.mark.parametrize('spec,message', [
    ('plain', "setting must be one of stock, baseline, conventional2, proposed; got 'plain'"),
    ('baseline+X', r"unknown switch letter\(s\) \['X'\]"),
    ('stock+F', 'the stock model runs as mmseg ships it'),
    ('baseline+MS', 'M and S both compile the forward'),
])
def test_parse_variant_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        bm.parse_variant(spec)


def test_variant_plan_names_and_duplicates():
    plan = variant_plan(8, (2, 8), False, ['stock', 'baseline+CF', 'proposed+B'])
    assert [p[0] for p in plan] == [
        'stock fp32 b2', 'stock fp32 b8', 'plugin baseline +fused-opt +channels-last b8',
        'plugin proposed +compile-backbone b8']
    assert plan[2][1:] == ('baseline', 8, 'FC')
    with pytest.raises(ValueError, match='listed twice'):
        variant_plan(8, (8,), False, ['baseline+FC', 'baseline+CF'])


def test_time_interleaved_structure():
    calls = []
    samples = bm.time_interleaved({'a': lambda: calls.append('a'),
                                   'b': lambda: calls.append('b')}, repeats=3, warmup=1)
    assert calls == ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']  # order rotates per round
    for name in 'ab':
        assert set(samples[name]) == {'wall', 'cpu'}
        assert len(samples[name]['wall']) == len(samples[name]['cpu']) == 3
    with pytest.raises(ValueError, match='repeats must be >= 1, got 0'):
        bm.time_interleaved({'a': lambda: None}, repeats=0)


def _variant(name, setting, batch, ms, mem, compile=False, samples=None):
    return dict(name=name, setting=setting, batch=batch, compile=compile,
                step=dict(median_ms=ms), samples_ms=samples or [ms], img_per_s=batch / ms * 1e3,
                peak_mem_mib=mem, mem_kind='cuda max_memory_allocated', backbone='x',
                attention='fused', precision='bf16 autocast')


def _fake_report(device='cuda', arch='vit-l', plugin_ms=200.0, proposed_ms=201.0,
                 plugin_b2_mem=9000.0):
    variants = [
        _variant('stock fp32 b2', 'stock', 2, 375.0, 27000.0),
        dict(name='stock fp32 b8', setting='stock', batch=8, compile=False,
             error='out of memory'),
        _variant('plugin baseline b2', 'baseline', 2, 100.0, plugin_b2_mem),
        _variant('plugin baseline b8', 'baseline', 8, plugin_ms, 25000.0),
        _variant('plugin conventional2 b8', 'conventional2', 8, plugin_ms, 25000.0),
        _variant('plugin proposed b8', 'proposed', 8, proposed_ms, 25000.0),
    ]
    size = dict(cpu_median_ms=1.0, wall_median_ms=1.0, timer='cpu')
    return dict(
        cipher={'768x768': dict(copy=dict(size, median_ms=0.1),
                                scramble=dict(size, median_ms=1.5),
                                full_map=dict(size, median_ms=3.0),
                                scramble_over_copy=15.0)},
        pipeline=dict(plain=dict(size, median_ms=100.0), encrypted=dict(size, median_ms=101.0),
                      scramble=dict(size, median_ms=1.5), share=0.015),
        train=dict(device=device, arch=arch, decoder='mla', size=768, batch=8,
                   steps=10, warmup=3, interleaved=False, timer='wall', torch_threads=16,
                   variants=variants))


def _value(comparisons, prefix):
    (c,) = [c for c in comparisons if c['name'].startswith(prefix)]
    return c['value']


def test_compare_ratios():
    report = _fake_report()
    report['train']['variants'].append(
        _variant('plugin baseline +fused-opt b8', 'baseline', 8, 160.0, 25000.0))
    report['train']['variants'][-1]['switches'] = 'F'
    comparisons = bm.compare(report)
    assert _value(comparisons, 'BlockScramble ms') == 1.5
    assert _value(comparisons, 'BlockScramble share') == 0.015
    assert _value(comparisons, 'proposed/baseline images/s (batch 8)') == \
        pytest.approx(200 / 201)
    # best plugin (+fused-opt b8: 50 img/s) over the best stock that ran (b2: 5.33 img/s)
    assert _value(comparisons, 'best plugin/best stock') == \
        pytest.approx((8 / 0.16) / (2 / 0.375))
    assert _value(comparisons, 'plugin defaults/best stock') == \
        pytest.approx((8 / 0.2) / (2 / 0.375))
    assert _value(comparisons, 'plugin/stock fp32 peak memory') == pytest.approx(1 / 3)
    # No proposed variant with the same switches: no ratio is made up for them.
    assert not [c for c in comparisons if 'fused-opt' in c['name'] and 'proposed' in
                c['name']]
    # One switch on/off, everything else equal: +fused-opt b8 (160 ms) against b8 (200 ms).
    assert _value(comparisons, '+fused-opt on/off images/s (baseline b8)') == \
        pytest.approx(200 / 160)


def test_compare_switch_on_off_pairs_only_differ_by_one_switch():
    report = _fake_report()
    for name, switches, ms in (('a', 'FDM', 100.0), ('b', 'FDLM', 80.0), ('c', 'FCDL', 150.0),
                               ('d', 'FDLM', 90.0)):
        report['train']['variants'].append(
            _variant(name, 'proposed' if name == 'd' else 'baseline', 8, ms, 1.0))
        report['train']['variants'][-1]['switches'] = switches
    names = {c['name']: c['value'] for c in bm.compare(report)
             if ' on/off ' in c['name']}
    assert names == {
        '+fast-loss on/off images/s (baseline +fused-opt +deferred-log +compile-model b8)':
            pytest.approx(100 / 80)}


def test_interleaved_ratio_is_median_of_rounds():
    train = dict(interleaved=True)
    base = _variant('b', 'baseline', 2, 100.0, 1.0, samples=[100.0, 100.0, 300.0])
    prop = _variant('p', 'proposed', 2, 100.0, 1.0, samples=[101.0, 99.0, 600.0])
    # rounds: 100/101, 100/99, 300/600 -> median 100/101
    assert bm.throughput_ratio(train, prop, base) == pytest.approx(100 / 101)


def test_format_report_and_json(tmp_path):
    report = _fake_report()
    report['comparisons'] = bm.compare(report)
    text = bm.format_report(report)
    for needle in ('1. Cipher cost', 'Stock Cityscapes train pipeline', '2./3. Training',
                   'out of memory', 'Comparisons', 'x best stock'):
        assert needle in text
    path = bm.write_json(report, str(tmp_path / 'sub' / 'b.json'))
    assert json.load(open(path)) == json.loads(json.dumps(report))


# --------------------------------------------------------------------------- library
def test_summary_is_the_median_of_the_chosen_timer():
    # Odd and even counts whose median differs from their mean and from the first sample.
    samples = {'cpu': [1.0, 30.0, 5.0, 2.0, 100.0], 'wall': [9.0, 3.0, 7.0, 8.0]}
    assert common.summary(samples, 'cpu') == dict(
        median_ms=5.0, min_ms=1.0, max_ms=100.0, n=5, timer='cpu', wall_median_ms=7.5,
        cpu_median_ms=5.0)
    wall = common.summary(samples, 'wall')
    assert (wall['median_ms'], wall['min_ms'], wall['max_ms'], wall['n']) == (7.5, 3.0, 9.0, 4)
    assert wall['cpu_median_ms'] == 5.0
    with pytest.raises(ValueError, match="timer must be one of .* got 'gpu'"):
        common.summary(samples, 'gpu')


# Timings fed to bench_cipher: medians 4, 8 and 2.5 differ from means and first samples.
FAKE_CPU = {'copy': [1.0, 10.0, 4.0], 'scramble': [30.0, 6.0, 12.0, 8.0, 7.0],
            'full_map': [2.0, 50.0, 2.5]}
FAKE_WALL = {'copy': [3.0, 1.0, 2.0], 'scramble': [5.0, 9.0, 1.0], 'full_map': [4.0, 4.0, 6.0]}


def test_bench_cipher_reports_medians_of_its_timings(monkeypatch):
    calls = []

    def fake_time_interleaved(fns, repeats, warmup=1, device='cpu'):
        calls.append((sorted(fns), repeats, warmup))
        assert fns['scramble']()['img'].shape == (32, 48, 3)  # the real transform runs
        return {n: {'cpu': FAKE_CPU[n], 'wall': FAKE_WALL[n]} for n in fns}

    monkeypatch.setattr(cipher_cost, 'time_interleaved', fake_time_interleaved)
    r = bm.bench_cipher(repeats=3, sizes=((32, 48),))['32x48']
    assert calls == [(['copy', 'full_map', 'scramble'], 3, 2)]
    for name, median, wall in (('copy', 4.0, 2.0), ('scramble', 8.0, 5.0),
                               ('full_map', 2.5, 4.0)):
        s = r[name]
        assert (s['median_ms'], s['cpu_median_ms'], s['wall_median_ms']) == (median, median,
                                                                              wall), name
        assert (s['min_ms'], s['max_ms'], s['n'], s['timer']) == (
            min(FAKE_CPU[name]), max(FAKE_CPU[name]), len(FAKE_CPU[name]), 'cpu'), name
    assert r['scramble_over_copy'] == 2.0


def test_bench_cipher_small():
    res = bm.bench_cipher(repeats=3, sizes=((32, 48),))
    r = res['32x48']
    for k in ('copy', 'scramble', 'full_map'):
        s = r[k]
        assert s['n'] == 3 and s['timer'] == 'cpu'
        assert s['median_ms'] == s['cpu_median_ms']
        assert s['min_ms'] <= s['median_ms'] <= s['max_ms']
        assert s['wall_median_ms'] > 0  # every call took measurable wall-clock time
    assert r['scramble_over_copy'] == r['scramble']['median_ms'] / r['copy']['median_ms']


def test_model_configs():
    cfgs = bm.model_configs('tiny', 'pup', 32)
    assert list(cfgs) == ['stock', 'baseline', 'conventional2', 'proposed']
    stock, stock_optim = cfgs['stock']
    assert stock['backbone']['type'] == 'VisionTransformer'
    assert 'attn_impl' not in stock['backbone'] and stock_optim['type'] == 'OptimWrapper'
    for setting in ('baseline', 'conventional2', 'proposed'):
        model, optim = cfgs[setting]
        assert optim['type'] == 'BF16AmpOptimWrapper'
        assert model['backbone']['attn_impl'] == 'fused'
        assert model['backbone']['img_size'] == (32, 32)
        assert model['data_preprocessor']['size'] == (32, 32)
        assert model['data_preprocessor']['type'] == (
            'SegDataPreProcessor' if setting == 'baseline' else 'EncryptedSegDataPreProcessor')
    assert cfgs['proposed'][0]['backbone']['type'] == 'EncryptedVisionTransformer'
    # Same model apart from attention and the encryption.
    a, b = copy.deepcopy(stock), copy.deepcopy(cfgs['baseline'][0])
    for m in (a, b):
        m['backbone'].pop('type')
        m['backbone'].pop('attn_impl', None)
    assert a == b

    # ViT-L: mmseg's own stock config, made single-process.
    stock_l, _ = bm.model_configs('vit-l', 'mla', 768)['stock']
    assert stock_l['backbone']['embed_dims'] == 1024
    assert 'SyncBN' not in json.dumps(stock_l) and stock_l['backbone']['init_cfg'] is None
    with pytest.raises(ValueError, match="got 'vit-h'"):
        bm.model_configs('vit-h')
    with pytest.raises(ValueError, match='multiple of 16.*got 40'):
        bm.model_configs('tiny', 'mla', 40)


def test_bench_train_tiny():
    res = bm.bench_train('tiny', 'naive', size=32, batch=1, steps=1, warmup=1,
                         log=lambda msg: None)
    names = [v['name'] for v in res['variants']]
    assert names == ['stock fp32 b1', 'plugin baseline b1', 'plugin conventional2 b1',
                     'plugin proposed b1']
    by = {v['setting']: v for v in res['variants']}
    assert by['stock']['backbone'] == 'VisionTransformer' and by['stock']['attention'] == 'stock'
    assert by['proposed']['backbone'] == 'EncryptedVisionTransformer'
    assert all(v['precision'] == 'fp32' for v in res['variants'])  # CPU: bf16 falls back
    assert by['baseline']['encryption'] == 'none'
    assert 'EncryptedSegDataPreProcessor' in by['proposed']['encryption']
    for v in res['variants']:
        assert v['img_per_s'] > 0 and v['peak_mem_mib'] > 0 and v['step']['n'] == 1
    assert res['interleaved'] and res['timer'] == 'cpu'


def test_tool_end_to_end(tmp_path, capsys, load_tool):
    tool = load_tool('benchmark')
    out = tmp_path / 'bench.json'
    tool.main(['--sections', 'cipher', 'pipeline', 'train', '--cipher-repeats', '2',
               '--pipeline-repeats', '1', '--size', '32', '--batch', '1', '--steps', '1',
               '--warmup', '1', '--out', str(out)])
    text = capsys.readouterr().out
    assert 'Comparisons' in text and str(out) in text
    report = json.load(open(out))
    assert set(report) == {'meta', 'cipher', 'pipeline', 'train', 'comparisons'}
    assert set(report['cipher']) == {'768x768', '1024x2048'}
    assert 0 < report['pipeline']['share'] < 1
    assert report['meta']['command'].startswith('python tools/benchmark.py --sections')
    names = [c['name'] for c in report['comparisons']]
    assert 'best plugin/best stock fp32 images/s' in names
    assert 'proposed/baseline images/s (batch 1)' in names


def test_tool_variants_and_profile(tmp_path, capsys, load_tool):
    tool = load_tool('benchmark')
    out = tmp_path / 'bench.json'
    tool.main(['--sections', 'train', 'profile', '--size', '32', '--batch', '1',
               '--steps', '1', '--warmup', '1', '--variants', 'baseline', 'proposed+FCDL',
               '--profile-variant', 'baseline+FC', '--out', str(out)])
    report = json.load(open(out))
    names = [v['name'] for v in report['train']['variants']]
    assert names == ['plugin baseline b1',
                     'plugin proposed +fused-opt +channels-last +deferred-log +fast-loss b1']
    assert report['train']['variants'][1]['switches'] == 'FCDL'
    # The loss path, mmseg's and the fast one, on the same logits of all five heads.
    lp = report['profile']['loss_path']
    assert lp['heads'] == ['decode_head'] + [f'auxiliary_head.{i}' for i in range(4)]
    for path in ('mmseg', 'fast'):
        assert all(lp[path][k] > 0 for k in lp['pieces'])
        assert lp[path]['total'] == pytest.approx(sum(lp[path][k] for k in lp['pieces']))
    pieces = [s['name'] for s in report['profile']['segments']]
    assert pieces[:2] == ['data preprocessor', 'backbone fwd']
    assert {'neck fwd', 'aux heads fwd', 'backbone bwd', 'optimizer'} <= set(pieces)
    assert sum(s['share'] for s in report['profile']['segments']) == pytest.approx(1.0)
    # mmseg's accuracy() indexes with a mask: the profile counts such host waits.
    assert report['profile']['sync_ops']['aten::nonzero'] >= 5
    text = capsys.readouterr().out
    assert 'Profile: plugin baseline +fused-opt +channels-last b1' in text
    assert 'Loss path of 5 heads' in text


def test_fast_loss_variant_switches_every_head(tmp_path):
    from mmseg_ppenc.models.fast_loss import is_fast_loss_enabled, loss_heads
    cfgs = bm.model_configs('tiny', 'naive', 32)
    key_file = common.temp_key_file(str(tmp_path))
    built = {}
    for switches in ('', 'L'):
        v = Variant('v', 'baseline', 1, switches, cfgs, 32, 'cpu', key_file, 0)
        built[switches] = [is_fast_loss_enabled(h) for _, h in loss_heads(v.model)]
        assert torch.isfinite(v.step()['loss'])
        v.free()
    assert built == {'': [False] * 4, 'L': [True] * 4}


# --------------------------------------------------------------------------- AMP
def test_bf16_support_rules():
    assert not bf16_autocast_supported('cpu')
    assert bf16_autocast_supported('cpu', allow_cpu=True)
    assert not bf16_autocast_supported('mps')
    if not torch.cuda.is_available():
        assert not bf16_autocast_supported('cuda')


def _shipped_optim_cfg():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ppenc',
                                   'setr_vit-b_mla_cityscapes_baseline.py'))
    assert cfg.optim_wrapper.type == 'BF16AmpOptimWrapper'
    return cfg.optim_wrapper.to_dict()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU fallback')
def test_amp_falls_back_to_fp32_on_this_cpu(key_env):
    """A shipped full-size optim_wrapper trains a (tiny) model on the CPU in float32."""
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    bind_normalization(model)
    model.init_weights()
    wrapper = build_optim_wrapper(model, _shipped_optim_cfg())
    assert isinstance(wrapper, BF16AmpOptimWrapper)
    assert wrapper.autocast_dtype('cpu') is None
    with wrapper.optim_context(model):
        assert not torch.is_autocast_enabled('cpu')
        assert model.backbone.patch_embed.projection(torch.randn(1, 3, 16, 16)).dtype == \
            torch.float32
    data = synthetic_batch(2, 64, 19, seed=0)
    before = model.backbone.patch_embed.projection.weight.detach().clone()
    log_vars = model.train_step(data, wrapper)
    assert torch.isfinite(log_vars['loss'])
    assert not torch.equal(before, model.backbone.patch_embed.projection.weight)


def test_amp_bf16_when_allowed_and_checkpoints_interchange():
    model = torch.nn.Linear(8, 4)
    wrapper = BF16AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1,
                                                            momentum=0.9),
                                  allow_cpu=True)
    assert wrapper.autocast_dtype('cpu') == torch.bfloat16
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 8))
        assert out.dtype == torch.bfloat16
        loss = out.float().square().mean()
    wrapper.update_params(loss)
    assert model.weight.dtype == torch.float32 and model.weight.grad is None
    # No loss scaler: the state dict is a plain OptimWrapper's, in both directions.
    plain = OptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    plain.load_state_dict(wrapper.state_dict())
    wrapper.load_state_dict(plain.state_dict())
    assert 'loss_scaler' not in wrapper.state_dict()
