"""Reading image headers and encoding outputs: sizes, EXIF, pixel limits, PNG bytes.

Images are decoded as mmseg's ``LoadImageFromFile`` decodes them (OpenCV, colour, 8 bit,
EXIF orientation applied), so the encrypted file holds exactly what the plain pipeline
would have fed the model, encrypted. Sizes are read from headers alone, and a header that
declares more than ``max_pixels`` pixels (a decompression bomb) is refused before
anything is decoded.

OpenCV is imported only when an image is encoded, Pillow when a header is read, so
importing this module costs neither.

This module imports nothing else of :mod:`ppenc.dataset`.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
from typing import Iterator, Optional, Tuple

import numpy as np

from ppenc.cipher import BlockCipher
from ppenc.errors import DatasetEncryptionError
from ppenc.grid import pad_to_grid

__all__ = ['LOSSY_FORMATS', 'DEFAULT_MAX_PIXELS', 'check_output_format', 'own_pixel_limit',
           'too_large', 'image_size', 'check_pixels', 'encode_image', 'encode_label']

#: Output formats refused because lossy compression changes pixel values, and a block
#: cipher whose values are altered no longer decrypts to the image (nor matches the model).
LOSSY_FORMATS = ('jpg', 'jpeg', 'jpe', 'jfif', 'webp', 'jp2', 'j2k', 'heic', 'heif',
                 'avif', 'jxl')
#: Most pixels an image header may declare (``--max-pixels``): 8192 x 8192 = 67.1 Mpx.
#: Cityscapes frames (2048 x 1024 = 2.1 Mpx) fit 32 times over, as do ADE20K, Mapillary
#: Vistas and 8k aerial tiles. One decoded copy of a 67 Mpx colour image is 200 MB and a
#: worker holds a few (decoded, padded, encrypted, PNG buffer), so each of the default 4
#: workers stays under 1 GB; a 1 MB PNG declaring 20000 x 20000 (400 Mpx, 1.2 GB per copy)
#: is refused before it is decoded.
DEFAULT_MAX_PIXELS = 8192 * 8192
_LOSSLESS = ('png',)


def check_output_format(fmt: str) -> str:
    """Normalise an output format name; refuse lossy ones.

    Args:
        fmt (str): e.g. ``'png'``, ``'.PNG'``, ``'jpg'``.

    Returns:
        str: ``'png'``.

    Raises:
        DatasetEncryptionError: a lossy or unsupported format.
    """
    f = fmt.lower().lstrip('.')
    if f in LOSSY_FORMATS:
        raise DatasetEncryptionError(
            f'Output format {fmt!r} is lossy: its compression changes pixel values, which '
            'destroys block-encrypted images (they would no longer decrypt, and the '
            'encrypted model would see noise). Use png (lossless).')
    if f not in _LOSSLESS:
        raise DatasetEncryptionError(f'Output format {fmt!r} is not supported; use png.')
    return f


# ------------------------------------------------------------------------------ headers
@contextlib.contextmanager
def own_pixel_limit() -> Iterator[None]:
    """Turn Pillow's process-wide decompression-bomb limit off for a moment.

    This package applies its own limit (``max_pixels``), from the header, before anything
    is decoded; Pillow's would otherwise raise first (with no file name or size) or
    refuse an image the user allowed with ``--max-pixels``. The planner and each worker
    are single-threaded, so the switch is not seen by other code.
    """
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def too_large(path: str, w: int, h: int, max_pixels: int) -> DatasetEncryptionError:
    """The refusal of an image whose header declares more than ``max_pixels`` pixels.

    Args:
        path (str): The image.
        w (int): Declared width.
        h (int): Declared height.
        max_pixels (int): The limit.

    Returns:
        DatasetEncryptionError: With ``too_large`` (``'WxH = N Mpx'``) and ``pixels``
        set, so the planner can list every such file at once.
    """
    err = DatasetEncryptionError(
        f'{path} declares {w}x{h} pixels ({w * h / 1e6:.1f} Mpx), more than --max-pixels '
        f'allows ({max_pixels} = {max_pixels / 1e6:.1f} Mpx). Remove it from SRC, or raise '
        '--max-pixels if it is genuine.')
    err.too_large = f'{w}x{h} = {w * h / 1e6:.1f} Mpx'
    err.pixels = w * h
    return err


def _png_exif_after_idat(path: str) -> Optional[bytes]:
    """The eXIf chunk of a PNG that stores it after the image data, or None.

    Pillow reads an eXIf chunk that follows IDAT only by decoding the whole image, and
    OpenCV honours it; walking the chunk headers finds it without decoding.
    """
    with open(path, 'rb') as f:
        f.seek(8)  # signature
        for _ in range(1 << 20):  # bounded: a corrupt length cannot loop forever
            head = f.read(8)
            if len(head) < 8:
                return None
            length, ctype = struct.unpack('>I4s', head)
            if ctype == b'eXIf':
                return f.read(length)
            if ctype == b'IEND':
                return None
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return None


def _orientation(im, path: str) -> int:
    """The EXIF orientation OpenCV will apply (1 = none), read without decoding pixels."""
    from PIL import Image
    try:
        if im.format == 'PNG' and 'exif' not in im.info:
            data = _png_exif_after_idat(path)
            if data is None:
                return 1
            exif = Image.Exif()
            exif.load(data)
            return exif.get(0x0112, 1)
        return im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: OpenCV ignores it too
        return 1


def image_size(path: str, max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """(height, width) as OpenCV's colour decoding will produce it (EXIF applied), from
    the header alone.

    Args:
        path (str): The image.
        max_pixels (int, optional): Refuse a header declaring more pixels. Defaults to
            None (no limit).

    Returns:
        tuple[int, int]: ``(height, width)``.

    Raises:
        DatasetEncryptionError: the file is not a readable image (empty, truncated,
            another format; ``err.reason`` says why), or (``err.too_large`` set) its
            header declares more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with own_pixel_limit():
            im = Image.open(path)
        im.size  # noqa: B018 - header parsed
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = 'empty file' if os.path.getsize(path) == 0 else \
            f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        err = DatasetEncryptionError(f'{path} is not a readable image ({reason}). Replace '
                                     'it with a valid image or remove it from SRC, then '
                                     'rerun.')
        err.reason = reason
        raise err from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise too_large(path, w, h, max_pixels)
        orientation = _orientation(im, path)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        h, w = w, h
    return h, w


