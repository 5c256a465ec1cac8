"""Key-handling checks: leaks into a work_dir, key-file permissions, wrong and corrupt keys."""
from __future__ import annotations

import os
import os.path as osp
import stat
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np

from mmseg_ppenc.security.metrics import luminance, psnr, ssim
from ppenc.cipher import decrypt_image, encrypt_image
from ppenc.keys import InvalidKeyError, SecretKey

__all__ = ['scan_work_dir', 'key_file_mode', 'wrong_key_check', 'corrupt_key_checks']


def key_file_mode(path: str) -> Dict[str, object]:
    """Permission bits of a key file and whether only its owner can access it.

    Returns:
        dict: ``mode`` (octal string such as ``'0o600'``) and ``owner_only`` (bool).
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return {'mode': oct(mode), 'owner_only': not mode & 0o077}


def scan_work_dir(work_dir: str, key: SecretKey,
                  max_bytes: Optional[int] = 512 << 20) -> Dict[str, object]:
    """Search every file of a work_dir for the key in any form :mod:`ppenc.leak_scan`
    knows.

    Args:
        work_dir (str): A training run's directory (config dump, logs, checkpoints).
        key (SecretKey): The key the run used.
        max_bytes (int, optional): Skip larger files. Defaults to 512 MiB.

    Returns:
        dict: ``files_scanned``, ``leaks`` (paths relative to ``work_dir``; never the key)
        and ``ok``.
    """
    from ppenc.leak_scan import find_key_material
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'--work-dir {work_dir!r} is not a directory; pass the '
                                'work_dir of a finished training run.')
    files = [osp.join(d, f) for d, _, fs in os.walk(work_dir) for f in fs]
    hits = find_key_material([work_dir], key, max_bytes=max_bytes)
    return {'files_scanned': len(files),
            'leaks': sorted(osp.relpath(h, work_dir) for h in hits),
            'ok': not hits}


def wrong_key_check(images: Sequence[np.ndarray], key: SecretKey,
                    block_size: int = 16, seed: int = 1) -> Dict[str, float]:
    """Decrypt with a different key: the result must be as unreadable as the ciphertext.

    Returns:
        dict: mean ``psnr`` and ``ssim_luma`` against the plain images, for the ciphertext
        (``enc_*``), a wrong-key decryption (``wrong_*``) and the right key
        (``right_psnr``; ``inf`` when exact).
    """
    import hashlib
    wrong = SecretKey(hashlib.sha256(f'wrong-key/{seed}'.encode()).digest(),
                      flip_compatible=key.flip_compatible)
    rows = []
    for img in images:
        enc = encrypt_image(img, key, block_size)
        bad = decrypt_image(enc, wrong, block_size)
        good = decrypt_image(enc, key, block_size)
        rows.append((psnr(img, enc), ssim(luminance(img), luminance(enc)),
                     psnr(img, bad), ssim(luminance(img), luminance(bad)), psnr(img, good)))
    r = np.array(rows)
    return {'enc_psnr': float(r[:, 0].mean()), 'enc_ssim_luma': float(r[:, 1].mean()),
            'wrong_psnr': float(r[:, 2].mean()), 'wrong_ssim_luma': float(r[:, 3].mean()),
            'right_psnr': float(r[:, 4].min())}


def corrupt_key_checks() -> Dict[str, object]:
    """Save a throw-away key, then load damaged copies of the file; each must be refused.

    Returns:
        dict: ``saved_mode`` of a freshly saved key file, and for each damage
        (``flipped_bit``, ``truncated``, ``wrong_header``, ``missing``) whether
        :meth:`SecretKey.load` raised :class:`InvalidKeyError` (True = safe).
    """
    out: Dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'k.key')
        SecretKey.generate().save(path)
        out['saved_mode'] = key_file_mode(path)['mode']
        with open(path, 'rb') as f:
            body = f.read()
        damaged = {
            'flipped_bit': body[:20] + bytes([body[20] ^ 1]) + body[21:],
            'truncated': body[:-1],
            'wrong_header': b'X' + body[1:],
        }
        for name, data in damaged.items():
            p = osp.join(tmp, name)
            with open(p, 'wb') as f:
                f.write(data)
            os.chmod(p, 0o600)  # refused for its content, not for its permissions
            out[f'{name}_rejected'] = _refused(p)
        out['missing_rejected'] = _refused(osp.join(tmp, 'absent.key'))
    return out


def _refused(path: str) -> bool:
    try:
        SecretKey.load(path)
    except InvalidKeyError:
        return True
    return False
