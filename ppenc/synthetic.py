"""Deterministic synthetic street scenes in the exact on-disk layout of Cityscapes.

The real Cityscapes data set needs a registration and 11 GB of downloads, which rules it
out for tests, smoke runs and demos. :func:`make_synthetic_cityscapes` writes a small
stand-in that mmsegmentation's ``CityscapesDataset`` reads unchanged::

    out_dir/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png
    out_dir/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelTrainIds.png

Images are RGB ``uint8`` PNGs, label maps single-channel ``uint8`` PNGs holding Cityscapes
train ids ``0..18`` and ``255`` (ignore).

The scenes are meant to be *learnable*, so that a short training run shows a falling loss
and a rising mIoU: each image is a crude street view (sky, buildings along a horizon,
a road in perspective flanked by sidewalks and terrain, trees, poles with lights and
signs, vehicles and people), and every class has its own mean colour and its own texture
(stripes, checkers, windows, smooth noise, ...). Per-image randomness (layout, sizes,
brightness, colour jitter, texture phase, sensor noise) keeps the task from being a
lookup table. The image is *rendered from* the label map, so labels match the drawn
regions exactly.

Only NumPy and Pillow are used (no mmseg import), so the generator is cheap to import.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, List, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ['CITYSCAPES_CLASSES', 'IGNORE_INDEX', 'TRAIN_CITIES', 'VAL_CITIES',
           'SIZE_MULTIPLE', 'make_synthetic_cityscapes', 'render_scene']

#: The 19 Cityscapes evaluation classes in train-id order (``CityscapesDataset.METAINFO``).
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
    'bus', 'train', 'motorcycle', 'bicycle')

#: Label value for pixels that are excluded from loss and metrics (mmseg's default).
IGNORE_INDEX: int = 255

#: Image sides must be multiples of this: the ViT patch size used by mmseg_ppenc, so that
#: patches and encryption blocks tile the image without padding.
SIZE_MULTIPLE: int = 16

#: Real Cityscapes city names; train and val cities are disjoint, as in Cityscapes.
TRAIN_CITIES: Tuple[str, ...] = ('aachen', 'bochum', 'bremen')
VAL_CITIES: Tuple[str, ...] = ('frankfurt', 'lindau', 'munster')

# Cityscapes stores frame 19 of each 30-frame snippet; copy that so names look real.
_FRAME = 19
_IMG_SUFFIX = '_leftImg8bit.png'
_SEG_SUFFIX = '_gtFine_labelTrainIds.png'

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

# Mean RGB colour per train id, plus one last row for ignore (255). Loosely natural
# (grey road, blue sky, green trees) but hand-spread so that every pair of classes is
# at least ~60 apart in RGB: colour alone then separates most pixels, while textures and
# jitter keep the problem from being trivial.
_MEAN_COLOURS = np.array([
    [105, 100, 110],  # road: blue-grey asphalt
    [200, 160, 185],  # sidewalk: pinkish paving
    [140, 90, 50],    # building: brown facades
    [175, 175, 110],  # wall: sandstone
    [160, 110, 160],  # fence: purple metal
    [60, 60, 60],     # pole: dark grey
    [240, 150, 20],   # traffic light: amber
    [240, 235, 40],   # traffic sign: yellow
    [45, 120, 35],    # vegetation: green
    [140, 220, 90],   # terrain: light green grass
    [110, 170, 235],  # sky: blue
    [215, 40, 70],    # person: red
    [250, 85, 170],   # rider: magenta
    [25, 30, 160],    # car: dark blue
    [10, 100, 80],    # truck: dark teal
    [30, 130, 150],   # bus: teal
    [90, 40, 140],    # train: violet
    [170, 40, 10],    # motorcycle: rust
    [90, 225, 190],   # bicycle: cyan
    [20, 20, 30],     # ignore: near-black ego vehicle / clutter
], dtype=np.float32)

# Texture per train id: (kind, period in pixels at 256 px width, amplitude in grey levels).
# Periods scale with the image width so small and large images look alike.
_TEXTURES: Dict[int, Tuple[str, float, float]] = {
    ROAD: ('noise', 1.0, 8.0),          # fine asphalt grain
    SIDEWALK: ('checker', 8.0, 16.0),   # paving tiles
    BUILDING: ('windows', 8.0, 28.0),   # window grid
    WALL: ('hstripes', 4.0, 16.0),      # brick courses
    FENCE: ('vstripes', 3.0, 30.0),     # palings
    POLE: ('flat', 1.0, 0.0),
    LIGHT: ('checker', 2.0, 20.0),      # lamp cells
    SIGN: ('flat', 1.0, 0.0),
    VEGETATION: ('smooth', 3.0, 30.0),  # leafy blotches
    TERRAIN: ('smooth', 6.0, 14.0),     # patchy grass
    SKY: ('vgradient', 1.0, 25.0),      # brighter towards the horizon
    PERSON: ('hstripes', 5.0, 22.0),    # striped clothes
    RIDER: ('vstripes', 4.0, 22.0),
    CAR: ('diagonal', 8.0, 18.0),       # reflections
    TRUCK: ('checker', 4.0, 18.0),
    BUS: ('windows', 6.0, 24.0),
    TRAIN: ('hstripes', 8.0, 24.0),
    MOTORCYCLE: ('noise', 1.0, 20.0),
    BICYCLE: ('diagonal', 3.0, 26.0),
}

_SPLIT_IDS = {'train': 0, 'val': 1}


def _check_size(name: str, value: int) -> int:
    """Validate one image side.

    Args:
        name (str): ``'height'`` or ``'width'``, for the message.
        value (int): The requested size in pixels.

    Returns:
        int: ``value``.

    Raises:
        ValueError: If ``value`` is not a positive multiple of :data:`SIZE_MULTIPLE`.
    """
    # bool is an int subclass; True would silently mean 1 pixel.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'{name}={value!r} must be an integer multiple of '
                         f'{SIZE_MULTIPLE} (e.g. 128 or 256)')
    m = SIZE_MULTIPLE
    if value <= 0:
        raise ValueError(f'{name}={value} must be a positive multiple of {m}; '
                         f'use e.g. {m * 8}')
    if value % m:
        lower, upper = (value // m) * m, (value // m + 1) * m
        hint = f'{lower} or {upper}' if lower > 0 else f'{upper}'
        raise ValueError(f'{name}={value} is not a multiple of {m} (the ViT patch size, '
                         f'so that patches tile the image exactly); use e.g. {hint}')
    return int(value)


def _check_count(name: str, value: int) -> int:
    """Validate an image count (a non-negative integer)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f'{name}={value!r} must be a non-negative integer')
    return int(value)


