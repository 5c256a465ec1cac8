"""tools/encrypt_model.py: timm/mmseg checkpoints in, a stock-loadable encrypted mmseg
checkpoint out, exact on encrypted images."""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.runner import load_checkpoint
from mmseg.datasets import CityscapesDataset
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules

from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
from mmseg_ppenc.convert import convert_timm_vit
from ppenc.dataset import encrypt_dataset
from ppenc.synthetic import make_synthetic_cityscapes
from mmseg_ppenc.hooks import KeyManagementHook
from ppenc.keys import SecretKey
from mmseg_ppenc.model_encryption import (ModelEncryptionError, detect_layout,
                                          encrypt_model_checkpoint, patch_embed_digest)
from mmseg_ppenc.models import EncryptedVisionTransformer

from conftest import REPO, load_tool

register_all_modules(init_default_scope=True)
SERVER_CFG = osp.join(REPO, 'configs', 'ppenc', 'server', 'setr_tiny_mla_synthetic_server.py')
tool = load_tool('encrypt_model')


def timm_vit(depth=4, embed=64, heads=4, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault('num_classes', 10)  # a classifier head, as in timm's checkpoints
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=embed, depth=depth, num_heads=heads,
        mlp_ratio=2, **kw)
    with torch.no_grad():  # timm starts these at zero; make them matter
        m.patch_embed.proj.bias.normal_()
        m.pos_embed.normal_(std=0.1)
        m.cls_token.normal_(std=0.1)
    return m.eval()


def rel(a, b):
    return ((a - b).norm() / a.norm()).item()


# ------------------------------------------------------------------ the converter itself
@pytest.mark.parametrize('mode,patch_bias', [('fold', False), ('keep', True)])
@pytest.mark.parametrize('depth', [1, 3])
def test_timm_conversion_matches_timm_forward(mode, patch_bias, depth):
    t = timm_vit(depth=depth, embed=48, heads=3, num_classes=0)
    m = VisionTransformer(img_size=64, embed_dims=48, num_layers=depth, num_heads=3,
                          mlp_ratio=2, out_indices=(depth - 1,), final_norm=True,
                          with_cls_token=True, patch_bias=patch_bias,
                          norm_cfg=dict(type='LN', eps=1e-6))
    m.eval()
    m.load_state_dict(convert_timm_vit(t.state_dict(), patch_bias=mode), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = t.forward_features(x)[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 1, 2)
        out = m(x)[0]
    assert rel(ref, out) <= 1e-5
    if mode == 'keep':
        # What mmseg's vit2mmseg gives a stock (patch_bias=False) ViT: the bias is dropped
        # at load time and the model is no longer timm's. Folding avoids that.
        stock = VisionTransformer(img_size=64, embed_dims=48, num_layers=depth, num_heads=3,
                                  mlp_ratio=2, out_indices=(depth - 1,), final_norm=True,
                                  with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6))
        stock.eval()
        stock.load_state_dict(convert_timm_vit(t.state_dict(), 'keep'), strict=False)
        with torch.no_grad():
            assert rel(ref, stock(x)[0]) > 1e-3


@pytest.mark.parametrize('kw,what', [(dict(init_values=1e-5), 'ls1.gamma'),
                                     (dict(qk_norm=True), 'q_norm'),
                                     (dict(reg_tokens=2), 'reg_token')])
def test_unsupported_timm_variants_are_refused(kw, what):
    sd = timm_vit(depth=1, **kw).state_dict()
    with pytest.raises(ValueError, match=what):
        convert_timm_vit(sd)


# ------------------------------------------- stock loading and exactness on a served model
@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('encmodel')
    plain_root = str(root / 'plain')
    make_synthetic_cityscapes(plain_root, num_train=1, num_val=3, height=64, width=128,
                              seed=7)
    key_file = str(root / 'client.key')
    key = SecretKey.generate()
    key.save(key_file)
    enc_root = str(root / 'enc')
    encrypt_dataset(plain_root, enc_root, key, workers=1, progress=False)
    return root, plain_root, enc_root, key_file, key


