"""The security measurements behind ``tools/analyze_security.py``.

Experiment driver, not library code: the attacks and metrics are in
:mod:`mmseg_ppenc.security`; this file runs them. :func:`run_analysis` generates the
synthetic Cityscapes-format images (plus any user photos), encrypts them under throw-away
analysis keys (one plain-shuffle key, one flip-compatible key; both derived from
``seed``, so numbers are reproducible), and measures:

1. visual leakage of encrypted vs plain images (:mod:`mmseg_ppenc.security.metrics`);
2. the known-plaintext attack for 1, 2, ... known pairs
   (:mod:`mmseg_ppenc.security.known_plaintext`);
3. the ciphertext-only attack for growing numbers of encrypted images
   (:mod:`mmseg_ppenc.security.ciphertext_only`);
4. the model-weight attack with and without mitigations
   (:mod:`mmseg_ppenc.security.weights`);
5. key handling (:mod:`mmseg_ppenc.security.key_checks`), and with ``--work-dir`` the
   replay of the run's random initialisation; for a run from pre-trained weights that row
   says "not applicable" and gives the weight-matching figure instead (``--plain-checkpoint``).

:mod:`security_report` formats the result and holds the command line.
"""
from __future__ import annotations

import hashlib
import math
import os
import os.path as osp
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# The attacks work on many small (256..768) matrices; on a busy machine, multi-threaded
# BLAS makes those calls over ten times slower than one thread. Set before NumPy loads;
# an explicit setting in the environment wins.
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '1')

import numpy as np  # noqa: E402

from ppenc.cipher import encrypt_image  # noqa: E402
from ppenc.keys import SecretKey, resolve_key  # noqa: E402
from mmseg_ppenc.security.ciphertext_only import ciphertext_only_attack  # noqa: E402
from mmseg_ppenc.security.common import recovery_stats, unpermute_image  # noqa: E402
from mmseg_ppenc.security.key_checks import (corrupt_key_checks, key_file_mode,  # noqa: E402
                                             scan_work_dir, wrong_key_check)
from mmseg_ppenc.security.known_plaintext import known_plaintext_attack  # noqa: E402
from mmseg_ppenc.security.metrics import (leakage_metrics, luminance,  # noqa: E402
                                          mean_metrics, psnr, ssim)

__all__ = ['AnalysisConfig', 'run_analysis', 'load_user_images', 'analysis_key', 'VARIANTS',
           'synthetic_images', 'restore_quality', 'leakage_section', 'known_plaintext_section',
           'ciphertext_only_section', 'jsonable']

#: Cipher variants the project offers: name -> flip_compatible.
VARIANTS: Dict[str, bool] = {'shuffle': False, 'flip-compatible': True}

_IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


@dataclass
class AnalysisConfig:
    """What :func:`run_analysis` measures.

    Attributes:
        num_val (int): Synthetic images for leakage metrics and as held-out images that
            attacks decrypt. Defaults to 12.
        num_pool (int): Further synthetic images: known pairs for the known-plaintext
            attack and the ciphertext pool of the ciphertext-only attack. Defaults to 64.
        height (int): Synthetic image height. Defaults to 128.
        width (int): Synthetic image width. Defaults to 256.
        seed (int): Seed of the data and of the analysis keys. Defaults to 0.
        block_size (int): Cipher block size (ViT patch size). Defaults to 16.
        kpa_pairs (tuple[int]): Known-pair counts. Defaults to (1, 2, 4).
        coa_counts (tuple[int]): Ciphertext-only image counts (shuffle key); the
            flip-compatible key is attacked with the smallest and largest. Defaults to
            (1, 2, 4, 8, 16, 32, 64).
        noise_levels (tuple[float]): Relative noise on the uploaded patch embedding.
            Defaults to (0.01, 0.1, 0.3, 1.0, 3.0).
        vit_b_embedding (bool): Also attack a ViT-B-sized (768 x 768) embedding.
            Defaults to True.
        user_images (list[str]): Paths of extra (real) photos. Defaults to none.
        max_side (int): User photos are downscaled to at most this side. Defaults to 512.
        work_dir (str, optional): Training work_dir to scan for key material.
        key_file (str, optional): The key file of that run (also checked for
            permissions).
        variants (tuple[str]): Cipher variants to analyse, names from
            :data:`VARIANTS`. Defaults to all.
    """
    num_val: int = 12
    num_pool: int = 64
    height: int = 128
    width: int = 256
    seed: int = 0
    block_size: int = 16
    kpa_pairs: Tuple[int, ...] = (1, 2, 4)
    coa_counts: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    noise_levels: Tuple[float, ...] = (0.01, 0.1, 0.3, 1.0, 3.0)
    vit_b_embedding: bool = True
    user_images: List[str] = field(default_factory=list)
    max_side: int = 512
    work_dir: Optional[str] = None
    key_file: Optional[str] = None
    variants: Tuple[str, ...] = tuple(VARIANTS)


