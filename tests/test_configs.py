"""Tests for the Cityscapes SETR experiment grid of Sueyoshi, Nishikawa, Kiya (arXiv
2507.12730): ``configs/ppenc/setr_vit-{b,l}_{mla,pup,naive}_cityscapes_{setting}.py``.

1. Every config parses and differs from the stock mmseg SETR config only where the
   method (and the ViT-B variant) requires, plus the speed defaults (fused attention,
   bf16 mixed precision).
2. Every config builds and runs a forward pass once shrunk to a tiny width.
3. The ViT-L MLA proposed config builds at full size.
4. Every shipped config passes the start checks under ``tools/test.py --tta``.
"""
from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import torch

# Applies the compatibility fixes (mmcv-lite ops) and registers the plugin's components;
# it must come before anything imports mmseg's models.
import mmseg_ppenc  # noqa: F401  isort: skip

import mmseg  # noqa: E402
from mmengine import Config  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.transforms import PACK_META_KEYS
from recipe import scramble
from ppenc.keys import InvalidKeyError, SecretKey  # noqa: E402
from mmseg_ppenc.models import (EncryptedVisionTransformer,  # noqa: E402
                                FusedMultiheadAttention)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / 'configs' / 'ppenc'
SHARED_BASE = CONFIG_DIR / '_base_' / 'encrypted_cityscapes_768x768.py'
STOCK_DIR = Path(mmseg.__file__).resolve().parent / '.mim' / 'configs' / 'setr'

ARCHS = ('b', 'l')
DECODERS = ('mla', 'pup', 'naive')
SETTINGS = ('baseline', 'conventional2', 'proposed')
GRID = list(itertools.product(ARCHS, DECODERS, SETTINGS))
GRID_IDS = [f'vit-{a}-{d}-{s}' for a, d, s in GRID]

ARCH_SPEC = {
    'l': dict(embed_dims=1024, num_layers=24, num_heads=16,
              checkpoint='pretrain/vit_large_patch16_384.pth',
              out_indices=dict(mla=(5, 11, 17, 23), pup=(9, 14, 19, 23),
                               naive=(9, 14, 19, 23))),
    'b': dict(embed_dims=768, num_layers=12, num_heads=12,
              checkpoint='pretrain/vit_base_patch16_384.pth',
              out_indices=dict(mla=(2, 5, 8, 11), pup=(4, 7, 9, 11),
                               naive=(4, 7, 9, 11))),
}
STOCK_EMBED_DIMS = 1024
CUSTOM_IMPORTS = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
PLAIN_TEST_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
CITYSCAPES_HW = (1024, 2048)
TINY_WIDTH = {'l': 64, 'b': 32}
TINY_HW = (64, 64)


def config_path(arch: str, decoder: str, setting: str) -> Path:
    return CONFIG_DIR / f'setr_vit-{arch}_{decoder}_cityscapes_{setting}.py'


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    return Config.fromfile(path)


def load_config(arch: str, decoder: str, setting: str) -> Config:
    """The parsed config (cached; callers must not modify it)."""
    return _load(str(config_path(arch, decoder, setting)))


def load_stock(decoder: str) -> Config:
    return _load(str(STOCK_DIR / f'setr_vit-l_{decoder}_8xb1-80k_cityscapes-768x768.py'))


