# Proposed: the pre-trained ViT encrypted with the key (exact adaptation), fine-tuned and
# tested on encrypted images. The key comes from $PPENC_KEY_FILE.
_base_ = './setr_tiny_pup_synthetic_conventional2.py'

ppenc_setting = 'proposed'  # overrides the base's 'conventional2'

model = dict(backbone=dict(type='EncryptedVisionTransformer'))
custom_hooks = [dict(type='KeyManagementHook')]
