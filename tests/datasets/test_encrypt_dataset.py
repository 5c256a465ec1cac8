"""tools/encrypt_dataset.py: exact, non-destructive, atomic and resumable, and DST (the
upload tree) holds only what the server needs: never a key or key material."""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ppenc.cipher import decrypt_image, encrypt_image
from ppenc.errors import KeylessPipelineError
from ppenc.dataset import images as ds_images
from ppenc.dataset import plan as ds_plan
from ppenc.dataset import (MANIFEST_NAME, TIME_FIELDS, DatasetEncryptionError, SkippedFile,
                           encrypt_dataset, plan_dataset, read_manifest)
from ppenc.synthetic import make_synthetic_cityscapes
from mmseg_ppenc.datasets.keyless import load_manifest
from ppenc.leak_scan import data_contains_key, find_key_material
from ppenc.keys import SecretKey

from conftest import REPO, load_tool

TOOL = osp.join(REPO, 'tools', 'encrypt_dataset.py')
tool = load_tool('encrypt_dataset')


def snapshot(root):
    """relative path -> (sha256, size, mtime_ns) of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            st = os.stat(p)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = (hashlib.sha256(fh.read()).hexdigest(),
                                             st.st_size, st.st_mtime_ns)
    return out


def contents(root):
    return {k: v[0] for k, v in snapshot(root).items()}


def tree(root):
    """Every file's bytes, and the manifest without its recorded times: what two runs
    that produce the same tree agree on."""
    out = {k: v for k, v in contents(root).items() if k != MANIFEST_NAME}
    manifest = read_manifest(root)
    for rec in manifest['files'].values():
        for f in TIME_FIELDS:
            rec.pop(f)
    out[MANIFEST_NAME] = manifest
    return out


def run_main(argv, capsys):
    """Run the tool's main() in-process; return (the error line or None, stdout)."""
    rc = tool.main(argv)
    captured = capsys.readouterr()
    if rc == 0:
        return None, captured.out
    assert captured.err.startswith('error: ') and rc in (1, 2), (rc, captured.err)
    return captured.err.strip(), captured.out


@pytest.fixture(scope='module')
def src_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('encds') / 'cityscapes')
    make_synthetic_cityscapes(root, num_train=9, num_val=3, height=64, width=128, seed=5)
    # Files that are neither images nor label maps: copied only when --include names them.
    with open(osp.join(root, 'README.txt'), 'w') as f:
        f.write('synthetic\n')
    with open(osp.join(root, 'gtFine', 'train', 'aachen',
                       'aachen_000000_000019_gtFine_polygons.json'), 'w') as f:
        json.dump({'objects': []}, f)
    return root


@pytest.fixture(scope='module')
def key_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('encds_key') / 'client.key')
    SecretKey.generate().save(path)
    return path


@pytest.fixture(scope='module')
def reference(src_tree, key_file, tmp_path_factory):
    """An uninterrupted run with several worker processes.

    OpenCV's thread pool is started first, as in any program that used OpenCV before
    calling the library: forked workers must not hang on it.
    """
    cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (512, 512))
    before = snapshot(src_tree)
    dst = str(tmp_path_factory.mktemp('encds_ref') / 'enc')
    summary = encrypt_dataset(src_tree, dst, SecretKey.load(key_file), workers=2,
                              progress=False)
    assert snapshot(src_tree) == before  # SRC untouched (contents and mtimes)
    return dst, summary


@pytest.mark.timeout(300)
def test_outputs_decrypt_to_source(src_tree, key_file, reference):
    dst, summary = reference
    key = SecretKey.load(key_file)
    assert summary.images_encrypted == 12 and summary.images_skipped == 0
    assert summary.files_copied == 12  # label maps; README and json are not named
    assert summary.key_fingerprint == key.fingerprint and summary.images_per_second > 0
    others = ['README.txt', osp.join('gtFine', 'train', 'aachen',
                                     'aachen_000000_000019_gtFine_polygons.json')]
    assert summary.skipped == [SkippedFile(p, ds_plan.SKIP_NOT_INCLUDED) for p in others]
    assert summary.extra_files == [] and summary.warnings == []
    src_files, dst_files = contents(src_tree), contents(dst)
    assert set(dst_files) == set(src_files) - set(others) | {MANIFEST_NAME}
    n_images = 0
    for rel in dst_files:
        if rel == MANIFEST_NAME:
            continue
        if rel.startswith('leftImg8bit'):
            src_rgb = cv2.imread(osp.join(src_tree, rel))[..., ::-1]
            enc_rgb = cv2.imread(osp.join(dst, rel))[..., ::-1]
            assert not np.array_equal(enc_rgb, src_rgb)
            assert np.array_equal(decrypt_image(np.ascontiguousarray(enc_rgb), key), src_rgb)
            assert np.array_equal(encrypt_image(np.ascontiguousarray(src_rgb), key), enc_rgb)
            n_images += 1
        else:
            assert dst_files[rel] == src_files[rel], rel  # label maps: byte copies
    assert n_images == 12
    manifest = read_manifest(dst)
    assert manifest['complete'] is True and manifest['key_fingerprint'] == key.fingerprint
    assert manifest['block_size'] == 16 and manifest['layout'] == 'cityscapes'
    assert manifest['counts'] == {'images': 12, 'label_maps': 12, 'other_files': 0,
                                  'padded_images': 0, 'padded_label_maps': 0}
    assert find_key_material([dst], key) == []


