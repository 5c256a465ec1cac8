"""The README recipe applied to stock mmseg configs, shrunk, and run through the Runner.

Shared by ``tests/test_generality.py`` (the ViT family) and ``tests/test_families.py``
(BEiT, MAE, Swin, Twins): one copy of the recipe, of the toy data pipelines, of the
"pre-trained" weights and of the label-map comparison.
"""
from __future__ import annotations

import copy
import os.path as osp
from typing import List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmseg_ppenc.compat import replace_syncbn
from mmseg_ppenc.transforms import PACK_META_KEYS

CROP = (64, 64)
#: Test-time Resize that moves both data sets' images off the 16-pixel grid
#: (64x128 -> 60x120, 70x100 -> 60x86).
TEST_SCALE = (120, 60)
#: Backbone type -> its encrypted variant, for the recipe's type switch.
ENCRYPTED = {
    'VisionTransformer': 'EncryptedVisionTransformer',
    'BEiT': 'EncryptedBEiT',
    'MAE': 'EncryptedMAE',
    'SwinTransformer': 'EncryptedSwinTransformer',
    'PCPVT': 'EncryptedPCPVT',
    'SVT': 'EncryptedSVT',
}


def shrink_family_backbone(model: dict) -> List[int]:
    """Shrink a BEiT, MAE, Swin or Twins segmentor's backbone (and the BEiT/MAE neck) to
    toy widths and depths, in place; types and wiring unchanged.

    Returns:
        list[int]: The channels of the four feature maps the decode head reads.
    """
    bb = model['backbone']
    if bb['type'] in ('BEiT', 'MAE', 'EncryptedBEiT', 'EncryptedMAE'):
        widths = [32] * 4
        bb.update(img_size=CROP, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2,
                  out_indices=(0, 1, 2, 3))
        model['neck']['embed_dim'] = 32
    elif bb['type'] in ('SwinTransformer', 'EncryptedSwinTransformer'):
        widths = [16, 32, 64, 128]
        bb.update(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], mlp_ratio=2)
    else:  # Twins: SVT alternates local and global attention, so two blocks a stage
        widths = [16, 32, 32, 64]
        bb.update(embed_dims=widths, num_heads=[1, 1, 1, 2], mlp_ratios=[2] * 4,
                  depths=[2] * 4 if 'SVT' in bb['type'] else [1] * 4)
    bb.update(drop_path_rate=0.0)
    return widths


def stock_config(name: str, tmp_path) -> Config:
    """A stock mmseg config of the installed version, through ``mmseg::``."""
    path = tmp_path / f'stock_{abs(hash(name))}.py'
    path.write_text(f"_base_ = 'mmseg::{name}'\n")
    return Config.fromfile(str(path))


def scramble(block_size: int = 16) -> dict:
    """The recipe's ``BlockScramble`` (the default block size is written as users do)."""
    return dict(type='BlockScramble', **({} if block_size == 16 else
                                         dict(block_size=block_size)))


def pipelines(kind: str, block_size: Optional[int] = None) -> Tuple[List[dict], List[dict]]:
    """Toy train and test pipelines; encrypted when ``block_size`` is given.

    Training images are resized below the crop, so every batch is padded; test images
    are resized off the 16-pixel grid and padded to it (the pad recorded for mmseg's
    post-processing).
    """
    ann = dict(type='LoadAnnotations', reduce_zero_label=kind == 'ade')
    enc = [] if block_size is None else [scramble(block_size)]
    train = [dict(type='LoadImageFromFile'), ann,
             dict(type='Resize', scale=(96, 48), keep_ratio=True),
             dict(type='RandomCrop', crop_size=CROP),
             dict(type='RandomFlip', prob=0.5),
             dict(type='PadToGrid', size=CROP), *enc, dict(type='PackSegInputs')]
    test = [dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=TEST_SCALE, keep_ratio=True), ann,
            dict(type='PadToGrid'), *enc,
            dict(type='PackSegInputs', meta_keys=PACK_META_KEYS)]
    return train, test


def tta_pipeline(kind: str, ratios=(0.75, 1.25), block_size: Optional[int] = None
                 ) -> List[dict]:
    """A toy ``tta_pipeline``: keep-ratio rescales (off the grid), both flips, the uint8
    pad in every branch, and (encrypted) ``BlockScramble`` last, as the shipped ones."""
    branches = [
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='PadToGrid')],
        [dict(type='LoadAnnotations', reduce_zero_label=kind == 'ade')],
        *([] if block_size is None else [[scramble(block_size)]]),
        [dict(type='PackSegInputs', meta_keys=PACK_META_KEYS)],
    ]
    return [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=branches)]