# --------------------------------------------------------------------------- drawing
# Every primitive writes a class id into the label map only; colours come later from
# the finished map, which is what keeps labels and pixels in exact agreement.

def _rect(lab: np.ndarray, y0: float, y1: float, x0: float, x1: float, cls: int) -> None:
    """Fill the half-open box ``[y0, y1) x [x0, x1)`` (floats, rounded, clipped)."""
    h, w = lab.shape
    # At least one pixel tall/wide so far-away objects do not vanish entirely.
    iy0, ix0 = int(round(y0)), int(round(x0))
    iy1, ix1 = max(int(round(y1)), iy0 + 1), max(int(round(x1)), ix0 + 1)
    iy0, iy1 = max(iy0, 0), min(iy1, h)
    ix0, ix1 = max(ix0, 0), min(ix1, w)
    if iy0 < iy1 and ix0 < ix1:
        lab[iy0:iy1, ix0:ix1] = cls


def _ellipse(lab: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             cls: int) -> None:
    """Fill an axis-aligned ellipse; only its bounding box is evaluated, for speed."""
    h, w = lab.shape
    ry, rx = max(ry, 0.5), max(rx, 0.5)
    y0, y1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)) + 1, h)
    x0, x1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / ry
    xx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / rx
    inside = yy * yy + xx * xx <= 1.0
    lab[y0:y1, x0:x1][inside] = cls


