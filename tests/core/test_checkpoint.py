"""mmseg_ppenc.core.meta: the one checkpoint reader and the one check of a loaded checkpoint."""
import pickle

import pytest
import torch

from mmseg_ppenc.core import checkpoint
from ppenc import errors
from ppenc import meta as record
from ppenc.keys import SecretKey

FP = '0123456789abcdef'


def _vit_weights(seed=0, prefix=''):
    gen = torch.Generator().manual_seed(seed)
    return {prefix + 'patch_embed.projection.weight': torch.randn(32, 3, 16, 16,
                                                                  generator=gen),
            prefix + 'pos_embed': torch.randn(1, 5, 32, generator=gen)}


def _smooth_weight(dims=32, block=16):
    """A patch embedding whose neighbouring pixel columns are similar, as pre-trained
    ones are: low-frequency cosines."""
    y, x = torch.meshgrid(torch.arange(block), torch.arange(block), indexing='ij')
    rows = []
    for d in range(dims):
        fy, fx, c = d % 3, (d // 3) % 4, d % 3
        w = torch.zeros(3, block, block)
        w[c] = torch.cos(torch.pi * (fy * y + fx * x + d) / (4 * block))
        rows.append(w)
    return torch.stack(rows)


def _genuine(prefix=''):
    sd = _vit_weights(prefix=prefix)
    rec = record.build_meta(FP, 16, False, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0),
                          patch_embed_sha256=checkpoint.patch_embed_digest(
                              sd[prefix + 'patch_embed.projection.weight']))
    return {'state_dict': sd, 'meta': {'ppenc': rec}}