def analysis_key(seed: int, flip_compatible: bool) -> SecretKey:
    """A throw-away key derived from ``seed`` (reproducible numbers; never a user key)."""
    label = f'mmseg_ppenc/security-analysis/{seed}/{int(flip_compatible)}'.encode()
    return SecretKey(hashlib.sha256(label).digest(), flip_compatible=flip_compatible)


def load_user_images(paths: Sequence[str], block_size: int = 16,
                     max_side: int = 512) -> List[Tuple[str, np.ndarray]]:
    """Read photos as RGB, downscale to ``max_side``, crop to the block grid.

    Args:
        paths (Sequence[str]): Image files or directories (searched non-recursively).
        block_size (int): Block size. Defaults to 16.
        max_side (int): Longest side after downscaling. Defaults to 512.

    Returns:
        list[tuple[str, np.ndarray]]: ``(file name, image)`` pairs.
    """
    from PIL import Image
    files: List[str] = []
    for p in paths:
        if osp.isdir(p):
            files += sorted(osp.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(_IMAGE_EXTS))
        elif osp.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f'--images {p!r} is neither an image file nor a '
                                    'directory.')
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert('RGB')
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((max(block_size, round(im.width * scale)),
                                max(block_size, round(im.height * scale))), Image.BICUBIC)
            arr = np.asarray(im)
        h, w = arr.shape[0] // block_size * block_size, arr.shape[1] // block_size * block_size
        if h == 0 or w == 0:
            continue
        out.append((osp.basename(f), np.ascontiguousarray(arr[:h, :w])))
    return out


def synthetic_images(cfg: AnalysisConfig) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The analysis images: generated on disk exactly as users do, and read back.

    Args:
        cfg (AnalysisConfig): ``num_val``, ``num_pool``, ``height``, ``width`` and
            ``seed`` are used.

    Returns:
        tuple[list[np.ndarray], list[np.ndarray]]: ``(val, pool)``: the held-out images
        (the metrics, and what attacks decrypt) and the attacks' pool, HxWx3 uint8 RGB.
    """
    from PIL import Image

    from ppenc.synthetic import make_synthetic_cityscapes
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_cityscapes(tmp, num_train=cfg.num_pool, num_val=cfg.num_val,
                                  height=cfg.height, width=cfg.width, seed=cfg.seed)

        def read(split):
            root = osp.join(tmp, 'leftImg8bit', split)
            paths = sorted(osp.join(d, f) for d, _, fs in os.walk(root) for f in fs)
            return [np.asarray(Image.open(p).convert('RGB')) for p in paths]
        return read('val'), read('train')


def restore_quality(est: np.ndarray, plains: Sequence[np.ndarray],
                    encs: Sequence[np.ndarray], block_size: int) -> Dict[str, float]:
    """Mean PSNR/SSIM of images decrypted with an estimated permutation.

    Returns:
        dict: ``psnr``, ``ssim_luma`` and ``ssim_grey`` (SSIM of the channel means,
        blind to the channel order), averaged over the images.
    """
    rows = []
    for p, e in zip(plains, encs):
        r = unpermute_image(e, est, block_size)
        rows.append({'psnr': psnr(p, r), 'ssim_luma': ssim(luminance(p), luminance(r)),
                     # Channel-order-blind structure: the mean over channels.
                     'ssim_grey': ssim(p.astype(np.float64).mean(-1),
                                       r.astype(np.float64).mean(-1))})
    return mean_metrics(rows)


# ------------------------------------------------------------------------ sections
def leakage_section(keys, datasets, b) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Section 1: mean :func:`leakage_metrics` per key (name -> key) and data set (name
    -> images) at block size ``b``; empty data sets are left out."""
    out = {}
    for vname, key in keys.items():
        out[vname] = {}
        for dname, imgs in datasets.items():
            if imgs:
                out[vname][dname] = mean_metrics(
                    [leakage_metrics(img, encrypt_image(img, key, b), b) for img in imgs])
                out[vname][dname]['num_images'] = len(imgs)
    return out