def _draw_background(lab: np.ndarray, rng: np.random.Generator) -> Dict[str, float]:
    """Sky, buildings, walls, fences, trees, road, sidewalks and terrain.

    Returns:
        dict: The scene geometry (horizon row, vanishing point, road and sidewalk
        half-widths at the bottom row) that the foreground objects are placed on.
    """
    h, w = lab.shape
    yh = float(np.round(h * rng.uniform(0.36, 0.48)))  # horizon row
    cx = w * rng.uniform(0.4, 0.6)                      # vanishing point column
    road_bottom = w * rng.uniform(0.55, 0.80)           # road half-width at the bottom
    walk_bottom = road_bottom + w * rng.uniform(0.15, 0.30)
    road_top, walk_top = w * 0.02, w * 0.035            # half-widths at the horizon

    lab[:] = SKY
    # Ground, row by row in perspective: half-widths grow linearly from the horizon
    # to the bottom row. Broadcasting a (H,1) bound against a (1,W) column index
    # builds the masks without a Python loop over pixels.
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    t = np.clip((ys - yh) / max(h - 1 - yh, 1.0), 0.0, 1.0)
    dist = np.abs(xs - cx)
    ground = ys >= yh
    lab[ground & (dist >= walk_top + (walk_bottom - walk_top) * t)] = TERRAIN
    walk = dist < walk_top + (walk_bottom - walk_top) * t
    lab[ground & walk] = SIDEWALK
    lab[ground & (dist < road_top + (road_bottom - road_top) * t)] = ROAD

    # Building blocks of varying heights standing on the horizon, with occasional gaps
    # of sky between them.
    x = -w * rng.uniform(0.0, 0.1)
    while x < w:
        bw = w * rng.uniform(0.08, 0.22)
        if rng.random() > 0.15:
            top = yh - h * rng.uniform(0.08, 0.34)
            _rect(lab, top, yh + 1, x, x + bw, BUILDING)
        x += bw

    # Low walls and a fence along the horizon, left and right of the road.
    for _ in range(rng.integers(1, 3)):
        x0 = w * rng.uniform(0.0, 0.8)
        _rect(lab, yh - h * rng.uniform(0.04, 0.08), yh + 1,
              x0, x0 + w * rng.uniform(0.08, 0.2), WALL)
    if rng.random() < 0.8:
        x0 = w * rng.uniform(0.0, 0.7)
        _rect(lab, yh - h * rng.uniform(0.05, 0.09), yh + max(1.0, h * 0.02),
              x0, x0 + w * rng.uniform(0.12, 0.3), FENCE)

    # Trees: a trunk and a crown, on either side of the road near the horizon.
    for _ in range(rng.integers(2, 6)):
        side = rng.choice([-1.0, 1.0])
        tx = cx + side * w * rng.uniform(0.15, 0.5)
        ry = h * rng.uniform(0.06, 0.14)
        rx = ry * rng.uniform(0.9, 1.5) * w / (2 * h)
        base = yh + h * rng.uniform(0.0, 0.05)
        _rect(lab, base - ry * 1.5, base, tx - max(0.5, w * 0.006),
              tx + max(0.5, w * 0.006), VEGETATION)
        _ellipse(lab, base - ry * 1.8, tx, ry, rx, VEGETATION)
    return dict(yh=yh, cx=cx, road=road_bottom, walk=walk_bottom)


