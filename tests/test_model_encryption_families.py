"""tools/encrypt_model.py for every patch-projection family: BEiT, MAE, Swin and Twins
checkpoints (and ViT's, by the same mechanism) encrypted offline by the client.

- exactness: stock weights -> offline encryption -> the encrypted variant loads them as
  they are, and its features on encrypted images are the stock model's on plain images
  (1e-5 relative); a keyless server's stock backbone gives the same;
- the offline result is the state dict the in-model adaptation gives, bit for bit;
- the family is detected from the keys, or stated; contradictions, ambiguous keys,
  overlapping stems (MiT, ResNet) and a block size other than the patch size are
  refused, naming the problem and the fix;
- the output holds the key record (fingerprint, block size, digest), never the key.
"""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmseg.models.backbones import MixVisionTransformer, ResNetV1c, VisionTransformer
from mmseg.utils import register_all_modules

from mmseg_ppenc.adaptation import PATCH_FAMILIES, adapt_state_dict
from mmseg_ppenc.core.checkpoint import patch_embed_digest
from mmseg_ppenc.model_encryption import detect_checkpoint, encrypt_model_checkpoint
from mmseg_ppenc.models import EncryptedVisionTransformer
from ppenc.cipher import encrypt_image
from ppenc.errors import CheckpointLayoutError, ConfigError, ModelEncryptionError
from ppenc.keys import SecretKey
from ppenc.leak_scan import find_key_material
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

from conftest import load_tool
from family_models import (
    FAMILIES,
    NO_PRETRAINED,
    SWIN_KW,
    TWINS_KW,
    encrypted_model,
    normalise,
    plain_model,
    rel,
    save_state_dict,
)

register_all_modules(init_default_scope=True)
pytestmark = pytest.mark.filterwarnings('ignore:DeprecationWarning. pretrained is deprecated')

VIT_KW = dict(img_size=32, patch_size=16, embed_dims=32, num_layers=2, num_heads=2,
              mlp_ratio=2, out_indices=(0, 1))
# The families' tiny models, and mmseg's ViT (with and without a patch norm).
CASES = dict(FAMILIES, **{
    'vit': (VisionTransformer, EncryptedVisionTransformer, VIT_KW, [(32, 32)]),
    'vit_patch_norm': (VisionTransformer, EncryptedVisionTransformer,
                       dict(VIT_KW, patch_norm=True, patch_bias=True), [(32, 32)]),
})
FAMILY_OF = {'beit': 'beit', 'mae': 'mae', 'swin': 'swin', 'pcpvt': 'twins',
             'svt': 'twins', 'vit': 'vit'}
tool = load_tool('encrypt_model')


@pytest.fixture(scope='module')
def key(session_key_file):
    return SecretKey.load(session_key_file)


def _encrypt(src, dst, key, **kw):
    return encrypt_model_checkpoint(str(src), str(dst), key, list(IMAGENET_MEAN),
                                    list(IMAGENET_STD), **kw)


def _load(path):
    return torch.load(str(path), map_location='cpu', weights_only=True)