def known_plaintext_section(keys, pool, val, user, cfg) -> Dict[str, List[Dict[str, float]]]:
    """Section 2: the known-plaintext attack with ``cfg.kpa_pairs`` pool images (and the
    first user photo), per key; held-out ``val`` images are decrypted with the result."""
    b = cfg.block_size
    out = {}
    for vname, key in keys.items():
        pi = key.block_permutation(b)
        val_enc = [encrypt_image(v, key, b) for v in val]
        rows = []
        sources = [('synthetic', pool[:k], k) for k in sorted(set(cfg.kpa_pairs))]
        if user:
            sources.append(('photo', [user[0][1]], 1))
        for source, plains, k in sources:
            res = known_plaintext_attack([(p, encrypt_image(p, key, b)) for p in plains], b)
            row = {'source': source, 'pairs': k, 'blocks': res.num_blocks,
                   'determined': res.fraction_determined}
            row.update(recovery_stats(res.perm, pi, b))
            row.update({f'heldout_{m}': v for m, v in
                        restore_quality(res.perm, val, val_enc, b).items()})
            rows.append(row)
        out[vname] = rows
    return out


def ciphertext_only_section(keys, pool, val, user, cfg) -> Dict[str, List[Dict[str, float]]]:
    """Section 3: the ciphertext-only attack on the first ``cfg.coa_counts`` encrypted pool
    images (and on each user photo alone), per key, at block size ``cfg.block_size``.
    Rows hold :func:`recovery_stats` and the ``restored_*`` quality of the ``val`` images
    decrypted with the estimate."""
    b = cfg.block_size
    counts = sorted(set(cfg.coa_counts))
    out = {}
    for vname, key in keys.items():
        pi = key.block_permutation(b)
        pool_enc = [encrypt_image(p, key, b) for p in pool]
        val_enc = [encrypt_image(v, key, b) for v in val]
        # The attack never looks at labels, so a flip-compatible key gives the same
        # numbers up to tie-breaking; two points show it without doubling the runtime.
        use = counts if not key.flip_compatible else sorted({counts[0], counts[-1]})
        rows = []
        for n in use:
            t0 = time.time()
            res = ciphertext_only_attack(pool_enc[:n], b)
            row = {'source': 'synthetic', 'images': n, 'blocks': res.num_blocks,
                   'seconds': time.time() - t0}
            row.update(recovery_stats(res.perm, pi, b))
            row.update({f'restored_{m}': v for m, v in
                        restore_quality(res.perm, val, val_enc, b).items()})
            rows.append(row)
        for name, img in user:
            t0 = time.time()
            enc = encrypt_image(img, key, b)
            res = ciphertext_only_attack([enc], b)
            row = {'source': f'photo {name}', 'images': 1, 'blocks': res.num_blocks,
                   'seconds': time.time() - t0}
            row.update(recovery_stats(res.perm, pi, b))
            row.update({f'restored_{m}': v for m, v in
                        restore_quality(res.perm, [img], [enc], b).items()})
            rows.append(row)
        out[vname] = rows
    return out


