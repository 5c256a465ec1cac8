"""Encrypted inference: the user (client) holds the key, the server holds the model.

The split follows the paper's Fig. 1. Only the encrypted image crosses to the server::

    enc = encrypt_for_upload(img_rgb, key)          # client: has the key
    labels = predict_encrypted(model, enc)          # server: no key, no plain pixels
    colour = colorize(labels, palette)              # client

:func:`inference_encrypted` runs the three steps and accepts any ``server`` callable
with the signature of :func:`predict_encrypted` (e.g. one that posts the array to a web
service), so scripts use the same code path whether the model is local or remote.

Note what this does *not* hide: the model is exactly equivalent to the plain one, so the
label map the server computes (and returns) is the plain segmentation, readable by the
server. The cipher protects the input image, not the prediction (docs/workflow.md).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmseg.apis import init_model
from mmseg.structures import SegDataSample

from mmseg_ppenc.core.checkpoint import check_checkpoint, normalization_of, read_checkpoint
from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.models.patch_adaptation import input_projection
from ppenc.cipher import get_cipher
from ppenc.errors import PpencError
from ppenc.grid import check_image_on_grid, pad_to_grid
from ppenc.keys import SecretKey
from ppenc.meta import check_meta

__all__ = ['encrypt_for_upload', 'predict_encrypted', 'inference_encrypted', 'colorize',
           'load_encrypted_model', 'check_model_key', 'model_block_size']


def model_block_size(model: torch.nn.Module) -> int:
    """The cipher block size a segmentor expects: its backbone's patch size, else the
    kernel of its input patch projection (a stock Swin or Twins stores no patch size),
    else 16."""
    backbone = getattr(model, 'backbone', None)
    patch = getattr(backbone, 'patch_size', None)
    if patch is None and isinstance(backbone, torch.nn.Module):
        try:
            patch = input_projection(backbone).block_size
        except PpencError:
            patch = None
    return int(patch if patch is not None else 16)


def encrypt_for_upload(img_rgb: np.ndarray, key: SecretKey, block_size: int = 16,
                       pad: bool = False) -> np.ndarray:
    """Client side: encrypt one query image for the server.

    Args:
        img_rgb (np.ndarray): H x W x 3 uint8 image in RGB order.
        key (SecretKey): The secret key (never leaves the client).
        block_size (int): The model's patch size. Defaults to 16.
        pad (bool): Pad the bottom/right with 0 to the block grid instead of refusing an
            off-grid image; crop the prediction back to ``img_rgb``'s size afterwards.
            Defaults to False.

    Returns:
        np.ndarray: The encrypted RGB image (what is uploaded).

    Raises:
        ValueError: wrong shape/dtype, or an off-grid image without ``pad``.
    """
    if pad and isinstance(img_rgb, np.ndarray) and img_rgb.ndim == 3:
        img_rgb = pad_to_grid(img_rgb, block_size, 0)
    return get_cipher(key, block_size).encrypt(np.ascontiguousarray(img_rgb), 'rgb')


def predict_encrypted(model: torch.nn.Module, enc_rgb: np.ndarray,
                      return_sample: bool = False):
    """Server side: segment an encrypted image. Takes no key.

    The array is fed to the model exactly as mmseg's test pipeline would feed the
    encrypted PNG file (``LoadImageFromFile`` gives BGR; the model's
    ``SegDataPreProcessor`` converts and normalises it), through ``model.test_step``.

    Args:
        model (torch.nn.Module): An mmseg segmentor whose backbone is adapted to the key
            (e.g. loaded with :func:`load_encrypted_model`).
        enc_rgb (np.ndarray): Encrypted H x W x 3 uint8 image, RGB order, H and W
            multiples of the patch size.
        return_sample (bool): Return the whole ``SegDataSample`` (with ``seg_logits``)
            instead of the label map. Defaults to False.

    Returns:
        np.ndarray | SegDataSample: H x W label map (uint8 for up to 256 classes, else
        int64), or the data sample.

    Raises:
        ValueError: not an H x W x 3 uint8 array on the block grid.
    """
    block = model_block_size(model)
    if not (isinstance(enc_rgb, np.ndarray) and enc_rgb.ndim == 3 and enc_rgb.shape[2] == 3
            and enc_rgb.dtype == np.uint8):
        raise ValueError(f'Expected an encrypted H x W x 3 uint8 RGB array, got '
                         f'{getattr(enc_rgb, "shape", type(enc_rgb).__name__)} '
                         f'{getattr(enc_rgb, "dtype", "")}.')
    h, w = enc_rgb.shape[:2]
    check_image_on_grid(h, w, block, 'the encrypted image',
                        'It cannot have been encrypted for this model '
                        '(encrypt_for_upload(..., pad=True) pads it).')
    pre = getattr(model, 'data_preprocessor', None)
    if pre is not None and not getattr(pre, 'channel_conversion', True):
        # The image is encrypted in RGB; a model that does not convert BGR to RGB sees
        # another channel order than the cipher acted in.
        raise ValueError('predict_encrypted needs a data preprocessor with '
                         'bgr_to_rgb=True (the cipher acts on RGB images); this model has '
                         'bgr_to_rgb=False.')
    bgr = np.ascontiguousarray(enc_rgb[..., ::-1])
    sample = SegDataSample()
    sample.set_metainfo(dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w),
                             scale_factor=(1.0, 1.0), flip=False, flip_direction=None))
    data = dict(inputs=[torch.from_numpy(bgr).permute(2, 0, 1).contiguous()],
                data_samples=[sample])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.test_step(data)[0]
    finally:
        model.train(was_training)
    if return_sample:
        return out
    labels = out.pred_sem_seg.data[0].cpu().numpy()
    num_classes = getattr(getattr(model, 'decode_head', None), 'num_classes', 256)
    return labels.astype(np.uint8 if num_classes <= 256 else np.int64)


def inference_encrypted(model: torch.nn.Module,
                        images: Union[np.ndarray, Sequence[np.ndarray]],
                        key: SecretKey,
                        server: Optional[Callable[..., np.ndarray]] = None,
                        pad: bool = False) -> Union[np.ndarray, List[np.ndarray]]:
    """Client-side helper: encrypt, ask the server, return label maps.

    Args:
        model (torch.nn.Module): The served model (passed on to ``server``; on a real
            deployment the callable ignores it and talks to the remote server).
        images (np.ndarray | Sequence[np.ndarray]): RGB uint8 image(s).
        key (SecretKey): The secret key.
        server (callable, optional): ``server(model, enc_rgb) -> label map``. Defaults
            to None (:func:`predict_encrypted` in this process).
        pad (bool): Pad off-grid images and crop the labels back. Defaults to False.

    Returns:
        np.ndarray | list[np.ndarray]: Label map(s), one per image.
    """
    server = server or predict_encrypted
    single = isinstance(images, np.ndarray)
    block = model_block_size(model)
    out = []
    for img in ([images] if single else images):
        enc = encrypt_for_upload(img, key, block, pad=pad)
        labels = server(model, enc)
        out.append(labels[:img.shape[0], :img.shape[1]])
    return out[0] if single else out


def colorize(label_map: np.ndarray, palette: Sequence[Sequence[int]],
             ignore_color: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Colour a label map with a class palette.

    Args:
        label_map (np.ndarray): H x W integer labels.
        palette (Sequence[Sequence[int]]): One RGB triple per class (e.g.
            ``CityscapesDataset.METAINFO['palette']``).
        ignore_color (tuple[int, int, int]): Colour of labels outside the palette
            (such as the ignore index 255). Defaults to black.

    Returns:
        np.ndarray: H x W x 3 uint8 RGB image.
    """
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (max(256, len(pal)), 1))
    lut[:len(pal)] = pal
    lab = np.asarray(label_map)
    return lut[np.clip(lab, 0, len(lut) - 1).astype(np.int64)]


