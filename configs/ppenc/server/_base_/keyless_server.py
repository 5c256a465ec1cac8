# What every keyless server config shares: the offline-encrypted data (a tree written by
# tools/encrypt_dataset.py, with its ppenc_manifest.json), the validation/test data
# without any key-dependent transform, and the hook that checks data/model key agreement.
# Every name is prefixed with `ppenc_server_` so that this file can sit next to a model
# config in `_base_` (mmengine forbids a key defined by two bases); the server configs
# pick the values up with `{{_base_.ppenc_server_...}}`.

# The encrypted tree: $PPENC_DATA_ROOT, else data/cityscapes_encrypted/.
ppenc_server_data_root = '{{$PPENC_DATA_ROOT:data/cityscapes_encrypted/}}'

# Unresized images; slide-window inference starts every window on the block grid.
ppenc_server_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]

# KeylessEncryptedDataset reads DATA_ROOT/ppenc_manifest.json and refuses transforms that
# do not commute with the cipher when the Runner builds the dataloaders. `_delete_`
# replaces the model config's plain dataset as a whole.
ppenc_server_val_dataset = dict(
    _delete_=True,
    type='KeylessEncryptedDataset',
    dataset=dict(
        type='CityscapesDataset',
        data_root=ppenc_server_data_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=ppenc_server_test_pipeline))

# The same data for testing, as its own dict: mmengine consumes a dict's `_delete_` when
# it merges it, so val and test must not share one.
ppenc_server_test_dataset = dict(ppenc_server_val_dataset)

# The training split; each server config adds its train pipeline (the crop size is the
# model's).
ppenc_server_train_data_prefix = dict(
    img_path='leftImg8bit/train', seg_map_path='gtFine/train')

# Checks data/model key agreement at start and records the data's key fingerprint (not
# the key) in every checkpoint.
ppenc_server_hooks = [dict(type='KeylessServerHook')]
