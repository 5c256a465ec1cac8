"""Tiny models of every patch-projection backbone family, and what their tests share.

Used by ``tests/models/test_encrypted_families.py`` (the encrypted variants) and
``tests/test_model_encryption_families.py`` (the offline model encryption).
"""
import numpy as np
import torch
from mmseg.models.backbones import MAE, PCPVT, SVT, BEiT, SwinTransformer

from mmseg_ppenc.models import (
    EncryptedBEiT,
    EncryptedMAE,
    EncryptedPCPVT,
    EncryptedSVT,
    EncryptedSwinTransformer,
)
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

NORM = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)

# Tiny models: (stock class, encrypted class, arguments, on-grid input sizes). Stock
# mmseg cannot load a pre-trained checkpoint into a non-square BEiT/MAE or a Swin with
# use_abs_pos_embed=True (its own limitations), so those get the weights copied and the
# adaptation applied to the module's state dict (NO_PRETRAINED).
BEIT_KW = dict(img_size=32, patch_size=16, embed_dims=32, num_layers=2, num_heads=2,
               mlp_ratio=2, out_indices=(0, 1))
SWIN_KW = dict(embed_dims=32, depths=(1, 1), num_heads=(1, 2), strides=(4, 2),
               window_size=4, mlp_ratio=2, out_indices=(0, 1), drop_path_rate=0.)
TWINS_KW = dict(embed_dims=[32, 64], patch_sizes=[4, 2], strides=[4, 2], num_heads=[1, 2],
                mlp_ratios=[2, 2], depths=[1, 1], sr_ratios=[2, 1], out_indices=(0, 1))
SVT_KW = dict(TWINS_KW, depths=[2, 2], windiow_sizes=[4, 4], drop_path_rate=0.)
FAMILIES = {
    'beit': (BEiT, EncryptedBEiT, BEIT_KW, [(32, 32)]),
    'beit_wide': (BEiT, EncryptedBEiT, dict(BEIT_KW, img_size=(32, 64)), [(32, 64)]),
    'beit_patch_norm': (BEiT, EncryptedBEiT, dict(BEIT_KW, patch_norm=True), [(32, 32)]),
    'mae': (MAE, EncryptedMAE, BEIT_KW, [(32, 32)]),
    'mae_wide': (MAE, EncryptedMAE, dict(BEIT_KW, img_size=(32, 64)), [(32, 64)]),
    'swin': (SwinTransformer, EncryptedSwinTransformer, SWIN_KW, [(32, 32), (32, 64), (64, 48)]),
    'swin_abs_pos': (SwinTransformer, EncryptedSwinTransformer,
                     dict(SWIN_KW, use_abs_pos_embed=True, pretrain_img_size=32), [(32, 32)]),
    'swin_no_patch_norm': (SwinTransformer, EncryptedSwinTransformer,
                           dict(SWIN_KW, patch_norm=False), [(32, 32)]),
    'pcpvt': (PCPVT, EncryptedPCPVT, TWINS_KW, [(32, 32), (32, 64)]),
    'svt': (SVT, EncryptedSVT, SVT_KW, [(32, 32), (32, 64)]),
}
NO_PRETRAINED = {'beit_wide', 'mae_wide', 'swin_abs_pos'}
BLOCK = {'beit': 16, 'mae': 16, 'swin': 4, 'pcpvt': 4, 'svt': 4}


def normalise(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).double()
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    return ((x - m) / s).float()[None]


def rel(a, b) -> float:
    return ((a - b).norm() / a.norm()).item()


def plain_model(stock, kw, seed=0):
    torch.manual_seed(seed)
    model = stock(**kw)
    model.init_weights()
    with torch.no_grad():  # a projection bias (and norm bias, position embedding) != 0
        for name, p in model.named_parameters():
            if 'patch_embed' in name and name.endswith('bias'):
                p.normal_(std=0.1)
            if name.endswith('absolute_pos_embed') or name.endswith('pos_embed'):
                p.normal_(std=0.1)
    model.eval()  # BEiT's train() returns None, so not chained
    return model


def save_state_dict(model, path) -> str:
    torch.save({'state_dict': model.state_dict()}, str(path))
    return str(path)


def encrypted_model(enc_cls, kw, ckpt, key_file, **extra):
    model = enc_cls(**kw, key_file=key_file, **NORM,
                    init_cfg=dict(type='Pretrained', checkpoint=ckpt), **extra)
    model.init_weights()
    model.eval()
    return model
