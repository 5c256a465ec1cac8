"""When and how the plugin's components enter mmseg's registries.

mmseg finds a config's ``type='EncryptedVisionTransformer'`` (and the plugin's transforms,
hooks, datasets and optimizer wrappers) only after the modules defining them have been
imported. This module imports them all (:func:`register_all_modules`), after applying the
dependency fixes of :mod:`mmseg_ppenc.compat`. ``import mmseg_ppenc`` arranges for that to
happen without making client-side imports heavy (:func:`register_on_import`):

- if mmengine is already loaded (``custom_imports`` in a config, ``mim train``, mmseg's
  tools and APIs), registration runs at once;
- otherwise one-shot import hooks (:class:`_ImportHooks`) serve mmcv-lite's missing
  ``mmcv.ops`` from the fallback when mmseg asks for it, and wait for ``mmseg.registry``
  to put ``mmseg_ppenc._register`` (which calls :func:`register_all_modules`) first
  in the import locations of mmseg's registries, so mmengine imports it (and with it the
  plugin) the first time any mmseg registry builds or looks up a component. Nothing heavy
  is imported until then, so ``import mmseg_ppenc.keys`` loads neither torch nor mmseg.

Side effects (all of them, each tested in ``tests/test_registration.py``):

- ``import mmseg_ppenc`` alone: none besides the import hooks above (no warnings filter, no
  registry entry, no heavy import);
- when mmseg loads: the ``mmcv.ops`` fallback (mmcv-lite only, with its one warnings filter)
  and the ``torch.load(weights_only=True)`` allow-list of mmengine's checkpoint types (see
  :mod:`mmseg_ppenc.compat`);
- at registration: the same fixes, and the registry entries of this package.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ['register_all_modules', 'register_on_import', 'REGISTRIES']

#: mmseg registries the plugin adds components to.
REGISTRIES = ('MODELS', 'TRANSFORMS', 'HOOKS', 'DATASETS', 'OPTIM_WRAPPERS')
_done = False
# Imported by mmengine as a registry location; importing it registers everything.
_LOCATION = 'mmseg_ppenc._register'


def register_all_modules() -> None:
    """Apply the compatibility fixes and register every component (idempotent)."""
    global _done
    if _done:
        return
    from .compat import apply
    apply()
    from . import hooks, models, optim, runner, transforms  # noqa: F401
    from .datasets import keyless  # noqa: F401
    _done = True


def _add_location(registry_module: Any) -> None:
    # mmseg is loading, so mmengine and torch are: checkpoints may be read from now on.
    from .compat import register_safe_globals
    register_safe_globals()
    for name in REGISTRIES:
        reg = getattr(registry_module, name, None)
        locations = getattr(reg, '_locations', None)
        if isinstance(locations, list) and _LOCATION not in locations:
            # First: the compatibility fixes must precede mmseg's own model imports.
            locations.insert(0, _LOCATION)


class _ImportHooks(importlib.abc.MetaPathFinder):
    """One-shot import hooks installed by ``import mmseg_ppenc`` when mmengine is not loaded.

    - ``mmcv.ops``: with mmcv-lite (no compiled ops), serve the fallback module of
      :func:`mmseg_ppenc.compat.install_mmcv_ops_fallback` instead of the real package,
      which would fail to load, so ``import mmseg.models`` works in any import order.
    - ``mmseg.registry``: right after it executes, put ``mmseg_ppenc._register`` first
      in the import locations of mmseg's registries.
    """

    targets = ('mmcv.ops', 'mmseg.registry')

    def __init__(self) -> None:
        self.pending = set(self.targets)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        if fullname == 'mmcv.ops':
            return self._mmcv_ops_spec()
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                spec.loader = _PostExecLoader(spec.loader, _add_location)
                return spec
        return None

    @staticmethod
    def _mmcv_ops_spec():
        from .compat import install_mmcv_ops_fallback
        if not install_mmcv_ops_fallback():
            return None  # a compiled mmcv: import the real mmcv.ops
        module = sys.modules.pop('mmcv.ops')  # the import system puts it back
        return importlib.util.spec_from_loader('mmcv.ops', _ReadyLoader(module))


class _ReadyLoader(importlib.abc.Loader):
    """Loader of a module object that already exists."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        pass


class _PostExecLoader(importlib.abc.Loader):
    """Wraps a loader and calls ``after(module)`` once the module has executed."""

    def __init__(self, loader: importlib.abc.Loader, after) -> None:
        self.loader = loader
        self.after = after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.after(module)


def register_on_import() -> None:
    """Register now if mmengine is loaded, else as soon as mmseg's registries are used."""
    if 'mmengine' in sys.modules:
        register_all_modules()
    elif 'mmseg.registry' in sys.modules:  # pragma: no cover - mmseg without mmengine
        _add_location(sys.modules['mmseg.registry'])
    elif not any(isinstance(f, _ImportHooks) for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportHooks())