def _draw_vehicle(lab: np.ndarray, cls: int, yb: float, x: float, s: float) -> None:
    """A vehicle of class ``cls`` whose bottom edge is row ``yb``, centred at ``x``.

    ``s`` is the perspective scale (0 at the horizon, 1 at the bottom row) times the
    image width, so sizes are in pixels.
    """
    if cls == CAR:
        bw, bh = 0.30 * s, 0.12 * s
        _rect(lab, yb - bh, yb, x - bw / 2, x + bw / 2, CAR)
        _rect(lab, yb - bh * 1.7, yb - bh + 1, x - bw / 3, x + bw / 3, CAR)  # cabin
    elif cls == TRUCK:
        bw, bh = 0.34 * s, 0.24 * s
        _rect(lab, yb - bh, yb, x - bw / 2, x + bw / 4, TRUCK)  # cargo box
        _rect(lab, yb - bh * 0.65, yb, x + bw / 4, x + bw / 2, TRUCK)  # cab
    elif cls == BUS:
        bw, bh = 0.40 * s, 0.28 * s
        _rect(lab, yb - bh, yb, x - bw / 2, x + bw / 2, BUS)
    elif cls == TRAIN:
        # Trams run along the street: long and tall.
        bw, bh = 0.70 * s, 0.26 * s
        _rect(lab, yb - bh, yb, x - bw / 2, x + bw / 2, TRAIN)
        _rect(lab, yb - bh * 1.2, yb - bh + 1, x - bw / 8, x + bw / 8, TRAIN)  # pantograph


def _draw_two_wheeler(lab: np.ndarray, cls: int, yb: float, x: float, s: float,
                      ridden: bool) -> None:
    """A bicycle or motorcycle (two wheels and a frame), optionally with its rider."""
    r = (0.035 if cls == BICYCLE else 0.045) * s  # wheel radius
    _ellipse(lab, yb - r, x - 2.2 * r, r, r, cls)
    _ellipse(lab, yb - r, x + 2.2 * r, r, r, cls)
    if cls == MOTORCYCLE:
        _ellipse(lab, yb - 2.2 * r, x, 1.1 * r, 2.4 * r, cls)  # engine and tank
    else:
        _rect(lab, yb - 2.6 * r, yb - 1.6 * r, x - 2.2 * r, x + 2.2 * r, cls)  # frame
    if ridden:
        _draw_person(lab, RIDER, yb - 2.0 * r, x, s * 0.7)


def _draw_person(lab: np.ndarray, cls: int, yb: float, x: float, s: float) -> None:
    """A standing person (legs, torso, head) with feet on row ``yb``."""
    tall = 0.20 * s
    wide = 0.045 * s
    _rect(lab, yb - tall * 0.45, yb, x - wide * 0.4, x + wide * 0.4, cls)  # legs
    _rect(lab, yb - tall * 0.85, yb - tall * 0.45 + 1, x - wide / 2, x + wide / 2, cls)
    _ellipse(lab, yb - tall * 0.93, x, tall * 0.08, wide * 0.35, cls)  # head


