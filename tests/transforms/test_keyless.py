"""Keyless server augmentations: each commutes with the cipher byte for byte, and the
pipeline check refuses the ones that do not."""
import copy
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import DATASETS, TRANSFORMS
from mmseg.utils import register_all_modules

from ppenc.cipher import get_cipher
from ppenc.dataset import MANIFEST_NAME, encrypt_dataset
from ppenc.synthetic import make_synthetic_cityscapes
from ppenc.keys import SecretKey
from ppenc.errors import KeylessPipelineError
from mmseg_ppenc.datasets.keyless import KeylessEncryptedDataset
from mmseg_ppenc.transforms import (ALLOWED_TRANSFORMS, EncryptedPhotoMetric,
                                    EncryptedRandomFlip, GridRandomCrop,
                                    check_keyless_pipeline)

from conftest import REPO

register_all_modules(init_default_scope=True)
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
FLIP_CFG = osp.join(REPO, 'configs', 'ppenc', 'server',
                    'setr_tiny_mla_synthetic_server_flip.py')

KEYS = {'plain': SecretKey(bytes(range(32))),
        'flip': SecretKey(bytes(range(32, 64)), flip_compatible=True)}
SIZES = [(64, 64), (64, 128), (96, 160)]


def _results(img, seg):
    return {'img': img, 'gt_seg_map': seg, 'seg_fields': ['gt_seg_map'],
            'img_shape': img.shape[:2], 'ori_shape': img.shape[:2]}


