# SETR-PUP with ViT-B/16 on Cityscapes 768x768 -- baseline: plain model, plain images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
# The ViT-L baseline with the backbone narrowed to ViT-B; everything else is inherited.
_base_ = './setr_vit-l_pup_cityscapes_baseline.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        out_indices=(4, 7, 9, 11),  # ViT-L's (9, 14, 19, 23) scaled to 12 layers
        # timm `vit_base_patch16_384` converted with tools/convert_timm_vit.py.
        init_cfg=dict(checkpoint='pretrain/vit_base_patch16_384.pth')),
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