def _draw_foreground(lab: np.ndarray, rng: np.random.Generator,
                     geo: Dict[str, float]) -> None:
    """Poles with lights and signs, vehicles on the road, people on the sidewalks."""
    h, w = lab.shape
    yh, cx = geo['yh'], geo['cx']
    span = max(h - 1 - yh, 1.0)

    def half_widths(yb: float) -> Tuple[float, float]:
        t = (yb - yh) / span
        return (w * 0.02 + (geo['road'] - w * 0.02) * t,
                w * 0.035 + (geo['walk'] - w * 0.035) * t)

    # (base row, draw callback): drawn far to near so nearer objects occlude farther ones.
    items: List[Tuple[float, Callable[[], None]]] = []

    # Poles on the sidewalks, each carrying a traffic light or a sign (or nothing).
    for _ in range(rng.integers(1, 4)):
        yb = yh + span * rng.uniform(0.15, 0.7)
        road_hw, walk_hw = half_widths(yb)
        x = cx + rng.choice([-1.0, 1.0]) * rng.uniform(road_hw, walk_hw)
        x = float(np.clip(x, 0.02 * w, 0.98 * w))
        s = w * (yb - yh) / span
        top = yb - s * rng.uniform(0.45, 0.7)
        head = rng.choice([LIGHT, SIGN, POLE], p=[0.45, 0.45, 0.1])

        def pole(yb=yb, x=x, s=s, top=top, head=head) -> None:
            pw = max(1.0, 0.012 * s)
            _rect(lab, top, yb, x - pw / 2, x + pw / 2, POLE)
            if head == LIGHT:
                _rect(lab, top - 0.01 * s, top + 0.09 * s, x - 0.02 * s, x + 0.02 * s,
                      LIGHT)
            elif head == SIGN:
                _ellipse(lab, top + 0.02 * s, x, 0.03 * s, 0.03 * s, SIGN)
        items.append((yb, pole))

    # Vehicles in the road, people and parked two-wheelers on the sidewalks.
    kinds = [CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE, PERSON]
    probs = [0.34, 0.10, 0.08, 0.04, 0.10, 0.12, 0.22]
    for _ in range(rng.integers(3, 8)):
        cls = int(rng.choice(kinds, p=probs))
        yb = yh + span * rng.uniform(0.15, 0.92)
        road_hw, walk_hw = half_widths(yb)
        s = 0.8 * w * (yb - yh) / span  # objects a bit smaller than poles' scale
        on_walk = cls == PERSON or (cls == BICYCLE and rng.random() < 0.5)
        if on_walk:
            x = cx + rng.choice([-1.0, 1.0]) * rng.uniform(road_hw, walk_hw)
        else:
            x = cx + rng.uniform(-0.7, 0.7) * road_hw
        x = float(np.clip(x, 0.03 * w, 0.97 * w))  # keep (most of) it in view
        if cls in (CAR, TRUCK, BUS, TRAIN):
            items.append((yb, lambda c=cls, yb=yb, x=x, s=s: _draw_vehicle(lab, c, yb, x, s)))
        elif cls == PERSON:
            items.append((yb, lambda yb=yb, x=x, s=s: _draw_person(lab, PERSON, yb, x, s)))
        else:
            ridden = (not on_walk) and rng.random() < 0.8
            items.append((yb, lambda c=cls, yb=yb, x=x, s=s, r=ridden:
                          _draw_two_wheeler(lab, c, yb, x, s, r)))

    # Stable sort on the base row only: ties keep creation order, so drawing is
    # deterministic without comparing the callbacks.
    for _, draw in sorted(items, key=lambda it: it[0]):
        draw()


def _draw_ignore(lab: np.ndarray, rng: np.random.Generator) -> None:
    """Pixels labelled 255: the ego vehicle's bonnet and a little unlabelled clutter.

    Real Cityscapes label maps ignore the ego vehicle and 'void' objects; mimicking that
    exercises the ``ignore_index`` handling of losses and metrics.
    """
    h, w = lab.shape
    # Bonnet: the top of a wide ellipse centred below the image. Its depth is at least
    # one row so every image has some ignore pixels.
    depth = max(1.0, h * rng.uniform(0.04, 0.08))
    _ellipse(lab, h - 1 + depth * 2, w * rng.uniform(0.45, 0.55), depth * 3,
             w * rng.uniform(0.5, 0.7), IGNORE_INDEX)
    _rect(lab, h - 1, h, 0, w, IGNORE_INDEX)
    for _ in range(rng.integers(1, 3)):  # small void boxes (bins, boards)
        y = h * rng.uniform(0.3, 0.85)
        x = w * rng.uniform(0.0, 0.95)
        _rect(lab, y, y + h * rng.uniform(0.02, 0.05), x, x + w * rng.uniform(0.01, 0.03),
              IGNORE_INDEX)


