# Conventional 2: plain model fine-tuned and tested on encrypted images.
_base_ = './setr_tiny_mla_synthetic_baseline.py'

train_dataloader = dict(
    dataset=dict(pipeline={{_base_.ppenc_encrypted_train_pipeline}}))
val_dataloader = dict(
    dataset=dict(pipeline={{_base_.ppenc_encrypted_test_pipeline}}))
test_dataloader = val_dataloader
