"""Data sets for mmseg_ppenc: a synthetic stand-in for Cityscapes (no mmseg import)."""
from .encrypt import (MANIFEST_NAME, DatasetEncryptionError, encrypt_dataset,
                      read_manifest)
from .synthetic import CITYSCAPES_CLASSES, make_synthetic_cityscapes

__all__ = ['CITYSCAPES_CLASSES', 'make_synthetic_cityscapes', 'MANIFEST_NAME',
           'DatasetEncryptionError', 'encrypt_dataset', 'read_manifest']
