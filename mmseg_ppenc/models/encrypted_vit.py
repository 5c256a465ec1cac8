"""The Vision Transformer adapted to block-encrypted images."""
from __future__ import annotations

from mmseg.registry import MODELS

from mmseg_ppenc.models.fast_vit import FastVisionTransformer
from mmseg_ppenc.models.patch_adaptation import (
    EncryptedBackboneMixin,
    bind_normalization,
    pretrained_checkpoint,
)

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'pretrained_checkpoint']


@MODELS.register_module()
class EncryptedVisionTransformer(EncryptedBackboneMixin, FastVisionTransformer):
    """mmseg's ``VisionTransformer`` whose pre-trained weights are encrypted with the key.

    A :class:`~mmseg_ppenc.models.FastVisionTransformer`, so its attention is fused by
    default (``attn_impl='stock'`` gives mmcv's path); module and parameter names are
    those of ``VisionTransformer``.

    ``init_weights()`` loads the pre-trained weights exactly as the parent does
    (``init_cfg`` / ``pretrained``), then applies the exact adaptation
    (:class:`~mmseg_ppenc.models.patch_adaptation.EncryptedBackboneMixin`, the same for
    every patch-projection backbone), so the model fed encrypted images computes what the
    plain model computes on plain images. The weights stay a stock ``VisionTransformer``
    state dict, the same as :func:`mmseg_ppenc.adaptation.encrypt_vit_state_dict` and
    ``tools/encrypt_model.py`` give.

    The offset goes into the spatial entries of ``pos_embed`` (mmseg's ViT has no
    projection bias by default), or into the projection bias with ``patch_norm=True``,
    which then needs ``patch_bias=True``.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean, in the channel order the
            ViT sees. Defaults to None (the data preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None (the data
            preprocessor's).
        **kwargs: Every argument of ``mmseg.models.backbones.VisionTransformer``, and
            ``attn_impl`` of ``FastVisionTransformer``.
    """

    ppenc_family = 'vit'