def _sample(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    # Label map with large regions, so cat_max_ratio has something to decide.
    seg = (np.arange(shape[1])[None, :] * 4 // shape[1]).repeat(shape[0], 0).astype(np.uint8)
    seg[: shape[0] // 4] = 255
    return img, seg


def _run(transform, img, seg, seed):
    np.random.seed(seed)  # the transforms draw from NumPy's global RNG, as mmseg's do
    return transform(_results(img.copy(), seg.copy()))


def _enc(key, img):
    # mmcv loads BGR; the BGR view of the RGB cipher is what the server's images are.
    return get_cipher(key, 16).encrypt(img, 'bgr')


def _commutes(transform, key, shape, seed):
    img, seg = _sample(shape, seed)
    a = _run(transform, _enc(key, img), seg, seed)   # server: aug(encrypt(x))
    b = _run(transform, img, seg, seed)              # client: encrypt(aug(x))
    assert np.array_equal(a['gt_seg_map'], b['gt_seg_map'])
    return np.array_equal(a['img'], _enc(key, b['img'])), a, b, img


SERVER_AUGS = {
    'grid_crop': lambda: GridRandomCrop(crop_size=(32, 48)),
    'grid_crop_cat': lambda: GridRandomCrop(crop_size=(48, 32), cat_max_ratio=0.6),
    'photometric': lambda: EncryptedPhotoMetric(prob=1.0),
    'brightness_clip': lambda: EncryptedPhotoMetric(brightness_delta=200,
                                                    contrast_range=(1.0, 1.0), prob=1.0),
    'contrast_clip': lambda: EncryptedPhotoMetric(brightness_delta=0,
                                                  contrast_range=(1.8, 2.5), prob=1.0),
}


@pytest.mark.parametrize('seed', [0, 3])
@pytest.mark.parametrize('shape', SIZES)
@pytest.mark.parametrize('key', sorted(KEYS))
@pytest.mark.parametrize('aug', sorted(SERVER_AUGS))
def test_server_augmentation_commutes(aug, key, shape, seed):
    ok, a, b, img = _commutes(SERVER_AUGS[aug](), KEYS[key], shape, seed)
    assert ok
    if aug.startswith('grid_crop'):
        t = SERVER_AUGS[aug]()
        assert a['img'].shape[:2] == tuple(min(c, s) for c, s in zip(t.crop_size, shape))
        assert a['img_shape'] == a['img'].shape[:2]
    else:
        assert not np.array_equal(b['img'], img)  # the augmentation did something
    if aug.endswith('clip'):
        assert (b['img'] == 0).any() or (b['img'] == 255).any()  # clipping happened


def test_grid_crop_offsets_on_grid():
    t = GridRandomCrop(crop_size=(32, 32))
    img = np.arange(96 * 160 * 3, dtype=np.int64).reshape(96, 160, 3)
    seen = set()
    for seed in range(40):
        np.random.seed(seed)
        out = t(_results(img, np.zeros((96, 160), np.uint8)))['img']
        y, x = np.argwhere((img == out[0, 0]).all(axis=2))[0]
        assert y % 16 == 0 and x % 16 == 0
        seen.add((y, x))
    assert len(seen) > 5  # really random


@pytest.mark.parametrize('shape', SIZES)
def test_flip_commutes_only_with_flip_compatible_key(shape):
    flip = EncryptedRandomFlip(prob=1.0, flip_compatible=True)
    ok, a, b, img = _commutes(flip, KEYS['flip'], shape, 0)
    assert ok and a['flip'] is True and a['flip_direction'] == 'horizontal'
    assert np.array_equal(b['img'], img[:, ::-1])
    ok_plain, *_ = _commutes(flip, KEYS['plain'], shape, 0)
    assert not ok_plain  # an ordinary key: flipping encrypted images is not encryption


def _differs(transform, key, shape=(64, 128), seed=1):
    ok, *_ = _commutes(transform, key, shape, seed)
    return not ok


@pytest.mark.parametrize('name,cfg', [
    ('RandomCrop', dict(type='RandomCrop', crop_size=(32, 32))),
    ('Resize', dict(type='Resize', scale=(96, 48), keep_ratio=False)),
    ('RandomFlip', dict(type='RandomFlip', prob=1.0)),
    ('RandomRotate', dict(type='RandomRotate', prob=1.0, degree=20)),
])
def test_refused_transforms_really_do_not_commute(name, cfg):
    t = TRANSFORMS.build(cfg)
    if name == 'RandomCrop':  # make sure the chosen offset is off the grid
        for seed in range(50):
            np.random.seed(seed)
            off = np.random.randint(0, 33), np.random.randint(0, 97)
            if off[0] % 16 or off[1] % 16:
                break
        assert _differs(t, KEYS['plain'], seed=seed)
    elif name == 'Resize':
        img, seg = _sample((64, 128))
        a = t(_results(_enc(KEYS['plain'], img), seg))['img']
        b = t(_results(img, seg))['img']
        assert a.shape == b.shape == (48, 96, 3)
        assert not np.array_equal(a, _enc(KEYS['plain'], b))
    else:
        assert _differs(t, KEYS['plain'])


REFUSED = ['RandomResize', 'Resize', 'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion',
           'RandomRotate', 'RandomCutOut', 'BlockScramble', 'mmseg.RandomCrop']


@pytest.mark.parametrize('name', REFUSED)
def test_pipeline_check_refuses(name):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type=name), dict(type='PackSegInputs')]
    with pytest.raises(KeylessPipelineError) as e:
        check_keyless_pipeline(pipeline)
    msg = str(e.value)
    short = name.split('.')[-1]
    assert f'pipeline[2] {short} does not commute' in msg
    assert 'alternative:' in msg and 'Allowed transforms: ' + ', '.join(ALLOWED_TRANSFORMS) in msg
    if short == 'RandomCrop':
        assert 'GridRandomCrop' in msg
    if short == 'RandomFlip':
        assert 'EncryptedRandomFlip' in msg and '--flip-compatible' in msg
    if short in ('RandomResize', 'Resize'):
        assert 'offline' in msg


def test_pipeline_check_accepts_allowed_and_objects():
    names = check_keyless_pipeline([
        dict(type='LoadImageFromFile'), dict(type='mmseg.LoadAnnotations'),
        GridRandomCrop(crop_size=32), dict(type='EncryptedPhotoMetric'),
        dict(type='PackSegInputs')])
    assert names == ['LoadImageFromFile', 'LoadAnnotations', 'GridRandomCrop',
                     'EncryptedPhotoMetric', 'PackSegInputs']
    with pytest.raises(KeylessPipelineError, match='grayscale'):
        check_keyless_pipeline([dict(type='LoadImageFromFile', color_type='grayscale')])


def test_constructor_checks():
    with pytest.raises(KeylessPipelineError,
                       match=r'crop_size=\(30, 50\) is off the 16-pixel block grid.*'
                             r'for 30 use 16 or 32; for 50 use 48 or 64'):
        GridRandomCrop(crop_size=(30, 50))
    with pytest.raises(KeylessPipelineError, match='flip_compatible=True'):
        EncryptedRandomFlip()
    with pytest.raises(ValueError, match='60x128 pixels, off the 16-pixel block grid'):
        GridRandomCrop(crop_size=32)(_results(np.zeros((60, 128, 3), np.uint8),
                                              np.zeros((60, 128), np.uint8)))


# ----------------------------------------------------------------- encrypted trees
@pytest.fixture(scope='module')
def trees(tmp_path_factory):
    """``src``: a plain synthetic tree; ``plain``/``flip``: its encryption with an
    ordinary and with a flip-compatible key."""
    root = tmp_path_factory.mktemp('server_tf')
    src = str(root / 'src')
    make_synthetic_cityscapes(src, num_train=3, num_val=1, height=64, width=128, seed=2)
    out = {'src': src}
    for name, key in KEYS.items():
        dst = str(root / f'enc_{name}')
        encrypt_dataset(src, dst, key, workers=1, progress=False)
        out[name] = dst
    return out


def _server_cfg(data_root, path=SERVER_CFG):
    cfg = Config.fromfile(path)
    ds = copy.deepcopy(cfg.train_dataloader.dataset)
    ds.dataset.data_root = data_root
    return cfg, ds


@pytest.mark.parametrize('key', sorted(KEYS))
def test_server_dataset_builds_and_matches_client_side_augmentation(trees, key):
    cfg, ds_cfg = _server_cfg(trees[key])
    ds = DATASETS.build(ds_cfg)
    assert isinstance(ds, KeylessEncryptedDataset) and len(ds) == 3
    assert ds.manifest['key_fingerprint'] == KEYS[key].fingerprint
    assert ds.metainfo['classes'][0] == 'road'
    # The server's augmented encrypted sample == the encryption of the same augmentation
    # applied by a client to the plain image (same RNG state).
    plain_cfg = copy.deepcopy(ds_cfg.dataset)
    plain_cfg.data_root = trees['src']
    plain_ds = DATASETS.build(plain_cfg)
    for i in range(len(ds)):
        np.random.seed(10 + i)
        s = ds[i]
        np.random.seed(10 + i)
        p = plain_ds[i]
        assert tuple(s['inputs'].shape) == (3, 64, 64)
        enc = _enc(KEYS[key], p['inputs'].permute(1, 2, 0).numpy().copy())
        assert torch.equal(s['inputs'], torch.from_numpy(enc).permute(2, 0, 1))
        assert torch.equal(s['data_samples'].gt_sem_seg.data,
                           p['data_samples'].gt_sem_seg.data)


def test_flip_config_checked_against_manifest(trees):
    _, ds_cfg = _server_cfg(trees['flip'], FLIP_CFG)
    ds = DATASETS.build(ds_cfg)
    assert 'EncryptedRandomFlip' in repr(ds.pipeline)
    _, ds_cfg = _server_cfg(trees['plain'], FLIP_CFG)
    with pytest.raises(KeylessPipelineError, match='not flip-compatible'):
        DATASETS.build(ds_cfg)
    _, ds_cfg = _server_cfg(trees['flip'], FLIP_CFG)
    ds_cfg.dataset.pipeline[3]['key_fingerprint'] = KEYS['plain'].fingerprint
    with pytest.raises(KeylessPipelineError, match=f'expects key {KEYS["plain"].fingerprint}'):
        DATASETS.build(ds_cfg)


def test_dataset_refusals(trees, tmp_path):
    # Plain data: no manifest.
    _, ds_cfg = _server_cfg(trees['src'])
    with pytest.raises(KeylessPipelineError, match=f'No {MANIFEST_NAME}.*encrypt_dataset'):
        DATASETS.build(ds_cfg)
    # A non-commuting transform in the server config.
    _, ds_cfg = _server_cfg(trees['plain'])
    ds_cfg.dataset.pipeline[2] = dict(type='RandomCrop', crop_size=(64, 64))
    with pytest.raises(KeylessPipelineError, match='RandomCrop does not commute.*GridRandomCrop'):
        DATASETS.build(ds_cfg)
    # Block size of the crop differs from the data's.
    _, ds_cfg = _server_cfg(trees['plain'])
    ds_cfg.dataset.pipeline[2] = dict(type='GridRandomCrop', crop_size=(32, 32), block_size=8)
    with pytest.raises(KeylessPipelineError, match='block_size=8.*block_size=16'):
        DATASETS.build(ds_cfg)
    # ADE20K reads .jpg by default; encrypted trees are PNG.
    _, ds_cfg = _server_cfg(trees['plain'])
    ds_cfg.dataset.type = 'ADE20KDataset'
    with pytest.raises(KeylessPipelineError, match=r"img_suffix='.png'"):
        DATASETS.build(ds_cfg)
    # An interrupted (incomplete) tree.
    manifest = json.load(open(osp.join(trees['plain'],
                                       MANIFEST_NAME)))
    manifest['complete'] = False
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    _, ds_cfg = _server_cfg(str(tmp_path))
    with pytest.raises(KeylessPipelineError, match='incomplete'):
        DATASETS.build(ds_cfg)


def _runner(cfg, work_dir):
    from mmengine.runner import Runner
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=10)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    return Runner.from_cfg(cfg)


