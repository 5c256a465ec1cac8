"""``ppenc-visualize``: figures of encrypted inference (plain | encrypted | prediction |
ground truth).

Example::

    ppenc-visualize data/cityscapes/leftImg8bit/val/*/*_leftImg8bit.png \\
        --config configs/ppenc/server/setr_tiny_mla_synthetic_server.py \\
        --checkpoint work_dirs/server/iter_400.pth --out figures/ --limit 4

Each plain IMAGE is encrypted with the key (client side), segmented by the model from the
encrypted array only, and drawn next to its ground truth (the paper's Figs. 4 and 5). The
ground truth is found automatically for Cityscapes (leftImg8bit/ -> gtFine/
*_gtFine_labelTrainIds.png) and ADE20K (images/ -> annotations/*.png) layouts, or given
with --gt in the same order as the images.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ppenc.cli import fail, user_errors

__all__ = ['build_parser', 'find_ground_truth', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``IMAGE... --config C --checkpoint P --out DIR
        [--gt GT...] [--key-file K] [--device D] [--limit N] [--dpi N]``.
    """
    parser = argparse.ArgumentParser(
        description='Plain | encrypted | prediction | GT figures for encrypted inference.')
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='plain images')
    parser.add_argument('--config', required=True, help='model config')
    parser.add_argument('--checkpoint', required=True, help='checkpoint adapted to the key')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--gt', nargs='+', default=None,
                        help='ground-truth label maps, one per image (default: found '
                        'from the Cityscapes/ADE20K layout)')
    parser.add_argument('--key-file', default=None,
                        help='key file (default: $PPENC_KEY_FILE)')
    parser.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    parser.add_argument('--limit', type=int, default=None, help='at most N figures')
    parser.add_argument('--dpi', type=int, default=100, help='figure resolution')
    return parser


def find_ground_truth(path: str) -> Optional[str]:
    """The label map of a Cityscapes or ADE20K image path.

    Args:
        path (str): An image below ``leftImg8bit/`` (Cityscapes) or ``images/`` (ADE20K).

    Returns:
        str | None: The existing label-map file, or None if there is none.
    """
    parts = path.split(os.sep)
    if 'leftImg8bit' in parts and path.endswith('_leftImg8bit.png'):
        i = len(parts) - 1 - parts[::-1].index('leftImg8bit')
        parts[i] = 'gtFine'
        cand = os.sep.join(parts)[:-len('_leftImg8bit.png')] + '_gtFine_labelTrainIds.png'
        return cand if os.path.isfile(cand) else None
    if 'images' in parts:
        i = len(parts) - 1 - parts[::-1].index('images')
        parts[i] = 'annotations'
        cand = os.path.splitext(os.sep.join(parts))[0] + '.png'
        return cand if os.path.isfile(cand) else None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Draw one figure per image.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 for missing files, a wrong key or bad ``--gt``.
    """
    args = build_parser().parse_args(argv)
    import numpy as np
    from PIL import Image

    from mmseg_ppenc.apis import (
        check_model_key,
        encrypt_for_upload,
        load_encrypted_model,
        model_block_size,
        predict_encrypted,
    )
    from mmseg_ppenc.cli.infer_encrypted import read_rgb
    from mmseg_ppenc.visualization import save_comparison_figure
    from ppenc.errors import ConfigError
    from ppenc.keys import resolve_key
    try:
        key = resolve_key(args.key_file)
        images = args.images[:args.limit] if args.limit else args.images
        if args.gt is not None and len(args.gt) < len(images):
            raise ConfigError(f'--gt lists {len(args.gt)} files for {len(images)} images; '
                              'give one per image.')
        for p in [args.config, args.checkpoint] + images:
            if not os.path.isfile(p):
                raise ConfigError(f'{p!r} does not exist.')
        model = load_encrypted_model(args.config, args.checkpoint, device=args.device)
        check_model_key(model, key)
        meta = model.dataset_meta or {}
        from mmseg.datasets import CityscapesDataset
        palette = meta.get('palette') or CityscapesDataset.METAINFO['palette']
        classes = meta.get('classes') or CityscapesDataset.METAINFO['classes']
        block = model_block_size(model)
        os.makedirs(args.out, exist_ok=True)
        for i, path in enumerate(images):
            rgb = read_rgb(path)
            h, w = rgb.shape[:2]
            enc = encrypt_for_upload(rgb, key, block, pad=True)  # client
            pred = predict_encrypted(model, enc)[:h, :w]  # server: encrypted array only
            gt_path = args.gt[i] if args.gt else find_ground_truth(path)
            gt = np.asarray(Image.open(gt_path)) if gt_path else None
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(args.out, f'{stem}_figure.png')
            save_comparison_figure(out, rgb, enc[:h, :w], pred, gt, palette,
                                   class_names=classes,
                                   title=f'{stem} (key {key.fingerprint})', dpi=args.dpi)
            print(f'{path} -> {out}')
    except user_errors() + (ValueError,) as e:
        return fail(e)
    return 0
