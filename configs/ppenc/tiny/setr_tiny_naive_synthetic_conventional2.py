# Conventional 2: plain model fine-tuned and tested on encrypted images.
_base_ = './setr_tiny_naive_synthetic_baseline.py'

# Meant: a plain backbone on encrypted images (no start warning; docs/generality.md).
ppenc_setting = 'conventional2'

# The top-level pipelines are what mmseg's inference API reads: the encrypted ones.
train_pipeline = {{_base_.ppenc_encrypted_train_pipeline}}
test_pipeline = {{_base_.ppenc_encrypted_test_pipeline}}
# tools/test.py --tta: BlockScramble ends every branch, after the resize, flip and pad.
tta_pipeline = {{_base_.ppenc_encrypted_tta_pipeline}}
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