def _model(init_ckpt=None):
    cfg = Config.fromfile(SERVER_CFG)
    cfg.model.backbone.init_cfg = (dict(type='Pretrained', checkpoint=init_ckpt)
                                   if init_ckpt else None)
    model = MODELS.build(cfg.model)
    return cfg, model


def _datasets(cfg, plain_root, enc_root):
    test = copy.deepcopy(cfg.test_dataloader.dataset)
    plain = copy.deepcopy(test.dataset)
    plain.data_root = plain_root
    test.dataset.data_root = enc_root
    return DATASETS.build(plain), DATASETS.build(test)


def _predict(model, ds, i):
    model.eval()
    with torch.no_grad():
        return model.test_step(pseudo_collate([ds[i]]))[0]


def _plain_checkpoint(root, layout):
    """A plain checkpoint of the given layout and the plain model it defines."""
    torch.manual_seed(1)
    if layout == 'timm':
        path = str(root / 'timm_vit.pth')
        sd = timm_vit().state_dict()
        torch.save(sd, path)  # timm's own format: a bare state dict
        conv = str(root / 'timm_vit_mmseg.pth')
        torch.save({'state_dict': convert_timm_vit(sd)}, conv)
        _, plain = _model(conv)
        plain.init_weights()
    elif layout == 'mmseg-backbone':
        _, plain = _model()
        plain.init_weights()
        path = str(root / 'mmseg_vit.pth')
        torch.save({'state_dict': plain.backbone.state_dict()}, path)
    else:  # a whole segmentor fine-tuned on plain images ("conventional 1")
        _, plain = _model()
        plain.init_weights()
        path = str(root / 'segmentor.pth')
        torch.save({'state_dict': plain.state_dict(), 'optimizer': {'state': {}},
                    'meta': {'dataset_meta': dict(CityscapesDataset.METAINFO),
                             'hook_msgs': {'last_ckpt': '/home/creator/secret/x.pth'}}},
                   path)
    return path, plain


@pytest.mark.parametrize('layout', ['timm', 'mmseg-backbone', 'mmseg-segmentor'])
def test_encrypted_model_on_encrypted_images_equals_plain(setup, layout):
    root, plain_root, enc_root, key_file, key = setup
    src, plain = _plain_checkpoint(root, layout)
    dst = str(root / f'{layout}_encrypted.pth')
    info = encrypt_model_checkpoint(src, dst, key, IMAGENET_MEAN, IMAGENET_STD)
    assert info['source_layout'] == layout and info['key_fingerprint'] == key.fingerprint
    ck = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(ck) == {'state_dict', 'meta'}  # no optimizer state, no creator paths
    assert ck['meta']['ppenc']['key_fingerprint'] == key.fingerprint
    assert '/home/creator' not in repr(ck['meta'])
    if layout == 'mmseg-segmentor':
        assert ck['meta']['dataset_meta']['classes'][0] == 'road'
        cfg, enc_model = _model()
        load_checkpoint(enc_model, dst, map_location='cpu', strict=True)  # as load_from
    else:
        # The stock VisionTransformer loads it through its own init_cfg; heads as plain.
        cfg, enc_model = _model(dst)
        enc_model.load_state_dict(plain.state_dict())
        enc_model.backbone.init_weights()
        assert type(enc_model.backbone) is VisionTransformer
    w_plain = plain.backbone.patch_embed.projection.weight
    assert not torch.allclose(w_plain, enc_model.backbone.patch_embed.projection.weight)
    plain_ds, enc_ds = _datasets(cfg, plain_root, enc_root)
    for i in range(len(plain_ds)):
        a, b = _predict(plain, plain_ds, i), _predict(enc_model, enc_ds, i)
        assert not torch.equal(plain_ds[i]['inputs'], enc_ds[i]['inputs'])
        assert rel(a.seg_logits.data, b.seg_logits.data) <= 1e-5
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
        # Control: the plain model on encrypted images is far off.
        c = _predict(plain, enc_ds, i)
        assert rel(a.seg_logits.data, c.seg_logits.data) > 1e-2


