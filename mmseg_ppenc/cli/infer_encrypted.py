"""``ppenc-infer``: segment images with a model trained on encrypted data, encrypting each
query locally.

Example::

    ppenc-infer photo1.png photo2.png \\
        --config configs/ppenc/server/setr_tiny_mla_synthetic_server.py \\
        --checkpoint work_dirs/server/iter_400.pth --out results/ \\
        --key-file ~/.ppenc/site-a.key

For every IMAGE the key encrypts it on this machine; the model (the "server" step) is given
only the encrypted array. Writes DIR/<stem>_pred.png (colour map), and with
--save-labels DIR/<stem>_labels.png (class indices), with --save-encrypted
DIR/<stem>_enc.png (what would be uploaded).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ppenc.cli import fail, user_errors

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``IMAGE... --config C --checkpoint P --out DIR
        [--key-file K] [--device D] [--pad] [--save-labels] [--save-encrypted]
        [--allow-unkeyed]``.
    """
    parser = argparse.ArgumentParser(
        description='Encrypted inference (client side).')
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='plain query images')
    parser.add_argument('--config', required=True, help='model config (e.g. the server '
                        'config the model was trained with)')
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint adapted to the key (server training or '
                        'ppenc-encrypt-model)')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--key-file', default=None,
                        help='key file (default: $PPENC_KEY_FILE)')
    parser.add_argument('--device', default=None,
                        help='torch device (default: cuda:0 if available, else cpu)')
    parser.add_argument('--pad', action='store_true',
                        help='pad images that are not multiples of the patch size and '
                        'crop the prediction back (default: refuse them)')
    parser.add_argument('--save-labels', action='store_true',
                        help='also write <stem>_labels.png with class indices')
    parser.add_argument('--save-encrypted', action='store_true',
                        help='also write <stem>_enc.png, the encrypted upload')
    parser.add_argument('--allow-unkeyed', action='store_true',
                        help='run even if the checkpoint records no key fingerprint')
    return parser


def read_rgb(path: str):
    """Read an image file as an RGB ``uint8`` array.

    Args:
        path (str): Image file.

    Returns:
        np.ndarray: ``(H, W, 3)`` RGB.

    Raises:
        ConfigError: the file cannot be read as an image.
    """
    import cv2
    import numpy as np

    from ppenc.errors import ConfigError
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f'Cannot read image {path!r}.')
    return np.ascontiguousarray(bgr[..., ::-1])


def write_rgb(path: str, rgb) -> None:
    """Write an RGB ``uint8`` array as an image file.

    Args:
        path (str): Output file (the extension picks the format).
        rgb (np.ndarray): ``(H, W, 3)`` RGB.

    Raises:
        ConfigError: the file cannot be written.
    """
    import cv2
    import numpy as np

    from ppenc.errors import ConfigError
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise ConfigError(f'Cannot write {path!r}.')


def _outputs(args, path: str) -> list:
    stem = os.path.splitext(os.path.basename(path))[0]
    names = [f'{stem}_pred.png'] + ([f'{stem}_labels.png'] if args.save_labels else []) \
        + ([f'{stem}_enc.png'] if args.save_encrypted else [])
    return [os.path.join(args.out, n) for n in names]


def _check_outputs(args, error) -> None:
    """Refuse outputs that would replace a query image (through any link or spelling)
    or each other (two queries with one file name)."""
    from ppenc.files import same_file
    seen = {}
    for path in args.images:
        for out in _outputs(args, path):
            for img in args.images:
                if same_file(out, img):
                    raise error(f'The output {out} would overwrite the query image {img}; '
                                'choose another --out directory.')
            real = os.path.realpath(out)
            if real in seen:
                raise error(f'The queries {seen[real]} and {path} have the same file name, '
                            f'so both would write {out}; rename one, or run them '
                            'separately with different --out directories.')
            seen[real] = path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Encrypt each image with the key, segment it, write the predictions.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 for missing files, a wrong key or an image off the grid.
    """
    args = build_parser().parse_args(argv)
    import cv2
    import numpy as np
    import torch

    from mmseg_ppenc.apis import (
        check_model_key,
        colorize,
        encrypt_for_upload,
        load_encrypted_model,
        model_block_size,
        predict_encrypted,
    )
    from ppenc.errors import ConfigError
    from ppenc.keys import resolve_key
    try:
        key = resolve_key(args.key_file)
        for p in [args.config, args.checkpoint] + args.images:
            if not os.path.isfile(p):
                raise ConfigError(f'{p!r} does not exist.')
        _check_outputs(args, ConfigError)
        device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
        model = load_encrypted_model(args.config, args.checkpoint, device=device)
        if model.ppenc_meta is not None or not args.allow_unkeyed:
            check_model_key(model, key)
        palette = (model.dataset_meta or {}).get('palette')
        if palette is None:
            from mmseg.datasets import CityscapesDataset
            palette = CityscapesDataset.METAINFO['palette']
        block = model_block_size(model)
        os.makedirs(args.out, exist_ok=True)
        for path in args.images:
            rgb = read_rgb(path)
            h, w = rgb.shape[:2]
            try:
                enc = encrypt_for_upload(rgb, key, block, pad=args.pad)  # client
            except ValueError as e:
                raise ConfigError(f'{path}: {e} Pass --pad to pad it.') from None
            labels = predict_encrypted(model, enc)[:h, :w]  # server: encrypted array only
            stem = os.path.splitext(os.path.basename(path))[0]
            write_rgb(os.path.join(args.out, f'{stem}_pred.png'), colorize(labels, palette))
            if args.save_labels:
                cv2.imwrite(os.path.join(args.out, f'{stem}_labels.png'), labels)
            if args.save_encrypted:
                write_rgb(os.path.join(args.out, f'{stem}_enc.png'), enc)
            classes = np.unique(labels)
            print(f'{path}: {h}x{w}, {len(classes)} classes predicted -> '
                  f'{os.path.join(args.out, stem + "_pred.png")}')
    except user_errors() as e:
        return fail(e)
    return 0