def toy_run(cfg: Config, kind: str, data_root: str, work_dir: str) -> Config:
    """Point a shrunk config at the toy data and make its run one step at lr 0, in place:
    no auxiliary head, BN instead of SyncBN, 64-pixel crops and slide windows.

    lr 0: the weights after the one training step are the initial ones, so a test
    compares the models the two settings start from.

    Args:
        cfg (Config): The shrunk stock config.
        kind (str): ``'city'`` (Cityscapes layout) or ``'ade'`` (ADE20K layout).
        data_root (str): The generated data set.
        work_dir (str): The run's work_dir.

    Returns:
        Config: ``cfg``.
    """
    m = cfg.model
    m.auxiliary_head = None
    replace_syncbn(m)
    m.data_preprocessor.size = CROP
    cfg.data_preprocessor = m.data_preprocessor
    if m.test_cfg.get('mode') == 'slide':
        m.test_cfg.update(crop_size=CROP, stride=(32, 32))
    train, test = pipelines(kind)
    if kind == 'city':
        prefix = dict(img_path='leftImg8bit/{}', seg_map_path='gtFine/{}')
        splits = ('train', 'val')
    else:
        prefix = dict(img_path='images/{}', seg_map_path='annotations/{}')
        splits = ('training', 'validation')
    for loader, split, pipe in ((cfg.train_dataloader, splits[0], train),
                                (cfg.test_dataloader, splits[1], test)):
        loader.update(batch_size=2 if pipe is train else 1, num_workers=0,
                      persistent_workers=False)
        loader.dataset.update(data_root=data_root, pipeline=pipe,
                              data_prefix={k: v.format(split) for k, v in prefix.items()})
    cfg.test_pipeline = test
    cfg.train_pipeline = train
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=1000)
    cfg.optim_wrapper.optimizer.lr = 0.0
    cfg.param_scheduler = []
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(by_epoch=False, interval=1)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'
    return cfg


def apply_recipe(cfg: Config, block_size: int = 16) -> Config:
    """The README recipe, and nothing else: the plugin, the runner, the backbone's
    encrypted variant, ``BlockScramble`` before packing, ``KeyManagementHook``."""
    cfg = copy.deepcopy(cfg)
    cfg.custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
    cfg.runner_type = 'PPEncRunner'
    cfg.model.backbone.type = ENCRYPTED[cfg.model.backbone.type]
    for pipe in (cfg.train_dataloader.dataset.pipeline, cfg.train_pipeline,
                 cfg.test_dataloader.dataset.pipeline, cfg.test_pipeline):
        pipe.insert(len(pipe) - 1, scramble(block_size))
    if cfg.get('tta_pipeline'):
        branches = cfg.tta_pipeline[1]['transforms']
        branches.insert(len(branches) - 1, [scramble(block_size)])
    hooks = list(cfg.get('custom_hooks') or [])
    cfg.custom_hooks = hooks + [dict(type='KeyManagementHook')]
    return cfg


def save_weights(plain_cfg: Config, out_dir: str) -> Config:
    """Save a plain backbone ("pre-trained") and heads; point ``plain_cfg`` at them."""
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(plain_cfg.model))
    model.init_weights()
    sd = model.state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    # Sharper classifiers: random heads give near-ties whose argmax would flip on noise.
    heads = {k: (v * 20 if 'conv_seg' in k else v) for k, v in sd.items()
             if not k.startswith('backbone.')}
    pre, head = osp.join(out_dir, 'pretrained_backbone.pth'), osp.join(out_dir, 'heads.pth')
    torch.save({'state_dict': backbone}, pre)
    torch.save({'state_dict': heads}, head)
    plain_cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pre)
    # Loads only head keys; the backbone keeps its (adapted) pre-trained weights.
    plain_cfg.model.init_cfg = dict(type='Pretrained', checkpoint=head)
    return plain_cfg


def predictions(runner: Runner) -> list:
    """``(logits, labels, metainfo)`` of every test image, from ``runner``'s model."""
    model = runner.model.eval()
    out = []
    with torch.no_grad():
        for batch in runner.test_dataloader:
            for s in model.test_step(batch):
                out.append((s.seg_logits.data.clone(), s.pred_sem_seg.data.clone(),
                            s.metainfo))
    return out


def train_and_test(cfg: Config):
    """Train one step (lr 0), test, and return (first loss, predictions, runner)."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    loss = runner.message_hub.get_scalar('train/loss').current()
    runner.test()
    return float(loss), predictions(runner), runner


def assert_same_labels(logits, plain_labels, enc_labels, tol) -> None:
    """Label maps are identical except where the plain model itself is undecided.

    Float32 reorders sums under the key, so logits agree to ~1e-6 relative, not bit
    for bit; a pixel whose two best plain logits differ by less than that (a tie on a
    class border of the upsampled logits) may take either label. Every other pixel
    must match, and ties must stay rare.
    """
    diff = plain_labels != enc_labels
    if not diff.any():
        return
    top2 = logits.topk(2, dim=0).values
    gap = (top2[0] - top2[1])[diff[0]]
    assert (gap <= tol).all(), f'labels differ where the plain model is decided: {gap}'
    assert diff.float().mean() < 1e-3


def assert_same_predictions(plain_out, enc_out, block_size: int = 16) -> None:
    """The encrypted run's predictions are the plain run's: logits within 1e-5 of the
    largest, the same label maps, at the original image size, on padded inputs."""
    assert len(plain_out) == len(enc_out) > 0
    for (lp, pp, meta), (le, pe, _) in zip(plain_out, enc_out):
        assert all(v % block_size == 0 for v in meta['img_shape'][:2])
        assert tuple(pp.shape[-2:]) == tuple(pe.shape[-2:]) == tuple(meta['ori_shape'][:2])
        scale = lp.abs().max()
        assert ((le - lp).abs().max() / scale).item() <= 1e-5
        assert_same_labels(lp, pp, pe, tol=2e-5 * scale)