def plain(obj: Any) -> Any:
    """ConfigDicts (recursively) as plain dicts, for comparisons and messages.

    ``_scope_`` keys are dropped: mmengine adds ``_scope_='mmseg'`` to what a config
    inherits through ``mmseg::``, which the stock config loaded directly lacks.
    """
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def walk(node: Any):
    """Every dict inside a config tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk(v)


def types_of(pipeline: List[dict]) -> List[str]:
    return [t['type'] for t in pipeline]


def encrypted(pipeline: List[dict], **scramble_kwargs) -> List[dict]:
    """``pipeline`` with BlockScramble inserted right before PackSegInputs."""
    assert pipeline[-1]['type'] == 'PackSegInputs'
    return list(pipeline[:-1]) + [dict(type='BlockScramble', **scramble_kwargs),
                                  pipeline[-1]]


def padded_tta(stock_tta: List[dict], encrypt: bool, block_size: int = 16) -> List[dict]:
    """A stock ``tta_pipeline`` as the shipped configs change it: in every branch the
    uint8 ``PadToGrid`` after the resize and flip (the pad kept for mmseg's
    post-processing), and ``BlockScramble`` (of ``block_size``) right before
    ``PackSegInputs`` when ``encrypt``."""
    load, aug = copy.deepcopy(stock_tta)
    lists = aug['transforms']
    assert [types_of(b) for b in lists[1:]] == [['RandomFlip', 'RandomFlip'],
                                                ['LoadAnnotations'], ['PackSegInputs']]
    lists = (lists[:2] + [[dict(type='PadToGrid')]] + lists[2:-1]
             + ([[scramble(block_size)]] if encrypt else [])
             + [[dict(type='PackSegInputs', meta_keys=PACK_META_KEYS)]])
    return [load, dict(aug, transforms=lists)]


def expected_model(arch: str, decoder: str, setting: str) -> dict:
    """The stock model with exactly the changes the grid makes."""
    model = copy.deepcopy(plain(load_stock(decoder).model))
    spec = ARCH_SPEC[arch]
    backbone = model['backbone']
    backbone['init_cfg'] = dict(type='Pretrained', checkpoint=spec['checkpoint'])
    # Fused attention by default; both types keep VisionTransformer's parameter names.
    backbone['type'] = ('EncryptedVisionTransformer' if setting == 'proposed'
                        else 'FastVisionTransformer')
    backbone['attn_impl'] = 'fused'
    if arch != 'l':
        backbone.update(embed_dims=spec['embed_dims'], num_layers=spec['num_layers'],
                        num_heads=spec['num_heads'],
                        out_indices=spec['out_indices'][decoder])
        # Whatever reads the backbone's 1024 channels now reads 768.
        for part in [model.get('neck'), model['decode_head'],
                     *model.get('auxiliary_head', [])]:
            if part is None:
                continue
            ic = part['in_channels']
            if isinstance(ic, (list, tuple)):
                part['in_channels'] = type(ic)(
                    spec['embed_dims'] if c == STOCK_EMBED_DIMS else c for c in ic)
            elif ic == STOCK_EMBED_DIMS:
                part['in_channels'] = spec['embed_dims']
    return model


# --------------------------------------------------------------------------- parsing
def test_shared_base_defines_only_ppenc_names() -> None:
    cfg = Config.fromfile(str(SHARED_BASE))
    names = set(cfg.keys())
    assert names and all(n.startswith('ppenc_') for n in names), names


def test_grid_is_complete() -> None:
    written = sorted(p.name for p in CONFIG_DIR.glob('setr_vit-*_cityscapes_*.py'))
    assert written == sorted(config_path(*g).name for g in GRID)


@pytest.mark.parametrize('arch,decoder,setting', GRID, ids=GRID_IDS)
def test_config_parses(arch: str, decoder: str, setting: str) -> None:
    path = config_path(arch, decoder, setting)
    text = path.read_text()
    assert '2507.12730' in text.split('_base_')[0], 'header must cite the paper'
    cfg = load_config(arch, decoder, setting)
    stock = load_stock(decoder)
    spec = ARCH_SPEC[arch]
    encrypt = setting != 'baseline'

    assert plain(cfg.custom_imports) == CUSTOM_IMPORTS
    assert cfg.runner_type == 'PPEncRunner'  # start checks before anything is written

    # Model: the stock one, changed only where the grid says.
    model = cfg.model
    backbone = model.backbone
    assert backbone.type == ('EncryptedVisionTransformer' if setting == 'proposed'
                             else 'FastVisionTransformer')
    assert backbone.attn_impl == 'fused'
    assert backbone.embed_dims == spec['embed_dims']
    assert backbone.num_layers == spec['num_layers']
    assert backbone.num_heads == spec['num_heads']
    assert tuple(backbone.out_indices) == spec['out_indices'][decoder]
    assert plain(backbone.init_cfg) == dict(type='Pretrained',
                                            checkpoint=spec['checkpoint'])
    assert model.pretrained is None
    assert plain(model) == expected_model(arch, decoder, setting)
    # Channel consistency (what the tiny build test cannot see at full width).
    if decoder == 'mla':
        assert list(model.neck.in_channels) == [spec['embed_dims']] * 4
        assert all(h.in_channels == model.neck.out_channels for h in model.auxiliary_head)
    else:
        assert model.decode_head.in_channels == spec['embed_dims']
        assert all(h.in_channels == spec['embed_dims'] for h in model.auxiliary_head)
    norms = [d['type'] for d in walk(plain(model)) if 'BN' in str(d.get('type', ''))]
    assert norms and set(norms) == {'SyncBN'}

    # Pipelines.
    stock_train = plain(stock.train_dataloader.dataset.pipeline)
    train = plain(cfg.train_dataloader.dataset.pipeline)
    val = plain(cfg.val_dataloader.dataset.pipeline)
    test = plain(cfg.test_dataloader.dataset.pipeline)
    # Every setting pads crops smaller than the crop size to it in uint8 (before
    # encryption), so the data preprocessor never pads a normalised batch and the three
    # settings train on the same pixels.
    padded_train = stock_train[:-1] + [dict(type='PadToGrid', size=(768, 768)),
                                       stock_train[-1]]
    if encrypt:
        assert train == encrypted(padded_train, pad_to_grid=True)
        assert val == encrypted(PLAIN_TEST_PIPELINE)
    else:
        assert train == padded_train
        assert val == PLAIN_TEST_PIPELINE
    assert test == val
    # mmseg's init_model / inference_model and MMSegInferencer read the top-level
    # test_pipeline: it must be the one the test loader runs.
    assert plain(cfg.test_pipeline) == test
    assert plain(cfg.train_pipeline) == train
    for pipeline in (train, val, test):
        names = types_of(pipeline)
        if encrypt:
            assert names.count('BlockScramble') == 1
            assert names.index('BlockScramble') == names.index('PackSegInputs') - 1
            assert names[-1] == 'PackSegInputs'
        else:
            assert 'BlockScramble' not in names
    for pipeline in (val, test):
        assert not any('Resize' in n for n in types_of(pipeline))
    # tools/test.py --tta: the stock TTA branches, padded to the grid and encrypted.
    assert plain(cfg.tta_pipeline) == padded_tta(plain(stock.tta_pipeline), encrypt)
    # The rest of the data settings are the stock ones.
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ours, theirs = plain(cfg[name]), plain(stock[name])
        ours['dataset'].pop('pipeline')
        theirs['dataset'].pop('pipeline')
        assert ours == theirs, name

    # Hooks and keys.
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    assert hooks == (['KeyManagementHook'] if setting == 'proposed' else [])
    for d in walk(plain(cfg.to_dict())):
        assert d.get('key_file') is None, 'configs must not name a key'

    # Slide inference on the 16-pixel block grid, for Cityscapes' 2048x1024 images.
    test_cfg = model.test_cfg
    assert test_cfg.mode == 'slide'
    assert tuple(test_cfg.crop_size) == (768, 768)
    assert tuple(test_cfg.stride) == (512, 512)
    patch = backbone.patch_size
    assert all(v % patch == 0 for v in (*test_cfg.crop_size, *test_cfg.stride))
    (h_crop, w_crop), (h_stride, w_stride) = test_cfg.crop_size, test_cfg.stride
    h_img, w_img = CITYSCAPES_HW
    # Window starts as computed by mmseg's EncoderDecoder.slide_inference.
    for img, crop, stride in ((h_img, h_crop, h_stride), (w_img, w_crop, w_stride)):
        grids = max(img - crop + stride - 1, 0) // stride + 1
        starts = [max(min(i * stride + crop, img) - crop, 0) for i in range(grids)]
        assert all(s % patch == 0 for s in starts), starts

    # bf16 mixed precision (float32 where unsupported); the optimizer is the stock one.
    expected_optim = plain(stock.optim_wrapper)
    expected_optim['type'] = 'BF16AmpOptimWrapper'
    assert plain(cfg.optim_wrapper) == expected_optim

    # Everything else is the stock config.
    allowed = {'model', 'train_dataloader', 'val_dataloader', 'test_dataloader',
               'train_pipeline', 'test_pipeline', 'custom_imports', 'custom_hooks', 'runner_type',
               'optim_wrapper', 'tta_pipeline'}
    ours = {k: v for k, v in plain(cfg.to_dict()).items()
            if k not in allowed and not k.startswith('ppenc_')}
    theirs = {k: v for k, v in plain(stock.to_dict()).items() if k not in allowed}
    assert ours == theirs


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretKey:
    key = SecretKey.generate()
    path = tmp_path / 'ppenc.key'
    key.save(path)
    monkeypatch.setenv('PPENC_KEY_FILE', str(path))
    return key


def test_encrypted_pipelines_fit_cityscapes(key_file: SecretKey) -> None:
    """The encrypted test pipeline takes 2048x1024 images as they are, but not the
    off-grid 2049x1025 that the stock Resize would make; training pads."""
    cfg = load_config('b', 'mla', 'conventional2')
    scramble = [TRANSFORMS.build(copy.deepcopy(t))
                for t in cfg.val_dataloader.dataset.pipeline
                if t['type'] == 'BlockScramble']
    assert len(scramble) == 1 and scramble[0].key_fingerprint == key_file.fingerprint
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*CITYSCAPES_HW, 3), dtype=np.uint8)
    out = scramble[0](dict(img=img.copy()))['img']
    assert out.shape == img.shape and not np.array_equal(out, img)
    with pytest.raises(ValueError, match='Resize'):
        scramble[0](dict(img=np.zeros((1025, 2049, 3), np.uint8)))

    train_scramble = [TRANSFORMS.build(copy.deepcopy(t))
                      for t in cfg.train_dataloader.dataset.pipeline
                      if t['type'] == 'BlockScramble']
    assert len(train_scramble) == 1
    res = train_scramble[0](dict(img=np.zeros((700, 750, 3), np.uint8),
                                 gt_seg_map=np.zeros((700, 750), np.uint8),
                                 seg_fields=['gt_seg_map']))
    assert res['img'].shape[:2] == (704, 752) == res['gt_seg_map'].shape


# --------------------------------------------------------------------------- building
@pytest.fixture(scope='module')
def registered() -> None:
    register_all_modules(init_default_scope=True)


def sync_bn_to_bn(node: Any) -> int:
    """Replace SyncBN (which needs CUDA and a process group) by BN, in place."""
    n = 0
    for d in walk(node):
        if d.get('type') == 'SyncBN':
            d['type'] = 'BN'
            n += 1
    return n


def shrink(model_cfg: dict, width: int) -> None:
    """Tiny backbone, neck and heads, in place."""
    model_cfg['backbone'].update(
        img_size=TINY_HW, embed_dims=width, num_layers=4, num_heads=2,
        out_indices=(0, 1, 2, 3), init_cfg=None)
    neck = model_cfg.get('neck')
    if neck is not None:  # MLA: list of backbone widths in, one width out per level
        neck['in_channels'] = [width] * len(neck['in_channels'])
        neck['out_channels'] = width
    for head in [model_cfg['decode_head'], *(model_cfg.get('auxiliary_head') or [])]:
        ic = head['in_channels']
        head['in_channels'] = (type(ic)([width] * len(ic))
                               if isinstance(ic, (list, tuple)) else width)
        head['channels'] = width
        if 'mla_channels' in head:  # SETRMLAHead needs channels == inputs * mla_channels
            head['mla_channels'] = width // len(head['in_channels'])


@pytest.mark.parametrize('arch,decoder,setting', GRID, ids=GRID_IDS)
def test_config_builds_tiny(arch: str, decoder: str, setting: str, registered: None,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if setting == 'proposed':
        key = SecretKey.generate()
        key.save(tmp_path / 'ppenc.key')
        monkeypatch.setenv('PPENC_KEY_FILE', str(tmp_path / 'ppenc.key'))
    else:  # the plain models need no key
        monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    model_cfg = copy.deepcopy(load_config(arch, decoder, setting).model)
    assert sync_bn_to_bn(model_cfg) > 0
    width = TINY_WIDTH[arch]
    shrink(model_cfg, width)

    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    if setting == 'proposed':
        assert isinstance(model.backbone, EncryptedVisionTransformer)
        assert model.backbone.key_fingerprint == key.fingerprint
    else:
        assert type(model.backbone).__name__ == 'FastVisionTransformer'
    assert all(isinstance(layer.attn, FusedMultiheadAttention)
               for layer in model.backbone.layers)
    bind_normalization(model)
    model.init_weights()  # init_cfg=None: random init (+ the key adaptation)
    model.eval()
    x = torch.rand(1, 3, *TINY_HW)
    with torch.no_grad():
        out = model(x, mode='tensor')
        assert out.shape[:2] == (1, 19) and torch.isfinite(out).all()
        feats = model.extract_feat(x)
        assert len(model.auxiliary_head) == (4 if decoder == 'mla' else 3)
        for aux in model.auxiliary_head:
            aux_out = aux(feats)
            assert aux_out.shape[:2] == (1, 19)


def test_proposed_needs_a_key(registered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    model_cfg = copy.deepcopy(load_config('b', 'pup', 'proposed').model)
    sync_bn_to_bn(model_cfg)
    shrink(model_cfg, TINY_WIDTH['b'])
    with pytest.raises(InvalidKeyError, match='PPENC_KEY_FILE'):
        MODELS.build(model_cfg)


def test_vit_l_mla_proposed_builds_full_size(registered: None,
                                             key_file: SecretKey) -> None:
    model_cfg = copy.deepcopy(load_config('l', 'mla', 'proposed').model)
    sync_bn_to_bn(model_cfg)  # no GPU here
    model = MODELS.build(model_cfg)  # no init_weights(): nothing is loaded
    backbone = model.backbone
    assert isinstance(backbone, EncryptedVisionTransformer)
    assert backbone.key_fingerprint == key_file.fingerprint
    assert len(backbone.layers) == 24
    assert backbone.patch_embed.projection.out_channels == 1024
    assert backbone.patch_size == backbone.block_size == 16
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint='pretrain/vit_large_patch16_384.pth')
    assert list(model.neck.in_channels) == [1024] * 4
    del model, backbone


# --------------------------------------------------------------------------- server
SERVER_DIR = CONFIG_DIR / 'server'
SERVER_BASE = SERVER_DIR / '_base_' / 'keyless_server.py'
# Server config -> the config whose model, schedule and loaders it keeps.
SERVERS = {
    'setr_vit-l_mla_cityscapes_server.py': CONFIG_DIR / 'setr_vit-l_mla_cityscapes_baseline.py',
    'setr_tiny_mla_synthetic_server.py':
        CONFIG_DIR / 'tiny' / 'setr_tiny_mla_synthetic_baseline.py',
}
SERVER_TRAIN_TYPES = ['LoadImageFromFile', 'LoadAnnotations', 'GridRandomCrop',
                      'EncryptedPhotoMetric', 'PackSegInputs']
SPLIT_PREFIX = {
    'train_dataloader': dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    'val_dataloader': dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
    'test_dataloader': dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
}


def test_server_base_defines_only_server_names() -> None:
    names = set(Config.fromfile(str(SERVER_BASE)).keys())
    assert names and all(n.startswith('ppenc_server_') for n in names), names


@pytest.fixture
def server_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Paths given through the environment, as the server configs document."""
    env = dict(PPENC_DATA_ROOT=str(tmp_path / 'encrypted') + '/',
               PPENC_PRETRAINED=str(tmp_path / 'vit_encrypted.pth'))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    return env