def load_encrypted_model(config, checkpoint: str, device: str = 'cpu',
                         cfg_options: Optional[dict] = None) -> torch.nn.Module:
    """Build a segmentor from a (server) config and an encrypted checkpoint.

    mmseg's ``init_model`` with the checkpoint's ``meta['ppenc']`` attached as
    ``model.ppenc_meta`` (None if the checkpoint records no key). The checkpoint is read
    safely first and checked against the model as on every load path
    (:func:`mmseg_ppenc.core.checkpoint.check_checkpoint`): a record copied onto other weights,
    another cipher or block size, and another normalisation than the config's data
    preprocessor are refused. The key is not needed (see :func:`check_model_key`).

    Args:
        config (str | Config): Config file or object (e.g. configs/ppenc/server/...).
        checkpoint (str): Checkpoint trained on encrypted data.
        device (str): Torch device. Defaults to ``'cpu'``.
        cfg_options (dict, optional): Config overrides. Defaults to None.

    Returns:
        torch.nn.Module: The segmentor, in eval mode, with ``ppenc_meta``.

    Raises:
        CheckpointReadError: the checkpoint is missing, unreadable, or refused by
            ``torch.load(weights_only=True)`` (it could run code when unpickled).
        CheckpointRecordError: its ``meta['ppenc']`` record does not belong to its weights.
        InvalidKeyError: it was made for another cipher, block size or normalisation.
    """
    if isinstance(config, str):
        config = Config.fromfile(config)
    # Memory-mapped and weights-only: an unsafe or broken file gets our one clear error
    # before mmengine opens it, and no tensor is copied (only the patch embedding is read,
    # for its digest). mmseg's init_model then loads the weights as it always does, with
    # its dataset_meta fallbacks, rather than a copy of that code here.
    ckpt = read_checkpoint(checkpoint, mmap=True)
    model = init_model(config, checkpoint, device=device, cfg_options=cfg_options)
    bind_normalization(model)
    mean, std = normalization_of(model)
    # mmseg's init_model attaches the config as `model.cfg`; the key record goes alongside.
    model.ppenc_meta = check_checkpoint(ckpt, f'the checkpoint {checkpoint}',
                                        block_size=model_block_size(model), mean=mean,
                                        std=std)
    return model


def check_model_key(model_or_meta, key: SecretKey) -> None:
    """Raise unless the model's checkpoint was made for ``key``.

    Args:
        model_or_meta (torch.nn.Module | dict | None): A model from
            :func:`load_encrypted_model` or its ``meta['ppenc']`` record.
        key (SecretKey): The client's key.

    Raises:
        InvalidKeyError: the checkpoint records another key or none.
    """
    meta = getattr(model_or_meta, 'ppenc_meta', model_or_meta)
    check_meta(meta if isinstance(meta, dict) else None, key.fingerprint, 'the model',
               missing_fix='Its predictions on encrypted images would be meaningless. Use '
               'a checkpoint from tools/encrypt_model.py or from keyless server training.',
               mismatch_fix='Select the key the model was encrypted with '
               '(PPENC_KEY_FILE).')
