"""Runner hooks registered in mmseg's ``HOOKS``.

- :class:`KeyManagementHook`: one key across a run, checkpoints tied to it, no key leaks;
- :class:`KeylessServerHook`: the checks of keyless server runs on encrypted data;
- :mod:`.speed`: opt-in speed switches (:class:`ChannelsLastHook`,
  :class:`DeferredLogRuntimeInfoHook`).
"""
from ..compat import apply as _apply_compat

_apply_compat()  # before mmseg/mmcv load: mmcv-lite needs the mmcv.ops fallback

from .key_management import KeyManagementHook
from .keyless_server import KeylessServerHook
from .speed import ChannelsLastHook, DeferredLogRuntimeInfoHook

__all__ = ['KeyManagementHook', 'KeylessServerHook', 'ChannelsLastHook',
           'DeferredLogRuntimeInfoHook']
