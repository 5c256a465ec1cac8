# UperNet MAE-B/16, ADE20K 512x512 -- baseline: plain model, plain images.
# The stock mmseg config with the uint8 padding of the encrypted settings, so that the
# three settings see the same pixels.
_base_ = [
    'mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py',
    './_base_/encrypted_ade20k_512x512.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
# Start checks (key, leak scan, exactness) run before mmengine writes anything.
runner_type = 'PPEncRunner'

# The stock slide stride 341 starts windows off the 16-pixel block grid, which no
# encrypted input can follow; 336 is the nearest on-grid stride that keeps at least the
# stock number of windows. Set in every setting so that the three are comparable.
model = dict(test_cfg=dict(stride=(336, 336)))

# The top-level pipelines are set too: mmseg's init_model / inference_model and
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
