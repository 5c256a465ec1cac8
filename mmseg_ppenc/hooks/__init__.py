"""Runner hooks registered in mmseg's ``HOOKS``.

- :class:`KeyManagementHook`: one key across a run, checkpoints tied to it, no key leaks;
- :class:`KeylessServerHook`: the checks of keyless server runs on encrypted data;
- :mod:`.speed`: opt-in speed switches (:class:`ChannelsLastHook`,
  :class:`CompileModelHook`, :class:`DeferredLogRuntimeInfoHook`,
  :class:`FastLossHook`).
"""
from .key_management import KeyManagementHook
from .keyless_server import KeylessServerHook
from .speed import (ChannelsLastHook, CompileModelHook, DeferredLogRuntimeInfoHook,
                    FastLossHook)

__all__ = ['KeyManagementHook', 'KeylessServerHook', 'ChannelsLastHook',
           'CompileModelHook', 'DeferredLogRuntimeInfoHook', 'FastLossHook']
