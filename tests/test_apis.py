"""Encrypted inference: the client encrypts, the server function sees only ciphertext."""
import copy
import glob
import inspect
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmseg.datasets import CityscapesDataset
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules
from PIL import Image

from mmseg_ppenc.adaptation import encrypt_vit_state_dict
from mmseg_ppenc.apis import (check_model_key, colorize, encrypt_for_upload,
                              inference_encrypted, load_encrypted_model,
                              predict_encrypted)
from ppenc.cipher import encrypt_image
from ppenc.synthetic import make_synthetic_cityscapes
from ppenc.keys import InvalidKeyError, SecretKey
from ppenc.meta import build_meta

from conftest import REPO, load_tool

register_all_modules(init_default_scope=True)
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
tool = load_tool('infer_encrypted')

PALETTE = CityscapesDataset.METAINFO['palette']


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    """A plain tiny model, its encrypted twin saved as a served checkpoint, and data."""
    root = tmp_path_factory.mktemp('apis')
    data = str(root / 'data')
    make_synthetic_cityscapes(data, num_train=1, num_val=2, height=64, width=128, seed=3)
    key_file = str(root / 'client.key')
    key = SecretKey.generate()
    key.save(key_file)
    cfg = Config.fromfile(SERVER_CFG)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    plain = MODELS.build(cfg.model)
    plain.init_weights()
    plain.eval()
    enc_sd = encrypt_vit_state_dict(plain.state_dict(), key, prefix='backbone.')
    ckpt = str(root / 'served.pth')
    torch.save({'state_dict': enc_sd,
                'meta': {'ppenc': build_meta(key.fingerprint, 16, key.flip_compatible),
                         'dataset_meta': dict(CityscapesDataset.METAINFO)}}, ckpt)
    model = load_encrypted_model(SERVER_CFG, ckpt, device='cpu')
    ds_cfg = copy.deepcopy(cfg.test_dataloader.dataset.dataset)
    ds_cfg.data_root = data
    plain_ds = DATASETS.build(ds_cfg)
    return dict(root=root, data=data, key=key, key_file=key_file, plain=plain,
                model=model, ckpt=ckpt, plain_ds=plain_ds)


def _rgb(path):
    return np.ascontiguousarray(cv2.imread(path)[..., ::-1])


def test_client_encryption():
    key = SecretKey(bytes(32))
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert np.array_equal(encrypt_for_upload(img, key), encrypt_image(img, key))
    with pytest.raises(ValueError, match='block grid'):
        encrypt_for_upload(img[:30], key)
    padded = encrypt_for_upload(img[:30, :40], key, pad=True)
    assert padded.shape == (32, 48, 3)


def test_server_function_takes_no_key():
    params = inspect.signature(predict_encrypted).parameters
    assert list(params) == ['model', 'enc_rgb', 'return_sample']


def test_served_predictions_equal_plain_model(served, monkeypatch):
    # The server step runs with no key selected anywhere.
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    ds, key = served['plain_ds'], served['key']
    assert served['model'].ppenc_meta['key_fingerprint'] == key.fingerprint
    for i in range(len(ds)):
        item = ds[i]
        path = item['data_samples'].img_path
        with torch.no_grad():
            ref = served['plain'].test_step(pseudo_collate([item]))[0]
        enc = encrypt_for_upload(_rgb(path), key)  # client
        out = predict_encrypted(served['model'], enc, return_sample=True)  # server
        assert rel(ref.seg_logits.data, out.seg_logits.data) <= 1e-5
        assert torch.equal(ref.pred_sem_seg.data, out.pred_sem_seg.data)
        labels = predict_encrypted(served['model'], enc)
        assert labels.dtype == np.uint8 and labels.shape == (64, 128)
        assert np.array_equal(labels, ref.pred_sem_seg.data[0].numpy())


def test_inference_encrypted_sends_only_ciphertext(served):
    key = served['key']
    paths = sorted(glob.glob(osp.join(served['data'], 'leftImg8bit', 'val', '*', '*.png')))
    imgs = [_rgb(p) for p in paths]
    seen = []

    def remote(model, enc):  # stands in for an HTTP call to the server
        seen.append(enc)
        return predict_encrypted(model, enc)

    labels = inference_encrypted(served['model'], imgs, key, server=remote)
    assert len(labels) == len(imgs) == len(seen) == 2
    for img, enc, lab in zip(imgs, seen, labels):
        assert np.array_equal(enc, encrypt_image(img, key)) and not np.array_equal(enc, img)
        assert np.array_equal(lab, predict_encrypted(served['model'], enc))
    # Off-grid queries: padded on the client, labels cropped back.
    single = inference_encrypted(served['model'], imgs[0][:56, :120], key, pad=True)
    assert single.shape == (56, 120)
    with pytest.raises(ValueError, match='off the 16-pixel block grid.*encrypted for this model'):
        predict_encrypted(served['model'], imgs[0][:56])


