# SETR-Naive with ViT-L/16 on Cityscapes 768x768 -- baseline: plain model, plain images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
_base_ = [
    'mmseg::setr/setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py',
    './_base_/encrypted_cityscapes_768x768.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
# Start checks (key, leak scan, exactness) run before mmengine writes anything.
runner_type = 'PPEncRunner'

model = dict(
    pretrained=None,
    backbone=dict(
        # Fused scaled-dot-product attention; weights and parameter names are those of
        # mmseg's VisionTransformer. attn_impl='stock' restores mmcv's attention.
        # To compile, add CompileModelHook to custom_hooks (opt-in).
        type='FastVisionTransformer',
        attn_impl='fused',
        # timm `vit_large_patch16_384` weights converted to mmseg format with
        # tools/convert_timm_vit.py, as in the paper.
        init_cfg=dict(
            type='Pretrained', checkpoint='pretrain/vit_large_patch16_384.pth')))

# bf16 mixed precision where the device supports it natively (CUDA, Ampere or newer),
# float32 elsewhere. `--cfg-options optim_wrapper.type=OptimWrapper` trains in float32.
optim_wrapper = dict(type='BF16AmpOptimWrapper')

# Pipelines of the shared base: the stock train pipeline plus the uint8 PadToGrid of
# every setting, and a test pipeline without Resize, so that the three settings see the
# same pixels. The top-level names are set too: mmseg's init_model / inference_model and
# MMSegInferencer read `test_pipeline`, not the dataloader's. test_dataloader =
# val_dataloader was resolved in the stock config, so it is reassigned here.
train_pipeline = {{_base_.ppenc_train_pipeline}}
test_pipeline = {{_base_.ppenc_test_pipeline}}
# tools/test.py --tta (the stock SegTTAModel): the stock TTA pipeline plus the uint8 pad
# of every setting.
tta_pipeline = {{_base_.ppenc_tta_pipeline}}
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
