# SETR-MLA with ViT-B/16 on Cityscapes 768x768 -- proposed: the pre-trained
# model encrypted with the key (exact adaptation of the patch embedding), fine-tuned and
# tested on block-wise encrypted images.
# Experiment grid of Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730.
# The key comes from $PPENC_KEY_FILE; configs never contain key material.
_base_ = './setr_vit-b_mla_cityscapes_conventional2.py'

ppenc_setting = 'proposed'  # overrides the base's 'conventional2'

model = dict(backbone=dict(type='EncryptedVisionTransformer'))
# Checks that every component uses one key and that none leaks into the run's files.
custom_hooks = [dict(type='KeyManagementHook')]
