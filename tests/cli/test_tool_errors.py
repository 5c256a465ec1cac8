"""User errors of the run and inference tools: unsafe-pickle checkpoints are refused with
one ``error:`` line naming the file and the fix, exit status 2, and no code run; inference
outputs never replace a query image."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_config


class _Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.fixture
def unsafe_ckpt(tmp_path):
    marker = str(tmp_path / 'code_ran')
    path = str(tmp_path / 'unsafe.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': _Payload(marker)}},
               path)
    assert not osp.exists(marker)
    return path, marker


@pytest.mark.parametrize('tool', ['train', 'test', 'infer_encrypted'])
def test_unsafe_pickle_is_one_error_line(tool, unsafe_ckpt, tmp_path, key_env):
    path, marker = unsafe_ckpt
    cfg = tiny_config('mla', 'baseline')
    args = {
        'train': ['tools/train.py', cfg, '--work-dir', str(tmp_path / 'wd'),
                  '--cfg-options', f'load_from={path}', 'train_cfg.max_iters=1'],
        'test': ['tools/test.py', cfg, path, '--work-dir', str(tmp_path / 'wd')],
        'infer_encrypted': ['tools/infer_encrypted.py', osp.join(REPO, 'README.md'),
                            '--config', cfg, '--checkpoint', path, '--out',
                            str(tmp_path / 'out')],
    }[tool]
    if tool == 'infer_encrypted':  # a real image, so that the checkpoint is reached
        import numpy as np
        import cv2
        img = str(tmp_path / 'q.png')
        cv2.imwrite(img, np.zeros((64, 64, 3), np.uint8))
        args[1] = img
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and path in errors[0]
    assert 'weights_only=True' in errors[0] and 're-save only its weights' in errors[0]
    assert not osp.exists(marker)


@pytest.mark.parametrize('case', ['output is the query', 'two queries, one name'])
def test_inference_never_overwrites_a_query(case, tmp_path, key_env, capsys):
    """Outputs are checked before anything is loaded or written."""
    import cv2
    import numpy as np
    from conftest import load_tool
    tool = load_tool('infer_encrypted')
    out = tmp_path / 'out'
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    if case == 'output is the query':
        out.mkdir()
        query = str(out / 'street_pred.png')
        cv2.imwrite(query, np.zeros((32, 32, 3), np.uint8))
        images = [str(tmp_path / 'a' / 'street.png'), query]
        cv2.imwrite(images[0], np.zeros((32, 32, 3), np.uint8))
        expect = 'would overwrite the query image'  # a/street.png -> out/street_pred.png
    else:
        images = [str(tmp_path / d / 'x.png') for d in ('a', 'b')]
        expect = 'have the same file name'
        for p in images:
            cv2.imwrite(p, np.zeros((32, 32, 3), np.uint8))
    before = {p: open(p, 'rb').read() for p in images}
    rc = tool.main(images + ['--config', tiny_config('mla', 'baseline'), '--checkpoint',
                             images[0], '--out', str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: ') and expect in err
    assert {p: open(p, 'rb').read() for p in images} == before
    assert not osp.exists(out / 'x_pred.png')


def test_key_pasted_into_config_is_one_error_line(tmp_path, key_env):
    """The train tool stops before anything is written, with one line that names where
    the key is and what to do, and that does not repeat the key."""
    pasted = ':'.join(f'{b:02x}' for b in key_env._key)
    proc = subprocess.run([sys.executable, 'tools/train.py',
                           tiny_config('mla', 'proposed'), '--work-dir',
                           str(tmp_path / 'wd'), '--cfg-options', f'notes={pasted}'],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'Key material' in errors[0]
    assert 'found in the config' in errors[0] and 'refused before anything was written' \
        in errors[0]
    assert 'rotate the key' in errors[0] and pasted not in errors[0]
    assert not (tmp_path / 'wd').exists()