def check_pixels(path: str, max_pixels: Optional[int]) -> None:
    """Refuse a source whose header declares too many pixels, before it is decoded.

    The planner checked already; this catches a file replaced since, because the decoder
    would allocate whatever the header asks for.

    Args:
        path (str): The image.
        max_pixels (int, optional): The limit; None for none.

    Raises:
        DatasetEncryptionError: the header declares more than ``max_pixels`` pixels.
    """
    if max_pixels is None:
        return
    from PIL import Image
    try:
        with own_pixel_limit(), Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError):
        return  # not readable by Pillow: the decoder reports it
    if w * h > max_pixels:
        raise too_large(path, w, h, max_pixels)


# ------------------------------------------------------------------------------ encoding
def encode_image(src: str, cipher: BlockCipher, pad: bool,
                 max_pixels: Optional[int] = None) -> bytes:
    """The encrypted PNG of the image ``src``.

    Args:
        src (str): The plain image.
        cipher (BlockCipher): The cipher of the run.
        pad (bool): Pad to the block grid with 0 (bottom/right) first.
        max_pixels (int, optional): Refuse a larger header before decoding. Defaults to
            None (no limit).

    Returns:
        bytes: PNG bytes (deterministic: equal inputs give equal files).

    Raises:
        DatasetEncryptionError: too many pixels, undecodable, off the grid (without
            ``pad``), or the PNG encoder failed.
    """
    import cv2
    check_pixels(src, max_pixels)
    # IMREAD_COLOR is what mmcv's LoadImageFromFile uses (color_type='color', cv2
    # backend): 3-channel 8-bit BGR with EXIF orientation applied.
    bgr = cv2.imread(src, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetEncryptionError(f'Cannot decode image {src!r}.')
    if pad:
        bgr = pad_to_grid(bgr, cipher.block_size, 0)
    try:
        enc = cipher.encrypt(bgr, channel_order='bgr')
    except ValueError as e:
        raise DatasetEncryptionError(f'{src}: {e}') from None
    ok, buf = cv2.imencode('.png', enc, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DatasetEncryptionError(f'PNG encoding failed for {src!r}.')
    return buf.tobytes()


def encode_label(src: str, block: int, ignore_index: int,
                 max_pixels: Optional[int] = None) -> bytes:
    """The label map ``src`` padded to the block grid, as PNG (mode and palette kept).

    Args:
        src (str): The label map.
        block (int): Block size.
        ignore_index (int): Pad value of class-index maps (colour and instance images
            are padded with 0, "unlabeled").
        max_pixels (int, optional): Refuse a larger header before decoding. Defaults to
            None (no limit).

    Returns:
        bytes: PNG bytes.
    """
    from PIL import Image
    check_pixels(src, max_pixels)
    with own_pixel_limit(), Image.open(src) as im:
        mode, palette = im.mode, im.getpalette() if im.mode == 'P' else None
        arr = np.asarray(im)
    # Class-index maps get the ignore index; colour/instance images get 0 (unlabeled).
    value = ignore_index if arr.ndim == 2 and arr.dtype == np.uint8 else 0
    out = Image.fromarray(pad_to_grid(arr, block, value), mode=mode)
    if palette is not None:
        out.putpalette(palette)
    buf = io.BytesIO()
    out.save(buf, format='PNG')
    return buf.getvalue()
