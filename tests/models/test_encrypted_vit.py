"""Acceptance: the proposed model on encrypted images == the baseline on plain images,
through mmseg's real dataset, pipeline and SegDataPreProcessor (tiny SETR configs)."""
import copy
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules

from mmseg_ppenc.models.encrypted_vit import bind_normalization
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
from ppenc.cipher import encrypt_image
from mmseg_ppenc.models import EncryptedVisionTransformer

from conftest import tiny_config

register_all_modules(init_default_scope=True)


def _build(cfg_path, mode):
    cfg = Config.fromfile(cfg_path)
    cfg.model.test_cfg.mode = mode
    model = MODELS.build(cfg.model)
    return cfg, model


def _dataset(cfg, data_root=None):
    ds_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    if data_root is not None:
        ds_cfg.data_root = data_root
    return DATASETS.build(ds_cfg)


def _predict(model, dataset, i):
    model.eval()
    with torch.no_grad():
        return model.test_step(pseudo_collate([dataset[i]]))[0]


def _rel(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.fixture
def plain_backbone_ckpt(tmp_path):
    def save(model):
        path = str(tmp_path / 'plain_backbone.pth')
        torch.save({'state_dict': model.backbone.state_dict()}, path)
        return path
    return save


@pytest.mark.parametrize('decoder', ['mla', 'pup', 'naive'])
@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_proposed_equals_baseline(key_env, decoder, mode, plain_backbone_ckpt):
    torch.manual_seed(0)
    base_cfg, baseline = _build(tiny_config(decoder, 'baseline'), mode)
    bind_normalization(baseline)
    baseline.init_weights()
    prop_cfg, proposed = _build(tiny_config(decoder, 'proposed'), mode)
    conv_cfg, conv2 = _build(tiny_config(decoder, 'conventional2'), mode)
    assert isinstance(proposed.backbone, EncryptedVisionTransformer)

    # The proposed model gets the baseline's weights the way users give them: heads
    # copied, backbone from a plain pre-trained checkpoint through init_cfg.
    proposed.load_state_dict(baseline.state_dict())
    proposed.backbone.init_cfg = dict(type='Pretrained',
                                      checkpoint=plain_backbone_ckpt(baseline))
    bind_normalization(proposed)
    proposed.backbone.init_weights()
    conv2.load_state_dict(baseline.state_dict())

    plain_ds, enc_ds = _dataset(base_cfg), _dataset(prop_cfg)
    for i in range(len(plain_ds)):
        a = _predict(baseline, plain_ds, i)
        b = _predict(proposed, enc_ds, i)
        c = _predict(conv2, enc_ds, i)
        assert a.seg_logits.data.shape == b.seg_logits.data.shape
        assert _rel(a.seg_logits.data, b.seg_logits.data) <= 1e-5
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
        # Control: without the adaptation the encrypted input gives other logits.
        assert _rel(a.seg_logits.data, c.seg_logits.data) > 1e-2


def test_offline_encryption_equals_in_pipeline(key_env, synthetic_root, tmp_path):
    """encrypt_image -> PNG -> LoadImageFromFile gives BlockScramble's exact tensor."""
    enc_root = tmp_path / 'enc'
    for dirpath, _, files in __import__('os').walk(synthetic_root):
        for f in files:
            src = osp.join(dirpath, f)
            dst = enc_root / osp.relpath(src, synthetic_root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
            if f.endswith('_leftImg8bit.png'):
                rgb = encrypt_image(np.ascontiguousarray(img[..., ::-1]), key_env)
                img = np.ascontiguousarray(rgb[..., ::-1])
            cv2.imwrite(str(dst), img)
    base_cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    prop_cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    offline = _dataset(base_cfg, str(enc_root) + '/')
    inline = _dataset(prop_cfg)
    assert len(offline) == len(inline) > 0
    for i in range(len(inline)):
        assert torch.equal(offline[i]['inputs'], inline[i]['inputs'])
        assert torch.equal(offline[i]['data_samples'].gt_sem_seg.data,
                           inline[i]['data_samples'].gt_sem_seg.data)


def test_init_weights_does_not_apply_twice(key_env, plain_backbone_ckpt, tmp_path):
    torch.manual_seed(0)
    cfg, model = _build(tiny_config('mla', 'proposed'), 'whole')
    bind_normalization(model)
    model.init_weights()
    w = model.backbone.patch_embed.projection.weight.detach().clone()
    bind_normalization(model)
    model.backbone.init_weights()
    assert torch.equal(w, model.backbone.patch_embed.projection.weight)

    # A pre-trained checkpoint already encrypted with this key is loaded as is.
    path = str(tmp_path / 'enc_backbone.pth')
    torch.save({'state_dict': model.backbone.state_dict(),
                'meta': {'ppenc': {'key_fingerprint': key_env.fingerprint}}}, path)
    _, fresh = _build(tiny_config('mla', 'proposed'), 'whole')
    fresh.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    bind_normalization(fresh)
    fresh.backbone.init_weights()
    assert torch.equal(w, fresh.backbone.patch_embed.projection.weight)

    # ... and one encrypted with another key is refused.
    torch.save({'state_dict': model.backbone.state_dict(),
                'meta': {'ppenc': {'key_fingerprint': '0123456789abcdef'}}}, path)
    _, other = _build(tiny_config('mla', 'proposed'), 'whole')
    other.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    with pytest.raises(ValueError, match='0123456789abcdef'):
        bind_normalization(other)
        other.backbone.init_weights()


def test_missing_key_is_reported_at_build(monkeypatch, synthetic_root):
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    monkeypatch.setenv('PPENC_DATA_ROOT', synthetic_root)
    with pytest.raises(Exception, match='tools/keygen.py'):
        _build(tiny_config('mla', 'proposed'), 'whole')


def test_patch_norm_needs_bias(key_env):
    with pytest.raises(ValueError, match='patch_bias=True'):
        EncryptedVisionTransformer(img_size=32, embed_dims=32, num_layers=1, num_heads=2,
                                   patch_norm=True, patch_bias=False)
    vit = EncryptedVisionTransformer(img_size=32, embed_dims=32, num_layers=1,
                                     num_heads=2, patch_norm=True, patch_bias=True,
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD)
    vit.init_weights()
    assert vit.key_fingerprint == key_env.fingerprint


@pytest.mark.parametrize('init', ['none', 'pretrained'])
def test_random_start_is_not_adapted(key_env, tmp_path, init):
    """Without pre-trained weights the key adaptation is skipped (it would only expose the
    key to anyone replaying the seed); with them it is applied."""
    from mmseg_ppenc.models import FastVisionTransformer
    kw = dict(img_size=32, embed_dims=32, num_layers=1, num_heads=2)
    torch.manual_seed(5)
    ref = FastVisionTransformer(**kw)
    ref.init_weights()
    init_cfg = None
    if init == 'pretrained':
        path = str(tmp_path / 'plain.pth')
        torch.save({'state_dict': ref.state_dict()}, path)
        init_cfg = dict(type='Pretrained', checkpoint=path)
    torch.manual_seed(5)
    vit = EncryptedVisionTransformer(**kw, init_cfg=init_cfg, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD)
    vit.init_weights()
    same = torch.equal(vit.patch_embed.projection.weight, ref.patch_embed.projection.weight)
    assert same == (init == 'none')


def test_record_copied_onto_plain_pretrained_weights_is_refused(key_env, tmp_path):
    """A plain pre-trained checkpoint carrying a record of this key is not "already
    encrypted": with a digest the digest tells, without one (as training checkpoints
    record it) the smooth, unpermuted patch embedding does. Nothing is loaded."""
    import cv2
    from ppenc.errors import CheckpointRecordError
    from mmseg_ppenc.models import FastVisionTransformer
    from mmseg_ppenc.security.weights import pca_patch_embedding
    kw = dict(img_size=32, embed_dims=32, num_layers=1, num_heads=2)
    rng = np.random.default_rng(0)
    imgs = [cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 3)
            for _ in range(8)]
    plain = FastVisionTransformer(**kw).state_dict()
    plain['patch_embed.projection.weight'] = torch.tensor(
        pca_patch_embedding(imgs, 32), dtype=torch.float32).reshape(32, 3, 16, 16)
    path = str(tmp_path / 'plain_with_record.pth')
    for rec in ({'key_fingerprint': key_env.fingerprint},
                {'key_fingerprint': key_env.fingerprint, 'patch_embed_sha256': '0' * 64}):
        torch.save({'state_dict': plain, 'meta': {'ppenc': rec}}, path)
        vit = EncryptedVisionTransformer(**kw, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                         init_cfg=dict(type='Pretrained', checkpoint=path))
        before = vit.patch_embed.projection.weight.detach().clone()
        with pytest.raises(CheckpointRecordError,
                           match=f'The pre-trained checkpoint {path}: its meta'):
            vit.init_weights()
        assert torch.equal(before, vit.patch_embed.projection.weight)  # nothing loaded
    # Without the record the same weights are plain pre-trained ones: adapted.
    torch.save({'state_dict': plain}, path)
    vit = EncryptedVisionTransformer(**kw, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                     init_cfg=dict(type='Pretrained', checkpoint=path))
    vit.init_weights()
    assert not torch.equal(vit.patch_embed.projection.weight,
                           plain['patch_embed.projection.weight'])


def test_missing_pretrained_checkpoint_is_named(key_env, tmp_path):
    from ppenc.errors import ConfigError
    path = str(tmp_path / 'nope.pth')
    vit = EncryptedVisionTransformer(img_size=32, embed_dims=32, num_layers=1, num_heads=2,
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                     init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ConfigError, match=f'The pre-trained checkpoint {path} does not '
                                          'exist'):
        vit.init_weights()
