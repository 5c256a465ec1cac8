"""Segment images with a model trained on encrypted data, encrypting each query locally.

Example::

    python tools/infer_encrypted.py photo1.png photo2.png \
        --config configs/ppenc/server/setr_tiny_mla_synthetic_server.py \
        --checkpoint work_dirs/server/iter_400.pth --out results/ \
        --key-file ~/.ppenc/site-a.key

For every IMAGE the key encrypts it on this machine; the model (the "server" step) is given
only the encrypted array. Writes DIR/<stem>_pred.png (colour map), and with
--save-labels DIR/<stem>_labels.png (class indices), with --save-encrypted
DIR/<stem>_enc.png (what would be uploaded).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import cv2
    import numpy as np

    from mmseg_ppenc.apis import (check_model_key, colorize, encrypt_for_upload,
                                  load_encrypted_model, model_block_size,
                                  predict_encrypted)
    from mmseg_ppenc.keys import InvalidKeyError, resolve_key
    from mmseg_ppenc.runner import ConfigError
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Encrypted inference (client side).')
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='plain query images')
    parser.add_argument('--config', required=True, help='model config (e.g. the server '
                        'config the model was trained with)')
    parser.add_argument('--checkpoint', required=True,
                        help='checkpoint adapted to the key (server training or '
                        'tools/encrypt_model.py)')
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
    return parser.parse_args(argv)


def _read_rgb(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f'Cannot read image {path!r}.')
    return np.ascontiguousarray(bgr[..., ::-1])


def _write_rgb(path, rgb):
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise ConfigError(f'Cannot write {path!r}.')


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
        key = resolve_key(args.key_file)
        for p in [args.config, args.checkpoint] + args.images:
            if not os.path.isfile(p):
                raise ConfigError(f'{p!r} does not exist.')
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
            rgb = _read_rgb(path)
            h, w = rgb.shape[:2]
            try:
                enc = encrypt_for_upload(rgb, key, block, pad=args.pad)  # client
            except ValueError as e:
                raise ConfigError(f'{path}: {e} Pass --pad to pad it.') from None
            labels = predict_encrypted(model, enc)[:h, :w]  # server: encrypted array only
            stem = os.path.splitext(os.path.basename(path))[0]
            _write_rgb(os.path.join(args.out, f'{stem}_pred.png'), colorize(labels, palette))
            if args.save_labels:
                cv2.imwrite(os.path.join(args.out, f'{stem}_labels.png'), labels)
            if args.save_encrypted:
                _write_rgb(os.path.join(args.out, f'{stem}_enc.png'), enc)
            classes = np.unique(labels)
            print(f'{path}: {h}x{w}, {len(classes)} classes predicted -> '
                  f'{os.path.join(args.out, stem + "_pred.png")}')
    except (ConfigError, InvalidKeyError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
