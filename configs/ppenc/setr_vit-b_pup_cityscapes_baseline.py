# SETR-PUP with ViT-B/16 on Cityscapes 768x768 -- baseline: plain model, plain images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
_base_ = [
    'mmseg::setr/setr_vit-l_pup_8xb1-80k_cityscapes-768x768.py',
    './_base_/encrypted_cityscapes_768x768.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        # Fused scaled-dot-product attention; weights and parameter names are those of
        # mmseg's VisionTransformer. attn_impl='stock' restores mmcv's attention;
        # torch_compile=True compiles the backbone (opt-in).
        type='FastVisionTransformer',
        attn_impl='fused',
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        out_indices=(4, 7, 9, 11),  # ViT-L's (9, 14, 19, 23) scaled to 12 layers
        # timm `vit_base_patch16_384` weights converted to mmseg format with
        # tools/convert_timm_vit.py, as in the paper.
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/vit_base_patch16_384.pth')),
    decode_head=dict(in_channels=768),
    # mmengine replaces lists wholesale, so the auxiliary heads are restated: those of
    # the stock cityscapes PUP config (num_convs=2, kernel_size=3), with in_channels=768.
    auxiliary_head=[
        dict(
            type='SETRUPHead',
            in_channels=768,
            channels=256,
            in_index=i,
            num_classes=19,
            dropout_ratio=0,
            norm_cfg=norm_cfg,
            num_convs=2,
            up_scale=4,
            kernel_size=3,
            align_corners=False,
            loss_decode=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
        for i in range(3)
    ])

# bf16 mixed precision where the device supports it natively (CUDA, Ampere or newer),
# float32 elsewhere. `--cfg-options optim_wrapper.type=OptimWrapper` trains in float32.
optim_wrapper = dict(type='BF16AmpOptimWrapper')

# Test without Resize (see the shared base) so that the three settings are evaluated
# alike; the stock train pipeline is kept. test_dataloader = val_dataloader was resolved
# in the stock config, so it is reassigned here.
val_dataloader = dict(dataset=dict(pipeline={{_base_.ppenc_test_pipeline}}))
test_dataloader = val_dataloader
