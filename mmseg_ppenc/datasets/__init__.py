"""Data sets for mmseg_ppenc: a synthetic stand-in for Cityscapes (no mmseg import)."""
from .synthetic import CITYSCAPES_CLASSES, make_synthetic_cityscapes

__all__ = ['CITYSCAPES_CLASSES', 'make_synthetic_cityscapes']
