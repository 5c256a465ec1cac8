"""Data transforms registered in mmseg's ``TRANSFORMS``.

- :mod:`.block_scramble`: :class:`BlockScramble`, encryption with the key (client side or
  simulation);
- :mod:`.pad`: :class:`PadToGrid`, uint8 padding before encryption;
- :mod:`.keyless`: augmentations that commute with the cipher, for keyless servers;
- :mod:`.policy`: the allow-list that keyless runs are checked against.
"""
from mmseg_ppenc.transforms.block_scramble import BlockScramble
from mmseg_ppenc.transforms.keyless import EncryptedPhotoMetric, EncryptedRandomFlip, GridRandomCrop
from mmseg_ppenc.transforms.pad import PACK_META_KEYS, PadToGrid
from mmseg_ppenc.transforms.policy import ALLOWED_TRANSFORMS, ALTERNATIVES, check_keyless_pipeline

__all__ = ['BlockScramble', 'PadToGrid', 'PACK_META_KEYS', 'GridRandomCrop',
           'EncryptedPhotoMetric', 'EncryptedRandomFlip',
           'ALLOWED_TRANSFORMS', 'ALTERNATIVES', 'check_keyless_pipeline']
