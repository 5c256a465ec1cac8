# SETR-MLA with ViT-B/16 on Cityscapes 768x768 -- baseline: plain model, plain images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
# The ViT-L baseline with the backbone narrowed to ViT-B; everything else is inherited.
_base_ = './setr_vit-l_mla_cityscapes_baseline.py'

model = dict(
    backbone=dict(
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        out_indices=(2, 5, 8, 11),  # ViT-L's (5, 11, 17, 23) scaled to 12 layers
        # timm `vit_base_patch16_384` converted with tools/convert_timm_vit.py.
        init_cfg=dict(checkpoint='pretrain/vit_base_patch16_384.pth')),
    # The auxiliary FCN heads read the neck's 256-channel outputs: no change there.
    neck=dict(in_channels=[768, 768, 768, 768]))
