"""Models registered in mmseg's ``MODELS`` registry."""
from .attention import FusedMultiheadAttention, set_attention_impl
from .data_preprocessor import EncryptedSegDataPreProcessor
from .encrypted_vit import (EncryptedVisionTransformer, bind_normalization,
                            checkpoint_key_meta)
from .fast_vit import FastVisionTransformer

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'checkpoint_key_meta',
           'FastVisionTransformer', 'FusedMultiheadAttention', 'set_attention_impl',
           'EncryptedSegDataPreProcessor']
