"""mmseg_ppenc: privacy-preserving semantic segmentation for mmsegmentation 1.x.

``import mmseg_ppenc`` is cheap: it imports neither torch nor mmseg, so client-side code
(:mod:`.keys`, :mod:`.cipher`, :mod:`.datasets.encrypt`) runs without them. The mmseg
components are registered by :mod:`mmseg_ppenc.registration`, which runs

- at once, when mmengine is already loaded (the case of
  ``custom_imports=dict(imports=['mmseg_ppenc'], allow_failed_imports=False)``, of
  ``mim train`` and of the tools), or
- otherwise as soon as mmseg's registries are first imported in this process (see
  :mod:`mmseg_ppenc.registration` for how), or
- when :func:`register_all_modules` is called.

The public names below are loaded on first access.
"""
import importlib
import sys

__version__ = '0.1.0'

# name -> module that defines it (loaded lazily, PEP 562).
_LAZY = {
    'SecretKey': 'keys', 'resolve_key': 'keys', 'KEY_ENV_VAR': 'keys',
    'BlockCipher': 'cipher', 'encrypt_image': 'cipher', 'decrypt_image': 'cipher',
    'encrypt_tensor': 'cipher', 'decrypt_tensor': 'cipher',
    'encrypt_vit_state_dict': 'adaptation', 'decrypt_vit_state_dict': 'adaptation',
    'BlockScramble': 'transforms', 'EncryptedVisionTransformer': 'models',
    'KeyManagementHook': 'hooks', 'register_all_modules': 'registration',
}

__all__ = ['__version__', *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmseg_ppenc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


from . import registration as _registration  # noqa: E402  (cheap: no torch/mmseg)

_registration.register_on_import()
del sys