def test_output_loads_without_plugin_code(setup):
    root, *_ , key = setup
    src, _ = _plain_checkpoint(root, 'timm')
    dst = str(root / 'noplugin.pth')
    encrypt_model_checkpoint(src, dst, key, IMAGENET_MEAN, IMAGENET_STD, force=True)
    code = ('import sys, torch; ck = torch.load(sys.argv[1], weights_only=True); '
            'sd = ck["state_dict"]; '
            'assert "patch_embed.projection.weight" in sd and "layers.3.ln2.weight" in sd; '
            'assert "mmseg_ppenc" not in sys.modules and "mmseg" not in sys.modules; '
            'print(ck["meta"]["ppenc"]["key_fingerprint"])')
    res = subprocess.run([sys.executable, '-I', '-c', code, dst], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == key.fingerprint


def test_meta_matches_key_management_hook_and_plugin_backbone(setup, monkeypatch):
    root, plain_root, enc_root, key_file, key = setup
    src, plain = _plain_checkpoint(root, 'mmseg-backbone')
    dst = str(root / 'meta.pth')
    encrypt_model_checkpoint(src, dst, key, IMAGENET_MEAN, IMAGENET_STD, force=True)
    meta = torch.load(dst, weights_only=True)['meta']['ppenc']
    monkeypatch.setenv('PPENC_KEY_FILE', key_file)
    hook = KeyManagementHook()

    class _Runner:  # the smallest object the hook's before_save_checkpoint reads
        model = plain

    ckpt = {}
    hook.before_save_checkpoint(_Runner(), ckpt)
    # The same record, plus the digest of the encrypted patch embedding that only the
    # tool (which wrote those weights) can vouch for.
    digest = meta.pop('patch_embed_sha256')
    assert digest == patch_embed_digest(
        torch.load(dst, weights_only=True)['state_dict']['patch_embed.projection.weight'])
    assert meta == ckpt['meta']['ppenc']
    # EncryptedVisionTransformer recognises the output as already encrypted.
    vit = EncryptedVisionTransformer(img_size=(64, 64), embed_dims=64, num_layers=4,
                                     num_heads=4, mlp_ratio=2, with_cls_token=False,
                                     norm_cfg=dict(type='LN', eps=1e-6), mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD,
                                     init_cfg=dict(type='Pretrained', checkpoint=dst))
    vit.init_weights()
    enc_sd = torch.load(dst, weights_only=True)['state_dict']
    assert torch.equal(vit.patch_embed.projection.weight,
                       enc_sd['patch_embed.projection.weight'])


def test_detect_layout():
    sd = timm_vit(depth=1).state_dict()
    assert detect_layout(sd) == ('timm', '')
    conv = convert_timm_vit(sd)
    assert detect_layout(conv) == ('mmseg', '')
    assert detect_layout({'backbone.' + k: v for k, v in conv.items()}) == \
        ('mmseg', 'backbone.')
    with pytest.raises(ModelEncryptionError, match='Unrecognised checkpoint layout'):
        detect_layout({'conv1.weight': torch.zeros(1)})


def run_main(argv, capsys=None):
    """Run the tool in-process: None on success, else its one ``error:`` line."""
    import io
    from contextlib import redirect_stderr
    err = io.StringIO()
    with redirect_stderr(err):
        rc = tool.main(argv)
    if rc == 0:
        return None
    lines = err.getvalue().strip().splitlines()
    assert rc in (1, 2) and len(lines) == 1 and lines[0].startswith('error: '), (rc, lines)
    return lines[0]


def test_tool(setup, capsys, monkeypatch):
    root, plain_root, enc_root, key_file, key = setup
    src, _ = _plain_checkpoint(root, 'mmseg-segmentor')
    out = str(root / 'tool_out.pth')
    assert run_main([src, out, '--key-file', key_file, '--backbone-only']) is None
    printed = capsys.readouterr().out
    assert 'backbone checkpoint' in printed and key.fingerprint in printed
    sd = torch.load(out, weights_only=True)['state_dict']
    assert 'patch_embed.projection.weight' in sd and not any(k.startswith('decode_head')
                                                             for k in sd)
    # User errors: clean messages, nothing overwritten.
    before = open(out, 'rb').read()
    msg = run_main([src, out, '--key-file', key_file])
    assert msg.startswith('error: ') and '--force' in msg
    assert open(out, 'rb').read() == before
    msg = run_main([out, str(root / 'twice.pth'), '--key-file', key_file])
    assert 'already encrypted' in msg and key.fingerprint in msg
    msg = run_main([src, src, '--key-file', key_file, '--force'])
    assert 'same file' in msg
    bad = str(root / 'not_vit.pth')
    torch.save({'state_dict': {'conv1.weight': torch.zeros(2, 3, 3, 3)}}, bad)
    msg = run_main([bad, str(root / 'x.pth'), '--key-file', key_file])
    assert 'input layer conv1.weight' in msg and 'the stem of ResNet' in msg
    torch.save({'state_dict': {'fc.weight': torch.zeros(2, 3)}}, bad)
    assert 'Unrecognised checkpoint layout' in run_main([bad, str(root / 'x.pth'),
                                                         '--key-file', key_file])
    assert 'does not exist' in run_main([str(root / 'missing.pth'), str(root / 'y.pth'),
                                         '--key-file', key_file])
    monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    assert 'tools/keygen.py' in run_main([src, str(root / 'z.pth')])
    # Other mean/std change the adaptation (and are recorded).
    assert run_main([src, str(root / 'std.pth'), '--key-file', key_file, '--mean', '0,0,0',
                     '--std', '1 1 1', '--backbone-only']) is None
    other = torch.load(str(root / 'std.pth'), weights_only=True)
    assert other['meta']['ppenc_model']['std'] == [1.0, 1.0, 1.0]
    assert not torch.equal(other['state_dict']['pos_embed'], sd['pos_embed'])


def test_plain_conversion_is_the_unencrypted_counterpart(tmp_path, monkeypatch, capsys):
    """convert_timm_vit.py gives the plain weights whose encryption encrypt_model.py writes."""
    from mmseg_ppenc.adaptation import encrypt_vit_state_dict
    from ppenc.keys import SecretKey
    src = str(tmp_path / 'timm.pth')
    torch.save(timm_vit(depth=2).state_dict(), src)
    key_file = str(tmp_path / 'k.key')
    key = SecretKey.generate()
    key.save(key_file)
    conv = load_tool('convert_timm_vit')
    plain, enc = str(tmp_path / 'plain.pth'), str(tmp_path / 'enc.pth')
    assert conv.main([src, plain]) == 0
    assert run_main([src, enc, '--key-file', key_file]) is None
    p = torch.load(plain, weights_only=True)
    e = torch.load(enc, weights_only=True)['state_dict']
    assert 'ppenc' not in p['meta']
    VisionTransformer(img_size=64, embed_dims=64, num_layers=2, num_heads=4, mlp_ratio=2,
                      patch_bias=False, final_norm=True).load_state_dict(p["state_dict"],
                                                                          strict=True)
    expected = encrypt_vit_state_dict(p['state_dict'], key)
    assert e.keys() == expected.keys()
    for k in e:
        torch.testing.assert_close(e[k], expected[k], rtol=0, atol=0)
    capsys.readouterr()
    assert conv.main([src, plain]) == 2
    assert 'already exists' in capsys.readouterr().err
    assert conv.main([enc, str(tmp_path / 'x.pth')]) == 2
    assert 'is encrypted' in capsys.readouterr().err


def _smooth_backbone(tmp_path):
    """An mmseg ViT backbone checkpoint whose patch embedding is smooth, as pre-trained
    ones are (principal components of blurred-noise patches)."""
    import cv2
    import numpy as np
    from mmseg_ppenc.security.weights import pca_patch_embedding
    rng = np.random.default_rng(0)
    imgs = [cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 3)
            for _ in range(8)]
    vit = VisionTransformer(img_size=(32, 32), embed_dims=64, num_layers=1, num_heads=2)
    sd = vit.state_dict()
    w = pca_patch_embedding(imgs, 64)
    sd['patch_embed.projection.weight'] = torch.tensor(w, dtype=torch.float32).reshape(
        64, 3, 16, 16)
    path = str(tmp_path / 'smooth.pth')
    torch.save({'state_dict': sd}, path)
    return path


