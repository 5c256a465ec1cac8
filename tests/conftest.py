"""Shared fixtures: a generated Cityscapes-format dataset and a key file."""
import os
import os.path as osp

import pytest

import mmseg_ppenc  # noqa: F401  (applies compat fixes, registers components)
from mmseg_ppenc.datasets import make_synthetic_cityscapes
from mmseg_ppenc.keys import KEY_ENV_VAR, SecretKey

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, 'configs', 'ppenc', 'tiny')


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
