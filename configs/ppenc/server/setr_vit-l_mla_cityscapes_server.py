# Keyless server: SETR-MLA ViT-L/16 on offline-encrypted Cityscapes (768x768 crops), from
# timm's vit_large_patch16_384 encrypted on the client:
#   tools/encrypt_dataset.py data/cityscapes data/cityscapes_encrypted --layout cityscapes
#   tools/encrypt_model.py pretrain/vit_large_patch16_384.pth \
#       pretrain/vit_large_patch16_384_encrypted.pth
# The server needs neither the key nor BlockScramble. Compared with the paper's
# "proposed" config, training loses RandomResize (ratio 0.5-2.0), which does not commute
# with the cipher (docs/workflow.md: cost and the client's offline alternative).
_base_ = '../setr_vit-l_mla_cityscapes_baseline.py'

data_root = 'data/cityscapes_encrypted/'
crop_size = (768, 768)

# The stock VisionTransformer of mmseg's SETR config (restated whole): the encrypted
# checkpoint is an ordinary mmseg state dict. The plugin's FastVisionTransformer (fused
# attention, same weights, no key) may replace it for speed.
model = dict(
    backbone=dict(
        _delete_=True,
        type='VisionTransformer',
        img_size=crop_size, patch_size=16, in_channels=3, embed_dims=1024,
        num_layers=24, num_heads=16, out_indices=(5, 11, 17, 23), drop_rate=0.0,
        norm_cfg=dict(type='LN', eps=1e-6, requires_grad=True), with_cls_token=False,
        interpolate_mode='bilinear',
        init_cfg=dict(type='Pretrained',
                      checkpoint='pretrain/vit_large_patch16_384_encrypted.pth')))

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
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='KeylessEncryptedDataset',
        dataset=dict(
            type='CityscapesDataset',
            data_root=data_root,
            data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
            pipeline=train_pipeline)))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='KeylessEncryptedDataset',
        dataset=dict(
            type='CityscapesDataset',
            data_root=data_root,
            data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
            pipeline=test_pipeline)))
test_dataloader = val_dataloader

custom_hooks = [dict(type='KeylessServerHook')]