def test_stripped_meta_is_detected_and_digest_recorded(tmp_path):
    from mmseg_ppenc.model_encryption import (check_patch_embed_digest,
                                              encrypt_model_checkpoint, patch_embed_digest)
    key = SecretKey.generate()
    src = _smooth_backbone(tmp_path)
    out = str(tmp_path / 'enc.pth')
    encrypt_model_checkpoint(src, out, key, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ckpt = torch.load(out, weights_only=True)
    w = ckpt['state_dict']['patch_embed.projection.weight']
    assert ckpt['meta']['ppenc']['patch_embed_sha256'] == patch_embed_digest(w)
    assert check_patch_embed_digest(ckpt['meta']['ppenc'], ckpt['state_dict'], out)
    tampered = dict(ckpt['state_dict'], **{'patch_embed.projection.weight': w * 1.001})
    with pytest.raises(ModelEncryptionError, match='does not belong to its weights'):
        check_patch_embed_digest(ckpt['meta']['ppenc'], tampered, out)
    # The record stripped: the weights themselves show they are encrypted with this key.
    stripped = str(tmp_path / 'stripped.pth')
    torch.save({'state_dict': ckpt['state_dict']}, stripped)
    with pytest.raises(ModelEncryptionError, match='already encrypted with key '
                       f'{key.fingerprint}.*record was stripped'):
        encrypt_model_checkpoint(stripped, str(tmp_path / 'twice.pth'), key, mean=IMAGENET_MEAN,
                                 std=IMAGENET_STD)
    # ...while the plain weights are not mistaken for encrypted ones, and another key's
    # encryption is not this key's.
    other = SecretKey.generate()
    encrypt_model_checkpoint(stripped, str(tmp_path / 'other.pth'), other, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD)
    assert not osp.exists(tmp_path / 'twice.pth')


@pytest.mark.parametrize('link', ['symlink', 'hard link', 'dotted path'])
def test_out_reaching_in_through_a_link_is_refused(tmp_path, link):
    from mmseg_ppenc.model_encryption import (convert_plain_checkpoint,
                                              encrypt_model_checkpoint)
    src = _smooth_backbone(tmp_path)
    before = open(src, 'rb').read()
    out = str(tmp_path / 'out.pth')
    if link == 'symlink':
        os.symlink(src, out)
    elif link == 'hard link':
        os.link(src, out)
    else:
        os.makedirs(tmp_path / 'sub')
        out = str(tmp_path / 'sub' / '..' / osp.basename(src))
    with pytest.raises(ModelEncryptionError, match='are the same file'):
        encrypt_model_checkpoint(src, out, SecretKey.generate(), force=True,
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ModelEncryptionError, match='are the same file'):
        convert_plain_checkpoint(src, out, force=True)
    assert open(src, 'rb').read() == before
    # Also IN given through the link and OUT the real file.
    if link != 'dotted path':
        with pytest.raises(ModelEncryptionError, match='are the same file'):
            encrypt_model_checkpoint(out, src, SecretKey.generate(), force=True,
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD)
        assert open(src, 'rb').read() == before


@pytest.mark.parametrize('content', ['empty', 'garbage', 'no tensors', 'bad safetensors'])
def test_unreadable_checkpoints_are_one_error_line(tmp_path, content):
    key_file = str(tmp_path / 'k.key')
    SecretKey.generate().save(key_file)
    path = str(tmp_path / ('in.safetensors' if content == 'bad safetensors' else 'in.pth'))
    if content == 'no tensors':
        torch.save({'state_dict': {}}, path)
    else:
        with open(path, 'wb') as f:
            f.write({'empty': b'', 'garbage': b'\x00garbage' * 9,
                     'bad safetensors': b'garbage' * 9}[content])
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'encrypt_model.py'),
                           path, str(tmp_path / 'out.pth'), '--key-file', key_file],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and path in lines[0]
    assert not osp.exists(tmp_path / 'out.pth')


