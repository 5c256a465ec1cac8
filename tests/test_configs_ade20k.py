"""The ADE20K configs of mmseg's ViT, Swin, BEiT and MAE families:
``configs/ppenc/ade20k/*_{setting}.py``.

1. Every config is its stock mmseg config plus only what the method needs: the uint8
   ``PadToGrid`` of every setting, ``BlockScramble`` with the patch size as block size
   (encrypted settings), the backbone's encrypted variant and ``KeyManagementHook``
   (proposed), an on-grid slide stride (SETR, BEiT, MAE), 512x512 crops (BEiT); the
   top-level ``test_pipeline`` is the loaders'; the stock ``tta_pipeline`` with the pad
   (and the cipher) in every branch.
2. Shrunk (32-wide ViT, 64-pixel crops) through ``cfg_options``-style overrides of the
   shipped config, the three settings train through the mmengine Runner on a generated
   ADE20K-format folder and are tested with the stock IoU metric. From the same plain
   "pre-trained" weights, the proposed model equals the baseline (first loss, logits,
   label maps, mIoU) on test images whose resized size is off the grid, including one the
   resize leaves unchanged; the plain model on encrypted images (conventional 2) does not.
3. mmseg's own ``init_model`` + ``inference_model`` on the shipped proposed config, shrunk
   through ``cfg_options``, give the baseline config's label map on an off-grid image.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Tuple

import mmcv
import numpy as np
import pytest
import torch

import mmseg_ppenc  # noqa: F401  isort: skip

import mmseg  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmseg_ppenc.compat import replace_syncbn  # noqa: E402
from mmseg_ppenc.transforms import PACK_META_KEYS  # noqa: E402
from recipe import ENCRYPTED, assert_same_labels, scramble, shrink_family_backbone
from test_configs import padded_tta, plain, types_of, walk  # noqa: E402  (one copy)

REPO_ROOT = Path(__file__).resolve().parent.parent
ADE_DIR = REPO_ROOT / 'configs' / 'ppenc' / 'ade20k'
STOCK_DIR = Path(mmseg.__file__).resolve().parent / '.mim' / 'configs'

#: family -> stock mmseg config (below mmseg's configs/).
FAMILIES = {
    'setr_vit-l_mla_ade20k': 'setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py',
    'upernet_vit-b16_mln_ade20k': 'vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py',
    'segmenter_vit-s_mask_ade20k':
        'segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py',
    'dpt_vit-b16_ade20k': 'dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py',
    'upernet_swin-t_ade20k':
        'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    'upernet_beit-b16_ade20k': 'beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
    'upernet_mae-b16_ade20k': 'mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py',
}
#: Cipher block size = the backbone's input patch size (16 unless listed).
BLOCK = {'upernet_swin-t_ade20k': 4}
#: Stock recipes at 640x640 that the shipped configs train at 512x512.
AT_512 = {'upernet_beit-b16_ade20k'}
SETTINGS = ('baseline', 'conventional2', 'proposed')
GRID = [(f, s) for f in FAMILIES for s in SETTINGS]
GRID_IDS = [f'{f}-{s}' for f, s in GRID]
#: The on-grid slide strides the configs set (stock: 341 at 512, 426 at 640).
STRIDES = {'setr_vit-l_mla_ade20k': (336, 336), 'upernet_mae-b16_ade20k': (336, 336),
           'upernet_beit-b16_ade20k': (336, 336)}
CUSTOM_IMPORTS = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)

CROP = (64, 64)
#: Shrunk scales: the test Resize maps 70x100 to 60x86 (off the grid) and leaves 60x90
#: as it is (also off the grid); training images are mostly smaller than the crop.
TEST_SCALE = (120, 60)
TRAIN_SCALE = (96, 48)
VAL_SIZES = ((70, 100), (60, 90))
FAST = {'segmenter_vit-s_mask_ade20k', 'setr_vit-l_mla_ade20k'}


def config_path(family: str, setting: str) -> Path:
    return ADE_DIR / f'{family}_{setting}.py'


def load_stock(family: str) -> Config:
    return Config.fromfile(str(STOCK_DIR / FAMILIES[family]))


def stock_at_512(stock: dict) -> dict:
    """A 640x640 stock config as the shipped configs move it to 512x512: the crop, the
    backbone's image size, the slide window, and mmseg's 512x512 ADE20K pipelines."""
    stock = copy.deepcopy(stock)
    data = plain(Config.fromfile(str(STOCK_DIR / '_base_/datasets/ade20k.py')).to_dict())
    crop = (512, 512)
    stock['crop_size'] = crop
    stock['data_preprocessor']['size'] = crop
    model = stock['model']
    model['data_preprocessor']['size'] = crop
    model['backbone']['img_size'] = crop
    model['test_cfg']['crop_size'] = crop
    for name in ('train_pipeline', 'test_pipeline', 'tta_pipeline'):
        stock[name] = data[name]
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        stock[name]['dataset'] = data[name]['dataset']
    return stock


def with_scramble(pipeline: List[dict], block_size: int = 16) -> List[dict]:
    return list(pipeline[:-1]) + [scramble(block_size), pipeline[-1]]


# --------------------------------------------------------------------------- parsing
def test_all_configs_written() -> None:
    written = sorted(p.name for p in ADE_DIR.glob('*.py'))
    assert written == sorted(config_path(f, s).name for f, s in GRID)


@pytest.mark.parametrize('family,setting', GRID, ids=GRID_IDS)
def test_config_is_stock_plus_method(family: str, setting: str) -> None:
    cfg = plain(Config.fromfile(str(config_path(family, setting))).to_dict())
    stock = plain(load_stock(family).to_dict())
    if family in AT_512:
        stock = stock_at_512(stock)
    encrypt = setting != 'baseline'
    block = BLOCK.get(family, 16)
    assert cfg['custom_imports'] == CUSTOM_IMPORTS
    assert cfg['runner_type'] == 'PPEncRunner'

    # Model: the stock one; the proposed backbone type, an on-grid stride (SETR).
    model = copy.deepcopy(stock['model'])
    if setting == 'proposed':
        model['backbone']['type'] = ENCRYPTED[model['backbone']['type']]
    if family in STRIDES:
        assert stock['model']['test_cfg']['stride'] in ((341, 341), (426, 426))
        model['test_cfg']['stride'] = STRIDES[family]
    assert cfg['model'] == model
    backbone = cfg['model']['backbone']
    # The backbone follows the data preprocessor's normalisation (Segmenter: 127.5).
    assert 'mean' not in backbone and 'std' not in backbone
    assert backbone.get('patch_size', 4 if 'Swin' in backbone['type'] else 16) == block
    test_cfg = cfg['model']['test_cfg']
    if test_cfg['mode'] == 'slide':
        assert all(v % 16 == 0 for v in (*test_cfg['crop_size'], *test_cfg['stride']))

    # Pipelines: the stock ones plus the uint8 pad (and the cipher).
    stock_train = stock['train_dataloader']['dataset']['pipeline']
    stock_test = stock['test_dataloader']['dataset']['pipeline']
    crop = stock['crop_size']
    train = stock_train[:-1] + [dict(type='PadToGrid', size=crop), stock_train[-1]]
    resize = types_of(stock_test).index('Resize')
    test = (stock_test[:resize + 1] + [dict(type='PadToGrid')] + stock_test[resize + 1:-1]
            + [dict(type='PackSegInputs', meta_keys=PACK_META_KEYS)])
    # Labels are loaded after the pad, so they stay at the original image size.
    assert types_of(test).index('PadToGrid') < types_of(test).index('LoadAnnotations')
    if encrypt:
        train, test = with_scramble(train, block), with_scramble(test, block)
    assert cfg['train_dataloader']['dataset']['pipeline'] == train
    assert cfg['val_dataloader']['dataset']['pipeline'] == test
    assert cfg['test_dataloader']['dataset']['pipeline'] == test
    # What mmseg's init_model / inference_model and MMSegInferencer read.
    assert cfg['test_pipeline'] == test
    assert cfg['train_pipeline'] == train
    # tools/test.py --tta: the stock TTA branches, padded to the grid (and encrypted).
    assert cfg['tta_pipeline'] == padded_tta(stock['tta_pipeline'], encrypt, block)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ours, theirs = copy.deepcopy(cfg[name]), copy.deepcopy(stock[name])
        ours['dataset'].pop('pipeline')
        theirs['dataset'].pop('pipeline')
        assert ours == theirs, name

    # Hooks and keys.
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    assert hooks == (['KeyManagementHook'] if setting == 'proposed' else [])
    assert all(d.get('key_file') is None for d in walk(cfg)), 'configs name no key'

    # Everything else is the stock config.
    changed = {'model', 'train_dataloader', 'val_dataloader', 'test_dataloader',
               'train_pipeline', 'test_pipeline', 'custom_imports', 'custom_hooks',
               'runner_type', 'tta_pipeline'}
    assert ({k: v for k, v in cfg.items() if k not in changed and
             not k.startswith('ppenc_')} ==
            {k: v for k, v in stock.items() if k not in changed})


# --------------------------------------------------------------------------- data
@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> str:
    """ADE20K-format folders: labels 0..4 (0 is reduced to the ignore index)."""
    root = tmp_path_factory.mktemp('ade_cfg')
    rng = np.random.default_rng(1)
    sizes = {'training': [(70, 100)] * 4, 'validation': list(VAL_SIZES)}
    for split, shapes in sizes.items():
        os.makedirs(root / 'images' / split)
        os.makedirs(root / 'annotations' / split)
        for i, (h, w) in enumerate(shapes):
            lab = np.zeros((h, w), np.uint8)
            for c in range(1, 5):
                y, x = rng.integers(0, h - 20), rng.integers(0, w - 30)
                lab[y:y + 30, x:x + 40] = c
            img = (lab[..., None] * 50 + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
            mmcv.imwrite(img, str(root / 'images' / split / f'ADE_{i:04d}.jpg'))
            mmcv.imwrite(lab, str(root / 'annotations' / split / f'ADE_{i:04d}.png'))
    return str(root) + os.sep


# --------------------------------------------------------------------------- shrinking
def _small_pipeline(pipeline: List[dict]) -> List[dict]:
    """The shipped pipeline with only its sizes shrunk."""
    out = copy.deepcopy(pipeline)
    for t in out:
        if t['type'] == 'RandomResize':
            t['scale'] = TRAIN_SCALE
        elif t['type'] == 'Resize':
            t['scale'] = TEST_SCALE
        elif t['type'] == 'RandomCrop':
            t['crop_size'] = CROP
        elif t['type'] == 'PadToGrid' and t.get('size') is not None:
            t['size'] = CROP
    return out


def _small_model(model: dict) -> dict:
    """The shipped model at toy width; types and wiring unchanged."""
    m = copy.deepcopy(model)
    replace_syncbn(m)
    bb = m['backbone']
    head = m['decode_head']
    kind = head['type']
    if 'VisionTransformer' not in bb['type']:  # BEiT, MAE, Swin (UperNet)
        head.update(in_channels=shrink_family_backbone(m), channels=16, dropout_ratio=0.0)
    elif kind == 'SETRMLAHead':  # after MLANeck (4 x 32 channels)
        m['neck'].update(in_channels=[32] * 4, out_channels=32)
        head.update(in_channels=(32,) * 4, mla_channels=8, channels=32)
    elif kind == 'UPerHead':  # after MultiLevelNeck
        m['neck'].update(in_channels=[32] * 4, out_channels=32)
        head.update(in_channels=[32] * 4, channels=16, dropout_ratio=0.0)
    elif kind == 'SegmenterMaskTransformerHead':
        head.update(in_channels=32, channels=32, embed_dims=32, num_heads=2)
    elif kind == 'DPTHead':
        head.update(in_channels=(32,) * 4, channels=16, embed_dims=32,
                    post_process_channels=[8, 16, 32, 32])
    else:
        raise AssertionError(f'no shrink rule for {kind}')
    if 'VisionTransformer' in bb['type']:
        bb.update(img_size=CROP, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2,
                  drop_path_rate=0.0)
        if isinstance(bb.get('out_indices'), (tuple, list)):
            bb['out_indices'] = (0, 1, 2, 3)
    m['auxiliary_head'] = None
    m['data_preprocessor']['size'] = CROP
    if m['test_cfg'].get('mode') == 'slide':  # on the grid, as the shipped strides
        m['test_cfg'].update(crop_size=CROP, stride=(48, 48))
    return m


def shrink_options(path: Path, data_root: str, pretrained: str, heads: str,
                   work_dir: str) -> Dict[str, Any]:
    """Overrides (``cfg_options``) that shrink a shipped config for CPU tests.

    The pre-trained plain ViT is given where the shipped config names one
    (``model.pretrained`` or the backbone's ``init_cfg``); the head weights through the
    segmentor's ``init_cfg``, so every setting starts from the same model.
    """
    cfg = plain(Config.fromfile(str(path)).to_dict())
    model = _small_model(cfg['model'])
    if model.get('pretrained'):
        model['pretrained'] = pretrained
    else:
        model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
    model['init_cfg'] = dict(type='Pretrained', checkpoint=heads)
    train = _small_pipeline(cfg['train_pipeline'])
    test = _small_pipeline(cfg['test_pipeline'])
    loader = dict(num_workers=0, persistent_workers=False)
    return {
        'model': model,
        'train_pipeline': train, 'test_pipeline': test,
        'train_dataloader': dict(loader, batch_size=2,
                                 dataset=dict(data_root=data_root, pipeline=train)),
        'test_dataloader': dict(loader, batch_size=1,
                                dataset=dict(data_root=data_root, pipeline=test)),
        'val_dataloader': None, 'val_cfg': None, 'val_evaluator': None,
        'train_cfg': dict(type='IterBasedTrainLoop', max_iters=2, val_interval=1000),
        # lr 0: the models after training are the ones the settings start from, so the
        # proposed model must equal the baseline at test time too.
        'optim_wrapper': dict(optimizer=dict(lr=0.0)),
        'default_hooks': dict(logger=dict(interval=1),
                              checkpoint=dict(by_epoch=False, interval=2)),
        'work_dir': work_dir, 'randomness': dict(seed=0), 'log_level': 'WARNING',
    }


def make_weights(family: str, tmp_path: Path) -> Tuple[str, str]:
    """A randomly initialised plain backbone ("pre-trained") and heads, saved."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = plain(Config.fromfile(str(config_path(family, 'baseline'))).to_dict())
    model_cfg = _small_model(cfg['model'])
    model_cfg.update(pretrained=None)
    model_cfg['backbone']['init_cfg'] = None
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    sd = model.state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    # Sharper classifiers: random heads give near-ties whose argmax would flip on noise.
    heads = {k: (v * 20 if 'conv_seg' in k or 'mask_norm' in k else v)
             for k, v in sd.items() if not k.startswith('backbone.')}
    pre, head = str(tmp_path / 'pretrained_vit.pth'), str(tmp_path / 'heads.pth')
    torch.save({'state_dict': backbone}, pre)
    torch.save({'state_dict': heads}, head)
    return pre, head


def run_setting(family: str, setting: str, root: str, weights: Tuple[str, str],
                tmp_path: Path):
    """Train (2 iterations) and test one shipped config, shrunk, through the Runner."""
    path = config_path(family, setting)
    cfg = Config.fromfile(str(path))
    work_dir = str(tmp_path / setting)
    opts = shrink_options(path, root, *weights, work_dir)
    cfg.merge_from_dict(opts)
    runner = Runner.from_cfg(cfg)
    runner.train()
    loss = float(runner.message_hub.get_scalar('train/loss').current())
    metrics = runner.test()
    model = runner.model.eval()
    outs = []
    with torch.no_grad():
        for batch in runner.test_dataloader:
            for s in model.test_step(batch):
                outs.append((s.seg_logits.data.clone(), s.pred_sem_seg.data.clone(),
                             s.gt_sem_seg.data.shape, s.metainfo))
    return loss, metrics, outs, opts


# --------------------------------------------------------------------------- running
@pytest.mark.parametrize('family', [
    pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in FAMILIES])
def test_shrunk_settings_train_and_proposed_is_exact(family, key_env, ade_root, tmp_path):
    weights = make_weights(family, tmp_path)
    res = {s: run_setting(family, s, ade_root, weights, tmp_path) for s in SETTINGS}
    loss_b, metrics_b, outs_b, _ = res['baseline']
    loss_p, metrics_p, outs_p, _ = res['proposed']
    loss_c, _, outs_c, _ = res['conventional2']
    assert all(np.isfinite(v) for v in (loss_b, loss_p, loss_c))
    # The same padded training batch: the same first loss.
    assert abs(loss_p - loss_b) <= 1e-5 * abs(loss_b), (loss_b, loss_p)

    assert len(outs_b) == len(outs_p) == len(outs_c) == len(VAL_SIZES)
    for (lb, pb, gt_shape, meta), (lp, pp, _, _), (lc, _, _, _) in zip(outs_b, outs_p,
                                                                         outs_c):
        # The model saw the image padded to the grid; the prediction and the labels are
        # at the original size.
        assert meta['ori_shape'] in VAL_SIZES
        assert any(meta['img_padding_size'])
        assert all(v % 16 == 0 for v in meta['img_shape'][:2])
        assert tuple(pb.shape[-2:]) == tuple(gt_shape[-2:]) == tuple(meta['ori_shape'])
        scale = lb.abs().max()
        assert ((lp - lb).abs().max() / scale).item() <= 1e-5
        assert_same_labels(lb, pb, pp, tol=2e-5 * scale)
        # The plain model on encrypted images is not the baseline: the cipher is applied.
        assert ((lc - lb).abs().max() / scale).item() > 1e-2
    # The stock IoU metric ran against labels at the original size, with equal results.
    for k in ('aAcc', 'mIoU', 'mAcc'):
        assert abs(metrics_p[k] - metrics_b[k]) <= 0.1, (k, metrics_b, metrics_p)

    # The normalisation the proposed backbone was adapted for is the preprocessor's.
    cfg = Config.fromfile(str(config_path(family, 'proposed')))
    ckpt = torch.load(osp.join(str(tmp_path / 'proposed'), 'iter_2.pth'),
                      map_location='cpu', weights_only=False)
    assert ckpt['meta']['ppenc']['mean'] == list(cfg.model.data_preprocessor.mean)
    assert ckpt['meta']['ppenc']['std'] == list(cfg.model.data_preprocessor.std)


@pytest.mark.parametrize('family', [
    'segmenter_vit-s_mask_ade20k',
    pytest.param('upernet_vit-b16_mln_ade20k', marks=pytest.mark.slow),
    pytest.param('upernet_swin-t_ade20k', marks=pytest.mark.slow)])
def test_mmseg_inference_api_on_shipped_proposed_config(family, key_env, ade_root,
                                                        tmp_path):
    """mmseg's init_model + inference_model (no hook runs) on the shipped configs,
    shrunk through cfg_options, on an off-grid image: the proposed checkpoint gives the
    baseline's label map."""
    from mmseg.apis import inference_model, init_model
    weights = make_weights(family, tmp_path)
    img = osp.join(ade_root, 'images', 'validation', 'ADE_0000.jpg')
    preds = {}
    for setting in ('baseline', 'proposed'):
        path = config_path(family, setting)
        work_dir = str(tmp_path / setting)
        opts = shrink_options(path, ade_root, *weights, work_dir)
        cfg = Config.fromfile(str(path))
        cfg.merge_from_dict(opts)
        Runner.from_cfg(cfg).train()
        model = init_model(str(path), osp.join(work_dir, 'iter_2.pth'), device='cpu',
                           cfg_options=opts)
        preds[setting] = inference_model(model, img)
    h, w = mmcv.imread(img).shape[:2]
    # The image is resized off the grid (60x86), padded, and the pad cut off again.
    assert (h, w) == VAL_SIZES[0]
    b, p = preds['baseline'], preds['proposed']
    assert tuple(b.pred_sem_seg.data.shape[-2:]) == (h, w)
    assert any(b.metainfo['img_padding_size'])
    lb, lp = b.seg_logits.data, p.seg_logits.data
    assert ((lp - lb).abs().max() / lb.abs().max()).item() <= 1e-5
    assert_same_labels(lb, b.pred_sem_seg.data, p.pred_sem_seg.data,
                       tol=2e-5 * lb.abs().max())
