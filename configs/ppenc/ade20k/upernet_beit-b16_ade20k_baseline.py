# UperNet BEiT-B/16, ADE20K 512x512 -- baseline: plain model, plain images.
# The stock mmseg config with the uint8 padding of the encrypted settings, so that the
# three settings see the same pixels.
_base_ = [
    'mmseg::beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py',
    './_base_/encrypted_ade20k_512x512.py',
]
custom_imports = dict(imports=['mmseg_ppenc'], allow_failed_imports=False)
# Start checks (key, leak scan, exactness) run before mmengine writes anything.
runner_type = 'PPEncRunner'

# The stock BEiT recipe trains at 640x640; these configs train at 512x512, the crop of
# every other shipped ADE20K family, so that the families compare like with like
# (BEiT's own init_weights resizes the relative position bias tables of the 224-pixel
# pre-training, as for 640). The slide stride is on the 16-pixel block grid (stock: 426
# for 640 crops; 336 keeps at least the stock number of windows at 512).
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size),
    test_cfg=dict(crop_size=crop_size, stride=(336, 336)))

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
