"""Models registered in mmseg's ``MODELS`` registry."""
from ..compat import apply as _apply_compat

_apply_compat()  # before mmseg/mmcv load: mmcv-lite needs the mmcv.ops fallback

from .attention import FusedMultiheadAttention, set_attention_impl
from .data_preprocessor import EncryptedSegDataPreProcessor
from .encrypted_vit import (EncryptedVisionTransformer, bind_normalization,
                            checkpoint_key_meta)
from .fast_vit import FastVisionTransformer

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'checkpoint_key_meta',
           'FastVisionTransformer', 'FusedMultiheadAttention', 'set_attention_impl', 'EncryptedSegDataPreProcessor']
