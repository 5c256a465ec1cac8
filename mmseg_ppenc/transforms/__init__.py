"""Data transforms registered in mmseg's ``TRANSFORMS``.

- :mod:`.block_scramble`: :class:`BlockScramble`, encryption with the key (client side or
  simulation);
- :mod:`.pad`: :class:`PadToGrid`, uint8 padding before encryption;
- :mod:`.keyless`: augmentations that commute with the cipher, for keyless servers;
- :mod:`.policy`: the allow-list that keyless runs are checked against.
"""
from .block_scramble import BlockScramble
from .pad import PACK_META_KEYS, PadToGrid
from .keyless import EncryptedPhotoMetric, EncryptedRandomFlip, GridRandomCrop
from .policy import ALLOWED_TRANSFORMS, ALTERNATIVES, check_keyless_pipeline

__all__ = ['BlockScramble', 'PadToGrid', 'PACK_META_KEYS', 'GridRandomCrop',
           'EncryptedPhotoMetric', 'EncryptedRandomFlip',
           'ALLOWED_TRANSFORMS', 'ALTERNATIVES', 'check_keyless_pipeline']
