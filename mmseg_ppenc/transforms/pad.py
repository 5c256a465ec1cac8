"""Padding in uint8, before encryption, so that nothing pads the encrypted batch later."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ppenc.grid import grid_pad, to_pair

__all__ = ['PadToGrid', 'PACK_META_KEYS', 'pad_results', 'check_pad_val']

#: ``PackSegInputs`` meta keys for pipelines that pad: mmseg's defaults plus
#: ``img_padding_size``, which ``BaseSegmentor.postprocess_result`` reads to cut the pad
#: off the prediction before resizing it to the original image shape.
PACK_META_KEYS: Tuple[str, ...] = (
    'img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor',
    'flip', 'flip_direction', 'reduce_zero_label', 'img_padding_size')


def check_pad_val(pad_val: int, who: str) -> int:
    """Refuse a pad value that is not one byte for all channels.

    A constant block is its own encryption; a per-channel value would be shuffled by the
    key and reveal it.

    Args:
        pad_val (int): The value.
        who (str): The transform, for the message.

    Returns:
        int: ``pad_val``.
    """
    if not isinstance(pad_val, int) or isinstance(pad_val, bool) or not 0 <= pad_val <= 255:
        raise ValueError(f'{who} pad_val must be one int in [0, 255] for all channels, got '
                         f'{pad_val!r}: a per-channel pad would be shuffled by the key and '
                         'reveal it.')
    return pad_val


def pad_results(results: dict, block: int, size: Optional[Tuple[int, int]] = None,
                pad_val: int = 0, seg_pad_val: int = 255) -> dict:
    """Pad ``results['img']`` (and its label maps) at the bottom/right, in place.

    The padded height/width is the image's, raised to ``size`` if given, rounded up to a
    multiple of ``block``. Label maps of the image's size are padded along (others, e.g.
    labels loaded at the original size after a test-time Resize, are left alone). The
    pad is accumulated in ``results['img_padding_size']``
    (left, right, top, bottom), the form mmseg's post-processing cuts off.

    Args:
        results (dict): Transform results with ``img`` (H x W x C uint8).
        block (int): Block side.
        size (tuple[int, int], optional): Minimum ``(h, w)``. Defaults to None.
        pad_val (int): Image fill value, the same in every channel. Defaults to 0.
        seg_pad_val (int): Label fill value (the ignore index). Defaults to 255.

    Returns:
        dict: ``results``.
    """
    img = results['img']
    h, w = img.shape[:2]
    th, tw = (max(h, size[0]), max(w, size[1])) if size is not None else (h, w)
    gh, gw = grid_pad(th, tw, block)
    th, tw = th + gh, tw + gw
    ph, pw = th - h, tw - w
    if not (ph or pw):
        results.setdefault('img_padding_size', (0, 0, 0, 0))
        return results
    widths = ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2)
    results['img'] = np.pad(img, widths, constant_values=pad_val)
    for k in results.get('seg_fields', []):
        seg = results[k]
        if seg.shape[:2] != (h, w):
            # A test pipeline loads labels at the original size, after Resize: they stay
            # as they are, since the prediction is cut and resized back to them.
            continue
        results[k] = np.pad(seg, ((0, ph), (0, pw)) + ((0, 0),) * (seg.ndim - 2),
                            constant_values=seg_pad_val)
    left, right, top, bottom = results.get('img_padding_size', (0, 0, 0, 0))
    results['img_padding_size'] = (left, right + pw, top, bottom + ph)
    results['img_shape'] = (th, tw)
    results['pad_shape'] = (th, tw)
    return results


@TRANSFORMS.register_module()
class PadToGrid(BaseTransform):
    """Pad the uint8 image at the bottom/right to the block grid (and a minimum size).

    Use it right before ``BlockScramble`` whenever image sizes vary (keep-ratio or random
    resizing, random crops smaller than the crop size), and in the plain baseline at the
    same place, so the three settings see the same pixels:

    - training: ``PadToGrid(size=crop_size)`` brings every image to the batch size, so
      ``SegDataPreProcessor`` never pads the encrypted, normalised batch (its constant
      pad is not the encryption of any image). Labels are padded with ``seg_pad_val``;
    - validation/test: ``PadToGrid()`` pads to the next grid size and records the pad in
      ``img_padding_size``; keep that key in ``PackSegInputs`` (:data:`PACK_META_KEYS`)
      so mmseg cuts the pad off the prediction before resizing it to the original image.

    The pad value is one number for all channels: a constant block is its own
    encryption, so the pad carries nothing about the key. (A per-channel value such as
    the mean colour would be shuffled by the key and reveal it.)

    The plain reference of an off-grid image is the plain model fed the same padded
    image: the ViT pads off-grid inputs itself, after normalisation, which no encrypted
    input can reproduce.

    Required Keys:

    - img (np.ndarray)

    Modified Keys:

    - img, img_shape, pad_shape, the ``seg_fields``

    Added Keys:

    - img_padding_size (tuple[int, int, int, int]): left, right, top, bottom.

    Args:
        block_size (int): Block side (the ViT patch size). Defaults to 16.
        size (int | tuple[int, int], optional): Minimum ``(h, w)`` after padding (the
            training crop size). Rounded up to the grid. Defaults to None.
        pad_val (int): Image fill value in [0, 255]. Defaults to 0.
        seg_pad_val (int): Label fill value. Defaults to 255.
    """

    def __init__(self, block_size: int = 16,
                 size: Optional[Union[int, Sequence[int]]] = None,
                 pad_val: int = 0, seg_pad_val: int = 255) -> None:
        check_pad_val(pad_val, 'PadToGrid')
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f'block_size must be a positive int, got {block_size!r}.')
        self.block_size = block_size
        self.size = to_pair(tuple(size) if isinstance(size, list) else size,
                            'PadToGrid size') if size is not None else None
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def transform(self, results: dict) -> dict:
        """Pad ``results`` (see :func:`pad_results`)."""
        return pad_results(results, self.block_size, self.size, self.pad_val,
                           self.seg_pad_val)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(block_size={self.block_size}, size={self.size}, '
                f'pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})')
