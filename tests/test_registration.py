"""Registration: cheap import, components registered on every path users take."""
import subprocess
import sys

import pytest

COMPONENTS = {
    'MODELS': ['EncryptedVisionTransformer', 'FastVisionTransformer',
               'EncryptedSegDataPreProcessor', 'FusedMultiheadAttention'],
    'TRANSFORMS': ['BlockScramble', 'PadToGrid', 'GridRandomCrop', 'EncryptedPhotoMetric',
                   'EncryptedRandomFlip'],
    'HOOKS': ['KeyManagementHook', 'KeylessServerHook', 'ChannelsLastHook',
              'CompileModelHook', 'DeferredLogRuntimeInfoHook', 'FastLossHook'],
    'DATASETS': ['KeylessEncryptedDataset'],
    'OPTIM_WRAPPERS': ['BF16AmpOptimWrapper'],
}

_CHECK = ('import mmseg.registry as r; '
          'missing = [n for reg, names in {comps!r}.items() for n in names '
          'if getattr(r, reg).get(n) is None]; print("missing", missing)')


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize('prelude', [
    # custom_imports in a config: mmengine is loaded before mmseg_ppenc.
    'from mmengine.config import Config; import mmseg_ppenc',
    # a user script that imports the plugin first, then uses mmseg's registries.
    'import mmseg_ppenc',
    # a client-side module first, then mmseg.
    'import mmseg_ppenc.keys',
    # mmseg's models imported directly after the plugin (needs the mmcv-lite fallback).
    'import mmseg_ppenc; import mmseg.models',
], ids=['custom_imports', 'plugin_first', 'client_module_first', 'mmseg_models_direct'])
def test_every_import_order_registers_everything(prelude):
    out = _run(prelude + '; ' + _CHECK.format(comps=COMPONENTS))
    assert out.strip().splitlines()[-1] == 'missing []'


def test_plain_import_is_cheap_and_has_no_side_effects():
    code = ('import sys, warnings; n = len(warnings.filters); import mmseg_ppenc; '
            'print(sorted(m for m in ("torch", "mmseg", "mmengine", "mmcv", "timm", '
            '"scipy") if m in sys.modules), len(warnings.filters) - n)')
    assert _run(code).strip() == '[] 0'


def test_warning_filter_is_only_for_mmcv_lite_message():
    code = ('import warnings; import mmseg_ppenc; import mmseg.models; '
            'from mmseg_ppenc.compat import MMCV_LITE_WARNING, has_compiled_mmcv_ops; '
            'ours = [f for f in warnings.filters if f[1] is not None and '
            'f[1].pattern.startswith(MMCV_LITE_WARNING)]; '
            'print(len(ours) == (0 if has_compiled_mmcv_ops() else 1))')
    assert _run(code).strip() == 'True'


def test_checkpoint_types_are_allow_listed_once_mmseg_loads():
    code = ('import mmseg_ppenc, torch.serialization as ser; '
            'from mmengine.logging.history_buffer import HistoryBuffer; '
            'names = lambda: [g[0] if isinstance(g, tuple) else g '
            'for g in ser.get_safe_globals()]; '
            'before = HistoryBuffer in names(); import mmseg.registry; '
            'print(before, HistoryBuffer in names())')
    assert _run(code).strip() == 'False True'
