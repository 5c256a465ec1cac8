"""The compatibility layer: mmcv-lite ops fallback and weights_only checkpoint loading."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmseg_ppenc import compat


def test_mmseg_models_import_and_setr_builds():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor'),
        backbone=dict(type='VisionTransformer', img_size=32, embed_dims=32, num_layers=2,
                      num_heads=2, out_indices=(0, 1)),
        decode_head=dict(type='SETRUPHead', in_channels=32, channels=16, num_classes=4,
                         in_index=1, num_convs=1, up_scale=4, kernel_size=1)))
    out = model(torch.zeros(1, 3, 32, 32), mode='tensor')
    assert out.shape == (1, 4, 8, 8)  # SETR-UP output before final resize


@pytest.mark.skipif(compat.has_compiled_mmcv_ops(), reason='a full mmcv is installed')
def test_fallback_ops():
    import mmcv.ops
    from mmcv.ops import point_sample
    assert getattr(mmcv.ops, compat._FALLBACK_ATTR)
    feats = torch.arange(16.).view(1, 1, 4, 4)
    pts = torch.tensor([[[0.125, 0.125], [0.875, 0.875]]])
    out = point_sample(feats, pts, align_corners=False)
    assert out.flatten().tolist() == [0.0, 15.0]
    with pytest.raises(ModuleNotFoundError, match='nms.*compiled'):
        mmcv.ops.nms(None, None, 0.5)
    with pytest.raises(AttributeError):
        mmcv.ops.__wrapped__  # dunder names are not ops


def test_fallback_not_installed_over_real_ops():
    """With compiled ops present, nothing is replaced (simulated by a real module)."""
    code = (
        'import sys, types, importlib.util as u\n'
        'real = types.ModuleType("mmcv.ops")\n'
        'def ga(name):\n'
        '    if name.startswith("__"): raise AttributeError(name)\n'
        '    return lambda *a, **k: "REAL"\n'
        'real.__getattr__ = ga\n'
        'import mmcv; sys.modules["mmcv.ops"] = mmcv.ops = real\n'
        'import mmseg_ppenc, mmseg.models\n'
        'import mmcv.ops; print(mmcv.ops is real, mmcv.ops.point_sample())\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == 'True REAL'


def test_weights_only_loads_mmengine_checkpoint_objects(tmp_path):
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance('compat_test')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', np.float32(0.5))
    ckpt = {'meta': {'cfg': 'x = 1', 'seed': np.int64(3), 'ratio': np.float64(0.5),
                     'arr': np.arange(4)},
            'message_hub': hub.state_dict(), 'state_dict': {'w': torch.ones(2)}}
    path = tmp_path / 'c.pth'
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == pytest.approx(1.0)
    assert loaded['meta']['seed'] == 3 and loaded['meta']['arr'].tolist() == [0, 1, 2, 3]


def test_weights_only_still_refuses_arbitrary_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))
    path = tmp_path / 'evil.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        torch.load(path, weights_only=True)


def test_restricted_getattr():
    from mmengine.logging import HistoryBuffer
    assert compat._history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(AttributeError, match='not allowed'):
        compat._history_buffer_getattr(HistoryBuffer, '__init__')
    with pytest.raises(AttributeError, match='not allowed'):
        compat._history_buffer_getattr(torch, 'load')