# --------------------------------------------------------------------------- rendering

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated Gaussian noise on a grid of ``cell`` pixels, in [-1, 1]."""
    cell = max(cell, 1.0)
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    fy = np.arange(h, dtype=np.float32) / cell
    fx = np.arange(w, dtype=np.float32) / cell
    y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bot = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return np.clip((top * (1 - wy) + bot * wy) / 2.0, -1.0, 1.0)


def _texture(kind: str, period: float, rng: np.random.Generator, yy: np.ndarray,
             xx: np.ndarray) -> np.ndarray:
    """One class's texture over the whole image, roughly in [-1, 1].

    ``yy`` and ``xx`` are (H,1) and (1,W) pixel coordinates; a random phase per image
    keeps stripes from landing on the same pixels every time.
    """
    h, w = yy.shape[0], xx.shape[1]
    py, px = rng.uniform(0, period, 2)
    if kind == 'flat':
        return np.zeros((h, w), np.float32)
    if kind == 'noise':
        return np.clip(rng.standard_normal((h, w)).astype(np.float32) / 2, -1, 1)
    if kind == 'smooth':
        return _smooth_noise(rng, h, w, period)
    if kind == 'hstripes':
        return np.broadcast_to(np.where(((yy + py) // period) % 2 == 0, 1.0, -1.0),
                               (h, w)).astype(np.float32)
    if kind == 'vstripes':
        return np.broadcast_to(np.where(((xx + px) // period) % 2 == 0, 1.0, -1.0),
                               (h, w)).astype(np.float32)
    if kind == 'checker':
        cells = ((yy + py) // period) + ((xx + px) // period)
        return np.where(cells % 2 == 0, 1.0, -1.0).astype(np.float32)
    if kind == 'windows':
        # Dark window panes on the lower-left 60% of each cell, bright frames elsewhere.
        pane = (((yy + py) % period) < 0.6 * period) & (((xx + px) % period) < 0.6 * period)
        return np.where(pane, -1.0, 0.6).astype(np.float32)
    if kind == 'diagonal':
        return np.where(((yy + xx + px) // period) % 2 == 0, 1.0, -1.0).astype(np.float32)
    if kind == 'vgradient':
        # Sky: brightest at the lowest sky row (roughly the horizon), darker upwards.
        return np.broadcast_to(2.0 * yy / max(h - 1, 1) - 0.5, (h, w)).astype(np.float32)
    raise ValueError(f'unknown texture kind {kind!r}')


def _render(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour a finished label map: class colour + class texture, jitter and noise."""
    h, w = lab.shape
    # Row 19 of the colour table is the ignore colour; map 255 there for one lookup.
    idx = np.where(lab == IGNORE_INDEX, len(CITYSCAPES_CLASSES), lab).astype(np.intp)
    # Per-image colour jitter per class and a global brightness, so a model must learn
    # more than 19 fixed RGB triples.
    colours = _MEAN_COLOURS + rng.uniform(-10.0, 10.0, _MEAN_COLOURS.shape).astype(np.float32)
    img = colours[idx]  # (H, W, 3)

    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    scale = w / 256.0  # texture periods are given for 256-pixel-wide images
    shade = np.zeros((h, w), np.float32)
    # Fixed class order (not np.unique of this image) keeps the RNG stream, and so
    # every later draw, independent of which classes happen to be present.
    for cls in range(len(CITYSCAPES_CLASSES)):
        kind, period, amp = _TEXTURES[cls]
        tex = _texture(kind, max(period * scale, 1.0), rng, yy, xx)
        mask = lab == cls
        shade[mask] = amp * tex[mask]
    img += shade[..., None]
    img *= np.float32(rng.uniform(0.85, 1.15))  # exposure
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(height: int, width: int,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic street scene.

    Args:
        height (int): Image height in pixels (any positive size works here; the
            multiple-of-16 rule is enforced by :func:`make_synthetic_cityscapes`).
        width (int): Image width in pixels.
        rng (numpy.random.Generator): Source of all randomness for this scene.

    Returns:
        tuple[numpy.ndarray, numpy.ndarray]: ``(image, label)``: an ``(H, W, 3)`` RGB
        ``uint8`` image and an ``(H, W)`` ``uint8`` label map of train ids 0..18 and 255.
    """
    lab = np.empty((height, width), dtype=np.uint8)
    geo = _draw_background(lab, rng)
    _draw_foreground(lab, rng, geo)
    _draw_ignore(lab, rng)
    return _render(lab, rng), lab


def _write_png(path: str, array: np.ndarray) -> None:
    """Write a lossless PNG with fixed settings (no timestamps: bytes are reproducible)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format='PNG', compress_level=6)