@pytest.mark.parametrize('name', sorted(SERVERS))
def test_server_config_is_its_model_config_plus_keyless_data(name: str,
                                                              server_env: dict) -> None:
    cfg = Config.fromfile(str(SERVER_DIR / name))  # not cached: reads the environment
    ref = Config.fromfile(str(SERVERS[name]))
    ours, theirs = plain(cfg.to_dict()), plain(ref.to_dict())

    # Model: the reference model; the backbone loads the encrypted checkpoint named by
    # $PPENC_PRETRAINED and has no key (it is an ordinary ViT on the server).
    model, ref_model = copy.deepcopy(ours['model']), copy.deepcopy(theirs['model'])
    backbone, ref_backbone = model.pop('backbone'), ref_model.pop('backbone')
    assert model == ref_model
    assert backbone['init_cfg'] == dict(type='Pretrained',
                                        checkpoint=server_env['PPENC_PRETRAINED'])
    assert backbone['type'] in ('VisionTransformer', 'FastVisionTransformer')
    for k in set(backbone) | set(ref_backbone):
        if k not in ('type', 'attn_impl', 'init_cfg'):
            assert backbone.get(k) == ref_backbone.get(k), k

    # Data: the reference loaders around the encrypted tree at $PPENC_DATA_ROOT, with
    # only cipher-commuting transforms, and no key anywhere.
    crop = tuple(ref_model['data_preprocessor']['size'])
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ds = copy.deepcopy(ours[loader]['dataset'])
        assert ds.pop('type') == 'KeylessEncryptedDataset'
        inner = ds.pop('dataset')
        assert ds == {}, ds
        assert inner['type'] == 'CityscapesDataset'
        assert inner['data_root'] == server_env['PPENC_DATA_ROOT']
        assert inner['data_prefix'] == SPLIT_PREFIX[loader]
        if loader == 'train_dataloader':
            assert types_of(inner['pipeline']) == SERVER_TRAIN_TYPES
            assert tuple(inner['pipeline'][2]['crop_size']) == crop
        else:
            assert inner['pipeline'] == PLAIN_TEST_PIPELINE
        rest = {k: v for k, v in ours[loader].items() if k != 'dataset'}
        assert rest == {k: v for k, v in theirs[loader].items() if k != 'dataset'}
    # (The unused `ppenc_*` pipeline templates of the shared bases are not run.)
    for d in walk({k: v for k, v in ours.items() if not k.startswith('ppenc_')}):
        assert d.get('type') != 'BlockScramble' and d.get('key_file') is None
    assert ours['custom_hooks'] == [dict(type='KeylessServerHook')]

    # Everything else is the reference config's.
    # No tta_pipeline: a keyless server cannot rescale ciphertext.
    assert ours['tta_pipeline'] is None
    changed = {'model', 'train_dataloader', 'val_dataloader', 'test_dataloader',
               'custom_hooks', 'data_root', 'crop_size', 'train_pipeline', 'test_pipeline',
               'tta_pipeline'}
    assert ({k: v for k, v in ours.items() if k not in changed and
             not k.startswith('ppenc_server_')} ==
            {k: v for k, v in theirs.items() if k not in changed})