_KILL = (
    'import os, signal, sys\n'
    'from ppenc.dataset import encrypt_dataset\n'
    'from ppenc.keys import SecretKey\n'
    'def crash(rel, n):\n'
    '    if n >= int(sys.argv[4]):  # SIGKILL this process group: workers die too\n'
    '        os.killpg(os.getpgrp(), signal.SIGKILL)\n'
    'encrypt_dataset(sys.argv[1], sys.argv[2], SecretKey.load(sys.argv[3]), '
    'workers=int(sys.argv[5]), progress=False, on_file_done=crash)\n')


def killed_run(src, dst, key_file, after, workers):
    """Run encrypt_dataset in its own process group and SIGKILL it after ``after``
    outputs, as a crash (or kill -9) would."""
    return subprocess.run([sys.executable, '-c', _KILL, src, dst, key_file, str(after),
                           str(workers)], capture_output=True, text=True, timeout=300,
                          start_new_session=True,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_killed_run_resumes_to_identical_tree(src_tree, key_file, reference, tmp_path,
                                              capsys):
    ref_dst, _ = reference
    dst = str(tmp_path / 'enc')
    # A real SIGKILL of the process and its workers after 7 files (deterministic point).
    res = killed_run(src_tree, dst, key_file, after=7, workers=2)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    partial = contents(dst)
    finished = [p for p in partial if p not in (MANIFEST_NAME, '.ppenc_encrypt.lock',
                                                '.ppenc_journal.jsonl')
                and '.tmp-' not in p]
    assert 7 <= len(finished) < 24
    assert read_manifest(dst)['complete'] is False
    # Leftovers of a write in progress must not survive the rerun.
    stale = osp.join(dst, 'leftImg8bit', 'val', 'frankfurt',
                     'frankfurt_000000_000019_leftImg8bit.png.tmp-99999')
    os.makedirs(osp.dirname(stale), exist_ok=True)
    with open(stale, 'wb') as f:
        f.write(b'\x89PNG partial')
    code, out = run_main([src_tree, dst, '--key-file', key_file, '--no-progress'], capsys)
    assert code is None
    images_done = sum(p.startswith('leftImg8bit') for p in finished)
    # Finished outputs the journal vouches for are kept; a worker's output renamed into
    # place just before the kill, but not yet recorded, is written again.
    m = re.search(r'Encrypted (\d+) images \((\d+) already done\)', out)
    assert int(m.group(1)) + int(m.group(2)) == 12 and int(m.group(2)) <= images_done
    assert 'Removed' in out and 'partial file' in out
    assert tree(dst) == tree(ref_dst)  # byte-identical to the uninterrupted run
    # A second run does no work and touches nothing.
    before = snapshot(dst)
    code, out = run_main([src_tree, dst, '--key-file', key_file, '--no-progress'], capsys)
    assert code is None
    assert 'Encrypted 0 images (12 already done), copied 0 files (12 already done)' in out
    assert snapshot(dst) == before


def test_rerun_with_another_key_is_refused(src_tree, reference, tmp_path, capsys):
    other = str(tmp_path / 'other.key')
    SecretKey.generate().save(other)
    code, _ = run_main([src_tree, reference[0], '--key-file', other], capsys)
    assert code.startswith('error: ') and 'key_fingerprint=' in code and 'new DST' in code


@pytest.mark.parametrize('case', ['same', 'inside', 'lossy', 'no_key', 'not_cityscapes',
                                  'already_encrypted', 'foreign_dst'])
def test_user_errors(case, src_tree, key_file, reference, tmp_path, capsys, monkeypatch):
    args = [src_tree, str(tmp_path / 'out'), '--key-file', key_file]
    expect = {'same': 'same directory', 'inside': 'lies inside SRC',
              'lossy': 'lossy', 'no_key': 'tools/keygen.py',
              'not_cityscapes': 'no leftImg8bit/', 'already_encrypted': 'already an encrypted',
              'foreign_dst': 'not an encrypted tree'}[case]
    if case == 'same':
        args[1] = src_tree
    elif case == 'inside':
        args[1] = osp.join(src_tree, 'encrypted')
    elif case == 'lossy':
        args += ['--format', 'jpg']
    elif case == 'no_key':
        args = args[:2]
        monkeypatch.delenv('PPENC_KEY_FILE', raising=False)
    elif case == 'not_cityscapes':
        args[0] = osp.join(src_tree, 'gtFine')
    elif case == 'already_encrypted':
        args[0] = reference[0]
    elif case == 'foreign_dst':
        os.makedirs(args[1])
        open(osp.join(args[1], 'something.txt'), 'w').close()
    before = snapshot(src_tree)
    code, _ = run_main(args, capsys)
    assert isinstance(code, str) and code.startswith('error: ') and expect in code, code
    assert snapshot(src_tree) == before
    assert not osp.exists(osp.join(src_tree, 'encrypted'))


@pytest.fixture
def off_grid_tree(tmp_path):
    root = tmp_path / 'offgrid'
    rng = np.random.default_rng(0)
    for name, (h, w) in {'a': (60, 100), 'b': (64, 128), 'c': (50, 64)}.items():
        d = root / 'leftImg8bit' / 'train' / 'x'
        g = root / 'gtFine' / 'train' / 'x'
        d.mkdir(parents=True, exist_ok=True)
        g.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f'{name}_leftImg8bit.png'),
                    rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        Image.fromarray(rng.integers(0, 19, (h, w), dtype=np.uint8)).save(
            g / f'{name}_gtFine_labelTrainIds.png')
    return str(root)


