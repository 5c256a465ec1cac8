# SETR-MLA with ViT-L/16 on Cityscapes 768x768 -- baseline: plain model, plain images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
_base_ = [
    'mmseg::setr/setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py',
    './_base_/encrypted_cityscapes_768x768.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        # Fused scaled-dot-product attention; weights and parameter names are those of
        # mmseg's VisionTransformer. attn_impl='stock' restores mmcv's attention;
        # torch_compile=True compiles the backbone (opt-in).
        type='FastVisionTransformer',
        attn_impl='fused',
        # timm `vit_large_patch16_384` weights converted to mmseg format with
        # tools/convert_timm_vit.py, as in the paper.
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/vit_large_patch16_384.pth')))

# bf16 mixed precision where the device supports it natively (CUDA, Ampere or newer),
# float32 elsewhere. `--cfg-options optim_wrapper.type=OptimWrapper` trains in float32.
optim_wrapper = dict(type='BF16AmpOptimWrapper')

# Test without Resize (see the shared base) so that the three settings are evaluated
# alike; the stock train pipeline is kept. test_dataloader = val_dataloader was resolved
# in the stock config, so it is reassigned here.
val_dataloader = dict(dataset=dict(pipeline={{_base_.ppenc_test_pipeline}}))
test_dataloader = val_dataloader
