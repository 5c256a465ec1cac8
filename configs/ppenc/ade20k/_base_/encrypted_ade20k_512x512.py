# Pipelines shared by the ADE20K 512x512 configs of mmseg's ViT families (SETR-MLA,
# UperNet ViT-B16 MLN, Segmenter, DPT). Only names prefixed `ppenc_` are defined here so
# that this file can be a second base of a config that inherits a stock mmseg config
# (mmengine forbids duplicate keys among several bases); use them through
# `{{_base_.ppenc_xxx}}`.

# The stock train pipeline of mmseg's `_base_/datasets/ade20k.py` (restated verbatim;
# tests/test_configs_ade20k.py checks it against the stock one) with one addition for
# every setting, baseline included: PadToGrid brings crops smaller than 512x512 to it in
# uint8 (labels 255), so the data preprocessor never pads a batch after normalisation,
# and the three settings train on the same pixels.
ppenc_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PadToGrid', size=(512, 512)),
    dict(type='PackSegInputs'),
]
# The stock test pipeline (keep-ratio Resize to a short side of 512, labels at the
# original size) made exact for images of any size: the resize gives sizes such as
# 512x683, off the 16-pixel block grid; PadToGrid pads them in uint8 to 512x688 and
# records the pad in `img_padding_size`, which mmseg cuts off the prediction before
# resizing it to the original image. PadToGrid comes before LoadAnnotations so that only
# the image is padded: the labels stay at the original size, also when the resize keeps
# the size (an image whose short side is already 512).
ppenc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='PadToGrid'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    # mmseg's default meta keys plus 'img_padding_size' (written out: mmengine turns an
    # import in a config into a lazy reference; mmseg_ppenc.transforms.PACK_META_KEYS).
    dict(
        type='PackSegInputs',
        meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                   'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label',
                   'img_padding_size')),
]
# The encrypted variants: BlockScramble after every transform that changes pixels, right
# before packing. The key comes from $PPENC_KEY_FILE: configs never carry key material.
# The block size is the backbone's input patch size: 16 for ViT, DeiT, BEiT and MAE,
# 4 for Swin and Twins (`ppenc_patch4_*`). The uint8 pad stays on the 16-pixel grid in
# every setting (a multiple of 4 too), so that all families see the same pixels.
ppenc_encrypted_train_pipeline = ppenc_train_pipeline[:-1] + [
    dict(type='BlockScramble'),
    ppenc_train_pipeline[-1],
]
ppenc_encrypted_test_pipeline = ppenc_test_pipeline[:-1] + [
    dict(type='BlockScramble'),
    ppenc_test_pipeline[-1],
]
ppenc_patch4_encrypted_train_pipeline = ppenc_train_pipeline[:-1] + [
    dict(type='BlockScramble', block_size=4),
    ppenc_train_pipeline[-1],
]
ppenc_patch4_encrypted_test_pipeline = ppenc_test_pipeline[:-1] + [
    dict(type='BlockScramble', block_size=4),
    ppenc_test_pipeline[-1],
]
# Test-time augmentation (tools/test.py --tta): the stock `tta_pipeline` of mmseg's
# `_base_/datasets/ade20k.py` (keep-ratio rescaling of the original image, both flips,
# labels at the original size) with, in every branch, the uint8 PadToGrid of the test
# pipeline after the resize and flip (their sizes are off the 16-pixel grid), the pad
# recorded for mmseg's post-processing, and in the encrypted settings BlockScramble last:
# resizing or flipping an encrypted image would not be the encryption of any image. The
# baseline pads too, so that the three settings see the same pixels.
ppenc_tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
ppenc_tta_branches = [
    [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in ppenc_tta_ratios],
    [dict(type='RandomFlip', prob=0., direction='horizontal'),
     dict(type='RandomFlip', prob=1., direction='horizontal')],
    [dict(type='PadToGrid')],
    [dict(type='LoadAnnotations')],
]
ppenc_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=ppenc_tta_branches + [[ppenc_test_pipeline[-1]]]),
]
ppenc_encrypted_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=ppenc_tta_branches + [[dict(type='BlockScramble')],
                                          [ppenc_test_pipeline[-1]]]),
]
ppenc_patch4_encrypted_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=ppenc_tta_branches + [[dict(type='BlockScramble', block_size=4)],
                                          [ppenc_test_pipeline[-1]]]),
]
