"""EncryptedSegDataPreProcessor == a pipeline ending in BlockScramble, bit for bit."""
import copy
import pickle
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.models import EncryptedSegDataPreProcessor
from mmseg_ppenc.transforms import BlockScramble

from conftest import tiny_config

register_all_modules(init_default_scope=True)


def _preprocessors(cfg, pad_to_grid):
    plain_cfg = copy.deepcopy(cfg.model.data_preprocessor)
    enc_cfg = copy.deepcopy(plain_cfg)
    enc_cfg.update(type='EncryptedSegDataPreProcessor', pad_to_grid=pad_to_grid)
    return MODELS.build(plain_cfg), MODELS.build(enc_cfg)


def _items(dataset, n, seed):
    out = []
    for i in range(n):
        random.seed(seed + i)
        np.random.seed(seed + i)
        out.append(dataset[i % len(dataset)])
    return out


def _assert_batches_equal(a, b):
    assert torch.equal(a['inputs'], b['inputs'])
    for sa, sb in zip(a['data_samples'], b['data_samples']):
        assert torch.equal(sa.gt_sem_seg.data, sb.gt_sem_seg.data)
        assert sa.img_shape == sb.img_shape


@pytest.mark.parametrize('training', [True, False], ids=['train', 'test'])
def test_equals_block_scramble_pipeline(key_env, training):
    base = Config.fromfile(tiny_config('mla', 'baseline'))
    conv2 = Config.fromfile(tiny_config('mla', 'conventional2'))
    loader = 'train_dataloader' if training else 'test_dataloader'
    plain_ds = DATASETS.build(copy.deepcopy(base[loader].dataset))
    enc_ds = DATASETS.build(copy.deepcopy(conv2[loader].dataset))
    plain_pre, enc_pre = _preprocessors(base, pad_to_grid=training)
    assert enc_pre.key_fingerprint == key_env.fingerprint
    n = 4 if training else 1
    ref = plain_pre(pseudo_collate(_items(enc_ds, n, seed=3)), training)
    got = enc_pre(pseudo_collate(_items(plain_ds, n, seed=3)), training)
    _assert_batches_equal(ref, got)
    unencrypted = plain_pre(pseudo_collate(_items(plain_ds, n, seed=3)), training)
    assert not torch.equal(unencrypted['inputs'], got['inputs'])


def test_pads_off_grid_like_block_scramble(key_env):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    seg = rng.integers(0, 19, (70, 50), dtype=np.uint8)

    def packed(scramble):
        res = dict(img=img.copy(), gt_seg_map=seg.copy(), seg_fields=['gt_seg_map'],
                   img_shape=(70, 50), ori_shape=(70, 50))
        if scramble:
            res = BlockScramble(pad_to_grid=True)(res)
        return PackSegInputs(meta_keys=('img_shape', 'ori_shape'))(res)

    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    plain_pre, enc_pre = _preprocessors(cfg, pad_to_grid=True)
    ref = plain_pre(pseudo_collate([packed(True)]), True)
    got = enc_pre(pseudo_collate([packed(False)]), True)
    _assert_batches_equal(ref, got)
    assert got['data_samples'][0].img_shape == (80, 64)

    strict = EncryptedSegDataPreProcessor(bgr_to_rgb=True)
    with pytest.raises(ValueError, match='70x50 input; expected sides that are multiples '
                                         'of 16.*pad_to_grid=True'):
        strict(pseudo_collate([packed(False)]), True)


def test_rgb_inputs_and_pickling(key_env):
    """Without bgr_to_rgb the inputs are taken as RGB; pickles carry no permutation."""
    x = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    pre = EncryptedSegDataPreProcessor()
    (enc,) = pre.encrypt_inputs([x])
    from ppenc.cipher import encrypt_tensor
    assert torch.equal(enc, encrypt_tensor(x[None], key_env)[0])
    data = pickle.dumps(pre)
    assert pre._selected.__getstate__()['_cipher'] is None
    assert np.asarray(key_env.block_permutation(16)).tobytes() not in data
    clone = pickle.loads(data)
    assert torch.equal(clone.encrypt_inputs([x])[0], enc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_on_gpu_equals_cpu(key_env):
    cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    _, enc_pre = _preprocessors(cfg, pad_to_grid=False)
    batch = [dict(inputs=torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
             for _ in range(2)]
    cpu = enc_pre(pseudo_collate(copy.deepcopy(batch)))['inputs']
    gpu = enc_pre.cuda()(pseudo_collate(batch))['inputs']
    assert torch.equal(gpu.cpu(), cpu)
