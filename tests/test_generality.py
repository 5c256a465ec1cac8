"""Stock mmseg ViT configs made private by the README recipe: exact, or refused at start.

Each case loads a stock config of the installed mmseg through ``mmseg::``, shrinks it
(32-wide, 4-layer ViT, 64-pixel crops, no auxiliary heads), and derives two configs:

- plain: the shrunk stock config, with the uint8 padding the recipe adds
  (``PadToGrid``) so both settings see the same pixels;
- encrypted: the same plus only the README recipe (``custom_imports``, backbone type
  ``EncryptedVisionTransformer``, ``BlockScramble`` before ``PackSegInputs``,
  ``KeyManagementHook``).

Both run through the real mmengine Runner on generated data, from the same plain
"pre-trained" backbone (a randomly initialised plain ViT saved as a checkpoint) and the
same head weights. The training batch is padded (images smaller than the crop) and the
test images are resized to off-grid sizes.
"""
import copy
import os
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
from mmseg_ppenc.adaptation import encrypt_vit_state_dict
from ppenc.errors import ConfigError, GridError, InvalidKeyError
from mmseg_ppenc.core.exactness import segmentor_problems
from ppenc.meta import build_meta
from mmseg_ppenc.model_encryption import (ModelEncryptionError, encrypt_model_checkpoint,
                                          normalization_from_config)
from mmseg_ppenc.transforms import PadToGrid

from recipe import CROP, apply_recipe, assert_same_labels, save_weights, toy_run
from recipe import stock_config as _stock
from recipe import train_and_test as _run


#: id -> (stock config, data set kind). The ids name the families of the README table.
CASES = {
    'setr-mla-cityscapes': ('setr/setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py', 'city'),
    'setr-mla-ade20k': ('setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py', 'ade'),
    'upernet-vit-mln': ('vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py', 'ade'),
    'upernet-deit': ('vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py', 'ade'),
    'segmenter-mask': ('segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py', 'ade'),
    'dpt': ('dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py', 'ade'),
}
# The first case runs by default; the others are marked slow (same code path, other
# heads), so that the default run stays short.
FAST = {'setr-mla-cityscapes', 'segmenter-mask'}


# ----------------------------------------------------------------------------- data
def _shrink(cfg: Config, kind: str, data_root: str, work_dir: str) -> Config:
    """The stock config at toy scale; architecture types and wiring unchanged."""
    m = cfg.model
    m.pretrained = None
    bb = m.backbone
    stock_dims = bb.embed_dims
    bb.update(img_size=CROP, embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2,
              drop_path_rate=0.0, init_cfg=None)
    if isinstance(bb.get('out_indices'), (tuple, list)):
        bb.out_indices = (0, 1, 2, 3)

    def small(v, to):
        if isinstance(v, (tuple, list)):
            return type(v)(small(x, to) for x in v)
        return (32 if v == stock_dims else to) if isinstance(v, int) and v >= 64 else v

    for part in ('neck', 'decode_head'):
        sub = m.get(part)
        if not sub:
            continue
        for k in ('in_channels', 'out_channels', 'channels', 'embed_dims',
                  'post_process_channels', 'mla_channels'):
            if k in sub:
                sub[k] = small(sub[k], 16)
        if 'num_heads' in sub:
            sub.num_heads = 2
        if 'dropout_ratio' in sub:
            sub.dropout_ratio = 0.0
    if m.decode_head.type == 'SegmenterMaskTransformerHead':
        m.decode_head.update(in_channels=32, channels=32, embed_dims=32)
    if m.decode_head.type == 'SETRMLAHead':
        m.decode_head.update(mla_channels=8, channels=32)
    if m.decode_head.type == 'DPTHead':
        m.decode_head.embed_dims = 32
    if m.get('neck', None) and m.neck.type == 'MultiLevelNeck':
        m.neck.out_channels = 32
        m.decode_head.in_channels = [32] * 4
    toy_run(cfg, kind, data_root, work_dir)
    cfg.optim_wrapper.pop('paramwise_cfg', None)
    return cfg


@pytest.fixture
def roots(synthetic_root, ade_root):
    return dict(city=synthetic_root, ade=ade_root)


def _pair(case, tmp_path, roots):
    name, kind = CASES[case]
    plain = _shrink(_stock(name, tmp_path), kind, roots[kind], str(tmp_path / 'plain'))
    plain = save_weights(plain, str(tmp_path))
    return plain, apply_recipe(plain)


