# Small-data overrides shared by every tiny config: the synthetic Cityscapes-format set
# made by tools/make_synthetic_cityscapes.py (128x256 images), 64x64 crops, CPU-sized
# loaders and a short schedule. Only names prefixed `ppenc_` are defined here so that this
# file can be a second base of a config that inherits a stock SETR config.
ppenc_crop_size = (64, 64)
# `PPENC_DATA_ROOT` moves the data without editing configs (tests, `mim train`).
ppenc_data_root = '{{$PPENC_DATA_ROOT:data/cityscapes/}}'
ppenc_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(64, 64), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    # Every setting, baseline included: crops smaller than the crop size are padded to it
    # in uint8 (labels 255), so the data preprocessor never pads after normalisation.
    dict(type='PadToGrid', size=(64, 64)),
    dict(type='PackSegInputs'),
]
# No resize at test time: every slide window then starts on the 16-pixel block grid.
ppenc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# The encrypted variants: BlockScramble after every augmentation, before packing.
ppenc_encrypted_train_pipeline = ppenc_train_pipeline[:-1] + [
    dict(type='BlockScramble', pad_to_grid=True),
    dict(type='PackSegInputs'),
]
ppenc_encrypted_test_pipeline = ppenc_test_pipeline[:-1] + [
    dict(type='BlockScramble'),
    dict(type='PackSegInputs'),
]