def _equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize('case', sorted(CASES))
def test_offline_encryption_is_exact_and_equals_the_in_model_adaptation(
        case, key, session_key_file, tmp_path):
    stock, enc_cls, kw, shapes = CASES[case]
    family = PATCH_FAMILIES[FAMILY_OF[case.split('_')[0]]]
    plain = plain_model(stock, kw)
    src = save_state_dict(plain, tmp_path / 'plain.pth')
    dst = tmp_path / 'encrypted.pth'
    info = _encrypt(src, dst, key)  # the family is detected
    assert info['family'] == family.name and info['block_size'] == family.patch_size
    assert info['source_layout'] == 'mmseg-backbone' and info['output'] == 'backbone'
    ckpt = _load(dst)
    assert set(ckpt) == {'state_dict', 'meta'}
    rec, offline = ckpt['meta']['ppenc'], ckpt['state_dict']
    assert rec['key_fingerprint'] == key.fingerprint
    assert rec['block_size'] == family.patch_size
    assert rec['mean'] == list(IMAGENET_MEAN) and rec['std'] == list(IMAGENET_STD)
    weight_key = f'{family.projection}.weight'
    assert rec['patch_embed_sha256'] == patch_embed_digest(offline[weight_key])
    assert ckpt['meta']['ppenc_model']['family'] == family.name

    # The in-model adaptation gives the same state dict, bit for bit.
    if case in NO_PRETRAINED:  # stock mmseg cannot load a checkpoint into these
        enc = enc_cls(**kw, key_file=session_key_file)
        _equal(adapt_state_dict(plain.state_dict(), key, enc.projection_site), offline)
        enc.load_state_dict(offline)
        enc.eval()
    else:
        _equal(encrypted_model(enc_cls, kw, src, session_key_file).state_dict(), offline)
        # The encrypted variant recognises the offline result as encrypted: as it is.
        enc = encrypted_model(enc_cls, kw, str(dst), session_key_file)
        _equal(enc.state_dict(), offline)
    assert enc.projection_site.weight == weight_key
    # Only the projection and the tensor taking the offset differ from the plain weights.
    changed = {k for k, v in plain.state_dict().items() if not torch.equal(v, offline[k])}
    assert changed == {enc.projection_site.weight, enc.projection_site.offset}

    rng = np.random.default_rng(0)
    for shape in shapes:
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        scrambled = encrypt_image(img, key, family.patch_size)
        with torch.no_grad():
            want = plain(normalise(img))
            got = enc(normalise(scrambled))
            unadapted = plain(normalise(scrambled))
        assert len(want) == len(got) == len(kw['out_indices'])
        for a, b, c in zip(want, got, unadapted):
            assert rel(a, b) <= 1e-5, (case, shape)
            assert rel(a, c) > 1e-2  # control: the adaptation is what makes it exact