# ------------------------------------------------------------------- exactness
@pytest.mark.parametrize('case', [
    pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_recipe_is_exact(case, key_env, tmp_path, roots):
    plain_cfg, enc_cfg = _pair(case, tmp_path, roots)
    enc_cfg.work_dir = str(tmp_path / 'enc')
    loss_p, out_p, _ = _run(plain_cfg)
    loss_e, out_e, runner = _run(enc_cfg)
    # A padded training batch: same first-iteration loss.
    assert abs(loss_e - loss_p) <= 1e-5 * abs(loss_p), (loss_p, loss_e)
    # Off-grid test images: same label maps, pixel for pixel, at the original size.
    assert len(out_p) == len(out_e) > 0
    for (lp, pp, meta), (le, pe, _) in zip(out_p, out_e):
        # The model saw an off-grid resize padded to the grid; the labels are at the
        # original size.
        assert any(meta['img_padding_size'])
        assert all(v % 16 == 0 for v in meta['img_shape'][:2])
        assert tuple(pp.shape[-2:]) == tuple(pe.shape[-2:]) == tuple(meta['ori_shape'][:2])
        scale = lp.abs().max()
        assert ((le - lp).abs().max() / scale).item() <= 1e-5
        assert_same_labels(lp, pp, pe, tol=2e-5 * scale)
    # The normalisation the backbone follows is the data preprocessor's (Segmenter:
    # 127.5) and is recorded in the checkpoint.
    meta = torch.load(osp.join(enc_cfg.work_dir, 'iter_1.pth'), map_location='cpu',
                      weights_only=False)['meta']['ppenc']
    assert meta['mean'] == list(enc_cfg.model.data_preprocessor.mean)
    assert meta['std'] == list(enc_cfg.model.data_preprocessor.std)
    assert list(runner.model.backbone.norm_mean) == meta['mean']


@pytest.mark.parametrize('case', ['setr-mla-cityscapes', pytest.param(
    'segmenter-mask', marks=pytest.mark.slow)])
def test_mmseg_inference_api_on_recipe_config(case, key_env, tmp_path, roots):
    """mmseg's own init_model + inference_model (no hook) read the top-level
    test_pipeline: with the recipe applied there too they give the plain labels."""
    from mmseg.apis import inference_model, init_model
    plain_cfg, enc_cfg = _pair(case, tmp_path, roots)
    enc_cfg.work_dir = str(tmp_path / 'enc')
    Runner.from_cfg(plain_cfg).train()
    Runner.from_cfg(enc_cfg).train()
    img = str(next(iter(sorted(
        osp.join(dp, f) for dp, _, fs in os.walk(roots[CASES[case][1]]) for f in fs
        if 'leftImg8bit' in f or f.endswith('.jpg')))))
    preds = []
    for cfg in (plain_cfg, enc_cfg):
        model = init_model(cfg, osp.join(cfg.work_dir, 'iter_1.pth'), device='cpu')
        preds.append(inference_model(model, img))
    h, w = mmcv.imread(img).shape[:2]
    assert preds[0].pred_sem_seg.data.shape[-2:] == (h, w)
    lp, le = preds[0].seg_logits.data, preds[1].seg_logits.data
    assert ((le - lp).abs().max() / lp.abs().max()).item() <= 1e-5
    assert_same_labels(lp, preds[0].pred_sem_seg.data, preds[1].pred_sem_seg.data,
                        tol=2e-5 * lp.abs().max())


# ------------------------------------------------------------------- refusals
def _refused(cfg, match, error=ConfigError, mode='train'):
    runner = Runner.from_cfg(cfg)
    with pytest.raises(error, match=match):
        getattr(runner, mode)()


@pytest.fixture
def setr_pair(key_env, tmp_path, roots):
    return _pair('setr-mla-cityscapes', tmp_path, roots)


def test_off_grid_slide_stride_names_a_working_value(key_env, tmp_path, roots):
    # The stock ADE20K SETR stride (341 for 512 crops), shrunk: 42 for 64.
    _, enc = _pair('setr-mla-ade20k', tmp_path, roots)
    enc.model.test_cfg.stride = (42, 42)
    _refused(enc, r'model\.test_cfg\.stride=\(42, 42\) is off the 16-pixel block grid.*'
             r'use 32 or 48', GridError, mode='test')


def test_preprocessor_padding_is_refused(setr_pair):
    _, enc = setr_pair
    enc.train_dataloader.dataset.pipeline = [
        t for t in enc.train_dataloader.dataset.pipeline if t['type'] != 'PadToGrid']
    enc.train_dataloader.dataset.pipeline[-2]['pad_to_grid'] = True
    _refused(enc, r"model\.data_preprocessor\.size=\(64, 64\) pads.*"
             r"dict\(type='PadToGrid', size=\(64, 64\)\) before BlockScramble")


def test_channel_order_mismatch_is_refused(setr_pair):
    _, enc = setr_pair
    enc.model.data_preprocessor.bgr_to_rgb = False
    _refused(enc, r"channel_order='bgr' but the data preprocessor has bgr_to_rgb=False.*"
             r"set channel_order='rgb'")


def test_keep_ratio_resize_without_pad_is_refused(setr_pair):
    _, enc = setr_pair
    enc.test_dataloader.dataset.pipeline = [
        t for t in enc.test_dataloader.dataset.pipeline if t['type'] != 'PadToGrid']
    _refused(enc, r"test_pipeline Resize \(keep_ratio/random scale\).*"
             r"dict\(type='PadToGrid', block_size=16\) before BlockScramble", mode='test')


def test_training_resize_without_pad_is_refused(setr_pair):
    _, enc = setr_pair
    enc.train_dataloader.dataset.pipeline = [
        t for t in enc.train_dataloader.dataset.pipeline if t['type'] != 'PadToGrid']
    _refused(enc, r"train_pipeline Resize \(keep_ratio/random scale\) gives image sizes "
             r"that depend on the image.*model\.data_preprocessor\.size=\(64, 64\) pads")


def test_test_time_size_divisor_is_refused(setr_pair):
    _, enc = setr_pair
    enc.model.data_preprocessor.test_cfg = dict(size_divisor=32)
    _refused(enc, r'model\.data_preprocessor\.test_cfg\.size_divisor=32 would pad '
             r'encrypted images', mode='test')


def test_pad_dropped_by_pack_is_refused(setr_pair):
    _, enc = setr_pair
    enc.test_dataloader.dataset.pipeline[-1] = dict(type='PackSegInputs')
    _refused(enc, r"PackSegInputs drops 'img_padding_size'", mode='test')


def test_explicit_normalisation_must_match_preprocessor(setr_pair):
    _, enc = setr_pair
    enc.model.data_preprocessor.update(mean=[127.5] * 3, std=[127.5] * 3)
    enc.model.backbone.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    _refused(enc, r"model\.backbone\.mean=\[123\.675, 116\.28, 103\.53\] differs from the "
             r"data preprocessor's mean=\[127\.5, 127\.5, 127\.5\]")


def test_imagenet_checkpoint_refused_by_127_model(setr_pair, key_env, tmp_path):
    """A checkpoint adapted for ImageNet normalisation, loaded into a 127.5 model."""
    plain, enc = setr_pair
    src = plain.model.backbone.init_cfg.checkpoint
    dst = str(tmp_path / 'enc_vit.pth')
    encrypt_model_checkpoint(src, dst, key_env, list(IMAGENET_MEAN), list(IMAGENET_STD))
    enc.model.data_preprocessor.update(mean=[127.5] * 3, std=[127.5] * 3)
    # As a pre-trained backbone (init_weights) ...
    enc.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=dst)
    _refused(enc, r'adapted for normalisation mean=\[123\.675.*this model normalises with '
             r'mean=\[127\.5', InvalidKeyError)
    # ... and as a whole checkpoint (load_from).
    sd = {'backbone.' + k: v for k, v in torch.load(dst)['state_dict'].items()}
    full = str(tmp_path / 'full.pth')
    torch.save({'state_dict': sd, 'meta': {'ppenc': build_meta(
        key_env.fingerprint, 16, False, IMAGENET_MEAN, IMAGENET_STD)}}, full)
    enc.model.backbone.init_cfg = None
    enc.load_from = full
    _refused(enc, r'adapted for normalisation mean=\[123\.675', InvalidKeyError,
             mode='test')


def test_san_is_refused(tmp_path):
    """SAN's side adapter reads the raw image: no adapted backbone makes it exact."""
    cfg = _stock('san/san-vit-b16_coco-stuff164k-640x640.py', tmp_path)
    from mmseg.registry import MODELS
    cls = MODELS.get(cfg.model.type)
    # The stock segmentor class and head as configured, without building CLIP.
    model = cls.__new__(cls)
    torch.nn.Module.__init__(model)
    model.decode_head = MODELS.get(cfg.model.decode_head.type).__new__(
        MODELS.get(cfg.model.decode_head.type))
    problems = segmentor_problems(model)
    assert len(problems) == 1
    assert 'MultimodalEncoderDecoder' in problems[0]
    assert 'reads the raw image' in problems[0]


def test_only_proven_segmentors_are_accepted():
    from mmseg.models.segmentors import CascadeEncoderDecoder, EncoderDecoder
    for cls in (EncoderDecoder, CascadeEncoderDecoder):
        assert segmentor_problems(cls.__new__(cls)) == []

    class Custom(EncoderDecoder):
        pass
    (msg,) = segmentor_problems(Custom.__new__(Custom))
    assert 'not on the list of segmentors proven exact' in msg


# ------------------------------------------------------------ normalisation tools
def test_encrypt_model_needs_normalisation(key_env, tmp_path, setr_pair):
    plain, _ = setr_pair
    with pytest.raises(ModelEncryptionError, match='--config CONFIG'):
        encrypt_model_checkpoint(plain.model.backbone.init_cfg.checkpoint,
                                 str(tmp_path / 'x.pth'), key_env)


def test_normalization_from_config(tmp_path):
    cfg = _stock('segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py', tmp_path)
    assert normalization_from_config(cfg) == ([127.5] * 3, [127.5] * 3)
    cfg.model.backbone.mean = list(IMAGENET_MEAN)
    cfg.model.backbone.std = list(IMAGENET_STD)
    with pytest.raises(ModelEncryptionError, match=r'model\.backbone\.mean=.*differs'):
        normalization_from_config(cfg)


# ---------------------------------------------------------------------- padding
@pytest.mark.parametrize('pad_val', [(0, 0, 0), 256, -1, 1.5])
def test_pad_value_must_be_one_byte(pad_val):
    with pytest.raises(ValueError, match='one int in \\[0, 255\\]'):
        PadToGrid(pad_val=pad_val)


@pytest.mark.parametrize('shape,size,expect', [
    ((50, 100), None, (64, 112)), ((48, 64), (64, 64), (64, 64)),
    ((64, 80), (64, 64), (64, 80)), ((70, 20), (64, 64), (80, 64))])
def test_pad_to_grid_records_the_pad(shape, size, expect):
    img = np.full(shape + (3,), 7, np.uint8)
    seg = np.ones(shape, np.uint8)
    out = PadToGrid(size=size)(dict(img=img, gt_seg_map=seg, seg_fields=['gt_seg_map'],
                                    img_shape=shape))
    assert out['img'].shape[:2] == expect == out['img_shape']
    assert out['img_padding_size'] == (0, expect[1] - shape[1], 0, expect[0] - shape[0])
    assert (out['img'][:shape[0], :shape[1]] == 7).all()
    assert (out['gt_seg_map'][shape[0]:] == 255).all()
    assert (out['gt_seg_map'][:, shape[1]:] == 255).all()
    assert (out['img'][shape[0]:] == 0).all()


# --------------------------------------------------------------------- patch bias
def test_missing_patch_bias_starts_at_zero(key_env, tmp_path):
    """patch_norm + patch_bias from a checkpoint without projection bias."""
    from mmseg.models.backbones import VisionTransformer

    from mmseg_ppenc.models import EncryptedVisionTransformer
    kw = dict(img_size=32, embed_dims=32, num_layers=1, num_heads=2, patch_norm=True)
    torch.manual_seed(0)
    src = VisionTransformer(**kw, patch_bias=False)
    src.init_weights()
    path = str(tmp_path / 'nobias.pth')
    torch.save({'state_dict': src.state_dict()}, path)
    init = dict(type='Pretrained', checkpoint=path)
    vit = EncryptedVisionTransformer(**kw, patch_bias=True, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, init_cfg=init)
    torch.manual_seed(1)
    torch.nn.init.normal_(vit.patch_embed.projection.bias)  # what random init leaves
    vit.init_weights()
    # Expected: the plain weights with a zero bias, adapted.
    sd = dict(src.state_dict())
    sd['patch_embed.projection.bias'] = torch.zeros(32)
    want = encrypt_vit_state_dict(sd, key_env, IMAGENET_MEAN, IMAGENET_STD, prefix='')
    got = vit.patch_embed.projection.bias.detach()
    assert torch.allclose(got, want['patch_embed.projection.bias'], atol=1e-6)
    assert got.abs().max() > 0  # the adaptation's offset, not the random init


# ------------------------------------------------------- simulation preprocessor, apis
def test_encrypted_preprocessor_pads_raw_pixels_to_the_crop(key_env):
    """EncryptedSegDataPreProcessor(pad_to_grid=True) pads uint8 to ``size`` before
    encrypting, so its parent finds nothing to pad after normalisation."""
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    from mmseg_ppenc.models import EncryptedSegDataPreProcessor
    pre = EncryptedSegDataPreProcessor(pad_to_grid=True, size=CROP, mean=[0, 0, 0],
                                       std=[1, 1, 1], bgr_to_rgb=True, pad_val=-7)
    # On the grid, so the pad fills whole blocks (a partly padded block is scrambled).
    img = torch.full((3, 48, 32), 9, dtype=torch.uint8)
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.ones(1, 48, 32,
                                                                dtype=torch.uint8)))
    out = pre(dict(inputs=[img], data_samples=[sample]), training=True)
    x = out['inputs'][0]
    assert tuple(x.shape[-2:]) == CROP
    # The pad is raw 0 (its own encryption), not the parent's pad_val after normalising.
    assert (x[:, 48:] == 0).all() and (x[:, :, 32:] == 0).all()
    assert (x[:, :48, :32] == 9).all()
    gt = out['data_samples'][0].gt_sem_seg.data
    assert (gt[:, 48:] == 255).all() and (gt[:, :48, :32] == 1).all()
    assert out['data_samples'][0].img_padding_size == (0, 32, 0, 16)


