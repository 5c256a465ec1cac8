# Tiny stock SETR-Naive for CPU: baseline (plain model, plain images).
_base_ = [
    'mmseg::setr/setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py',
    './_base_/synthetic_cityscapes_64x64.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
# Start checks (key, leak scan, exactness) run before mmengine writes anything.
runner_type = 'PPEncRunner'

crop_size = {{_base_.ppenc_crop_size}}
data_root = {{_base_.ppenc_data_root}}
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        # Fused attention (attn_impl='stock': mmcv's); same weights as VisionTransformer.
        type='FastVisionTransformer', attn_impl='fused',
        img_size=crop_size, embed_dims=64, num_layers=4, num_heads=4, mlp_ratio=2,
        out_indices=(0, 1, 2, 3), init_cfg=None),
    decode_head=dict(in_channels=64, channels=32, num_convs=1, up_scale=4,
                     kernel_size=1, norm_cfg=norm_cfg),
    auxiliary_head=[
        dict(type='SETRUPHead', in_channels=64, channels=32, in_index=i, num_classes=19,
             dropout_ratio=0, norm_cfg=norm_cfg, num_convs=1, up_scale=4,
             kernel_size=1, align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                              loss_weight=0.4)) for i in range(3)
    ],
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(48, 48)))

# The top-level pipelines are what mmseg's inference API reads (test_pipeline).
train_pipeline = {{_base_.ppenc_train_pipeline}}
test_pipeline = {{_base_.ppenc_test_pipeline}}
# tools/test.py --tta (the stock SegTTAModel): the plain form of the encrypted settings'.
tta_pipeline = {{_base_.ppenc_tta_pipeline}}
train_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optimizer = dict(lr=0.01)
optim_wrapper = dict(optimizer=optimizer)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=400,
                        by_epoch=False)]
train_cfg = dict(max_iters=400, val_interval=400)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=200, max_keep_ckpts=2),
    visualization=dict(draw=False))
env_cfg = dict(cudnn_benchmark=False)
