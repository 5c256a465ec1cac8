"""mmseg_ppenc: the mmsegmentation 1.x plugin of privacy-preserving segmentation.

``import mmseg_ppenc`` (which ``custom_imports=dict(imports=['mmseg_ppenc'])`` does) registers
every component in mmseg's registries (``TRANSFORMS``, ``MODELS``, ``HOOKS``, ``DATASETS``,
``OPTIM_WRAPPERS``, ``RUNNERS``) with mmseg's own ``register_module``, by importing the
modules that define them. Before that it applies, explicitly, the two environment fixes
of :mod:`mmseg_ppenc.compat` (the ``mmcv.ops`` fallback for mmcv-lite, and the
``torch.load(weights_only=True)`` allow-list of mmengine's checkpoint types).

The framework-free half (keys, cipher, grid rules, record formats, dataset encryption,
leak scan) is the package :mod:`ppenc`, which client-side code imports without torch or
mmseg.
"""
from mmseg_ppenc.compat import install_mmcv_ops_fallback, register_safe_globals

# Before any mmseg model module: with mmcv-lite, mmseg imports `mmcv.ops` unconditionally.
install_mmcv_ops_fallback()
register_safe_globals()

# Importing these modules registers their components (mmseg's @register_module).
from mmseg_ppenc import datasets, hooks, models, optim, runner, transforms  # noqa: E402,F401
from mmseg_ppenc.adaptation import decrypt_vit_state_dict, encrypt_vit_state_dict  # noqa: E402
from mmseg_ppenc.hooks import KeyManagementHook  # noqa: E402
from mmseg_ppenc.models import EncryptedVisionTransformer  # noqa: E402
from mmseg_ppenc.transforms import BlockScramble  # noqa: E402
from ppenc import __version__  # noqa: E402
from ppenc.cipher import (BlockCipher, decrypt_image, decrypt_tensor,  # noqa: E402
                          encrypt_image, encrypt_tensor)
from ppenc.keys import KEY_ENV_VAR, SecretKey, resolve_key  # noqa: E402

__all__ = ['__version__', 'SecretKey', 'resolve_key', 'KEY_ENV_VAR', 'BlockCipher',
           'encrypt_image', 'decrypt_image', 'encrypt_tensor', 'decrypt_tensor',
           'encrypt_vit_state_dict', 'decrypt_vit_state_dict', 'BlockScramble',
           'EncryptedVisionTransformer', 'KeyManagementHook']