def test_off_grid_refused_with_list(off_grid_tree, key_file, tmp_path, capsys):
    code, _ = run_main([off_grid_tree, str(tmp_path / 'o'), '--key-file', key_file], capsys)
    assert code.startswith('error: 2 image(s)')
    assert 'a_leftImg8bit.png (60x100)' in code and 'c_leftImg8bit.png (50x64)' in code
    assert 'b_leftImg8bit' not in code and '--pad' in code
    assert not osp.exists(tmp_path / 'o')  # refused before writing anything


def test_pad_option(off_grid_tree, key_file, tmp_path, capsys):
    dst = str(tmp_path / 'padded')
    code, out = run_main([off_grid_tree, dst, '--key-file', key_file, '--pad',
                          '--workers', '1', '--no-progress'], capsys)
    assert code is None and 'Padded to the block grid: 2 images, 2 label maps' in out
    key = SecretKey.load(key_file)
    for name, (h, w) in {'a': (60, 100), 'b': (64, 128), 'c': (50, 64)}.items():
        rel = f'leftImg8bit/train/x/{name}_leftImg8bit.png'
        src = cv2.imread(osp.join(off_grid_tree, rel))[..., ::-1]
        enc = np.ascontiguousarray(cv2.imread(osp.join(dst, rel))[..., ::-1])
        H, W = -(-h // 16) * 16, -(-w // 16) * 16
        assert enc.shape == (H, W, 3)
        dec = decrypt_image(enc, key)
        assert np.array_equal(dec[:h, :w], src) and (dec[h:] == 0).all() and \
            (dec[:, w:] == 0).all()
        lrel = f'gtFine/train/x/{name}_gtFine_labelTrainIds.png'
        lab_src = np.asarray(Image.open(osp.join(off_grid_tree, lrel)))
        lab = np.asarray(Image.open(osp.join(dst, lrel)))
        assert lab.shape == (H, W) and np.array_equal(lab[:h, :w], lab_src)
        assert (lab[h:] == 255).all() and (lab[:, w:] == 255).all()
    assert read_manifest(dst)['pad'] is True


def test_ade20k_jpeg_source_becomes_png(tmp_path, key_file):
    src = tmp_path / 'ade'
    rng = np.random.default_rng(1)
    (src / 'images' / 'training').mkdir(parents=True)
    (src / 'annotations' / 'training').mkdir(parents=True)
    img = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(src / 'images' / 'training' / 'ADE_train_1.jpg'), img)
    Image.fromarray(rng.integers(0, 150, (48, 80), dtype=np.uint8)).save(
        src / 'annotations' / 'training' / 'ADE_train_1.png')
    dst = tmp_path / 'ade_enc'
    key = SecretKey.load(key_file)
    encrypt_dataset(str(src), str(dst), key, layout='ade20k', workers=1, progress=False)
    out = dst / 'images' / 'training' / 'ADE_train_1.png'
    assert out.is_file() and not (dst / 'images' / 'training' / 'ADE_train_1.jpg').exists()
    # Decrypts to exactly what mmseg would decode from the JPEG.
    jpg_rgb = cv2.imread(str(src / 'images' / 'training' / 'ADE_train_1.jpg'))[..., ::-1]
    dec = decrypt_image(np.ascontiguousarray(cv2.imread(str(out))[..., ::-1]), key)
    assert np.array_equal(dec, jpg_rgb)
    assert (dst / 'annotations' / 'training' / 'ADE_train_1.png').read_bytes() == \
        (src / 'annotations' / 'training' / 'ADE_train_1.png').read_bytes()
    assert read_manifest(str(dst))['img_suffix'] == '.png'


def test_folder_layout_and_name_collision(tmp_path, key_file):
    src = tmp_path / 'folder'
    (src / 'sub').mkdir(parents=True)
    rng = np.random.default_rng(2)
    cv2.imwrite(str(src / 'sub' / 'x.png'), rng.integers(0, 256, (32, 32, 3), np.uint8))
    (src / 'notes.md').write_text('n')
    key = SecretKey.load(key_file)
    s = encrypt_dataset(str(src), str(tmp_path / 'f_enc'), key, layout='folder',
                        workers=1, progress=False, include=['*.md'])
    assert s.images_encrypted == 1 and s.files_copied == 1
    assert s.extra_files == ['notes.md'] and s.skipped == []
    cv2.imwrite(str(src / 'sub' / 'x.jpg'), rng.integers(0, 256, (32, 32, 3), np.uint8))
    with pytest.raises(DatasetEncryptionError, match='would both be written to'):
        encrypt_dataset(str(src), str(tmp_path / 'f_enc2'), key, layout='folder',
                        workers=1, progress=False)


# ------------------------------------------------------------- reruns after changes
def _dirs(root):
    return sorted(osp.relpath(d, root) for d, _, _ in os.walk(root))


