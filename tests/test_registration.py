"""Registration and the two packages: what each import loads and registers.

``import mmseg_ppenc`` registers every component with mmseg's own ``register_module``, in any
import order a user takes; ``import ppenc...`` loads neither torch nor mmseg nor mmengine.
Each case runs in a fresh interpreter, since the first import decides what is loaded.
"""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

COMPONENTS = {
    'MODELS': ['EncryptedVisionTransformer', 'FastVisionTransformer',
               'EncryptedSegDataPreProcessor', 'FusedMultiheadAttention', 'EncryptedBEiT',
               'EncryptedMAE', 'EncryptedSwinTransformer', 'EncryptedPCPVT', 'EncryptedSVT'],
    'TRANSFORMS': ['BlockScramble', 'PadToGrid', 'GridRandomCrop', 'EncryptedPhotoMetric',
                   'EncryptedRandomFlip'],
    'HOOKS': ['KeyManagementHook', 'KeylessServerHook', 'ChannelsLastHook', 'CompileModelHook',
              'DeferredLogRuntimeInfoHook', 'FastLossHook'],
    'DATASETS': ['KeylessEncryptedDataset'],
    'OPTIM_WRAPPERS': ['BF16AmpOptimWrapper'],
    'RUNNERS': ['PPEncRunner'],
}
HEAVY = ('torch', 'mmseg', 'mmengine', 'mmcv', 'timm', 'scipy')

_CHECK = ('import mmseg.registry as r; '
          'missing = [n for reg, names in {comps!r}.items() for n in names '
          'if getattr(r, reg).get(n) is None]; print("missing", missing)')

_CONFIG = """custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
default_scope = 'mmseg'
"""


def _run(code: str, cwd: str = REPO) -> str:
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize('prelude', [
    # mmseg's train script and `mim train`: mmseg's registries, then the config.
    'import mmseg.registry; from mmengine.config import Config; '
    'Config.fromfile("cfg.py")',
    # mmengine first, then custom_imports.
    'from mmengine.config import Config; from mmengine.runner import Runner; '
    'Config.fromfile("cfg.py")',
    # a user script that imports the plugin first, then uses mmseg.
    'import mmseg_ppenc',
    # client-side modules first, then the plugin.
    'import ppenc.keys, ppenc.dataset, ppenc.cipher; import mmseg_ppenc',
    # the plugin, then mmseg's models and mmseg's own registration.
    'import mmseg_ppenc; import mmseg.models; from mmseg.utils import register_all_modules; '
    'register_all_modules()',
    # a plugin submodule first (its parent package registers everything).
    'import mmseg_ppenc.apis',
], ids=['mmseg_then_custom_imports', 'mmengine_then_custom_imports', 'plugin_first',
        'client_modules_first', 'plugin_then_mmseg_register_all', 'submodule_first'])
def test_every_import_order_registers_everything(prelude, tmp_path):
    (tmp_path / 'cfg.py').write_text(_CONFIG)
    code = f'import sys; sys.path.insert(0, {REPO!r}); ' + prelude + '; ' + \
        _CHECK.format(comps=COMPONENTS)
    out = _run(code, cwd=str(tmp_path))
    assert out.strip().splitlines()[-1] == 'missing []'


@pytest.mark.parametrize('modules', [
    'ppenc', 'ppenc.keys', 'ppenc.cipher', 'ppenc.dataset', 'ppenc.grid', 'ppenc.meta',
    'ppenc.leak_scan', 'ppenc.synthetic', 'ppenc.errors', 'ppenc.files',
    'ppenc.cli.keygen', 'ppenc.cli.encrypt_dataset', 'ppenc.cli.make_synthetic_cityscapes',
])
def test_client_package_loads_no_framework(modules):
    code = (f'import sys; import {modules}; '
            f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    assert _run(code).strip() == '[]'


def test_plugin_import_installs_no_import_hook():
    code = ('import sys; before = list(sys.meta_path); import mmseg_ppenc; '
            'print([type(f).__module__ for f in sys.meta_path if f not in before])')
    out = _run(code).strip()
    assert 'mmseg_ppenc' not in out and 'ppenc' not in out, out


def test_warning_filter_is_only_for_mmcv_lite_message():
    code = ('import warnings; n = len(warnings.filters); import mmseg_ppenc; '
            'from mmseg_ppenc.compat import MMCV_LITE_WARNING, has_compiled_mmcv_ops; '
            'ours = [f for f in warnings.filters if f[1] is not None and '
            'f[1].pattern.startswith(MMCV_LITE_WARNING)]; '
            'print(len(ours) == (0 if has_compiled_mmcv_ops() else 1))')
    assert _run(code).strip() == 'True'


def test_checkpoint_types_are_allow_listed_at_plugin_import():
    code = ('import torch.serialization as ser; '
            'from mmengine.logging.history_buffer import HistoryBuffer; '
            'names = lambda: [g[0] if isinstance(g, tuple) else g '
            'for g in ser.get_safe_globals()]; '
            'before = HistoryBuffer in names(); import mmseg_ppenc; '
            'print(before, HistoryBuffer in names())')
    assert _run(code).strip() == 'False True'


@pytest.mark.parametrize('old, new', [('keys', 'SecretKey'), ('cipher', 'encrypt_image')])
def test_old_import_paths_warn_and_still_work(old, new):
    code = ('import warnings; warnings.simplefilter("error", DeprecationWarning); '
            f'import mmseg_ppenc\ntry:\n    import mmseg_ppenc.{old}\n'
            'except DeprecationWarning as e:\n    print("warned", e)\n'
            f'warnings.simplefilter("ignore"); import importlib, ppenc.{old}; '
            f'm = importlib.reload(importlib.import_module("mmseg_ppenc.{old}")); '
            f'print(m.{new} is ppenc.{old}.{new})')
    out = _run(code).strip().splitlines()
    assert out[0].startswith(f'warned mmseg_ppenc.{old} moved to ppenc.{old}'), out
    assert out[-1] == 'True'


def _sources():
    for pkg in ('ppenc', 'mmseg_ppenc'):
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in sorted(files):
                if f.endswith('.py'):
                    path = os.path.join(root, f)
                    yield os.path.relpath(path, REPO), ast.parse(open(path).read())


def test_no_import_hooks_or_sys_modules_writes_outside_compat():
    offenders = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ('meta_path', 'path_hooks'):
                offenders.append(f'{rel}:{node.lineno} sys.{node.attr}')
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute)
                            and t.value.attr == 'modules' and rel != 'mmseg_ppenc/compat.py'):
                        offenders.append(f'{rel}:{node.lineno} sys.modules[...] =')
    assert offenders == []


def test_no_access_to_private_attributes_of_other_packages():
    """``obj._name`` only on ``self``/``cls`` (a subclass's own state) or on names this
    repository defines; never on an mmengine or mmseg object."""
    own = set()
    trees = list(_sources())
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
    offenders = []
    for rel, tree in trees:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith('_')
                    and not node.attr.startswith('__') and node.attr not in own
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ('self', 'cls'))):
                offenders.append(f'{rel}:{node.lineno} .{node.attr}')
    assert offenders == []