def _weights(key: SecretKey, images: Sequence[np.ndarray], eval_images: Sequence[np.ndarray],
             cfg: AnalysisConfig) -> Dict[str, object]:
    import torch
    from mmseg.models.backbones import VisionTransformer

    from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD
    from mmseg_ppenc.adaptation import encrypt_vit_state_dict
    from mmseg_ppenc.security import weights as W

    b = cfg.block_size
    pi = key.block_permutation(b)
    out: Dict[str, object] = {}

    def clone(sd):
        # Model.state_dict() shares storage with the parameters; loading another state
        # dict into the model would silently change it.
        return {k: v.detach().clone() for k, v in sd.items()}

    # --- The tiny backbone of configs/ppenc/tiny, with a pre-trained-like embedding.
    h, w = eval_images[0].shape[:2]
    dims = 64
    torch.manual_seed(cfg.seed)
    vit = VisionTransformer(img_size=(h, w), patch_size=b, embed_dims=dims, num_layers=4,
                            num_heads=4, mlp_ratio=2, out_indices=(0, 1, 2, 3),
                            with_cls_token=False, interpolate_mode='bilinear',
                            final_norm=True)
    vit.init_weights()
    vit.eval()
    plain_sd = clone(vit.state_dict())
    e_plain = W.pca_patch_embedding(images, dims, b)
    plain_sd['patch_embed.projection.weight'] = torch.from_numpy(e_plain).float().reshape(
        dims, 3, b, b)
    enc_sd = clone(encrypt_vit_state_dict(plain_sd, key))

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.stack([torch.from_numpy(encrypt_image(im, key, b)).permute(2, 0, 1)
                     for im in eval_images]).float()
    x = (x - mean) / std

    def features(sd):
        vit.load_state_dict(clone(sd))
        return W.backbone_features(vit, x)

    ref = features(enc_sd)
    rows = []

    def add(mitigation, sd, attack=W.weight_matching_attack, exact_cost=None):
        est = attack(e_plain, W.patch_embedding_matrix(sd))
        cost = exact_cost if exact_cost is not None else W.relative_change(ref,
                                                                           features(sd))
        rows.append({'mitigation': mitigation, 'recovered': W.recovery_of(est, pi),
                     'output_change': cost})

    add('none', enc_sd)
    for lvl in cfg.noise_levels:
        add(f'noise {lvl:g} x RMS', W.add_noise_to_patch_embedding(enc_sd, lvl, cfg.seed))
    add('withhold patch embedding', W.withhold_patch_embedding(enc_sd, cfg.seed))
    sigma = np.random.default_rng(cfg.seed).permutation(dims)
    hidden = W.permute_hidden_channels(enc_sd, sigma)
    # Exact up to the channel order of the outputs: compare after undoing it.
    vit.load_state_dict(clone(hidden))
    with torch.no_grad():
        feats = vit(x)
    vit.load_state_dict(clone(enc_sd))
    with torch.no_grad():
        feats0 = vit(x)
    err = float(max(((a - f0[:, sigma]).norm() / f0.norm()).item()
                    for a, f0 in zip(feats, feats0)))
    add('hidden-channel permutation, column matching', hidden, exact_cost=err)
    add('hidden-channel permutation, sorted-column matching', hidden,
        attack=W.sorted_column_attack, exact_cost=err)
    out['tiny'] = {'embedding': f'{dims} x {3 * b * b} (tiny ViT, 4 layers)', 'rows': rows}

    if cfg.vit_b_embedding:
        e_big = W.pca_patch_embedding(images, 3 * b * b, b)
        big_plain = {'patch_embed.projection.weight':
                     torch.from_numpy(e_big).float().reshape(-1, 3, b, b),
                     'pos_embed': torch.zeros(1, 2, e_big.shape[0])}
        big_enc = encrypt_vit_state_dict(big_plain, key)
        big_rows = []
        for lvl in (0.0,) + tuple(cfg.noise_levels):
            sd = W.add_noise_to_patch_embedding(big_enc, lvl, cfg.seed) if lvl else big_enc
            est = W.weight_matching_attack(e_big, W.patch_embedding_matrix(sd))
            big_rows.append({'mitigation': f'noise {lvl:g} x RMS' if lvl else 'none',
                             'recovered': W.recovery_of(est, pi), 'output_change': None})
        est = W.weight_matching_attack(
            e_big, W.patch_embedding_matrix(W.withhold_patch_embedding(big_enc, cfg.seed)))
        big_rows.append({'mitigation': 'withhold patch embedding',
                         'recovered': W.recovery_of(est, pi), 'output_change': None})
        out['vit_b'] = {'embedding': f'{3 * b * b} x {3 * b * b} (ViT-B size)',
                        'rows': big_rows}
    out['note'] = ('Plain "pre-trained" patch embeddings are principal components of '
                   'image patches (real pre-trained weights are not available offline); '
                   'output_change is ||f - f_exact|| / ||f_exact|| of all backbone outputs '
                   'on encrypted images, a proxy for the accuracy cost before fine-tuning.')
    return out