def _mutate(src):
    """Edit an image and a label map, delete an image with its label map and a whole city,
    add an image, touch a file without changing it."""
    rng = np.random.default_rng(9)
    img_dir = osp.join(src, 'leftImg8bit', 'train', 'aachen')
    lab_dir = osp.join(src, 'gtFine', 'train', 'aachen')
    imgs = sorted(os.listdir(img_dir))
    edited = osp.join(img_dir, imgs[0])
    cv2.imwrite(edited, rng.integers(0, 256, (64, 128, 3), dtype=np.uint8))
    lab = osp.join(lab_dir, imgs[1].replace('_leftImg8bit', '_gtFine_labelTrainIds'))
    Image.fromarray(rng.integers(0, 19, (64, 128), dtype=np.uint8)).save(lab)
    gone = imgs[2]
    os.remove(osp.join(img_dir, gone))
    os.remove(osp.join(lab_dir, gone.replace('_leftImg8bit', '_gtFine_labelTrainIds')))
    val = osp.join(src, 'leftImg8bit', 'val')
    city = sorted(os.listdir(val))[0]
    shutil.rmtree(osp.join(val, city))
    shutil.rmtree(osp.join(src, 'gtFine', 'val', city))
    new = 'aachen_000099_000019'
    cv2.imwrite(osp.join(img_dir, new + '_leftImg8bit.png'),
                rng.integers(0, 256, (64, 128, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 19, (64, 128), dtype=np.uint8)).save(
        osp.join(lab_dir, new + '_gtFine_labelTrainIds.png'))
    os.utime(osp.join(src, 'README.txt'), ns=(1, 10 ** 18))


@pytest.mark.parametrize('workers', [1, 2])
def test_rerun_after_source_changes_equals_fresh_run(src_tree, key_file, tmp_path,
                                                     workers):
    src = str(tmp_path / 'src')
    shutil.copytree(src_tree, src)
    key = SecretKey.load(key_file)
    dst = str(tmp_path / 'enc')
    encrypt_dataset(src, dst, key, workers=workers, progress=False)
    _mutate(src)
    summary = encrypt_dataset(src, dst, key, workers=workers, progress=False)
    fresh = str(tmp_path / 'fresh')
    encrypt_dataset(src, fresh, key, workers=workers, progress=False)
    assert tree(dst) == tree(fresh) and _dirs(dst) == _dirs(fresh)
    assert read_manifest(dst)['complete'] is True
    # Edited image + edited label map; the new image (and its label map) are new.
    assert summary.changed == 2 and summary.images_encrypted == 2
    assert summary.files_copied == 2
    # The deleted image and label map, and the val city's outputs, are gone.
    assert len(summary.removed) == 2 + 2 * 1 and all(
        not osp.exists(osp.join(dst, r)) for r in summary.removed)
    text = summary.format()
    assert 'Source changed since the last run: 2 output(s)' in text
    assert f'Removed {len(summary.removed)} output(s) whose source is gone' in text
    # Once up to date, a rerun does nothing.
    again = encrypt_dataset(src, dst, key, workers=workers, progress=False)
    assert again.images_encrypted == again.files_copied == again.changed == 0
    assert not again.removed


@pytest.mark.parametrize('how', ['hard link to the source', 'edited output',
                                 'unrecorded output'])
def test_only_vouched_outputs_count_as_done(src_tree, key_file, reference, tmp_path, how):
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    rel = 'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png'
    out = osp.join(dst, rel)
    os.remove(out)
    if how == 'hard link to the source':
        os.link(osp.join(src_tree, rel), out)  # a plain image posing as an output
    elif how == 'edited output':
        shutil.copy(osp.join(src_tree, rel), out)
    else:  # written but never recorded: the manifest does not know it
        shutil.copy(osp.join(reference[0], rel), out)
        manifest = read_manifest(dst)
        del manifest['files'][rel]
        with open(osp.join(dst, MANIFEST_NAME), 'w') as f:
            json.dump(manifest, f)
    before = snapshot(src_tree)
    summary = encrypt_dataset(src_tree, dst, SecretKey.load(key_file), workers=1,
                              progress=False)
    assert summary.unvouched == 1 and summary.images_encrypted == 1
    assert tree(dst) == tree(reference[0])
    assert snapshot(src_tree) == before  # the hard-linked source was not written


@pytest.mark.parametrize('when', ['start', 'resume'])
def test_dst_directory_linked_into_src_is_refused(src_tree, key_file, reference, tmp_path,
                                                  capsys, when):
    dst = str(tmp_path / 'enc')
    if when == 'resume':
        shutil.copytree(reference[0], dst)
        shutil.rmtree(osp.join(dst, 'leftImg8bit'))
    else:
        os.makedirs(dst)
    os.symlink(osp.join(src_tree, 'leftImg8bit'), osp.join(dst, 'leftImg8bit'))
    before = snapshot(src_tree)
    code, _ = run_main([src_tree, dst, '--key-file', key_file, '--no-progress'], capsys)
    assert code.startswith('error: DST directory') and 'resolves into SRC' in code
    assert 'Replace the link with a real directory' in code
    assert snapshot(src_tree) == before


def _unlabeled_tree(root):
    make_synthetic_cityscapes(root, num_train=2, num_val=1, height=32, width=32, seed=1)
    lab = osp.join(root, 'gtFine', 'train')
    city = sorted(os.listdir(lab))[0]
    victim = sorted(os.listdir(osp.join(lab, city)))[0]
    os.remove(osp.join(lab, city, victim))
    return victim.replace('_gtFine_labelTrainIds', '_leftImg8bit')


def test_image_without_label_is_refused(tmp_path, key_file, capsys):
    src = str(tmp_path / 'src')
    name = _unlabeled_tree(src)
    code, _ = run_main([src, str(tmp_path / 'o'), '--key-file', key_file], capsys)
    assert code.startswith('error: 1 image(s)') and 'have no label map' in code
    assert name in code and '--allow-unlabeled' in code
    assert not osp.exists(tmp_path / 'o')
    code, _ = run_main([src, str(tmp_path / 'o'), '--key-file', key_file,
                        '--allow-unlabeled', '--no-progress'], capsys)
    assert code is None


@pytest.mark.parametrize('content', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n'])
def test_unreadable_image_is_one_error_line(tmp_path, key_file, content):
    src = str(tmp_path / 'src')
    make_synthetic_cityscapes(src, num_train=1, num_val=1, height=32, width=32, seed=1)
    img_dir = osp.join(src, 'leftImg8bit', 'train')
    city = sorted(os.listdir(img_dir))[0]
    name = sorted(os.listdir(osp.join(img_dir, city)))[0]
    with open(osp.join(img_dir, city, name), 'wb') as f:
        f.write(content)
    proc = subprocess.run([sys.executable, TOOL, src, str(tmp_path / 'o'), '--key-file',
                           key_file, '--no-progress'], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith('error: 1 image(s)') and 'Traceback' not in proc.stderr
    assert name in proc.stderr and 'not readable images' in proc.stderr
    assert 'Replace them with valid images' in proc.stderr


def test_unwritable_dst_is_one_error_line(src_tree, key_file, tmp_path):
    dst = tmp_path / 'enc'
    dst.mkdir()
    # An output directory that cannot be created: a file is in its way.
    killed_run(src_tree, str(dst), key_file, after=1, workers=1)
    shutil.rmtree(dst / 'gtFine', ignore_errors=True)
    (dst / 'gtFine').write_text('in the way')
    proc = subprocess.run([sys.executable, TOOL, src_tree, str(dst), '--key-file',
                           key_file, '--no-progress', '--workers', '2'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith('error: Cannot write ') and 'Traceback' not in proc.stderr
    assert 'gtFine' in proc.stderr and 'rerun the same command' in proc.stderr


# ------------------------------------------------------------- what DST (the upload) holds
def _small_tree(root, seed=3):
    make_synthetic_cityscapes(root, num_train=2, num_val=1, height=32, width=64, seed=seed)
    return root


def _no_key_in(dst, key):
    """Assert that no file of DST holds the key, by the leak scan and by the header."""
    assert find_key_material([dst], key) == []
    for d, _, files in os.walk(dst):
        for f in files:
            with open(osp.join(d, f), 'rb') as fh:
                assert not fh.read(8).startswith(b'PPENCKEY'), osp.join(d, f)


def _plant(case, src, key, key_path):
    """Put the key into SRC as ``case`` says; return (path in SRC, expected reason,
    expected detail)."""
    if case == 'key file':
        shutil.copy(key_path, osp.join(src, 'site.key'))
        return 'site.key', ds_plan.SKIP_KEY_FILE, ''
    if case == 'key file renamed notes.txt':
        shutil.copy(key_path, osp.join(src, 'notes.txt'))
        return 'notes.txt', ds_plan.SKIP_KEY_FILE, ''
    if case == 'key file posing as a label map':
        rel = osp.join('gtFine', 'train', 'aachen', 'aachen_000099_000019_gtFine_color.png')
        shutil.copy(key_path, osp.join(src, rel))
        return rel, ds_plan.SKIP_KEY_FILE, ''
    if case == 'link leaving SRC':
        os.symlink(osp.join('..', osp.basename(key_path)), osp.join(src, 'notes.txt'))
        return 'notes.txt', ds_plan.SKIP_LINK_OUTSIDE, '-> ../site.key'
    if case == 'link inside SRC':
        shutil.copy(key_path, osp.join(src, 'site.key'))
        os.symlink('site.key', osp.join(src, 'notes.txt'))
        return 'notes.txt', ds_plan.SKIP_KEY_FILE, '-> site.key'
    if case == 'key as hex in a text file':
        with open(osp.join(src, 'notes.txt'), 'w') as f:
            f.write(f'backup of the dataset key: {key._key.hex()}\n')
        return 'notes.txt', ds_plan.SKIP_KEY_MATERIAL, ''
    raise AssertionError(case)


@pytest.mark.parametrize('case', ['key file', 'key file renamed notes.txt',
                                  'key file posing as a label map', 'link leaving SRC',
                                  'link inside SRC', 'key as hex in a text file'])
def test_upload_tree_never_holds_the_key(case, tmp_path, capsys):
    key_path = str(tmp_path / 'site.key')  # next to SRC: '../site.key' from inside it
    key = SecretKey.generate()
    key.save(key_path)
    src = _small_tree(str(tmp_path / 'src'))
    with open(osp.join(src, 'split.txt'), 'w') as f:
        f.write('aachen_000000_000019\n')
    rel, reason, detail = _plant(case, src, key, key_path)
    dst = str(tmp_path / 'dst')
    # Even a pattern naming every file lets no key through.
    code, out = run_main([src, dst, '--key-file', key_path, '--include', '*', '--workers',
                          '1', '--no-progress'], capsys)
    assert code is None
    _no_key_in(dst, key)
    assert not osp.lexists(osp.join(dst, rel))
    assert osp.isfile(osp.join(dst, 'split.txt'))  # what the pattern names is copied
    summary = encrypt_dataset(src, str(tmp_path / 'dst2'), key, workers=1, progress=False,
                              include=['*'])
    assert SkippedFile(rel, reason, detail) in summary.skipped
    assert summary.extra_files == ['split.txt']
    # The CLI lists the file under its reason, and never prints key material.
    assert f'  {reason}:\n' in out and f'\n    {rel} {detail}'.rstrip() in out
    assert not data_contains_key(out.encode(), key, block_sizes=(16,))


@pytest.mark.parametrize('follow', [False, True])
def test_symlinked_directory_leaving_src(follow, tmp_path, key_file, capsys):
    src = _small_tree(str(tmp_path / 'src'))
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'train.txt').write_text('aachen_000000_000019\n')
    shutil.copy(key_file, outside / 'old.key')
    os.symlink(str(outside), osp.join(src, 'splits'))
    dst = str(tmp_path / 'dst')
    args = [src, dst, '--key-file', key_file, '--include', 'splits/**', '--no-progress']
    code, out = run_main(args + (['--follow-symlink', 'splits'] if follow else []), capsys)
    assert code is None
    key = SecretKey.load(key_file)
    _no_key_in(dst, key)
    if follow:  # named: followed, and a key file in it is still left out
        assert (tmp_path / 'dst' / 'splits' / 'train.txt').read_text() == \
            'aachen_000000_000019\n'
        assert f'  {ds_plan.SKIP_KEY_FILE}:\n    {osp.join("splits", "old.key")}' in out
    else:  # not named: reported, never silently skipped
        assert not osp.lexists(osp.join(dst, 'splits'))
        assert f'  {ds_plan.SKIP_LINK_OUTSIDE}:\n    splits{os.sep} -> {outside}' in out


def test_include_copies_what_it_names_and_a_narrower_rerun_withdraws(src_tree, key_file,
                                                                     tmp_path):
    key = SecretKey.load(key_file)
    dst = str(tmp_path / 'enc')
    polygons = osp.join('gtFine', 'train', 'aachen', 'aachen_000000_000019_gtFine_polygons.json')
    s = encrypt_dataset(src_tree, dst, key, workers=1, progress=False,
                        include=['README.txt', 'gtFine/**/*.json'])
    assert s.extra_files == sorted(['README.txt', polygons]) and s.skipped == []
    for rel in ('README.txt', polygons):
        with open(osp.join(src_tree, rel), 'rb') as a, open(osp.join(dst, rel), 'rb') as b:
            assert a.read() == b.read()
    assert read_manifest(dst)['counts']['other_files'] == 2
    s = encrypt_dataset(src_tree, dst, key, workers=1, progress=False, include=['*.txt'])
    assert s.extra_files == ['README.txt'] and s.withdrawn == [polygons]
    assert SkippedFile(polygons, ds_plan.SKIP_NOT_INCLUDED) in s.skipped
    assert not osp.exists(osp.join(dst, polygons))
    assert read_manifest(dst)['counts']['other_files'] == 1


@pytest.mark.parametrize('pattern', ['/etc/*', '../*', 'a/../../b'])
def test_include_pattern_must_stay_inside_src(pattern, src_tree, key_file, tmp_path,
                                               capsys):
    code, _ = run_main([src_tree, str(tmp_path / 'o'), '--key-file', key_file,
                        '--include', pattern], capsys)
    assert code.startswith('error: --include') and 'relative to SRC' in code


@pytest.mark.parametrize('pattern, names, not_names', [
    ('*.txt', ['a.txt', 'x/y/a.txt'], ['a.txt.bak', 'x/a.json']),
    ('splits/*.txt', ['splits/a.txt'], ['splits/x/a.txt', 'y/splits/a.txt']),
    ('gtFine/**/*.json', ['gtFine/a.json', 'gtFine/t/c/a.json'], ['a.json', 'gtFine/a.png']),
    ('docs', ['docs/a.md', 'x/docs/b/c.png'], ['docsx/a.md']),
    ('[!a]*.md', ['b.md'], ['a.md'])])
def test_include_pattern_semantics(pattern, names, not_names):
    included = ds_plan._compile_includes([pattern])
    assert all(included(n.replace('/', os.sep)) for n in names)
    assert not any(included(n.replace('/', os.sep)) for n in not_names)


def test_version_1_manifest_without_records_is_rewritten(src_tree, key_file, reference,
                                                        tmp_path):
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    manifest = read_manifest(dst)
    del manifest['files']
    manifest['manifest_version'] = 1
    with open(osp.join(dst, MANIFEST_NAME), 'w') as f:
        json.dump(manifest, f)
    s = encrypt_dataset(src_tree, dst, SecretKey.load(key_file), workers=1, progress=False)
    assert s.unvouched == 24 and tree(dst) == tree(reference[0])


def test_dst_of_an_older_version_loses_its_key_copy(src_tree, key_file, reference, tmp_path):
    """An older version copied every file and did not scan: a rerun takes the copied key
    out of DST and scans what it keeps."""
    key = SecretKey.load(key_file)
    src = str(tmp_path / 'src')
    shutil.copytree(src_tree, src)
    shutil.copy(key_file, osp.join(src, 'notes.txt'))
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    shutil.copy(key_file, osp.join(dst, 'notes.txt'))
    manifest = read_manifest(dst)
    for rec in manifest['files'].values():
        rec.pop('key_scanned', None)
    st, ost = os.stat(osp.join(src, 'notes.txt')), os.stat(osp.join(dst, 'notes.txt'))
    with open(osp.join(src, 'notes.txt'), 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    manifest['files']['notes.txt'] = dict(
        src='notes.txt', kind='copy', pad=False, src_size=st.st_size,
        src_mtime_ns=st.st_mtime_ns, src_sha256=digest, key_fingerprint=key.fingerprint,
        out_size=ost.st_size, out_mtime_ns=ost.st_mtime_ns)
    with open(osp.join(dst, MANIFEST_NAME), 'w') as f:
        json.dump(manifest, f)
    s = encrypt_dataset(src, dst, key, workers=1, progress=False)
    assert s.withdrawn == ['notes.txt'] and s.rescanned == 12 and s.images_encrypted == 0
    assert SkippedFile('notes.txt', ds_plan.SKIP_KEY_FILE) in s.skipped
    _no_key_in(dst, key)
    assert tree(dst) == tree(reference[0])


def test_file_in_dst_not_written_by_the_tool_is_reported(src_tree, key_file, reference,
                                                         tmp_path, capsys):
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    shutil.copy(key_file, osp.join(dst, 'stray.key'))
    rc = tool.main([src_tree, dst, '--key-file', key_file, '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 0 and err.startswith('warning: DST holds 1 file(s) this tool did not write')
    assert 'stray.key (a key file!)' in err and 'Delete them before uploading' in err


# ------------------------------------------------------------- content-true reruns
def _bmp_tree(root):
    """One image stored as BMP (uncompressed: an edit of its pixels keeps the size)."""
    rng = np.random.default_rng(4)
    img = root / 'leftImg8bit' / 'train' / 'x'
    lab = root / 'gtFine' / 'train' / 'x'
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    path = img / 'a_leftImg8bit.bmp'
    cv2.imwrite(str(path), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 19, (32, 48), dtype=np.uint8)).save(
        lab / 'a_gtFine_labelTrainIds.png')
    return str(path)


@pytest.mark.parametrize('trust_mtime', [False, True])
def test_edit_keeping_size_and_mtime(trust_mtime, tmp_path, key_file):
    key = SecretKey.load(key_file)
    image = _bmp_tree(tmp_path / 'src')
    src, dst = str(tmp_path / 'src'), str(tmp_path / 'enc')
    encrypt_dataset(src, dst, key, workers=1, progress=False)
    st = os.stat(image)
    edited = 255 - cv2.imread(image)
    cv2.imwrite(image, edited)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert (os.stat(image).st_size, os.stat(image).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    s = encrypt_dataset(src, dst, key, workers=1, progress=False, trust_mtime=trust_mtime)
    out = osp.join(dst, 'leftImg8bit', 'train', 'x', 'a_leftImg8bit.png')
    dec = decrypt_image(np.ascontiguousarray(cv2.imread(out)[..., ::-1]), key)
    if trust_mtime:  # the documented risk: the stale output stays
        assert s.images_encrypted == 0 and s.changed == 0
        assert not np.array_equal(dec, edited[..., ::-1])
    else:  # content decides: re-encrypted, and the output is the edited image
        assert s.images_encrypted == 1 and s.changed == 1
        assert np.array_equal(dec, edited[..., ::-1])
        with open(image, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        rec = read_manifest(dst)['files'][osp.relpath(out, dst)]
        assert rec['src_sha256'] == digest


# ------------------------------------------------------------- bad inputs: one error line
def bomb_png(path, width=20000, height=20000, rows_per_block=500):
    """A valid black RGB PNG declaring width x height pixels (20000 x 20000: 1.2 GB when
    decoded, about 1 MB on disk). Compressed once per block of rows and repeated (a full
    flush makes each block self-contained), so writing it takes under a second."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = bytes(3 * width + 1) * rows_per_block  # filter byte 0 + black pixels
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows_per_block):
        adler = zlib.adler32(rows, adler)
    idat = (b'\x78\xda' + block * (height // rows_per_block) + b'\x03\x00'
            + struct.pack('>I', adler))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat)
                + chunk(b'IEND', b''))


def one_error_line(rc, err):
    lines = err.splitlines()
    assert rc == 2 and 'Traceback' not in err, err
    assert lines[0].startswith('error: ') and \
        sum(line.startswith('error:') for line in lines) == 1, err
    return err


@pytest.mark.parametrize('content, problem', [
    ('{"files": "x"}', 'expected "format": "mmseg_ppenc/encrypted-dataset", found None'),
    ('[1, 2, 3]', 'expected a JSON object at the top, found an array'),
    ('real shape, files "x"', '"files" is a string, expected an object')])
def test_manifest_of_the_wrong_shape(content, problem, src_tree, key_file, reference,
                                     tmp_path, capsys):
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    path = osp.join(dst, MANIFEST_NAME)
    if content.startswith('real'):
        manifest = read_manifest(dst)
        manifest['files'] = 'x'
        content = json.dumps(manifest)
    with open(path, 'w') as f:
        f.write(content)
    rc = tool.main([src_tree, dst, '--key-file', key_file, '--no-progress'])
    err = one_error_line(rc, capsys.readouterr().err)
    assert path in err and 'not a valid ppenc_manifest.json' in err and problem in err
    assert 'rerun into a new DST' in err
    # The server's reader refuses it the same way, naming the file.
    with pytest.raises(KeylessPipelineError, match=re.escape(path)) as e:
        load_manifest(dst)
    assert problem in str(e.value) and 'upload the whole tree again' in str(e.value)


@pytest.mark.parametrize('workers', [1, 2])
def test_damaged_journal_is_reported_and_recovered(workers, src_tree, key_file, reference,
                                                   tmp_path, capsys):
    dst = str(tmp_path / 'enc')
    shutil.copytree(reference[0], dst)
    rel = 'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png'
    manifest = read_manifest(dst)
    del manifest['files'][rel]  # as if its record were still in the journal
    with open(osp.join(dst, MANIFEST_NAME), 'w') as f:
        json.dump(manifest, f)
    with open(osp.join(dst, '.ppenc_journal.jsonl'), 'wb') as f:
        f.write(b'{"dst": "' + rel.encode() + b'", "src": "\xff\xfe"}\n')
    args = [src_tree, dst, '--key-file', key_file, '--no-progress', '--workers', str(workers)]
    rc = tool.main(args)
    captured = capsys.readouterr()
    assert rc == 0 and 'Traceback' not in captured.err
    assert captured.err.startswith('warning: ') and 'is damaged (line 1 is not UTF-8' in \
        captured.err
    assert '1 existing output(s) not vouched for' in captured.out
    assert not osp.exists(osp.join(dst, '.ppenc_journal.jsonl'))
    assert tree(dst) == tree(reference[0])
    # Not permanently broken: the next run is clean and does nothing.
    rc = tool.main(args)
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == ''
    assert 'Encrypted 0 images (12 already done)' in captured.out


def test_decompression_bomb_is_refused_before_decoding(tmp_path, key_file, capsys):
    src = _small_tree(str(tmp_path / 'src'))
    rel = osp.join('leftImg8bit', 'train', 'aachen', 'aachen_000077_000019_leftImg8bit.png')
    bomb_png(osp.join(src, rel))
    assert os.path.getsize(osp.join(src, rel)) < 2_000_000
    rc = tool.main([src, str(tmp_path / 'o'), '--key-file', key_file, '--allow-unlabeled',
                    '--no-progress'])
    err = one_error_line(rc, capsys.readouterr().err)
    assert rel in err and '20000x20000 = 400.0 Mpx' in err and '--max-pixels' in err
    assert not osp.exists(tmp_path / 'o')  # refused up front, nothing written
    # The limit is an option: raising it admits the file (checked, not decoded, here).
    with pytest.raises(DatasetEncryptionError, match='declare more pixels') as e:
        plan_dataset(src, allow_unlabeled=True, max_pixels=400_000_000 - 1)
    assert '400000000' in str(e.value)
    plan = plan_dataset(src, allow_unlabeled=True, max_pixels=400_000_000, pad=True)
    assert any(i.src == rel for i in plan.items)


def test_decompression_bomb_through_the_script(tmp_path, key_file):
    src = _small_tree(str(tmp_path / 'src'))
    rel = osp.join('leftImg8bit', 'val', 'frankfurt', 'frankfurt_000009_000019_leftImg8bit.png')
    bomb_png(osp.join(src, rel))
    proc = subprocess.run([sys.executable, TOOL, src, str(tmp_path / 'o'), '--key-file',
                           key_file, '--allow-unlabeled', '--no-progress'],
                          capture_output=True, text=True, timeout=120)
    one_error_line(proc.returncode, proc.stderr)
    assert rel in proc.stderr and '--max-pixels' in proc.stderr


@pytest.mark.parametrize('where', ['before', 'after'])
def test_exif_orientation_read_like_opencv_without_decoding(where, tmp_path):
    """A PNG's eXIf chunk may follow the image data; OpenCV honours it either way."""
    arr = np.zeros((32, 64, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    path = str(tmp_path / 'r.png')
    Image.fromarray(arr).save(path, exif=exif.tobytes())
    if where == 'after':
        with open(path, 'rb') as f:
            data = f.read()
        chunks, i = [], 8
        while i < len(data):
            n = struct.unpack('>I', data[i:i + 4])[0]
            chunks.append((data[i + 4:i + 8], data[i:i + 12 + n]))
            i += 12 + n
        order = [c for t, c in chunks if t not in (b'eXIf', b'IEND')] + \
            [c for t, c in chunks if t == b'eXIf'] + [c for t, c in chunks if t == b'IEND']
        with open(path, 'wb') as f:
            f.write(data[:8] + b''.join(order))
        assert 'exif' not in Image.open(path).info  # Pillow alone would have to decode
    assert ds_images.image_size(path) == cv2.imread(path, cv2.IMREAD_COLOR).shape[:2] == (64, 32)