@pytest.mark.parametrize('case', ['swin', 'pcpvt', 'mae'])
def test_keyless_stock_backbone_loads_the_offline_result(case, key, tmp_path):
    """The server gets only the encrypted weights and builds the stock class."""
    stock, _, kw, shapes = CASES[case]
    plain = plain_model(stock, kw)
    dst = tmp_path / 'encrypted.pth'
    info = _encrypt(save_state_dict(plain, tmp_path / 'plain.pth'), dst, key)
    server = stock(**kw, init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    server.init_weights()
    server.eval()
    img = np.random.default_rng(1).integers(0, 256, (*shapes[0], 3), dtype=np.uint8)
    with torch.no_grad():
        want = plain(normalise(img))
        got = server(normalise(encrypt_image(img, key, info['block_size'])))
    for a, b in zip(want, got):
        assert rel(a, b) <= 1e-5


def test_segmentor_checkpoint_and_backbone_only(key, tmp_path):
    """A whole (Swin) segmentor: the backbone under its prefix is found and adapted; the
    heads are kept; --backbone-only writes the backbone alone."""
    plain = plain_model(CASES['swin'][0], SWIN_KW).state_dict()
    seg = {f'backbone.{k}': v for k, v in plain.items()}
    seg['decode_head.conv_seg.weight'] = torch.randn(3, 8, 1, 1)
    src = str(tmp_path / 'segmentor.pth')
    torch.save({'state_dict': seg}, src)
    info = _encrypt(src, tmp_path / 'seg_enc.pth', key)
    assert (info['source_layout'], info['family'], info['output']) == (
        'mmseg-segmentor', 'swin', 'segmentor')
    whole = _load(tmp_path / 'seg_enc.pth')['state_dict']
    assert torch.equal(whole['decode_head.conv_seg.weight'], seg['decode_head.conv_seg.weight'])
    _encrypt(src, tmp_path / 'backbone.pth', key, backbone_only=True)
    direct = str(tmp_path / 'plain.pth')
    torch.save({'state_dict': plain}, direct)
    _encrypt(direct, tmp_path / 'direct.pth', key)
    alone = _load(tmp_path / 'backbone.pth')['state_dict']
    _equal(alone, _load(tmp_path / 'direct.pth')['state_dict'])
    _equal({f'backbone.{k}': v for k, v in alone.items()},
           {k: v for k, v in whole.items() if k.startswith('backbone.')})


def test_key_never_in_the_output(key, tmp_path):
    for case in ('swin', 'beit', 'svt'):
        stock, _, kw, _ = CASES[case]
        dst = tmp_path / f'{case}.pth'
        _encrypt(save_state_dict(plain_model(stock, kw), tmp_path / f'{case}_plain.pth'),
                 dst, key)
        assert find_key_material([str(dst)], key, block_sizes=(4, 16)) == []
        assert key._key not in dst.read_bytes()
        assert key.fingerprint in repr(_load(dst)['meta'])  # the record names it


def test_already_encrypted_family_checkpoint_is_refused(key, tmp_path):
    stock, _, kw, _ = CASES['pcpvt']
    dst = tmp_path / 'enc.pth'
    _encrypt(save_state_dict(plain_model(stock, kw), tmp_path / 'plain.pth'), dst, key)
    with pytest.raises(ModelEncryptionError, match='is already encrypted'):
        _encrypt(dst, tmp_path / 'twice.pth', key)
    assert not osp.exists(tmp_path / 'twice.pth')


# --------------------------------------------------------------------------- detection
def test_family_detection_and_contradictions():
    def sd(case):
        stock, _, kw, _ = CASES[case]
        return stock(**kw).state_dict()

    for case, family in (('vit', 'vit'), ('beit', 'beit'), ('mae', 'mae'),
                         ('swin', 'swin'), ('pcpvt', 'twins'), ('svt', 'twins')):
        layout, prefix, fam = detect_checkpoint(sd(case))
        assert (layout, prefix, fam.name) == ('mmseg', '', family), case
        assert detect_checkpoint(sd(case), family)[2].name == family
    # Stated, and contradicted by the keys.
    with pytest.raises(CheckpointLayoutError, match=r'--family vit, but this checkpoint is a '
                       r'Swin backbone \(it has stages\.0\.blocks\.0\.attn\.w_msa\.qkv\.weight\)'
                       r'\. Pass --family swin'):
        detect_checkpoint(sd('swin'), 'vit')
    with pytest.raises(CheckpointLayoutError, match=r"--family swin: the input projection of a "
                       r"Swin backbone is patch_embed\.projection\.weight .*but this "
                       r"checkpoint's is patch_embeds\.0\.projection\.weight.*--family twins"):
        detect_checkpoint(sd('pcpvt'), 'swin')
    # Keys that fit several families: refused until the family is stated.
    bare = {k: v for k, v in sd('swin').items() if k.startswith('patch_embed.')}
    with pytest.raises(CheckpointLayoutError, match=r'Cannot tell the backbone family.*'
                       r'patch_embed\.projection\.weight is that of ViT/DeiT and BEiT and MAE '
                       r'and Swin.*Pass the family: --family vit or --family beit'):
        detect_checkpoint(bare)
    assert detect_checkpoint(bare, 'swin')[2].name == 'swin'
    # Two backbones in one state dict.
    two = {**{f'a.{k}': v for k, v in bare.items()}, **{f'b.{k}': v for k, v in bare.items()}}
    with pytest.raises(CheckpointLayoutError, match='holds 2 input patch projections'):
        detect_checkpoint(two)
    with pytest.raises(ConfigError, match='Unknown backbone family'):
        detect_checkpoint(bare, 'segformer')


# --------------------------------------------------------------------------- refusals
def _run(argv, capsys):
    """The tool in-process: (exit status, its ``error:`` lines)."""
    capsys.readouterr()
    rc = tool.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return rc, [line for line in lines if line.startswith('error: ')]


@pytest.mark.parametrize('stem', ['mit', 'resnet'])
def test_overlapping_stems_are_refused(stem, session_key_file, tmp_path, capsys):
    if stem == 'mit':
        model = MixVisionTransformer(embed_dims=8, num_stages=1, num_layers=[1],
                                     num_heads=[1], patch_sizes=[7], strides=[4],
                                     sr_ratios=[1], out_indices=(0,))
        found = (r"its input layer layers\.0\.0\.projection\.weight \(a 7x7 convolution, "
                 r"weight shape \(8, 3, 7, 7\)\) is the stem of MixVisionTransformer, "
                 r"SegFormer's MiT, whose patch embeddings overlap")
    else:
        model = ResNetV1c(depth=18)
        found = (r'its input layer stem\.0\.weight \(a 3x3 convolution, weight shape '
                 r'\(32, 3, 3, 3\)\) is the stem of ResNet, a convolutional network whose '
                 r'stem convolutions overlap')
    src = save_state_dict(model, tmp_path / f'{stem}.pth')
    out = tmp_path / 'out.pth'
    match = (f'Unsupported checkpoint: {found}.*non-overlapping patch projection.*'
             r'ViT/DeiT \(patch 16\), BEiT \(patch 16\), MAE \(patch 16\), Swin \(patch 4\), '
             r'Twins PCPVT/SVT \(patch 4\).*Encrypt a checkpoint of a supported family '
             r'\(vit, beit, mae, swin, twins\)')
    with pytest.raises(CheckpointLayoutError, match=match):
        _encrypt(src, out, SecretKey.load(session_key_file))
    rc, errors = _run([src, out, '--key-file', session_key_file], capsys)
    assert rc == 2 and len(errors) == 1 and 'Unsupported checkpoint' in errors[0]
    assert src in errors[0]  # names the file
    # Stating a family does not help: there is no patch projection to adapt.
    rc, errors = _run([src, out, '--key-file', session_key_file, '--family', 'swin'], capsys)
    assert rc == 2 and 'Unsupported checkpoint' in errors[0]
    assert not osp.exists(out)


def test_block_size_must_be_the_patch_size(key, session_key_file, tmp_path, capsys):
    swin = save_state_dict(plain_model(CASES['swin'][0], SWIN_KW), tmp_path / 'swin.pth')
    out = tmp_path / 'out.pth'
    with pytest.raises(ModelEncryptionError, match=r'Block size mismatch: expected block size '
                       r'16 \(as given\), actual patch size 4 \(the input projection '
                       r'patch_embed\.projection\.weight of this Swin checkpoint has shape '
                       r'\(32, 3, 4, 4\)\).*pass --block-size 4'):
        _encrypt(swin, out, key, block_size=16)
    rc, errors = _run([swin, out, '--key-file', session_key_file, '--block-size', '16'],
                      capsys)
    assert rc == 2 and len(errors) == 1
    assert 'expected block size 16' in errors[0] and 'actual patch size 4' in errors[0]
    assert not osp.exists(out)
    rc, _ = _run([swin, out, '--key-file', session_key_file, '--block-size', '4'], capsys)
    assert rc == 0 and _load(out)['meta']['ppenc']['block_size'] == 4

    # Without --block-size, the family's stock patch size is expected: a ViT with 8-pixel
    # patches needs the block size stated.
    vit8 = save_state_dict(VisionTransformer(**dict(VIT_KW, patch_size=8)),
                           tmp_path / 'vit8.pth')
    with pytest.raises(ModelEncryptionError, match=r'expected block size 16 \(the stock '
                       r'ViT/DeiT patch size, used when no block size is given\), actual '
                       r'patch size 8.*pass --block-size 8'):
        _encrypt(vit8, tmp_path / 'vit8_enc.pth', key)
    assert _encrypt(vit8, tmp_path / 'vit8_enc.pth', key, block_size=8)['block_size'] == 8
    # A Twins stem of another patch size (e.g. an overlapping 7x7 one: the weights do not
    # record the stride) is not taken for a 4-pixel projection.
    twins7 = save_state_dict(CASES['pcpvt'][0](**dict(TWINS_KW, patch_sizes=[7, 2])),
                             tmp_path / 'twins7.pth')
    with pytest.raises(ModelEncryptionError, match='expected block size 4.*actual patch size 7'):
        _encrypt(twins7, tmp_path / 'twins7_enc.pth', key)


def test_tool_detects_and_reports_the_family(session_key_file, tmp_path, capsys):
    stock, _, kw, _ = CASES['svt']
    src = save_state_dict(plain_model(stock, kw), tmp_path / 'svt.pth')
    out = tmp_path / 'svt_enc.pth'
    rc, _ = _run([src, out, '--key-file', session_key_file], capsys)
    assert rc == 0
    # Stated as pcpvt (an alias of twins): the same output.
    again = tmp_path / 'again.pth'
    rc, _ = _run([src, again, '--key-file', session_key_file, '--family', 'pcpvt'], capsys)
    assert rc == 0
    _equal(_load(out)['state_dict'], _load(again)['state_dict'])
    rc, errors = _run([src, tmp_path / 'x.pth', '--key-file', session_key_file,
                       '--family', 'segformer'], capsys)
    assert rc == 2 and 'Unknown backbone family' in errors[0]
    assert sorted(os.listdir(tmp_path)) == ['again.pth', 'svt.pth', 'svt_enc.pth']
