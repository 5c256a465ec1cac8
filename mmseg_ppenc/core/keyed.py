"""Components that use the secret key, and how a run's components are found.

A component that encrypts with, or is adapted to, the key subclasses
:class:`KeyedComponent`. Hooks find them by type, not by the presence of an attribute, so a
class that merely *records* a fingerprint (a keyless dataset's manifest, a checkpoint's
meta) is never mistaken for one that holds the key.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Tuple

__all__ = ['KeyedComponent', 'is_keyed', 'unwrap_model', 'iter_transforms',
           'keyed_components']


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


def is_keyed(obj: Any) -> bool:
    """Whether ``obj`` is a component that needs the key."""
    return isinstance(obj, KeyedComponent)


def unwrap_model(model: Any) -> Any:
    """The model inside an mmengine model wrapper (DDP, FSDP, ...), else ``model``."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


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


def run_dataloaders(runner: Any, modes: Tuple[str, ...]) -> Iterator[Tuple[str, Any]]:
    """``(mode, dataset)`` for the built dataloaders of ``runner`` among ``modes``."""
    for mode in modes:
        loop = getattr(runner, f'_{mode}_loop', None)
        loader = getattr(loop, 'dataloader', None)
        if loader is not None:
            yield mode, getattr(loader, 'dataset', None)


def keyed_components(runner: Any, modes: Tuple[str, ...]) -> List[Tuple[str, str, int]]:
    """``(where, fingerprint, block_size)`` for every keyed component of a run.

    Args:
        runner (mmengine.runner.Runner): The runner.
        modes (tuple[str]): Dataloaders to inspect among ``'train'``, ``'val'``, ``'test'``.
    """
    found = []
    model = unwrap_model(runner.model)
    for name, m in model.named_modules():
        if is_keyed(m):
            found.append((f'model.{name}' if name else 'model', m.key_fingerprint,
                          int(m.block_size)))
    for mode, dataset in run_dataloaders(runner, modes):
        for t in iter_transforms(dataset):
            if is_keyed(t):
                found.append((f'{mode}_pipeline.{type(t).__name__}', t.key_fingerprint,
                              int(t.block_size)))
    return found
