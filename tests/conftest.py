"""Shared fixtures: a generated Cityscapes-format dataset, a key file, tool loading."""
import importlib.util
import os
import os.path as osp
import sys
from types import ModuleType

import mmcv
import numpy as np
import pytest

# The tests use mmseg directly (datasets, registries, checkpoints), as a training script
# does: importing the plugin registers it (and applies its environment fixes) up front,
# so that every test file also runs on its own.
import mmseg_ppenc  # noqa: F401
from ppenc.keys import KEY_ENV_VAR, SecretKey
from ppenc.synthetic import make_synthetic_cityscapes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'ppenc', 'tiny')


def load_tool(name: str) -> ModuleType:
    """Import the repository's ``tools/<name>.py`` as a module (once per session).

    Args:
        name (str): Path below ``tools/`` without ``.py``, e.g. ``'keygen'`` or
            ``'analysis/reproduce_table'``.

    Returns:
        ModuleType: The tool module; ``main``/``parse_args`` run in-process, which avoids
        paying mmseg's start-up in a subprocess for every call.
    """
    path = osp.join(REPO, 'tools', *name.split('/')) + '.py'
    if not osp.isfile(path):
        raise FileNotFoundError(f'No tool {name!r}: {path} does not exist.')
    if name.startswith('analysis/'):
        # A package (relative imports): imported as the shims import it.
        tools = osp.join(REPO, 'tools')
        if tools not in sys.path:
            sys.path.insert(0, tools)
        return importlib.import_module(name.replace('/', '.'))
    mod_name = 'ppenc_tool_' + name.replace('/', '__')
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        # Registered before running so that dataclasses and pickling find the module.
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
    return sys.modules[mod_name]


@pytest.fixture(name='load_tool')
def load_tool_fixture():
    """:func:`load_tool` as a fixture, for tests that load a tool inside the test."""
    return load_tool


def tiny_config(decoder: str, setting: str) -> str:
    """Path of a tiny CPU config, e.g. ``tiny_config('mla', 'proposed')``."""
    return osp.join(TINY, f'setr_tiny_{decoder}_synthetic_{setting}.py')


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """A small generated Cityscapes tree (8 train, 3 val images of 64x128)."""
    root = tmp_path_factory.mktemp('cityscapes')
    make_synthetic_cityscapes(root, num_train=8, num_val=3, height=64, width=128, seed=0,
                              overwrite=True)
    return str(root) + os.sep


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    """A tiny ADE20K-format tree with off-grid image sizes (70x100) and labels 0..4."""
    root = tmp_path_factory.mktemp('ade')
    rng = np.random.default_rng(0)
    for split, n in (('training', 4), ('validation', 2)):
        os.makedirs(root / 'images' / split)
        os.makedirs(root / 'annotations' / split)
        for i in range(n):
            lab = np.zeros((70, 100), np.uint8)
            for c in range(1, 5):  # blocky regions so that the image is learnable
                y, x = rng.integers(0, 60), rng.integers(0, 90)
                lab[y:y + 30, x:x + 40] = c
            img = (lab[..., None] * 50 + rng.integers(0, 40, (70, 100, 3))).astype(np.uint8)
            mmcv.imwrite(img, str(root / 'images' / split / f'ADE_{i:04d}.jpg'))
            mmcv.imwrite(lab, str(root / 'annotations' / split / f'ADE_{i:04d}.png'))
    return str(root) + os.sep


@pytest.fixture(scope='session')
def session_key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('keys') / 'test.key'
    SecretKey.generate().save(path)
    return str(path)


@pytest.fixture
def key_env(monkeypatch, session_key_file, synthetic_root):
    """Select the session key and dataset through the environment, as users do."""
    monkeypatch.setenv(KEY_ENV_VAR, session_key_file)
    monkeypatch.setenv('PPENC_DATA_ROOT', synthetic_root)
    return SecretKey.load(session_key_file)


@pytest.fixture(scope='session')
def tiny_checkpoints(tmp_path_factory, session_key_file):
    """A tiny plain SETR-MLA segmentor (random weights) and the same model encrypted for
    the session key (``tools/encrypt_model.py``'s adaptation), as mmseg checkpoints.

    Returns:
        dict[str, str]: ``{'baseline': path, 'proposed': path}``: the baseline config on
        plain images and the proposed config on encrypted ones must give the same label
        maps with them.
    """
    import copy

    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import MODELS

    from mmseg_ppenc.model_encryption import encrypt_model_checkpoint

    root = tmp_path_factory.mktemp('tiny_checkpoints')
    init_default_scope('mmseg')
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    # Sharper classifiers: random heads give near-ties whose argmax would flip on float
    # rounding, which would make label comparisons say little.
    sd = {k: (v * 20 if 'conv_seg' in k else v) for k, v in model.state_dict().items()}
    plain, enc = str(root / 'plain.pth'), str(root / 'proposed.pth')
    # mmseg's init_model reads the classes from meta['dataset_meta'].
    torch.save({'state_dict': sd,
                'meta': {'dataset_meta': dict(CityscapesDataset.METAINFO)}}, plain)
    pre = cfg.model.data_preprocessor
    encrypt_model_checkpoint(plain, enc, SecretKey.load(session_key_file),
                             mean=list(pre.mean), std=list(pre.std))
    return {'baseline': plain, 'proposed': enc}
