"""Block encryption on the accelerator, inside the data preprocessor (simulation configs)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

from mmseg_ppenc.core.keyed import SelectedCipher, SelectedCipherMixin
from ppenc.grid import grid_pad

__all__ = ['EncryptedSegDataPreProcessor']


@MODELS.register_module()
class EncryptedSegDataPreProcessor(SegDataPreProcessor, SelectedCipherMixin):
    """``SegDataPreProcessor`` that first encrypts the uint8 batch block-wise on its device.

    For simulations, where the plain images are at hand anyway (e.g. measuring the
    method on a public dataset): the pipeline stays plain and the scrambling runs as one
    gather on the GPU (``BlockCipher.permute_tensor``), instead of ``BlockScramble`` in
    the dataloader workers. The model sees exactly the tensor it would get from a
    pipeline ending in ``BlockScramble`` (same ``pad_to_grid`` semantics), so the two are
    interchangeable. In a real deployment the server must never see plain images: use
    ``BlockScramble`` on the client (or encrypted files) there.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        block_size (int): Cipher block size (the ViT patch size). Defaults to 16.
        pad_to_grid (bool): Pad inputs whose sides are not multiples of ``block_size``
            at the bottom/right before encryption, images with ``grid_pad_val`` and labels
            with ``seg_pad_val``, as ``BlockScramble(pad_to_grid=True)`` does; in
            training also up to ``size``, so that the parent never pads the encrypted,
            normalised batch (its constant pad is not the encryption of any image).
            Defaults to False (off-grid inputs raise).
        grid_pad_val (int): Raw pixel value of that padding. Defaults to 0.
        **kwargs: Arguments of ``mmseg.models.SegDataPreProcessor``. Inputs are taken to
            be BGR when ``bgr_to_rgb=True`` (as mmcv loads them), RGB otherwise.
    """

    def __init__(self,
                 key_file: Optional[str] = None,
                 block_size: int = 16,
                 pad_to_grid: bool = False,
                 grid_pad_val: int = 0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.key_file = key_file
        self.block_size = block_size
        self.pad_to_grid = pad_to_grid
        self.grid_pad_val = grid_pad_val
        self._inputs_bgr = bool(kwargs.get('bgr_to_rgb', False))
        self._selected = SelectedCipher(key_file, block_size)

    def _target(self, training: bool) -> Optional[tuple]:
        # The size the parent would pad the batch to, which we reach in raw pixels first.
        size = self.size if training else (self.test_cfg or {}).get('size')
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else tuple(size)

    def _pad(self, img: torch.Tensor, sample: Any, training: bool = False) -> torch.Tensor:
        b = self.block_size
        h, w = img.shape[-2:]
        target = self._target(training) if self.pad_to_grid else None
        th, tw = (max(h, target[0]), max(w, target[1])) if target else (h, w)
        ph, pw = grid_pad(th, tw, b)
        ph, pw = th + ph - h, tw + pw - w
        if not (ph or pw):
            return img
        if not self.pad_to_grid:
            raise ValueError(
                f'EncryptedSegDataPreProcessor got a {h}x{w} input; expected sides that '
                f'are multiples of {b}. Keep inputs on the block grid or pass '
                'pad_to_grid=True.')
        img = F.pad(img, (0, pw, 0, ph), value=self.grid_pad_val)
        if sample is not None:
            for field in ('gt_sem_seg', 'gt_edge_map'):
                if field in sample:
                    pix = getattr(sample, field)
                    data = pix.data
                    del pix.data
                    pix.data = F.pad(data, (0, pw, 0, ph), value=self.seg_pad_val)
            left, right, top, bottom = sample.metainfo.get('img_padding_size', (0, 0, 0, 0))
            # img_padding_size lets mmseg cut the pad off the prediction before resizing
            # it to the original shape.
            sample.set_metainfo(dict(img_shape=tuple(img.shape[-2:]),
                                     img_padding_size=(left, right + pw, top, bottom + ph)))
        return img

    # The cipher's cached index maps are numpy arrays, which torch.compile cannot trace
    # (mmengine's compile=True compiles train_step, which calls this); the gather is one
    # kernel anyway.
    @torch.compiler.disable
    def encrypt_inputs(self, inputs: List[torch.Tensor],
                       data_samples: Optional[list] = None,
                       training: bool = False) -> List[torch.Tensor]:
        """Encrypt a list of C x H x W uint8 images (loader channel order), on their device.

        Args:
            inputs (list[torch.Tensor]): Images as the dataloader packs them.
            data_samples (list, optional): Their data samples (labels are padded along
                when ``pad_to_grid`` pads). Defaults to None.
            training (bool): Pad to ``size`` (else ``test_cfg['size']``) with
                ``pad_to_grid``. Defaults to False.

        Returns:
            list[torch.Tensor]: The encrypted images, same order and layout.
        """
        samples = data_samples if data_samples is not None else [None] * len(inputs)
        padded = [self._pad(x, s, training) for x, s in zip(inputs, samples)]
        out: List[Optional[torch.Tensor]] = [None] * len(padded)
        # One gather per group of equal shapes (a training batch is usually one group).
        groups: Dict[tuple, List[int]] = {}
        for i, x in enumerate(padded):
            groups.setdefault((tuple(x.shape), x.dtype), []).append(i)
        cipher = self.cipher
        for idx in groups.values():
            x = torch.stack([padded[i] for i in idx])
            # The cipher is defined on RGB; mmcv loads BGR.
            if self._inputs_bgr:
                x = cipher.permute_tensor(x.flip(1)).flip(1)
            else:
                x = cipher.permute_tensor(x)
            for j, i in enumerate(idx):
                out[i] = x[j]
        return out

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        """Encrypt the raw batch, then normalise, pad and stack as the parent does.

        Args:
            data (dict): Data from the dataloader (``inputs``: uint8 C x H x W tensors).
            training (bool): Training mode. Defaults to False.

        Returns:
            dict: ``inputs`` (normalised encrypted batch) and ``data_samples``.
        """
        data = self.cast_data(data)
        data['inputs'] = self.encrypt_inputs(data['inputs'], data.get('data_samples'),
                                             training)
        return super().forward(data, training)
