"""mmseg_ppenc: privacy-preserving semantic segmentation for mmsegmentation 1.x.

Importing the package applies the compatibility fixes of :mod:`mmseg_ppenc.compat`
(before anything imports ``mmseg.utils``) and registers every component in mmseg's
registries, so one ``custom_imports=dict(imports=['mmseg_ppenc'],
allow_failed_imports=False)`` in a config enables them all.
"""
__version__ = '0.1.0'

from . import compat  # noqa: E402

compat.apply()

from .adaptation import decrypt_vit_state_dict, encrypt_vit_state_dict  # noqa: E402
from .cipher import (BlockCipher, decrypt_image, decrypt_tensor,  # noqa: E402
                     encrypt_image, encrypt_tensor)
from .hooks import KeyManagementHook  # noqa: E402
from .keys import KEY_ENV_VAR, SecretKey, resolve_key  # noqa: E402
from .models import EncryptedVisionTransformer  # noqa: E402
from . import optim  # noqa: E402,F401  (registers BF16AmpOptimWrapper)
from .transforms import BlockScramble  # noqa: E402
from . import server_transforms  # noqa: E402,F401  (keyless server transforms, dataset, hook)
from . import speed  # noqa: E402,F401  (ChannelsLastHook, DeferredLogRuntimeInfoHook)

__all__ = [
    '__version__', 'SecretKey', 'resolve_key', 'KEY_ENV_VAR', 'BlockCipher',
    'encrypt_image', 'decrypt_image', 'encrypt_tensor', 'decrypt_tensor',
    'encrypt_vit_state_dict', 'decrypt_vit_state_dict', 'BlockScramble',
    'EncryptedVisionTransformer', 'KeyManagementHook'
]