def test_full_size_server_keeps_fused_attention_and_stock_names(registered: None,
                                                                server_env: dict) -> None:
    """The ViT-L server runs the plugin's fused attention, and its parameters carry the
    stock VisionTransformer's names, so that encrypted checkpoints load unchanged."""
    from mmseg.models.backbones import VisionTransformer
    cfg = Config.fromfile(str(SERVER_DIR / 'setr_vit-l_mla_cityscapes_server.py'))
    backbone_cfg = plain(cfg.model.backbone)
    assert backbone_cfg['type'] == 'FastVisionTransformer'
    assert backbone_cfg['attn_impl'] == 'fused'
    small = dict(backbone_cfg, img_size=TINY_HW, embed_dims=32, num_layers=2, num_heads=2,
                 out_indices=(0, 1), init_cfg=None)
    ours = MODELS.build(small)
    assert all(isinstance(layer.attn, FusedMultiheadAttention) for layer in ours.layers)
    stock_args = {k: v for k, v in small.items() if k not in ('type', 'attn_impl')}
    stock = VisionTransformer(**stock_args)
    assert ({k: tuple(v.shape) for k, v in ours.state_dict().items()} ==
            {k: tuple(v.shape) for k, v in stock.state_dict().items()})


# ------------------------------------------------------------- every shipped config
def _dataset_pipeline(dataset: dict) -> list:
    """The pipeline a loader's dataset runs (through wrappers such as the keyless one)."""
    while 'pipeline' not in dataset:
        dataset = dataset['dataset']
    return dataset['pipeline']


