# The keyless server config plus horizontal flips. Only valid for data encrypted with a
# flip-compatible key (`tools/keygen.py --flip-compatible`): KeylessEncryptedDataset
# compares the declaration below with the dataset manifest and refuses other data.
_base_ = './setr_tiny_mla_synthetic_server.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='GridRandomCrop', crop_size=(64, 64), cat_max_ratio=0.75),
    dict(type='EncryptedRandomFlip', prob=0.5, flip_compatible=True),
    dict(type='EncryptedPhotoMetric'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(dataset=dict(pipeline=train_pipeline)))