def test_unwritable_out_is_one_error_line(tmp_path):
    key_file = str(tmp_path / 'k.key')
    SecretKey.generate().save(key_file)
    src = _smooth_backbone(tmp_path)
    (tmp_path / 'afile').write_text('in the way')
    out = str(tmp_path / 'afile' / 'enc.pth')  # its directory cannot exist
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'encrypt_model.py'),
                           src, out, '--key-file', key_file],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: Cannot write ')
    assert 'afile' in lines[0] and 'nothing was written' in lines[0]


def test_normalisation_comes_from_the_target_config(setup, tmp_path, capsys):
    """--config reads mean/std from the config's data preprocessor and records them; a
    --mean/--std that contradicts it is refused; the record then refuses a model with
    another normalisation."""
    from mmseg_ppenc.cli.encrypt_model import main
    from conftest import tiny_config
    root, plain_root, enc_root, key_file, key = setup
    src, _ = _plain_checkpoint(root, 'mmseg-backbone')
    cfg_file = tmp_path / 'segmenter_like.py'
    cfg_file.write_text(f'_base_ = {tiny_config("mla", "proposed")!r}\n'
                        'model = dict(data_preprocessor=dict(mean=[127.5, 127.5, 127.5], '
                        'std=[127.5, 127.5, 127.5]))\n')
    out = str(tmp_path / 'enc.pth')
    assert main([src, out, '--key-file', key_file, '--config', str(cfg_file)]) == 0
    rec = torch.load(out, weights_only=True)['meta']['ppenc']
    assert rec['mean'] == [127.5] * 3 and rec['std'] == [127.5] * 3
    assert 'mean=[127.5, 127.5, 127.5]' in capsys.readouterr().out
    assert main([src, str(tmp_path / 'x.pth'), '--key-file', key_file, '--config',
                 str(cfg_file), '--mean', '123.675,116.28,103.53', '--std',
                 '58.395,57.12,57.375']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'differs from the data preprocessor' in err
    assert not osp.exists(tmp_path / 'x.pth')
    # An ImageNet model refuses the 127.5-adapted checkpoint.
    vit = EncryptedVisionTransformer(img_size=(64, 64), embed_dims=64, num_layers=4,
                                     num_heads=4, mlp_ratio=2, with_cls_token=False,
                                     norm_cfg=dict(type='LN', eps=1e-6), key_file=key_file,
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                     init_cfg=dict(type='Pretrained', checkpoint=out))
    with pytest.raises(ValueError, match=r'adapted for normalisation mean=\[127.5'):
        vit.init_weights()


@pytest.mark.parametrize('record', ['copied with digest', 'without digest'])
def test_record_copied_onto_plain_weights_is_refused(tmp_path, record):
    """A plain (smooth, pre-trained-like) backbone carrying an encrypted checkpoint's
    record is not taken for an encrypted one: neither "already encrypted" nor encrypted
    again, but refused as a copied record, with the fix."""
    from ppenc.errors import CheckpointRecordError
    key = SecretKey.generate()
    src = _smooth_backbone(tmp_path)
    enc = str(tmp_path / 'enc.pth')
    encrypt_model_checkpoint(src, enc, key, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    rec = torch.load(enc, weights_only=True)['meta']['ppenc']
    if record == 'without digest':  # as training checkpoints record it
        del rec['patch_embed_sha256']
    forged = str(tmp_path / 'forged.pth')
    torch.save({'state_dict': torch.load(src, weights_only=True)['state_dict'],
                'meta': {'ppenc': rec}}, forged)
    found = ('the record expects a patch embedding with SHA-256' if record ==
             'copied with digest' else 'but the patch embedding is plain')
    with pytest.raises(CheckpointRecordError, match=f'The checkpoint {forged}: its '
                       r'meta\["ppenc"\] record does not belong to its weights: '
                       f'.*{found}.*tools/encrypt_model.py'):
        encrypt_model_checkpoint(forged, str(tmp_path / 'out.pth'), key,
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert not osp.exists(tmp_path / 'out.pth')
    # The genuine output is still recognised as already encrypted.
    with pytest.raises(ModelEncryptionError, match='is already encrypted'):
        encrypt_model_checkpoint(enc, str(tmp_path / 'out.pth'), key,
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