def test_runner_start_refuses_misconfigured_server_runs(trees, tmp_path, monkeypatch):
    """The refusals surface when the Runner starts, before any training step."""
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    enc = trees['plain']
    cfg, _ = _server_cfg(enc)
    cfg.train_dataloader.dataset.dataset.data_root = enc
    cfg.train_dataloader.dataset.dataset.pipeline[2] = dict(type='RandomCrop',
                                                            crop_size=(64, 64))
    with pytest.raises(KeylessPipelineError, match='RandomCrop does not commute'):
        _runner(cfg, tmp_path / 'a').train()
    # A plain (unencrypted) initial checkpoint: the inaccurate "conventional 2" setting.
    cfg, _ = _server_cfg(enc)
    cfg.train_dataloader.dataset.dataset.data_root = enc
    from mmseg.registry import MODELS
    plain_ckpt = str(tmp_path / 'plain_vit.pth')
    backbone = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
    torch.save({'state_dict': backbone.state_dict()}, plain_ckpt)
    cfg.model.backbone.init_cfg.checkpoint = plain_ckpt
    with pytest.raises(KeylessPipelineError, match='records no key.*encrypt_model.py'):
        _runner(cfg, tmp_path / 'b').train()
    # An initial checkpoint encrypted for another key.
    torch.save({'state_dict': backbone.state_dict(),
                'meta': {'ppenc': {'key_fingerprint': KEYS['flip'].fingerprint}}}, plain_ckpt)
    with pytest.raises(KeylessPipelineError, match=f'initial checkpoint .* was made for key '
                                                   f'{KEYS["flip"].fingerprint}, but this '
                                                   'run uses key'):
        _runner(cfg, tmp_path / 'c').train()
    # A plain dataset wrapper-less config.
    cfg, _ = _server_cfg(enc)
    cfg.train_dataloader.dataset = cfg.train_dataloader.dataset.dataset
    cfg.train_dataloader.dataset.data_root = enc
    cfg.model.backbone.init_cfg = None
    with pytest.raises(KeylessPipelineError, match='not KeylessEncryptedDataset'):
        _runner(cfg, tmp_path / 'd').train()
    assert not os.environ.get('PPENC_KEY_FILE')