SHIPPED = sorted(p for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts)


def test_shipped_configs_are_found() -> None:
    # The paper grid, the tiny grid, the ADE20K families and the server configs.
    counts = {}
    for p in SHIPPED:
        where = str(p.parent.relative_to(CONFIG_DIR))
        counts[where] = counts.get(where, 0) + 1
    assert counts == {'.': 18, 'tiny': 9, 'ade20k': 21, 'server': 3}


@pytest.mark.parametrize('path', SHIPPED, ids=[p.stem for p in SHIPPED])
def test_top_level_test_pipeline_is_the_loaders(path: Path, server_env: dict) -> None:
    """mmseg's init_model / inference_model and MMSegInferencer build the top-level
    ``test_pipeline``; tools/test.py builds the loaders'. They must be one pipeline, or
    the inference API feeds a proposed model plain (or off-grid) images."""
    cfg = plain(Config.fromfile(str(path)).to_dict())
    test = _dataset_pipeline(cfg['test_dataloader']['dataset'])
    assert cfg['test_pipeline'] == test
    assert _dataset_pipeline(cfg['val_dataloader']['dataset']) == test
    assert cfg['train_pipeline'] == _dataset_pipeline(cfg['train_dataloader']['dataset'])
    encrypted_model = cfg['model']['backbone']['type'] == 'EncryptedVisionTransformer'
    if encrypted_model:
        assert 'BlockScramble' in types_of(test)


