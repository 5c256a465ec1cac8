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
# PadToGrid pads other images than the synthetic sets' (e.g. 70x100 through mmseg's
# inference API) in uint8 to the grid, in every setting, and records the pad in
# `img_padding_size`, which mmseg cuts off the prediction. It comes before LoadAnnotations
# so that the labels stay at the original size.
ppenc_pack_inputs = dict(
    type='PackSegInputs',
    # mmseg's default meta keys plus 'img_padding_size' (written out: mmengine turns an
    # import in a config into a lazy reference; mmseg_ppenc.transforms.PACK_META_KEYS).
    meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
               'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label',
               'img_padding_size'))
ppenc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PadToGrid'),
    dict(type='LoadAnnotations'),
    ppenc_pack_inputs,
]
# The encrypted variants: BlockScramble after every augmentation, before packing.
ppenc_encrypted_train_pipeline = ppenc_train_pipeline[:-1] + [
    dict(type='BlockScramble', pad_to_grid=True),
    dict(type='PackSegInputs'),
]
ppenc_encrypted_test_pipeline = ppenc_test_pipeline[:-1] + [
    dict(type='BlockScramble'),
    ppenc_pack_inputs,
]
# Test-time augmentation (tools/test.py --tta): the stock Cityscapes form (keep-ratio
# rescaling, both flips; labels loaded at the original size), with ratios that keep the
# synthetic sets' images (64x128, 128x256) on the 16-pixel grid. Each branch then pads to
# the grid (any other image size) and, in the encrypted settings, encrypts: resizing or
# flipping an encrypted image would not be the encryption of any image.
ppenc_tta_ratios = [0.5, 1.0, 1.5]
# The branches both settings share: rescale, flip, pad to the grid, load the labels.
ppenc_tta_branches = [
    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in ppenc_tta_ratios],
    [dict(type='RandomFlip', prob=0., direction='horizontal'),
     dict(type='RandomFlip', prob=1., direction='horizontal')],
    [dict(type='PadToGrid')],
    [dict(type='LoadAnnotations')],
]
ppenc_tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=ppenc_tta_branches + [[ppenc_pack_inputs]]),
]
ppenc_encrypted_tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=ppenc_tta_branches + [[dict(type='BlockScramble')], [ppenc_pack_inputs]]),
]
