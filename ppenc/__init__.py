"""ppenc: block-wise image encryption for privacy-preserving ViT segmentation.

The framework-free half of mmseg_ppenc: it needs numpy and the standard library only
(Pillow to read and write dataset images), so a data owner can generate keys, encrypt a
dataset and scan files for key material without torch or mmsegmentation.

- :mod:`ppenc.keys`: the secret key, its file format and the permutations derived from it;
- :mod:`ppenc.cipher`: the block cipher on numpy arrays (and tensors, when torch is there);
- :mod:`ppenc.grid`: the block-grid rules (image sizes, pads, crops, slide windows);
- :mod:`ppenc.meta`: the ``meta['ppenc']`` record of encrypted weights, and its checks;
- :mod:`ppenc.dataset`: dataset encryption (plan, manifest, writer);
- :mod:`ppenc.leak_scan`: finding key material in files, logs and configs;
- :mod:`ppenc.synthetic`: the small built-in synthetic dataset;
- :mod:`ppenc.errors`: every exception raised for a user error;
- :mod:`ppenc.cli`: the client tools (``ppenc-keygen``, ``ppenc-encrypt-dataset``, ...).

The mmsegmentation plugin that uses it is the package ``mmseg_ppenc``.
"""

__version__ = '0.2.0'

__all__ = ['__version__']
