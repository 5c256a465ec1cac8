# UperNet BEiT-B/16, ADE20K 512x512 -- proposed: the pre-trained model
# encrypted with the key (exact adaptation of the input patch projection, for the data
# preprocessor's normalisation), fine-tuned and tested on block-wise encrypted images.
# The key comes from $PPENC_KEY_FILE; configs never contain key material. The cipher
# block size is the backbone's input patch size, 16.
_base_ = './upernet_beit-b16_ade20k_conventional2.py'

ppenc_setting = 'proposed'  # overrides the base's 'conventional2'

model = dict(backbone=dict(type='EncryptedBEiT'))
# Checks at start that the run is exact (grid, padding, channel order, normalisation)
# and that every component uses one key, and that none leaks into the run's files.
custom_hooks = [dict(type='KeyManagementHook')]
