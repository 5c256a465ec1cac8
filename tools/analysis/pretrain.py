"""Pre-training of the miniature Table I: the stand-in for ImageNet.

The tiny configs' own ViT backbone (:func:`load_backbone_config`) learns, on an unlimited
stream of *plain* single-texture images (:func:`textures_v2.sample_pretrain_images`), to
classify each image's orientation from its mean-pooled tokens (:func:`pretrain_backbone`):
an image-level task in another domain, whose labels do not determine the fine-tuning
classes. The checkpoint it writes is what every fine-tuning run of
:mod:`reproduce_table` starts from.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ppenc.keys import SecretKey

from . import textures_v2
from .common import DECODERS, load_config, tiny_config_path

__all__ = ['PRETRAIN_CROP', 'load_backbone_config', 'pretrain_backbone']

#: The tiny configs' backbone sees 64x64 crops: pre-training uses the same size, so the
#: position embedding needs no resizing (and fine-tuning crops to it too).
PRETRAIN_CROP: Tuple[int, int] = (64, 64)


def load_backbone_config(config_dir: Optional[str] = None) -> Tuple[dict, dict]:
    """The backbone to pre-train and the data preprocessor of the tiny configs.

    The backbone is the tiny MLA baseline config's ``model.backbone`` with
    ``init_cfg=None`` and ``with_cls_token=True``. The class token is part of the
    parameters in every setting, but only PUP and Naive (as in mmseg's SETR configs) feed
    it through the transformer; pre-training with it, as ImageNet ViTs are, gives every
    decoder a trained class token and MLA the same mild mismatch as real SETR-MLA.

    Every decoder's tiny baseline backbone must have the same parameter names and
    shapes, because one pre-trained checkpoint serves every run.

    Returns:
        tuple[dict, dict]: ``(backbone_cfg, data_preprocessor_cfg)`` as plain dicts.

    Raises:
        ValueError: the decoders' backbone parameters differ, or the preprocessor does
            not feed RGB.
    """
    import mmseg_ppenc  # noqa: F401
    import mmseg.models  # noqa: F401  (registers VisionTransformer)
    from mmseg.registry import MODELS

    ref = ref_shapes = pre = None
    for decoder in DECODERS:
        cfg = load_config(tiny_config_path(decoder, 'baseline', config_dir))
        bb = cfg.model.backbone.to_dict()
        bb.pop('_scope_', None)
        bb['init_cfg'] = None
        shapes = {k: tuple(v.shape) for k, v in MODELS.build(bb).state_dict().items()}
        if ref is None:
            ref, ref_shapes, pre = bb, shapes, cfg.model.data_preprocessor.to_dict()
        elif shapes != ref_shapes:
            diff = sorted(set(shapes.items()) ^ set(ref_shapes.items()))[:6]
            raise ValueError(f'The tiny {decoder} baseline backbone has other parameters '
                             f'than the MLA one (differences: {diff}); one pre-trained '
                             'checkpoint needs one backbone architecture.')
    if not pre.get('bgr_to_rgb', False):
        raise ValueError('The tiny configs\' SegDataPreProcessor must have '
                         f'bgr_to_rgb=True (RGB models), got {pre}.')
    ref['with_cls_token'] = True
    return ref, pre


def _normalise(imgs: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) RGB -> (B, 3, H, W), as ``SegDataPreProcessor`` normalises."""
    return torch.from_numpy((imgs - mean) / std).permute(0, 3, 1, 2).contiguous()


class _ImageHead(torch.nn.Module):
    """Image-level classifier: the mean of the last layer's tokens, then a linear map to
    the :data:`textures_v2.NUM_PT_CLASSES` orientation classes."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dims, textures_v2.NUM_PT_CLASSES)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.linear(feat.mean(dim=(2, 3)))


def pretrain_backbone(backbone_cfg: dict, preprocessor_cfg: dict, out_path: str,
                      iters: int = 1000, seed: int = 0, batch_size: int = 32,
                      lr: float = 1e-3, keys: Sequence[SecretKey] = (),
                      log: Callable[[str], None] = print) -> dict:
    """Pre-train the tiny ViT on plain single-texture images (the ImageNet stand-in).

    Every step draws a fresh batch of 64x64 single-texture images
    (:func:`textures_v2.sample_pretrain_images`); a linear classifier on the mean of the
    last layer's tokens predicts the image's orientation class (cross-entropy). The task
    is distant from fine-tuning: image level, another domain, and labels that do not
    determine the fine-tuning classes (:func:`textures_v2.label_dependence`). AdamW
    (weight decay 0.05), 5 % linear warm-up, cosine decay. Inputs are normalised like
    ``SegDataPreProcessor`` (RGB, per-channel mean/std).

    Args:
        backbone_cfg (dict): mmseg backbone config (``init_cfg`` is ignored).
        preprocessor_cfg (dict): The fine-tuning configs' ``SegDataPreProcessor`` config.
        out_path (str): Checkpoint path; written as ``{'state_dict': backbone_state,
            'meta': {...}}`` in mmseg's ``VisionTransformer`` layout (no decoder).
        iters (int): Optimisation steps; 0 saves the random initialisation. Defaults to
            1000.
        seed (int): Seed of the stream and the initialisation. Defaults to 0.
        batch_size (int): Mosaics per step. Defaults to 32.
        lr (float): Peak learning rate. Defaults to 1e-3.
        keys (Sequence[SecretKey]): Also measure the held-out accuracy on mosaics
            encrypted with each key, with the plain and with the adapted weights
            (averaged over keys). Defaults to none.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: ``description``, ``iters``, ``batch_size``, ``lr``, ``final_loss`` (mean of
        the last 100 steps), ``heldout_orientation_acc`` (% of 256 held-out images), with
        keys also the same on encrypted images for the plain
        (``*_encrypted_plain_weights``) and the adapted weights
        (``*_encrypted_adapted_weights``), and ``time_s``.
    """
    import mmseg_ppenc  # noqa: F401
    import mmseg.models  # noqa: F401  (registers VisionTransformer)
    from mmseg.registry import MODELS

    t0 = time.time()
    cfg = dict(copy.deepcopy(backbone_cfg), init_cfg=None)
    patch = int(cfg.get('patch_size', 16))
    mean = np.asarray(preprocessor_cfg['mean'], np.float32)
    std = np.asarray(preprocessor_cfg['std'], np.float32)

    torch.manual_seed(seed)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    head = _ImageHead(int(cfg['embed_dims']))
    opt = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=lr,
                            weight_decay=0.05)
    warmup = max(1, iters // 20)

    def lr_at(i: int) -> float:
        if i < warmup:
            return lr * (i + 1) / warmup
        return lr * 0.5 * (1 + np.cos(np.pi * (i - warmup) / max(1, iters - warmup)))

    def loss_of(model, imgs, labels):
        # [-1]: the last layer's tokens (out_indices covers every layer).
        logits = head(model(_normalise(imgs, mean, std))[-1])
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))

    rng = np.random.default_rng((seed, textures_v2.STREAMS['pretrain']))
    backbone.train()
    losses: List[float] = []
    for i in range(iters):
        for g in opt.param_groups:
            g['lr'] = lr_at(i)
        loss = loss_of(backbone, *textures_v2.sample_pretrain_images(rng, batch_size,
                                                                     PRETRAIN_CROP))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (i + 1) % max(1, iters // 5) == 0 or i + 1 == iters:
            log(f'  pre-train iter {i + 1}/{iters}: loss {np.mean(losses[-100:]):.4f} '
                f'({time.time() - t0:.0f} s)')

    # Held-out accuracy shows that pre-training learned something; with keys, also what
    # the pre-trained backbone is worth on encrypted images at the start of fine-tuning
    # (plain weights: conventional 2; adapted weights: proposed). Reported only.
    backbone.eval()
    held = textures_v2.sample_pretrain_images(
        np.random.default_rng((seed, textures_v2.STREAMS['heldout'])), 256, PRETRAIN_CROP)

    def accuracy(model, imgs) -> float:
        with torch.no_grad():
            logits = head(model(_normalise(imgs, mean, std))[-1])
        return 100.0 * float((logits.argmax(1).numpy() == held[1]).mean())

    accs = dict(heldout_orientation_acc=accuracy(backbone, held[0]))
    if keys:
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict
        from ppenc.cipher import encrypt_image
        per_key = []
        for key in keys:
            adapted = copy.deepcopy(backbone)
            adapted.load_state_dict(encrypt_vit_state_dict(backbone.state_dict(), key,
                                                           mean, std, prefix=''))
            enc = np.stack([encrypt_image(im.astype(np.uint8), key, patch)
                            for im in held[0]]).astype(np.float32)
            per_key.append((accuracy(backbone, enc), accuracy(adapted, enc)))
        m = np.mean(per_key, axis=0)
        accs.update(heldout_orientation_acc_encrypted_plain_weights=float(m[0]),
                    heldout_orientation_acc_encrypted_adapted_weights=float(m[1]))
    stats = dict(
        description=('image-level orientation class (%d bins of %g degrees) from the mean '
                     'of the last layer\'s tokens, on plain 64x64 single-texture images '
                     '(sine or triangle waves, period %g-%g px, random colour, contrast '
                     'and noise)' % (textures_v2.NUM_PT_CLASSES,
                                     180 / textures_v2.NUM_PT_CLASSES,
                                     *textures_v2.PT_PERIOD_RANGE)),
        iters=int(iters), batch_size=int(batch_size), lr=float(lr),
        images_seen=int(iters * batch_size),
        final_loss=round(float(np.mean(losses[-100:])), 4) if losses else None,
        **{k: round(v, 2) for k, v in accs.items()}, time_s=round(time.time() - t0, 1))
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    torch.save({'state_dict': backbone.state_dict(),
                'meta': {'mmseg_ppenc_pretrain': {k: v for k, v in stats.items()
                                                  if k != 'time_s'}}}, out_path)
    return stats
