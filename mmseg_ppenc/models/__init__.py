"""Models registered in mmseg's ``MODELS`` registry."""
from mmseg_ppenc.models.attention import FusedMultiheadAttention, set_attention_impl
from mmseg_ppenc.models.data_preprocessor import EncryptedSegDataPreProcessor
from mmseg_ppenc.models.encrypted_vit import EncryptedVisionTransformer, bind_normalization
from mmseg_ppenc.models.fast_vit import FastVisionTransformer

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'FastVisionTransformer',
           'FusedMultiheadAttention', 'set_attention_impl', 'EncryptedSegDataPreProcessor']
