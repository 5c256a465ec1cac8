"""``torch.compile`` of the segmentor: the project's one compile switch."""
from __future__ import annotations

from typing import Optional

from mmengine.hooks.hook import Hook
from mmseg.registry import HOOKS

from mmseg_ppenc.core.keyed import unwrap_model
from ppenc.errors import ConfigError

__all__ = ['CompileModelHook']


@HOOKS.register_module()
class CompileModelHook(Hook):
    """``torch.compile`` the whole segmentor forward (backbone, neck, heads and losses).

    The project's only way to compile. ``nn.Module.compile`` compiles in place, so
    parameter names, checkpoints and the optimizer are unaffected; the data preprocessor
    (and with it any encryption on the device) stays eager. On one H200 this took ViT-L +
    MLA 768x768 training from about 30 to about 38 images/s (docs/benchmarks.md); the
    first iterations are slow while it compiles.

    mmengine's own ``compile=True`` (``torch.compile`` of the Runner's ``train_step``,
    optimizer step included) is refused alongside it: in the same measurement it did not
    finish compiling in 140 s, and both together would compile the forward twice.

    Enable with ``custom_hooks = [dict(type='CompileModelHook')]``; drop the entry for
    eager execution.

    Args:
        options (dict, optional): Keyword arguments of ``torch.compile`` (e.g.
            ``dict(mode='max-autotune')``). Defaults to None.
    """

    # After FastLossHook (NORMAL), so that the compiled forward traces the fast loss path.
    priority = 'LOW'

    def __init__(self, options: Optional[dict] = None) -> None:
        self.options = dict(options or {})

    def before_train(self, runner) -> None:
        """Compile ``runner.model`` in place.

        Args:
            runner (Runner): The mmengine runner.

        Raises:
            ConfigError: The config also sets mmengine's ``compile``.
        """
        cfg = getattr(runner, 'cfg', None)
        if cfg is not None and cfg.get('compile', None):
            raise ConfigError(
                'CompileModelHook and mmengine\'s compile=... both compile the model; '
                'remove compile from the config (CompileModelHook is the supported way).')
        unwrap_model(runner.model).compile(**self.options)