def make_synthetic_cityscapes(out_dir: Union[str, os.PathLike],
                              num_train: int = 48,
                              num_val: int = 12,
                              height: int = 128,
                              width: int = 256,
                              seed: int = 0,
                              overwrite: bool = False) -> Dict[str, Union[int, str]]:
    """Write a synthetic data set in the Cityscapes directory layout.

    Images go to ``out_dir/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
    and label maps (train ids 0..18, 255 = ignore) to
    ``out_dir/gtFine/<split>/<city>/<same stem>_gtFine_labelTrainIds.png``, so that
    ``mmseg.datasets.CityscapesDataset`` with ``data_prefix=dict(img_path=
    'leftImg8bit/train', seg_map_path='gtFine/train')`` reads them as they are. Images
    are spread round-robin over three cities per split (train and val cities differ).

    The output depends only on the arguments: each image draws from its own
    ``numpy.random.default_rng((seed, split, index))``, so the same call gives
    byte-identical files, and changing ``num_train`` does not change any val image.

    Args:
        out_dir (str | os.PathLike): Root of the data set (the mmseg ``data_root``).
            Created if missing.
        num_train (int): Number of training images. Defaults to 48.
        num_val (int): Number of validation images. Defaults to 12.
        height (int): Image height, a positive multiple of 16. Defaults to 128.
        width (int): Image width, a positive multiple of 16. Defaults to 256.
        seed (int): Non-negative base seed. Defaults to 0.
        overwrite (bool): Allow writing into a non-empty ``out_dir``; files with the
            same names are replaced, nothing is deleted (so files from an earlier,
            larger run stay and would be read too; a warning names how many).
            Defaults to False.

    Returns:
        dict: ``{'train': num_train, 'val': num_val, 'height': height,
        'width': width, 'root': out_dir}`` (``root`` as a string).

    Raises:
        ValueError: If ``height`` or ``width`` is not a positive multiple of 16, a count
            is negative, or ``seed`` is negative.
        FileExistsError: If ``out_dir`` is not empty and ``overwrite`` is False, or
            ``out_dir`` exists but is not a directory.
    """
    height = _check_size('height', height)
    width = _check_size('width', width)
    num_train = _check_count('num_train', num_train)
    num_val = _check_count('num_val', num_val)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed={seed!r} must be a non-negative integer')

    root = os.fspath(out_dir)
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise FileExistsError(f'out_dir {root!r} exists and is not a directory')
        if os.listdir(root) and not overwrite:
            # Refuse rather than mix with (or silently replace) someone's data.
            raise FileExistsError(
                f'out_dir {root!r} is not empty; choose an empty or new directory, or '
                'pass overwrite=True (--overwrite) to replace files of the same name')
    os.makedirs(root, exist_ok=True)

    written = set()
    for split, count, cities in (('train', num_train, TRAIN_CITIES),
                                 ('val', num_val, VAL_CITIES)):
        for index in range(count):
            rng = np.random.default_rng((int(seed), _SPLIT_IDS[split], index))
            image, label = render_scene(height, width, rng)
            city = cities[index % len(cities)]
            stem = f'{city}_{index // len(cities):06d}_{_FRAME:06d}'
            img_path = os.path.join(root, 'leftImg8bit', split, city, stem + _IMG_SUFFIX)
            seg_path = os.path.join(root, 'gtFine', split, city, stem + _SEG_SUFFIX)
            _write_png(img_path, image)
            _write_png(seg_path, label)
            written.update((os.path.abspath(img_path), os.path.abspath(seg_path)))

    if overwrite:
        stale = _stale_files(root, written)
        if stale:
            warnings.warn(f'{len(stale)} image/label files from an earlier run remain in '
                          f'{root!r} (nothing is deleted) and will be read by '
                          'CityscapesDataset too, e.g. ' + stale[0], stacklevel=2)
    return {'train': num_train, 'val': num_val, 'height': height, 'width': width,
            'root': root}


def _stale_files(root: str, written: set) -> List[str]:
    """Cityscapes-named files under ``root`` that this run did not write."""
    stale = []
    for sub in ('leftImg8bit', 'gtFine'):
        for dirpath, _, files in os.walk(os.path.join(root, sub)):
            for name in sorted(files):
                path = os.path.abspath(os.path.join(dirpath, name))
                if name.endswith((_IMG_SUFFIX, _SEG_SUFFIX)) and path not in written:
                    stale.append(path)
    return sorted(stale)