def test_colorize():
    lab = np.array([[0, 1], [18, 255]], np.uint8)
    out = colorize(lab, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == tuple(PALETTE[0]) and tuple(out[1, 0]) == tuple(PALETTE[18])
    assert tuple(out[1, 1]) == (0, 0, 0)
    assert tuple(colorize(lab, PALETTE, ignore_color=(9, 9, 9))[1, 1]) == (9, 9, 9)


def test_check_model_key(served):
    check_model_key(served['model'], served['key'])
    with pytest.raises(InvalidKeyError, match='fingerprint mismatch'):
        check_model_key(served['model'], SecretKey.generate())
    with pytest.raises(InvalidKeyError, match='records no key'):
        check_model_key(None, served['key'])


def _main(argv, capsys):
    """Exit status and captured (out, err) of the tool."""
    code = tool.main(argv)
    return code, capsys.readouterr()


def test_infer_tool(served, tmp_path, capsys):
    paths = sorted(glob.glob(osp.join(served['data'], 'leftImg8bit', 'val', '*', '*.png')))
    out = str(tmp_path / 'pred')
    code, std = _main(paths + ['--config', SERVER_CFG, '--checkpoint', served['ckpt'],
                               '--out', out, '--key-file', served['key_file'],
                               '--device', 'cpu', '--save-labels', '--save-encrypted'],
                      capsys)
    assert code == 0, std.err
    assert std.out.count('_pred.png') == 2
    for p in paths:
        stem = osp.splitext(osp.basename(p))[0]
        labels = np.asarray(Image.open(osp.join(out, f'{stem}_labels.png')))
        expected = predict_encrypted(served['model'], encrypt_for_upload(_rgb(p),
                                                                          served['key']))
        assert np.array_equal(labels, expected)
        colour = _rgb(osp.join(out, f'{stem}_pred.png'))
        assert np.array_equal(colour, colorize(labels, PALETTE))
        enc = _rgb(osp.join(out, f'{stem}_enc.png'))
        assert np.array_equal(enc, encrypt_image(_rgb(p), served['key']))
    other = str(tmp_path / 'other.key')
    SecretKey.generate().save(other)
    code, std = _main(paths[:1] + ['--config', SERVER_CFG, '--checkpoint', served['ckpt'],
                                   '--out', out, '--key-file', other, '--device', 'cpu'],
                      capsys)
    assert code == 2 and std.err.startswith('error: ') and 'fingerprint mismatch' in std.err
    assert std.err.count('\n') == 1  # one line, no traceback
    code, std = _main([str(tmp_path / 'nope.png'), '--config', SERVER_CFG, '--checkpoint',
                       served['ckpt'], '--out', out, '--key-file', served['key_file']],
                      capsys)
    assert code == 2 and std.err.startswith('error: ') and 'nope.png' in std.err


def test_mmseg_inference_api_pads_off_grid_images_on_tiny_configs(tiny_checkpoints,
                                                                   key_env):
    """mmseg's init_model + inference_model (no hook, no start check) read the tiny
    configs' top-level test_pipeline: a 70x100 image is padded in uint8 to 80x112 before
    BlockScramble, the pad is cut off the prediction, and the proposed checkpoint gives
    the baseline's label map (float32 rounding aside: at most 0.1 % of the labels may
    differ, where the two best classes tie within 1e-5)."""
    from mmseg.apis import inference_model, init_model
    from conftest import tiny_config
    img = np.random.default_rng(5).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    preds = {s: inference_model(init_model(tiny_config('mla', s), tiny_checkpoints[s],
                                           device='cpu'), img.copy())
             for s in ('baseline', 'proposed')}
    b, p = preds['baseline'], preds['proposed']
    for pred in (b, p):
        assert tuple(pred.pred_sem_seg.data.shape[-2:]) == (70, 100)
        assert tuple(pred.metainfo['img_shape']) == (80, 112)
        assert tuple(pred.metainfo['img_padding_size']) == (0, 12, 0, 10)
    assert rel(b.seg_logits.data, p.seg_logits.data) <= 1e-5
    labels_b, labels_p = b.pred_sem_seg.data, p.pred_sem_seg.data
    assert len(torch.unique(labels_b)) >= 3
    assert (labels_b != labels_p).float().mean().item() <= 1e-3
