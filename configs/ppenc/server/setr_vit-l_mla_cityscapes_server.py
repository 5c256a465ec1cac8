# Keyless server: SETR-MLA ViT-L/16 on offline-encrypted Cityscapes (768x768 crops), from
# timm's vit_large_patch16_384 encrypted on the client:
#   tools/encrypt_dataset.py data/cityscapes data/cityscapes_encrypted --layout cityscapes
#   tools/encrypt_model.py pretrain/vit_large_patch16_384.pth \
#       pretrain/vit_large_patch16_384_encrypted.pth
# The server needs neither the key nor BlockScramble. Paths: PPENC_DATA_ROOT (the
# encrypted tree) and PPENC_PRETRAINED (the encrypted checkpoint), or --cfg-options.
# Compared with the paper's "proposed" config, training loses RandomResize (ratio
# 0.5-2.0), which does not commute with the cipher (docs/workflow.md: cost and the
# client's offline alternative).
_base_ = [
    '../setr_vit-l_mla_cityscapes_baseline.py',
    './_base_/keyless_server.py',
]

data_root = {{_base_.ppenc_server_data_root}}
crop_size = (768, 768)

# The baseline's FastVisionTransformer (fused attention, mmseg VisionTransformer's
# parameter names, no key): the encrypted checkpoint is an ordinary mmseg state dict.
model = dict(
    backbone=dict(
        init_cfg=dict(
            checkpoint='{{$PPENC_PRETRAINED:pretrain/vit_large_patch16_384_encrypted.pth}}')))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='GridRandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    # With a flip-compatible key (`tools/keygen.py --flip-compatible`), add:
    # dict(type='EncryptedRandomFlip', prob=0.5, flip_compatible=True),
    dict(type='EncryptedPhotoMetric'),
    dict(type='PackSegInputs'),
]
# Unresized 2048x1024 images; slide windows (768, stride 512) start on the 16-pixel grid.
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
