"""Data sets registered in mmseg's ``DATASETS``: the keyless server's encrypted dataset.

Dataset encryption and the synthetic dataset are client-side and framework-free: see
:mod:`ppenc.dataset` and :mod:`ppenc.synthetic`.
"""
from mmseg_ppenc.datasets.keyless import KeylessEncryptedDataset

__all__ = ['KeylessEncryptedDataset']
