"""The paper's cloud workflow end to end, with the key only on the client.

client: keygen -> encrypt_dataset -> encrypt_model (from a plain timm-layout ViT)
server: tools/train.py on the encrypted tree, PPENC_KEY_FILE unset, key file moved away
client: infer_encrypted on val images; the served predictions must equal those of the
        decrypted (plain) model on the plain images.
"""
import copy
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules
from PIL import Image

from mmseg_ppenc.adaptation import decrypt_vit_state_dict
from mmseg_ppenc.apis import encrypt_for_upload, load_encrypted_model, predict_encrypted
from ppenc.synthetic import make_synthetic_cityscapes
from ppenc.leak_scan import find_key_material
from ppenc.keys import SecretKey

from conftest import REPO, tiny_config

register_all_modules(init_default_scope=True)
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
ITERS = 40


def tool(args, env, cwd=REPO):
    res = subprocess.run([sys.executable, osp.join(REPO, args[0])] + args[1:], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f'{args[0]} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}'
    return res.stdout + res.stderr


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.slow
def test_cloud_workflow_end_to_end(tmp_path):
    base_env = {k: v for k, v in os.environ.items() if k != 'PPENC_KEY_FILE'}
    base_env['PYTHONWARNINGS'] = 'ignore'
    client = tmp_path / 'client'
    server = tmp_path / 'server'
    client.mkdir()
    server.mkdir()

    # ---------------------------------------------------------------- client side
    plain_root = str(client / 'cityscapes')
    make_synthetic_cityscapes(plain_root, num_train=16, num_val=4, height=64, width=128,
                              seed=11)
    key_file = str(client / 'keys' / 'site.key')
    out = tool(['tools/keygen.py', key_file], base_env)
    key = SecretKey.load(key_file)
    assert key.fingerprint in out
    client_env = dict(base_env, PPENC_KEY_FILE=key_file)
    enc_root = str(server / 'cityscapes_encrypted')  # "uploaded" artefacts live here
    out = tool(['tools/encrypt_dataset.py', plain_root, enc_root, '--workers', '2',
                '--no-progress'], client_env)
    assert 'Encrypted 20 images' in out and key.fingerprint in out
    # A plain "pre-trained" ViT in timm's layout, as the creator downloads it.
    torch.manual_seed(0)
    timm_vit = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2,
        num_classes=1000)
    timm_path = str(client / 'vit_tiny_timm.pth')
    torch.save(timm_vit.state_dict(), timm_path)
    enc_ckpt = str(server / 'vit_tiny_encrypted.pth')
    out = tool(['tools/encrypt_model.py', timm_path, enc_ckpt], client_env)
    assert 'from a timm vit checkpoint' in out

    # ---------------------------------------------------------------- server side
    hidden = str(tmp_path / 'vault')
    os.makedirs(hidden)
    shutil.move(key_file, osp.join(hidden, 'site.key'))  # not readable at its path
    try:
        assert not osp.exists(key_file)
        server_env = dict(base_env, PPENC_DATA_ROOT=enc_root + os.sep,
                          PPENC_PRETRAINED=enc_ckpt)
        assert 'PPENC_KEY_FILE' not in server_env
        assert not any(key_file in v or hidden in v for v in server_env.values())
        work_dir = str(server / 'work_dir')
        out = tool(['tools/train.py', SERVER_CFG, '--work-dir', work_dir, '--cfg-options',
                    f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
                    f'param_scheduler.0.end={ITERS}', 'train_dataloader.batch_size=4',
                    f'default_hooks.checkpoint.interval={ITERS}',
                    'default_hooks.logger.interval=10'], server_env, cwd=str(server))
        assert 'no key on this machine is used' in out
    finally:
        shutil.move(osp.join(hidden, 'site.key'), key_file)
    ckpt = osp.join(work_dir, f'iter_{ITERS}.pth')
    scalars = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    metrics = [r for r in map(json.loads, open(scalars)) if 'mIoU' in r][-1]
    print(f'\nserver validation after {ITERS} iterations on encrypted data: '
          f'aAcc {metrics["aAcc"]:.2f}  mIoU {metrics["mIoU"]:.2f}  mAcc {metrics["mAcc"]:.2f}')
    assert 0 < metrics['mIoU'] <= 100 and metrics['aAcc'] > 20
    meta = torch.load(ckpt, map_location='cpu')['meta']
    assert meta['ppenc']['key_fingerprint'] == key.fingerprint
    assert find_key_material([work_dir, enc_root, enc_ckpt], key) == []

    # ---------------------------------------------------------------- client again
    val_images = sorted(glob.glob(osp.join(plain_root, 'leftImg8bit', 'val', '*', '*.png')))
    pred_dir = str(client / 'predictions')
    out = tool(['tools/infer_encrypted.py'] + val_images +
               ['--config', SERVER_CFG, '--checkpoint', ckpt, '--out', pred_dir,
                '--device', 'cpu', '--save-labels'], client_env)
    assert out.count('_pred.png') == 4

    # The equivalently decrypted plain model: the trained server weights, decrypted with
    # the key, in the tiny *baseline* model, on plain images.
    base_cfg = Config.fromfile(tiny_config('mla', 'baseline'))
    base_cfg.model.backbone.init_cfg = None
    plain_model = MODELS.build(base_cfg.model)
    served_sd = torch.load(ckpt, map_location='cpu')['state_dict']
    plain_model.load_state_dict(decrypt_vit_state_dict(served_sd, key, prefix='backbone.'))
    plain_model.eval()
    ds_cfg = copy.deepcopy(base_cfg.test_dataloader.dataset)
    ds_cfg.data_root = plain_root
    plain_ds = DATASETS.build(ds_cfg)
    served = load_encrypted_model(SERVER_CFG, ckpt, device='cpu')
    assert len(plain_ds) == 4
    for i in range(len(plain_ds)):
        item = plain_ds[i]
        path = item['data_samples'].img_path
        with torch.no_grad():
            ref = plain_model.test_step(pseudo_collate([item]))[0]
        stem = osp.splitext(osp.basename(path))[0]
        served_labels = np.asarray(Image.open(osp.join(pred_dir, f'{stem}_labels.png')))
        assert np.array_equal(served_labels, ref.pred_sem_seg.data[0].numpy())
        rgb = np.ascontiguousarray(cv2.imread(path)[..., ::-1])
        enc_out = predict_encrypted(served, encrypt_for_upload(rgb, key), return_sample=True)
        assert rel(ref.seg_logits.data, enc_out.seg_logits.data) <= 1e-5
