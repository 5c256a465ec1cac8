# Pipelines shared by the Cityscapes 768x768 SETR experiment grid of
# Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730. Only names prefixed `ppenc_` are defined
# here so that this file can be a second base of a config that inherits a stock SETR
# config (mmengine forbids duplicate keys among several bases); use them through
# `{{_base_.ppenc_xxx}}`.

# The stock train pipeline of mmseg's `_base_/datasets/cityscapes_768x768.py` (restated
# verbatim; tests/test_configs.py checks it against the stock one) with one addition for
# every setting, baseline included: PadToGrid brings crops smaller than the crop size to
# it in uint8 (labels 255), so the data preprocessor never pads a batch after
# normalisation, and the three settings train on the same pixels.
ppenc_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(2049, 1025),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=(768, 768), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PadToGrid', size=(768, 768)),
    dict(type='PackSegInputs'),
]
# Test pipeline of every setting (baseline included, so that the numbers are comparable):
# no Resize. The stock Resize to (2049, 1025) with keep_ratio moves 2048x1024 images off
# the 16-pixel block grid; without it, slide inference (crop 768, stride 512) starts
# every window on the grid.
ppenc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# The encrypted variants: BlockScramble after every augmentation, right before packing.
# The key comes from $PPENC_KEY_FILE (key_file=None): configs never carry key material.
ppenc_encrypted_train_pipeline = ppenc_train_pipeline[:-1] + [
    dict(type='BlockScramble', pad_to_grid=True),
    dict(type='PackSegInputs'),
]
ppenc_encrypted_test_pipeline = ppenc_test_pipeline[:-1] + [
    dict(type='BlockScramble'),
    dict(type='PackSegInputs'),
]
# Test-time augmentation (tools/test.py --tta): the stock `tta_pipeline` of mmseg's
# `_base_/datasets/cityscapes.py` (keep-ratio rescaling, both flips, labels at the
# original size). Its ratios keep 2048x1024 images on the 16-pixel grid; every branch
# still pads to the grid after the resize and flip (for images of other sizes), records
# the pad for mmseg's post-processing, and in the encrypted settings ends with
# BlockScramble: resizing or flipping an encrypted image would not be the encryption of
# any image. The baseline pads too, so that the three settings see the same pixels.
ppenc_tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
# mmseg's default meta keys plus 'img_padding_size' (written out: mmengine turns an
# import in a config into a lazy reference; mmseg_ppenc.transforms.PACK_META_KEYS).
ppenc_tta_pack_inputs = dict(
    type='PackSegInputs',
    meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
               'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label',
               'img_padding_size'))
# The branches both settings share: rescale, flip, pad to the grid, load the labels.
ppenc_tta_branches = [
    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in ppenc_tta_ratios],
    [dict(type='RandomFlip', prob=0., direction='horizontal'),
     dict(type='RandomFlip', prob=1., direction='horizontal')],
    [dict(type='PadToGrid')],
    [dict(type='LoadAnnotations')],
]
ppenc_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=ppenc_tta_branches + [[ppenc_tta_pack_inputs]]),
]
ppenc_encrypted_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=ppenc_tta_branches + [[dict(type='BlockScramble')], [ppenc_tta_pack_inputs]]),
]
