"""Figures: plain | encrypted | prediction | ground truth (the paper's Figs. 4 and 5)."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.datasets import CityscapesDataset
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules
from PIL import Image

from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.adaptation import encrypt_vit_state_dict
from mmseg_ppenc.cli import visualize as tool
from ppenc.synthetic import make_synthetic_cityscapes
from ppenc.keys import SecretKey
from ppenc.meta import build_meta
from mmseg_ppenc.visualization import comparison_figure, save_comparison_figure

from conftest import REPO

register_all_modules(init_default_scope=True)
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')

META = CityscapesDataset.METAINFO


def _panels(h, w, seed=0):
    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    enc = rng.permutation(plain.reshape(-1)).reshape(h, w, 3)
    pred = np.zeros((h, w), np.uint8)
    pred[h // 2:] = 13
    gt = pred.copy()
    gt[:4] = 255
    return plain, enc, pred, gt


@pytest.mark.parametrize('shape', [(64, 128), (128, 128)])
@pytest.mark.parametrize('with_gt', [True, False])
def test_figure_layout_and_colours(shape, with_gt, tmp_path):
    plain, enc, pred, gt = _panels(*shape)
    fig = comparison_figure(plain, enc, pred, gt if with_gt else None, META['palette'],
                            class_names=META['classes'], title='t')
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ['plain image', 'encrypted (uploaded)', 'prediction (from encrypted)',
                      'ground truth']
    # Panels hold the exact arrays (colour maps for labels).
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert np.array_equal(shown[0], plain) and np.array_equal(shown[1], enc)
    assert tuple(shown[2][-1, 0]) == tuple(META['palette'][13])  # car
    assert tuple(shown[2][0, 0]) == tuple(META['palette'][0])  # road
    if with_gt:
        assert tuple(shown[3][0, 0]) == (0, 0, 0)  # ignore index drawn black
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ['road', 'car']  # only classes present, never 'ignore'
    path = save_comparison_figure(str(tmp_path / 'f.png'), plain, enc, pred, gt,
                                  META['palette'], class_names=META['classes'], dpi=60)
    img = np.asarray(Image.open(path))
    assert img.shape[1] == int(round(3.2 * 4 * 60)) and img.shape[0] < img.shape[1]
    assert osp.getsize(path) < 400_000


def test_find_ground_truth(tmp_path):
    root = tmp_path / 'cs'
    make_synthetic_cityscapes(str(root), num_train=1, num_val=0, height=32, width=64)
    img = glob.glob(str(root / 'leftImg8bit' / 'train' / '*' / '*.png'))[0]
    gt = tool.find_ground_truth(img)
    assert gt is not None and gt.endswith('_gtFine_labelTrainIds.png') and osp.isfile(gt)
    (tmp_path / 'ade' / 'images' / 'validation').mkdir(parents=True)
    (tmp_path / 'ade' / 'annotations' / 'validation').mkdir(parents=True)
    (tmp_path / 'ade' / 'annotations' / 'validation' / 'a.png').write_bytes(b'')
    assert tool.find_ground_truth(str(tmp_path / 'ade' / 'images' / 'validation' /
                                      'a.jpg')).endswith(osp.join('annotations',
                                                                  'validation', 'a.png'))
    assert tool.find_ground_truth(str(tmp_path / 'x.png')) is None


def test_visualize_tool(tmp_path, capsys):
    data = str(tmp_path / 'data')
    make_synthetic_cityscapes(data, num_train=0, num_val=2, height=64, width=128, seed=4)
    key_file = str(tmp_path / 'k.key')
    key = SecretKey.generate()
    key.save(key_file)
    cfg = Config.fromfile(SERVER_CFG)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    bind_normalization(model)
    model.init_weights()
    ckpt = str(tmp_path / 'm.pth')
    torch.save({'state_dict': encrypt_vit_state_dict(model.state_dict(), key,
                                                     prefix='backbone.'),
                'meta': {'ppenc': build_meta(key.fingerprint, 16, key.flip_compatible)}}, ckpt)
    images = sorted(glob.glob(osp.join(data, 'leftImg8bit', 'val', '*', '*.png')))
    out = str(tmp_path / 'fig')
    code = tool.main(images + ['--config', SERVER_CFG, '--checkpoint', ckpt, '--out', out,
                               '--key-file', key_file, '--limit', '1', '--dpi', '50'])
    std = capsys.readouterr()
    assert code == 0, std.err
    figs = glob.glob(osp.join(out, '*_figure.png'))
    assert len(figs) == 1 and 'figure.png' in std.out
    assert np.asarray(Image.open(figs[0])).shape[1] == 640
    other = str(tmp_path / 'other.key')
    SecretKey.generate().save(other)
    code = tool.main(images[:1] + ['--config', SERVER_CFG, '--checkpoint', ckpt, '--out',
                                   out, '--key-file', other])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: ') and 'fingerprint mismatch' in err
