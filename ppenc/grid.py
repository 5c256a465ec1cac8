"""Block-grid rules.

The cipher permutes the values inside each ``b x b`` block of the image, so every
operation between encryption and the ViT must keep whole blocks: crops and slide windows
start and end on multiples of ``b``, pads add whole blocks, nothing resizes. These helpers
state the rules once, with messages that suggest an on-grid value.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Sequence, Tuple, Union

__all__ = ['to_pair', 'nearest_on_grid', 'off_grid_hint', 'grid_pad', 'pad_to_grid',
           'grid_rule', 'is_off_grid', 'check_image_on_grid', 'check_on_grid',
           'slide_problems']

Size = Union[int, Sequence[int]]


def to_pair(value: Size, name: str = 'size') -> Tuple[int, int]:
    """``value`` as an ``(h, w)`` pair of ints.

    Raises:
        ValueError: neither an int nor a pair of ints.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}.')


def nearest_on_grid(value: int, block: int) -> Tuple[int, int]:
    """The on-grid values just below and above ``value`` (the lower one at least ``block``)."""
    lower = max(block, value // block * block)
    upper = -(-value // block) * block
    return lower, max(upper, block)


def off_grid_hint(value: int, block: int) -> str:
    """``'use 336 or 352'`` for 341 and 16."""
    lo, hi = nearest_on_grid(int(value), block)
    return f'use {lo}' if lo == hi else f'use {lo} or {hi}'


def grid_pad(height: int, width: int, block: int) -> Tuple[int, int]:
    """Bottom and right padding that brings an ``height x width`` image onto the grid."""
    return (-height) % block, (-width) % block


def pad_to_grid(arr: Any, block: int, value: int = 0) -> Any:
    """Pad an HxW or HxWxC numpy array at the bottom/right to the block grid.

    Args:
        arr (np.ndarray): The array.
        block (int): Block side.
        value (int): Fill value. Defaults to 0.

    Returns:
        np.ndarray: ``arr`` itself when already on the grid, else a padded copy.
    """
    import numpy as np
    ph, pw = grid_pad(arr.shape[0], arr.shape[1], block)
    if not (ph or pw):
        return arr
    widths = ((0, ph), (0, pw)) + ((0, 0),) * (arr.ndim - 2)
    return np.pad(arr, widths, constant_values=value)


def grid_rule(block: int) -> str:
    """The block-grid rule for images, as every message states it."""
    return f'both sides must be positive multiples of the {block}-pixel block size'


def is_off_grid(height: int, width: int, block: int) -> bool:
    """Whether an ``height x width`` image breaks :func:`grid_rule`."""
    return height <= 0 or width <= 0 or bool(height % block or width % block)


def check_image_on_grid(height: int, width: int, block: int, what: str = 'the image',
                        fix: str = '') -> None:
    """Refuse an image that is not on the block grid: the one check of every image path.

    The cipher, the keyless transforms, the inference API, the security attacks and
    dataset encryption all use it, so the rule and its message exist once; ``fix`` says
    what to do in the caller's context.

    Args:
        height (int): Image height in pixels.
        width (int): Image width in pixels.
        block (int): Block side.
        what (str): How to name the image, e.g. ``'the encrypted image'``. Defaults to
            ``'the image'``.
        fix (str): What to do about it. Defaults to ``''``.

    Raises:
        GridError: ``'The image is 100x64 pixels, off the 16-pixel block grid (both sides
        must be positive multiples of the 16-pixel block size; e.g. 96x64 or 112x64).
        <fix>'``.
    """
    if not is_off_grid(height, width, block):
        return
    from ppenc.errors import GridError
    lo = [nearest_on_grid(max(int(v), 1), block) for v in (height, width)]
    near = f'{lo[0][0]}x{lo[1][0]}'
    if lo[0][1] != lo[0][0] or lo[1][1] != lo[1][0]:
        near += f' or {lo[0][1]}x{lo[1][1]}'
    name = what[:1].upper() + what[1:]
    raise GridError(f'{name} is {height}x{width} pixels, off the {block}-pixel block grid '
                    f'({grid_rule(block)}; e.g. {near}). {fix}'.rstrip())


def check_on_grid(settings: Mapping[str, Size], block: int) -> List[str]:
    """Problems (one sentence each) for settings that are not positive multiples of ``block``.

    Args:
        settings (Mapping[str, int | tuple]): Setting name (as the user writes it, e.g.
            ``'model.test_cfg.stride'``) to its value.
        block (int): Block side.

    Returns:
        list[str]: E.g. ``'model.test_cfg.stride=(341, 341) is off the 16-pixel block
        grid: use 336 or 352'``; empty when all are on the grid.
    """
    problems = []
    for name, value in settings.items():
        vals = _values(value)
        bad = [v for v in vals if v <= 0 or v % block]
        if bad:
            hints = '; '.join(f'for {v} {off_grid_hint(v, block)}' if len(set(bad)) > 1
                             else off_grid_hint(v, block) for v in dict.fromkeys(bad))
            shown = tuple(vals) if len(vals) > 1 else vals[0]
            problems.append(f'{name}={shown} is off the {block}-pixel block grid, so '
                            f'windows would cut blocks apart: {hints}')
    return problems


def slide_problems(test_cfg: Any, block: int, prefix: str = 'model.test_cfg') -> List[str]:
    """Grid problems of a segmentor's ``test_cfg`` (slide crop and stride).

    Args:
        test_cfg (Mapping | None): The segmentor's ``test_cfg``.
        block (int): Block side.
        prefix (str): How the setting is named in messages. Defaults to
            ``'model.test_cfg'``.
    """
    if not isinstance(test_cfg, Mapping) or test_cfg.get('mode') != 'slide':
        return []
    return check_on_grid({f'{prefix}.{k}': test_cfg[k] for k in ('crop_size', 'stride')
                          if test_cfg.get(k) is not None}, block)


def _values(value: Any) -> List[int]:
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [int(v) for v in value]
    return [int(value)]
