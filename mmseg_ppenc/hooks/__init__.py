"""Runner hooks registered in mmseg's ``HOOKS``.

- :class:`KeyManagementHook`: one key across a run, checkpoints tied to it, no key leaks;
- :class:`KeylessServerHook`: the checks of keyless server runs on encrypted data;
- opt-in speed switches, one hook per module: :class:`ChannelsLastHook` (channels-last
  neck and heads), :class:`CompileModelHook` (``torch.compile`` of the segmentor, the
  one compile switch), :class:`DeferredLogRuntimeInfoHook` (one host copy of the logged
  losses per log interval) and :class:`FastLossHook` (matmul resize and argmax accuracy
  in the heads' losses). Two further switches need no code here: the fused optimizer
  step (``optim_wrapper.optimizer.fused=True``) and bf16 (``BF16AmpOptimWrapper``).
"""
from mmseg_ppenc.hooks.channels_last import ChannelsLastHook, to_channels_last
from mmseg_ppenc.hooks.compile_model import CompileModelHook
from mmseg_ppenc.hooks.deferred_log import DeferredLogRuntimeInfoHook
from mmseg_ppenc.hooks.fast_loss import FastLossHook
from mmseg_ppenc.hooks.key_management import KeyManagementHook
from mmseg_ppenc.hooks.keyless_server import KeylessServerHook

__all__ = ['KeyManagementHook', 'KeylessServerHook', 'ChannelsLastHook',
           'CompileModelHook', 'DeferredLogRuntimeInfoHook', 'FastLossHook',
           'to_channels_last']