def test_load_encrypted_model_checks_normalisation(setr_pair, key_env, tmp_path):
    from mmseg_ppenc.apis import load_encrypted_model
    _, enc = setr_pair
    enc.model.data_preprocessor.update(mean=[127.5] * 3, std=[127.5] * 3)
    model = Runner.from_cfg(copy.deepcopy(enc)).model
    ckpt = str(tmp_path / 'imagenet.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'ppenc': build_meta(
        key_env.fingerprint, 16, False, IMAGENET_MEAN, IMAGENET_STD)}}, ckpt)
    with pytest.raises(InvalidKeyError, match=r'this model normalises with '
                       r'mean=\[127\.5, 127\.5, 127\.5\]'):
        load_encrypted_model(enc, ckpt)
    torch.save({'state_dict': model.state_dict(), 'meta': {'ppenc': build_meta(
        key_env.fingerprint, 16, False, [127.5] * 3, [127.5] * 3)}}, ckpt)
    loaded = load_encrypted_model(enc, ckpt)
    assert loaded.backbone.norm_mean == (127.5, 127.5, 127.5)


@pytest.mark.slow
@pytest.mark.parametrize('case', ['segmenter-mask'])  # the others: same path, Runner tests
def test_tools_train_then_test_out_give_the_plain_label_maps(case, key_env, tmp_path, roots):
    """The user's path: tools/train.py, then tools/test.py --out, on a stock config with
    only the recipe applied, gives the plain model's label maps (off-grid test sizes)."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from conftest import REPO
    plain_cfg, enc_cfg = _pair(case, tmp_path, roots)
    outs = {}
    for name, cfg in (('plain', plain_cfg), ('enc', enc_cfg)):
        cfg_file = str(tmp_path / f'{name}.py')
        cfg.dump(cfg_file)
        wd, out = str(tmp_path / f'wd_{name}'), str(tmp_path / f'out_{name}')
        for args in (['tools/train.py', cfg_file, '--work-dir', wd],
                     ['tools/test.py', cfg_file, osp.join(wd, 'iter_1.pth'), '--work-dir',
                      wd, '--out', out]):
            res = subprocess.run([sys.executable] + args, cwd=REPO, env=dict(os.environ),
                                 capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, (args, res.stderr[-3000:])
        outs[name] = {f: np.asarray(Image.open(osp.join(out, f)))
                      for f in sorted(os.listdir(out)) if f.endswith('.png')}
    assert outs['plain'] and sorted(outs['plain']) == sorted(outs['enc'])
    total = differ = 0
    for f, plain in outs['plain'].items():
        enc = outs['enc'][f]
        assert plain.shape == enc.shape  # the original image size
        total += plain.size
        differ += int((plain != enc).sum())
    # Identical but for float32 ties of the plain model itself (see _assert_same_labels).
    assert differ / total < 1e-3, (differ, total)
    # Not a vacuous comparison: the maps hold several classes.
    assert max(len(np.unique(m)) for m in outs['plain'].values()) > 1