def _tta_marks(path: Path) -> tuple:
    """Full-size models take seconds to build: the tiny configs and one proposed config
    per family and decoder run by default, the others with the slow tests."""
    quick = (path.parent.name == 'tiny' or path.parent.name == 'server'
             or (path.stem.endswith('_proposed')
                 and (path.parent.name == 'ade20k' or '_vit-b_' in path.stem)))
    return () if quick else (pytest.mark.slow,)


@pytest.mark.parametrize('path', [pytest.param(p, marks=_tta_marks(p)) for p in SHIPPED],
                         ids=[p.stem for p in SHIPPED])
def test_shipped_tta_passes_the_start_checks(path: Path, server_env: dict,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``tools/test.py --tta`` on every shipped config: the TTA model (``SegTTAModel``
    around the config's model) and the ``tta_pipeline`` pass every start check. In the
    encrypted settings every branch resizes and flips, then pads to the grid and
    encrypts. Keyless server configs have no ``tta_pipeline`` (rescaling ciphertext does
    not commute with the cipher) and ``--tta`` refuses them with the reason."""
    from mmseg_ppenc.runner import use_tta
    from mmseg_ppenc.start_checks import start_problems
    from ppenc.errors import ConfigError
    key = tmp_path / 'ppenc.key'
    SecretKey.generate().save(key)
    monkeypatch.setenv('PPENC_KEY_FILE', str(key))
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'work_dir')
    if path.parent.name == 'server':
        assert cfg.get('tta_pipeline') is None
        with pytest.raises(ConfigError, match='--tta needs tta_pipeline'):
            use_tta(cfg)
        return
    use_tta(cfg)
    assert cfg.model.type == 'SegTTAModel'
    tta = plain(cfg.test_dataloader.dataset.pipeline)
    branches = tta[1]['transforms']
    assert types_of(tta) == ['LoadImageFromFile', 'TestTimeAug']
    assert [types_of(b) for b in branches[:3]] == [
        ['Resize'] * len(branches[0]), ['RandomFlip', 'RandomFlip'], ['PadToGrid']]
    encrypted = path.stem.endswith(('_proposed', '_conventional2'))
    assert (['BlockScramble'] in [types_of(b) for b in branches]) == encrypted
    assert branches[-1] == [dict(type='PackSegInputs', meta_keys=PACK_META_KEYS)]
    assert start_problems(cfg) == []
