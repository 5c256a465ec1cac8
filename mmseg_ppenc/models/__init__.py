"""Models registered in mmseg's ``MODELS`` registry."""
from .encrypted_vit import EncryptedVisionTransformer, checkpoint_key_meta

__all__ = ['EncryptedVisionTransformer', 'checkpoint_key_meta']