# ----------------------------------------------------------------------------- reader
@pytest.mark.parametrize('case,expected', [
    ('missing', r'The checkpoint \S+in\.pth does not exist\. Check the path'),
    ('directory', r'is a directory, not a file'),
    ('empty', r'Cannot read the checkpoint \S+in\.pth \(.*\)\. Expected a PyTorch checkpoint'),
    ('garbage', r'Cannot read the checkpoint \S+in\.pth .*copy or download it again'),
    ('truncated', r'Cannot read the checkpoint \S+in\.pth \(RuntimeError: PytorchStreamRead'),
    ('unsafe', r'Checkpoint \S+in\.pth was refused by torch\.load\(weights_only=True\) '
               r'\(UnpicklingError\).*re-save only its weights'),
])
@pytest.mark.parametrize('mmap', [False, True])
def test_reader_names_the_file_and_the_fix(tmp_path, case, expected, mmap):
    path = tmp_path / 'in.pth'
    if case == 'directory':
        path.mkdir()
    elif case == 'empty':
        path.write_bytes(b'')
    elif case == 'garbage':
        path.write_bytes(b'\x00garbage' * 9)
    elif case == 'truncated':
        torch.save(_genuine(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == 'unsafe':
        torch.save({'state_dict': {}, 'callback': pickle.Pickler}, path)
    with pytest.raises(errors.CheckpointReadError, match=expected) as info:
        checkpoint.read_checkpoint(path, mmap=mmap)
    # One error family: a config error for runs and a model-encryption error for the
    # client tools, so every CLI prints it as one `error:` line.
    assert isinstance(info.value, errors.ConfigError)
    assert isinstance(info.value, errors.ModelEncryptionError)
    assert '\n' not in str(info.value)


def test_reader_reads_zip_legacy_and_safetensors(tmp_path):
    ck = _genuine()
    torch.save(ck, tmp_path / 'zip.pth')
    torch.save(ck, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    for name in ('zip.pth', 'legacy.pth'):
        for mmap in (False, True):  # legacy files cannot be memory-mapped: plain read
            got = checkpoint.read_checkpoint(tmp_path / name, mmap=mmap)
            assert got['meta'] == ck['meta']
            assert torch.equal(got['state_dict']['pos_embed'], ck['state_dict']['pos_embed'])
    from safetensors.torch import save_file
    save_file(ck['state_dict'], str(tmp_path / 'w.safetensors'))
    got = checkpoint.read_checkpoint(tmp_path / 'w.safetensors')
    assert torch.equal(got['pos_embed'], ck['state_dict']['pos_embed'])
    (tmp_path / 'bad.safetensors').write_bytes(b'garbage' * 9)
    with pytest.raises(errors.CheckpointReadError, match=r'bad\.safetensors as a '
                                                         r'safetensors file'):
        checkpoint.read_checkpoint(tmp_path / 'bad.safetensors')


def test_state_dict_of():
    sd = _vit_weights()
    assert checkpoint.state_dict_of({'state_dict': sd, 'meta': {}}) is sd
    assert checkpoint.state_dict_of({'model': sd}) is sd
    assert checkpoint.state_dict_of(sd) is sd
    assert checkpoint.state_dict_of(None) == {}


# ------------------------------------------------------------------------------ check
@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_genuine_checkpoint_passes_every_check(prefix):
    ck = _genuine(prefix)
    rec = checkpoint.check_checkpoint(ck, 'the checkpoint X', fingerprint=FP, block_size=16,
                                mean=(1, 2, 3), std=(4, 5, 6))
    assert rec == ck['meta']['ppenc']
    assert checkpoint.check_checkpoint(ck) == rec  # expectations are optional


@pytest.mark.parametrize('forgery', ['other weights', 'tampered', 'other dtype',
                                     'no patch embedding', 'timm layout'])
def test_record_on_other_weights_is_refused(forgery):
    ck = _genuine()
    w = ck['state_dict']['patch_embed.projection.weight']
    sd = {'other weights': _vit_weights(seed=1),
          'tampered': {'patch_embed.projection.weight': w * 1.001},
          'other dtype': {'patch_embed.projection.weight': w.half()},
          'no patch embedding': {'pos_embed': torch.zeros(1)},
          'timm layout': {'patch_embed.proj.weight': _vit_weights(seed=2)[
              'patch_embed.projection.weight']}}[forgery]
    forged = {'state_dict': sd, 'meta': ck['meta']}
    want = ck['meta']['ppenc']['patch_embed_sha256'][:16]
    found = 'no patch embedding' if forgery == 'no patch embedding' else \
        checkpoint.patch_embed_digest(next(iter(sd.values())))[:16]
    with pytest.raises(errors.CheckpointRecordError) as info:
        # Refused before the key is looked at: what a copied record says is not trusted.
        checkpoint.check_checkpoint(forged, 'the checkpoint X', fingerprint='ffff')
    msg = str(info.value)
    assert msg.startswith('The checkpoint X: its meta["ppenc"] record does not belong to '
                          'its weights: ')
    assert f'SHA-256 {want}, found {found}' in msg
    assert 'tools/encrypt_model.py' in msg and 'plain' in msg
    assert isinstance(info.value, errors.InvalidKeyError)


def test_key_cipher_block_and_normalisation_are_checked():
    ck = _genuine()
    with pytest.raises(errors.InvalidKeyError, match=f'made for key {FP}, but this run uses '
                                                     'key ffff. Do that.'):
        checkpoint.check_checkpoint(ck, fingerprint='ffff', mismatch_fix='Do that.')
    with pytest.raises(errors.InvalidKeyError, match='block size 16, but this model uses '
                                                     '8-pixel blocks'):
        checkpoint.check_checkpoint(ck, block_size=8)  # also without a key (inference server)
    ck['meta']['ppenc']['cipher'] = 'block-shuffle-v0'
    with pytest.raises(errors.KeylessPipelineError, match="cipher 'block-shuffle-v0', but "
                                                          "this version of mmseg_ppenc "
                                                          "uses 'block-shuffle-v1'"):
        checkpoint.check_checkpoint(ck, fingerprint=FP, error=errors.KeylessPipelineError)
    ck = _genuine()
    with pytest.raises(errors.InvalidKeyError, match=r'normalisation mean=\[1\.0, 2\.0, '
                                                     r'3\.0\].*mean=\[9\.0, 9\.0, 9\.0\]'):
        checkpoint.check_checkpoint(ck, fingerprint=FP, mean=(9.0,) * 3, std=(4, 5, 6))
    plain = {'state_dict': _vit_weights()}
    with pytest.raises(errors.InvalidKeyError, match='records no key.*Encrypt it.'):
        checkpoint.check_checkpoint(plain, fingerprint=FP, missing_fix='Encrypt it.')
    assert checkpoint.check_checkpoint(plain, fingerprint=FP, allow_missing=True) is None


def test_digestless_record_on_plain_weights_is_refused_where_it_decides_adaptation():
    key = SecretKey(bytes(range(32)))
    plain_w = _smooth_weight()
    as_is, undone = checkpoint.permutation_smoothness(plain_w, key)
    assert as_is > 0.9 and undone < as_is - 0.5
    from mmseg_ppenc.adaptation import encrypt_vit_state_dict
    enc = encrypt_vit_state_dict({'patch_embed.projection.weight': plain_w,
                                  'pos_embed': torch.zeros(1, 5, 32)}, key)
    as_is, undone = checkpoint.permutation_smoothness(enc['patch_embed.projection.weight'], key)
    assert undone > 0.9 and as_is < undone - 0.5
    rec = {'ppenc': {'key_fingerprint': key.fingerprint}}  # training checkpoints: no digest
    forged = {'state_dict': {'patch_embed.projection.weight': plain_w}, 'meta': rec}
    with pytest.raises(errors.CheckpointRecordError, match='does not belong to its weights: '
                       f'the record says the weights are encrypted with key '
                       f'{key.fingerprint}, but the patch embedding is plain'):
        checkpoint.check_checkpoint(forged, fingerprint=key.fingerprint, adapted_key=key)
    # Where the record does not decide the adaptation (load_from, resume) it is accepted:
    # a plain model fine-tuned in a run of this key records the key too.
    assert checkpoint.check_checkpoint(forged, fingerprint=key.fingerprint) == rec['ppenc']
    genuine = {'state_dict': enc, 'meta': rec}
    assert checkpoint.check_checkpoint(genuine, fingerprint=key.fingerprint, adapted_key=key)
    # A random embedding cannot be told apart, and is accepted.
    rnd = {'state_dict': _vit_weights(), 'meta': rec}
    assert checkpoint.check_checkpoint(rnd, fingerprint=key.fingerprint, adapted_key=key)


def test_messages_never_hold_the_key(tmp_path):
    key = SecretKey.generate()
    ck = _genuine()
    ck['meta']['ppenc']['key_fingerprint'] = key.fingerprint
    msgs = []
    for kwargs in (dict(fingerprint='ffff'), dict(block_size=8),
                   dict(mean=(0, 0, 0), std=(1, 1, 1))):
        with pytest.raises(errors.PpencError) as info:
            checkpoint.check_checkpoint(ck, **kwargs, adapted_key=key)
        msgs.append(str(info.value))
    ck['state_dict'] = {'patch_embed.projection.weight': _smooth_weight()}
    with pytest.raises(errors.CheckpointRecordError) as info:
        checkpoint.check_checkpoint(ck, adapted_key=key)
    msgs.append(str(info.value))
    text = ' '.join(msgs)
    for form in key.material_forms():
        assert form.decode('latin-1') not in text
    assert key._key.hex() not in text
