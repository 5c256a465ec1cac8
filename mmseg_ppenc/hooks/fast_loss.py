"""The heads' losses through :mod:`mmseg_ppenc.models.fast_loss` (opt-in)."""
from __future__ import annotations

from mmengine.hooks.hook import Hook
from mmseg.registry import HOOKS

from mmseg_ppenc.models.fast_loss import enable_fast_loss

__all__ = ['FastLossHook']


@HOOKS.register_module()
class FastLossHook(Hook):
    """The heads' losses through :mod:`mmseg_ppenc.models.fast_loss`, set before training.

    Resizes each head's logits to the label size with two matrix products instead of
    ``F.interpolate`` (whose CUDA backward uses atomics) and logs ``acc_seg`` from
    ``argmax`` instead of mmseg's ``topk`` accuracy (equal except at exact ties). Losses
    and gradients are unchanged up to float rounding. Heads whose class overrides
    ``loss_by_feat`` keep their own and are named in the log.

    Enable it without touching a config's own ``custom_hooks`` (the proposed configs
    hold ``KeyManagementHook`` there) with
    ``--cfg-options default_hooks.fast_loss.type=FastLossHook``, or in a config with
    ``custom_hooks = [..., dict(type='FastLossHook')]``; drop it for mmseg's loss path.
    It runs before :class:`~mmseg_ppenc.hooks.CompileModelHook`, so a compiled forward
    includes it.
    """

    priority = 'NORMAL'

    def before_train(self, runner) -> None:
        """Switch the heads of ``runner.model``.

        Args:
            runner (Runner): The mmengine runner.

        Raises:
            ConfigError: No head uses mmseg's ``loss_by_feat`` (see
                :func:`~mmseg_ppenc.models.fast_loss.enable_fast_loss`).
        """
        enabled, kept = enable_fast_loss(runner.model)
        msg = f'FastLossHook: matmul resize + argmax accuracy in {", ".join(enabled)}.'
        if kept:
            msg += f' Kept their own loss_by_feat: {", ".join(kept)}.'
        runner.logger.info(msg)
