"""Models registered in mmseg's ``MODELS`` registry."""
from mmseg_ppenc.models.attention import FusedMultiheadAttention, set_attention_impl
from mmseg_ppenc.models.data_preprocessor import EncryptedSegDataPreProcessor
from mmseg_ppenc.models.encrypted_families import (
    EncryptedBEiT,
    EncryptedMAE,
    EncryptedPCPVT,
    EncryptedSVT,
    EncryptedSwinTransformer,
)
from mmseg_ppenc.models.encrypted_vit import EncryptedVisionTransformer
from mmseg_ppenc.models.fast_vit import FastVisionTransformer
from mmseg_ppenc.models.patch_adaptation import (
    EncryptedBackboneMixin,
    bind_normalization,
    input_projection,
)

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'FastVisionTransformer',
           'FusedMultiheadAttention', 'set_attention_impl', 'EncryptedSegDataPreProcessor',
           'EncryptedBackboneMixin', 'input_projection', 'EncryptedBEiT', 'EncryptedMAE',
           'EncryptedSwinTransformer', 'EncryptedPCPVT', 'EncryptedSVT']
