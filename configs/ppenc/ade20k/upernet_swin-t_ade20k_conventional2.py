# UperNet Swin-T (patch 4), ADE20K 512x512 -- conventional 2: the plain pre-trained
# model (not encrypted) fine-tuned and tested on block-wise encrypted images.
# The key comes from $PPENC_KEY_FILE; configs never contain key material. The cipher
# block size is the backbone's input patch size, 4 (a 4x4 block leaks more than
# a 16x16 one: SECURITY.md, 'Block size').
_base_ = './upernet_swin-t_ade20k_baseline.py'

# Meant: a plain backbone on encrypted images (no start warning; docs/generality.md).
ppenc_setting = 'conventional2'

# The baseline's pipelines with BlockScramble right before PackSegInputs.
train_pipeline = {{_base_.ppenc_patch4_encrypted_train_pipeline}}
test_pipeline = {{_base_.ppenc_patch4_encrypted_test_pipeline}}
# tools/test.py --tta: BlockScramble ends every branch, after the resize, flip and pad.
tta_pipeline = {{_base_.ppenc_patch4_encrypted_tta_pipeline}}
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
