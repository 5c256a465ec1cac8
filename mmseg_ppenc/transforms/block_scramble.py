"""In-pipeline block encryption with the secret key."""
from __future__ import annotations

from typing import Optional

from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from mmseg_ppenc.core.keyed import SelectedCipher, SelectedCipherMixin
from mmseg_ppenc.transforms.pad import check_pad_val, pad_results

__all__ = ['BlockScramble']


@TRANSFORMS.register_module()
class BlockScramble(BaseTransform, SelectedCipherMixin):
    """Encrypt the image block-wise with the secret key.

    Put it after every augmentation and before ``PackSegInputs``: the model must see
    exactly what a client would upload. The bytes produced equal those of loading (with
    mmcv, in ``channel_order``) an RGB file that :func:`ppenc.cipher.encrypt_image`
    wrote, so in-pipeline and offline encryption are interchangeable.

    Required Keys:

    - img (np.ndarray): H x W x 3 uint8, in ``channel_order``.
    - gt_seg_map (np.ndarray, optional): only when ``pad_to_grid`` pads.

    Modified Keys:

    - img
    - img_shape, pad_shape, img_padding_size, gt_seg_map and the other ``seg_fields``
      (only with ``pad_to_grid``)

    Args:
        key_file (str, optional): Key file. Defaults to None, which reads the path from
            the environment variable ``PPENC_KEY_FILE`` (so configs carry no key).
        block_size (int): Block side; must equal the ViT patch size. Defaults to 16.
        channel_order (str): Channel order of ``results['img']``: ``'bgr'`` (what mmcv's
            ``LoadImageFromFile`` yields) or ``'rgb'``. The cipher must act in the order
            the ViT sees, so ``'bgr'`` goes with a data preprocessor with
            ``bgr_to_rgb=True`` and ``'rgb'`` with ``bgr_to_rgb=False``;
            ``KeyManagementHook`` refuses a mismatch at start. Defaults to ``'bgr'``.
        pad_to_grid (bool): Pad images whose sides are not multiples of ``block_size``
            at the bottom/right (image with ``pad_val``, labels with ``seg_pad_val``)
            instead of raising, recording the pad in ``img_padding_size`` (see
            :class:`~mmseg_ppenc.transforms.PadToGrid`, which also pads to a minimum
            size). Defaults to False.
        pad_val (int): Image padding value, one int for all channels. Defaults to 0.
        seg_pad_val (int): Label padding value (the ignore index). Defaults to 255.
    """

    def __init__(self,
                 key_file: Optional[str] = None,
                 block_size: int = 16,
                 channel_order: str = 'bgr',
                 pad_to_grid: bool = False,
                 pad_val: int = 0,
                 seg_pad_val: int = 255) -> None:
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        check_pad_val(pad_val, 'BlockScramble')
        self.key_file = key_file
        self.block_size = block_size
        self.channel_order = channel_order
        self.pad_to_grid = pad_to_grid
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        self._selected = SelectedCipher(key_file, block_size)

    def _pad(self, results: dict) -> None:
        pad_results(results, self.block_size, None, self.pad_val, self.seg_pad_val)

    def transform(self, results: dict) -> dict:
        """Encrypt ``results['img']``.

        Args:
            results (dict): Result dict from the previous transforms.

        Returns:
            dict: ``results`` with the encrypted image.
        """
        if self.pad_to_grid:
            self._pad(results)
        img = results['img']
        try:
            results['img'] = self.cipher.encrypt(img, self.channel_order)
        except ValueError as e:
            name = results.get('img_path', 'the image')
            raise ValueError(
                f'BlockScramble cannot encrypt {name}: {e} In a test pipeline, drop '
                'off-grid resizing (e.g. Resize with keep_ratio to (2049, 1025)) or use '
                'slide inference on unresized images; in training, pass '
                'pad_to_grid=True.') from None
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(block_size={self.block_size}, '
                f'key_fingerprint={self.key_fingerprint}, '
                f'channel_order={self.channel_order!r}, pad_to_grid={self.pad_to_grid})')
