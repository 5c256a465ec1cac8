"""Components that use the secret key, and how a run's components are found.

A component that encrypts with, or is adapted to, the key subclasses
:class:`KeyedComponent`. Hooks find them by type, not by the presence of an attribute, so a
class that merely *records* a fingerprint (a keyless dataset's manifest, a checkpoint's
meta) is never mistaken for one that holds the key.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from ppenc.cipher import BlockCipher, get_cipher
from ppenc.keys import KEY_ENV_VAR, resolve_key

__all__ = ['KeyedComponent', 'SelectedCipher', 'SelectedCipherMixin', 'is_keyed',
           'unwrap_model', 'iter_transforms', 'keyed_components', 'BuiltDataloaders',
           'knows_built_dataloaders', 'run_dataloaders']


class KeyedComponent:
    """Mixin of components that need the secret key.

    Subclasses provide, as attributes or properties, :attr:`key_fingerprint` (the
    fingerprint of the key they use) and :attr:`block_size` (the cipher block side, which
    must equal the ViT patch size). The hooks check both at runner start.
    """

    #: Fingerprint of the key in use (safe to log).
    key_fingerprint: str
    #: Cipher block side in pixels.
    block_size: int


class SelectedCipher:
    """The cipher of the key a component selects by file path (or ``$PPENC_KEY_FILE``).

    Shared by the components that encrypt (``BlockScramble``, the GPU data
    preprocessor): the key is loaded at construction so that a missing or broken key
    fails when the pipeline or model is built, reloaded if the selection changes, and
    never pickled: copies sent to dataloader workers or deep-copied reload it from the
    file instead of carrying the key-derived permutation.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        block_size (int): Block size. Defaults to 16.
    """

    def __init__(self, key_file=None, block_size: int = 16) -> None:
        self.key_file = key_file
        self.block_size = block_size
        self._cipher: Optional[BlockCipher] = None
        self._selected = None
        self.get()

    def get(self) -> BlockCipher:
        """The cipher, (re)loaded if the selected key file changed."""
        selected = self.key_file or os.environ.get(KEY_ENV_VAR)
        if self._cipher is None or selected != self._selected:
            self._cipher = get_cipher(resolve_key(self.key_file), self.block_size)
            self._selected = selected
        return self._cipher

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_cipher'] = None
        state['_selected'] = None
        return state


class SelectedCipherMixin(KeyedComponent):
    """A :class:`~mmseg_ppenc.core.keyed.KeyedComponent` that encrypts with the cipher of
    a :class:`SelectedCipher` stored as ``self._selected``."""

    _selected: SelectedCipher

    @property
    def cipher(self) -> BlockCipher:
        """The cipher, (re)loaded from the key file if the selection changed."""
        return self._selected.get()

    @property
    def key_fingerprint(self) -> str:
        """Fingerprint of the key in use (safe to log)."""
        return self.cipher.key_fingerprint


def is_keyed(obj: Any) -> bool:
    """Whether ``obj`` is a component that needs the key."""
    return isinstance(obj, KeyedComponent)


def unwrap_model(model: Any) -> Any:
    """The segmentor that a run's model holds.

    Looks through mmengine's model wrappers (DDP, FSDP, ...) and test-time augmentation
    models (``SegTTAModel`` and any ``BaseTTAModel``, which ``tools/test.py --tta``
    builds), in any nesting (a TTA model in DDP). The segmentor inside is what reads the
    images: its backbone, its data preprocessor and its test settings are the ones every
    check must see. A TTA wrapper has a default data preprocessor of its own that never
    runs, and no backbone, so reading the wrapper instead silently skips checks or
    reports wrong ones.

    Args:
        model (nn.Module): A segmentor, possibly wrapped; other objects are returned as
            they are.

    Returns:
        nn.Module: The innermost model.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    # A bounded loop: wrappers nest a few levels at most.
    for _ in range(8):
        if is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        else:
            break
    return model


def iter_transforms(obj: Any, depth: int = 0) -> Iterator[Any]:
    """Every transform object inside a dataset / pipeline tree (wrappers, ``TestTimeAug``)."""
    if obj is None or depth > 8:
        return
    for attr in ('dataset', 'datasets'):
        sub = getattr(obj, attr, None)
        if sub is not None:
            for s in (sub if isinstance(sub, (list, tuple)) else [sub]):
                yield from iter_transforms(s, depth + 1)
    pipeline = getattr(obj, 'pipeline', None)
    if pipeline is not None:
        yield from iter_transforms(pipeline, depth + 1)
    transforms = getattr(obj, 'transforms', None)
    if isinstance(transforms, (list, tuple)):
        for t in transforms:
            for tt in (t if isinstance(t, (list, tuple)) else [t]):  # TestTimeAug nests
                yield tt
                yield from iter_transforms(tt, depth + 1)


class BuiltDataloaders:
    """Mixin of runners that tell which of their dataloaders are built, at any time.

    mmengine's public ``train_loop``/``val_loop``/``test_loop`` build a loop that is not
    built yet, so a hook must not touch them at ``before_run`` (testing would build the
    training data). A runner with this mixin (``PPEncRunner``) answers without building.
    """

    def built_dataloaders(self, modes: Tuple[str, ...]) -> Iterator[Tuple[str, Any]]:
        """``(mode, dataset)`` for the built dataloaders among ``modes``."""
        raise NotImplementedError


def knows_built_dataloaders(runner: Any) -> bool:
    """Whether :func:`run_dataloaders` may be called on ``runner`` at ``before_run``."""
    return isinstance(runner, BuiltDataloaders)


def run_dataloaders(runner: Any, modes: Tuple[str, ...]) -> Iterator[Tuple[str, Any]]:
    """``(mode, dataset)`` for the built dataloaders of ``runner`` among ``modes``.

    With a :class:`BuiltDataloaders` runner, at any time. With another runner, through
    mmengine's public loop properties, which build a loop that is not built yet: call it
    only for the loops the current hook runs in (``before_train``: train and val;
    ``before_val``: val; ``before_test``: test).
    """
    if isinstance(runner, BuiltDataloaders):
        yield from runner.built_dataloaders(modes)
        return
    for mode in modes:
        loop = getattr(runner, f'{mode}_loop', None)
        loader = getattr(loop, 'dataloader', None)
        if loader is not None:
            yield mode, getattr(loader, 'dataset', None)


def keyed_components(model: Any, datasets: Sequence[Tuple[str, Any]]
                     ) -> List[Tuple[str, str, int]]:
    """``(where, fingerprint, block_size)`` for every keyed component of a run.

    Args:
        model (nn.Module): The segmentor (unwrapped).
        datasets (Sequence[tuple[str, Dataset]]): ``(mode, dataset)`` pairs, e.g. from
            :func:`run_dataloaders`.
    """
    found = []
    for name, m in model.named_modules():
        if is_keyed(m):
            found.append((f'model.{name}' if name else 'model', m.key_fingerprint,
                          int(m.block_size)))
    for mode, dataset in datasets:
        for t in iter_transforms(dataset):
            if is_keyed(t):
                found.append((f'{mode}_pipeline.{type(t).__name__}', t.key_fingerprint,
                              int(t.block_size)))
    return found