def _key_handling(key: SecretKey, images, cfg: AnalysisConfig) -> Dict[str, object]:
    out: Dict[str, object] = {'wrong_key': wrong_key_check(images, key, cfg.block_size),
                              'corrupt_key_files': corrupt_key_checks()}
    if cfg.work_dir is None:
        out['work_dir'] = 'skipped (pass --work-dir and --key-file)'
        return out
    user_key = resolve_key(cfg.key_file)
    scan = scan_work_dir(cfg.work_dir, user_key)
    scan['key_fingerprint'] = user_key.fingerprint
    from mmseg_ppenc.security.weights import replay_attack_work_dir
    scan['replay_attack'] = replay_attack_work_dir(cfg.work_dir, user_key)
    key_path = cfg.key_file or os.environ.get('PPENC_KEY_FILE')
    if key_path:
        scan['key_file'] = key_file_mode(key_path)
    out['work_dir'] = scan
    return out


def run_analysis(cfg: Optional[AnalysisConfig] = None, log=print) -> Dict[str, object]:
    """Run all measurements.

    Args:
        cfg (AnalysisConfig, optional): What to measure. Defaults to the default config.
        log (Callable[[str], None]): Progress messages. Defaults to :func:`print`.

    Returns:
        dict: JSON-serialisable results (``inf``/``nan`` replaced by ``None``).
    """
    cfg = cfg or AnalysisConfig()
    t_start = time.time()
    b = cfg.block_size
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise ValueError(f'Unknown or no cipher variants {list(cfg.variants)}; choose from '
                         f'{list(VARIANTS)}.')
    if cfg.num_val < 1:
        raise ValueError(f'num_val (--num-val) = {cfg.num_val}; at least 1 held-out image '
                         'is needed (12 by default).')
    for what, counts in (('coa_counts (--coa-counts)', cfg.coa_counts),
                         ('kpa_pairs (--kpa-pairs)', cfg.kpa_pairs)):
        if not counts or min(counts) < 1 or max(counts) > cfg.num_pool:
            raise ValueError(f'{what} = {list(counts)}: every count must be between 1 and '
                             f'num_pool (--num-pool) = {cfg.num_pool}; raise --num-pool or '
                             'lower the counts.')
    keys = {name: analysis_key(cfg.seed, VARIANTS[name]) for name in cfg.variants}
    main_key = keys.get('shuffle', next(iter(keys.values())))
    val, pool = synthetic_images(cfg)
    user = load_user_images(cfg.user_images, b, cfg.max_side) if cfg.user_images else []
    log(f'data: {len(val)} + {len(pool)} synthetic {cfg.height}x{cfg.width} images, '
        f'{len(user)} photos; analysis keys ' +
        ', '.join(f'{n}={k.fingerprint}' for n, k in keys.items()))
    timings = {}
    results: Dict[str, object] = {'config': {k: v for k, v in asdict(cfg).items()
                                             if k not in ('user_images', 'work_dir',
                                                          'key_file')},
                                  'user_images': [n for n, _ in user],
                                  'key_fingerprints': {n: k.fingerprint
                                                       for n, k in keys.items()}}

    def step(name, fn):
        log(f'[{name}] ...')
        t0 = time.time()
        results[name] = fn()
        timings[name] = time.time() - t0
        log(f'[{name}] done in {timings[name]:.1f} s')

    datasets = {'synthetic': val, 'photos': [im for _, im in user]}
    step('leakage', lambda: leakage_section(keys, datasets, b))
    step('known_plaintext', lambda: known_plaintext_section(keys, pool, val, user, cfg))
    step('ciphertext_only', lambda: ciphertext_only_section(keys, pool, val, user, cfg))
    step('weights', lambda: _weights(main_key, pool + [im for _, im in user], val[:4], cfg))
    step('key_handling', lambda: _key_handling(main_key, val[:4], cfg))
    timings['total'] = time.time() - t_start
    results['seconds'] = timings
    return jsonable(results)


def jsonable(obj):
    """``obj`` with NumPy scalars as Python numbers, tuples as lists, and ``inf``/``nan``
    as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
