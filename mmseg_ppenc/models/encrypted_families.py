"""Encrypted variants of mmseg's other patch-projection backbones: BEiT, MAE, Swin, Twins.

Each is the stock mmseg 1.2.2 class plus
:class:`~mmseg_ppenc.models.patch_adaptation.EncryptedBackboneMixin`: the same arguments
and state-dict names (stock checkpoints load), plus ``key_file``, ``mean`` and ``std``,
and the exact adaptation of the input patch projection on ``init_weights``. The cipher
block size is the patch size: 16 for BEiT and MAE, 4 for Swin and Twins. The projection
of all four has a bias, which takes the offset; Swin and Twins have a LayerNorm after it,
which the adaptation leaves exact.
"""
from __future__ import annotations

from mmseg.models.backbones import MAE, PCPVT, SVT, BEiT, SwinTransformer
from mmseg.registry import MODELS

from mmseg_ppenc.models.patch_adaptation import EncryptedBackboneMixin

__all__ = ['EncryptedBEiT', 'EncryptedMAE', 'EncryptedSwinTransformer', 'EncryptedPCPVT',
           'EncryptedSVT']


class _PatchSizeFromProjection:
    """``patch_size`` for backbones that do not store it (Swin, Twins): the kernel of the
    input projection, which the hooks and start checks compare with the cipher block
    size."""

    @property
    def patch_size(self) -> int:
        """The input patch size (= the cipher block size)."""
        return self.block_size


@MODELS.register_module()
class EncryptedBEiT(EncryptedBackboneMixin, BEiT):
    """mmseg's ``BEiT`` adapted to images block-encrypted with the key (block size = the
    patch size, 16 by default).

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean. Defaults to None (the data
            preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None.
        **kwargs: Every argument of ``mmseg.models.backbones.BEiT``.
    """

    ppenc_family = 'beit'


@MODELS.register_module()
class EncryptedMAE(EncryptedBackboneMixin, MAE):
    """mmseg's ``MAE`` adapted to images block-encrypted with the key (block size = the
    patch size, 16 by default). The offset goes into the projection bias; ``pos_embed``
    is kept as is.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean. Defaults to None (the data
            preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None.
        **kwargs: Every argument of ``mmseg.models.backbones.MAE``.
    """

    ppenc_family = 'mae'


@MODELS.register_module()
class EncryptedSwinTransformer(_PatchSizeFromProjection, EncryptedBackboneMixin,
                               SwinTransformer):
    """mmseg's ``SwinTransformer`` adapted to images block-encrypted with the key (block
    size = ``patch_size``, 4 by default). The offset goes into the projection bias, before
    the patch LayerNorm (``patch_norm=True``).

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean. Defaults to None (the data
            preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None.
        **kwargs: Every argument of ``mmseg.models.backbones.SwinTransformer``.
    """

    ppenc_family = 'swin'


@MODELS.register_module()
class EncryptedPCPVT(_PatchSizeFromProjection, EncryptedBackboneMixin, PCPVT):
    """mmseg's Twins ``PCPVT`` adapted to images block-encrypted with the key (block size
    = ``patch_sizes[0]``, 4 by default). Only the first (input) patch embedding is
    adapted; the later ones see features, which are the plain model's exactly.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean. Defaults to None (the data
            preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None.
        **kwargs: Every argument of ``mmseg.models.backbones.PCPVT``.
    """

    ppenc_family = 'twins'


@MODELS.register_module()
class EncryptedSVT(_PatchSizeFromProjection, EncryptedBackboneMixin, SVT):
    """mmseg's Twins ``SVT`` adapted to images block-encrypted with the key (block size =
    ``patch_sizes[0]``, 4 by default). Only the first (input) patch embedding is adapted.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean. Defaults to None (the data
            preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None.
        **kwargs: Every argument of ``mmseg.models.backbones.SVT``.
    """

    ppenc_family = 'twins'