@pytest.mark.parametrize('server,baseline', [
    ('setr_tiny_mla_synthetic_server.py', 'tiny/setr_tiny_mla_synthetic_baseline.py'),
    ('setr_tiny_mla_synthetic_server_flip.py', 'tiny/setr_tiny_mla_synthetic_baseline.py'),
    ('setr_vit-l_mla_cityscapes_server.py', 'setr_vit-l_mla_cityscapes_baseline.py'),
])
def test_server_configs_are_keyless(server, baseline):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ppenc', 'server', server))
    base = Config.fromfile(osp.join(REPO, 'configs', 'ppenc', baseline))
    bb = cfg.model.backbone
    # The stock ViT or the plugin's fused-attention one: both keep the stock parameter
    # names, so the encrypted checkpoint is an ordinary mmseg state dict, and neither
    # needs a key.
    assert bb.type in ('VisionTransformer', 'FastVisionTransformer')
    assert bb.init_cfg.type == 'Pretrained'
    assert 'encrypted' in bb.init_cfg.checkpoint
    # Same architecture as the baseline: only the backbone class and weights differ.
    arch = {k: v for k, v in base.model.backbone.items()
            if k not in ('type', 'attn_impl', 'init_cfg', 'torch_compile')}
    assert {k: bb[k] for k in arch} == arch
    for part in ('neck', 'decode_head', 'auxiliary_head', 'test_cfg', 'data_preprocessor'):
        assert cfg.model[part] == base.model[part]
    assert {'type': 'KeylessServerHook'} in cfg.custom_hooks
    # (The base files still define unused `ppenc_encrypted_*` pipeline variables.)
    used = repr([cfg.model, cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader,
                 cfg.custom_hooks])
    assert 'BlockScramble' not in used and 'EncryptedVisionTransformer' not in used
    assert 'key_file' not in used
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ds = cfg[loader].dataset
        assert ds.type == 'KeylessEncryptedDataset'
        flip = 'flip' in server and loader == 'train_dataloader'
        manifest = {'block_size': 16, 'flip_compatible': flip, 'key_fingerprint': 'f' * 16}
        check_keyless_pipeline(ds.dataset.pipeline, manifest)
