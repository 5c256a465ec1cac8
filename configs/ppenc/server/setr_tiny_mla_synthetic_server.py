# Keyless server: tiny SETR-MLA fine-tuned and tested on an offline-encrypted synthetic
# Cityscapes tree, from a pre-trained ViT encrypted on the client. No key and no
# BlockScramble here: the client ran
#   tools/encrypt_dataset.py  data/cityscapes  data/cityscapes_encrypted
#   tools/encrypt_model.py    pretrain/tiny_vit.pth  pretrain/tiny_vit_encrypted.pth
# and uploaded the two outputs. Paths: PPENC_DATA_ROOT (the encrypted tree) and
# PPENC_PRETRAINED (the encrypted checkpoint), or --cfg-options.
_base_ = [
    '../tiny/setr_tiny_mla_synthetic_baseline.py',
    './_base_/keyless_server.py',
]

data_root = {{_base_.ppenc_server_data_root}}
crop_size = (64, 64)

# The stock VisionTransformer (restated whole, so that nothing of the base's backbone
# choice carries over): the encrypted checkpoint is an ordinary mmseg state dict.
model = dict(
    backbone=dict(
        _delete_=True,
        type='VisionTransformer',
        img_size=crop_size, patch_size=16, in_channels=3, embed_dims=64, num_layers=4,
        num_heads=4, mlp_ratio=2, out_indices=(0, 1, 2, 3), drop_rate=0.0,
        norm_cfg=dict(type='LN', eps=1e-6, requires_grad=True), with_cls_token=False,
        interpolate_mode='bilinear',
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{$PPENC_PRETRAINED:pretrain/tiny_vit_encrypted.pth}}')))

# Only augmentations that commute with the cipher (docs/method.md, "What a keyless server
# may do"): an on-grid crop and brightness/contrast. No RandomResize (it does not commute;
# see docs/workflow.md for the client's alternative) and no flip (needs a flip-compatible
# key: see the _flip variant).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='GridRandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='EncryptedPhotoMetric'),
    dict(type='PackSegInputs'),
]
test_pipeline = {{_base_.ppenc_server_test_pipeline}}
# No test-time augmentation (this project's tools/test.py --tta says so): rescaling an
# encrypted image does not commute with the cipher, so a keyless server cannot run the
# multi-scale branches of the model config's tta_pipeline.
tta_pipeline = None
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='KeylessEncryptedDataset',
        dataset=dict(
            type='CityscapesDataset',
            data_root=data_root,
            data_prefix={{_base_.ppenc_server_train_data_prefix}},
            pipeline=train_pipeline)))
val_dataloader = dict(dataset={{_base_.ppenc_server_val_dataset}})
test_dataloader = dict(dataset={{_base_.ppenc_server_test_dataset}})

custom_hooks = {{_base_.ppenc_server_hooks}}
