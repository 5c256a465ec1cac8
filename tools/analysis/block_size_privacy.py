"""What the block size costs in privacy: the same attacks at block sizes 4, 8 and 16.

Experiment driver behind ``tools/analyze_block_sizes.py``. The block size is the patch
size of the backbone: 16 for ViT/DeiT (SETR, UperNet, Segmenter, DPT), BEiT and MAE, 4 for
Swin and Twins. Every block size is measured on the *same* images (the synthetic street
scenes of :mod:`security_analysis`, same seed and size, a size that every block size
tiles) and with the same analysis key (its permutation for each block size):

1. **Thumbnail.** A permutation inside a block keeps the block's values, so every block's
   mean, a grey thumbnail of ``1/b`` of the image's height and width, is the same for the
   plain and the encrypted image. The thumbnail is computed from the ciphertext alone
   (:func:`ciphertext_thumbnail` takes no key) and scored as in section 1 of the security
   report: upsampled to the image size (nearest neighbour) and compared by SSIM with the
   plain image's mean over channels. Also plain vs encrypted PSNR/SSIM.
2. **Ciphertext-only attack** (:func:`~mmseg_ppenc.security.ciphertext_only_attack`) on
   1, 4, 16, 64 encrypted images: share of key positions recovered exactly, and held-out
   images restored with the estimate (PSNR/SSIM).
3. **Known-plaintext attack** (:func:`~mmseg_ppenc.security.known_plaintext_attack`) with
   known *blocks* instead of whole images: the smallest number of known blocks that
   determines every key position, and that recovers the key exactly, for blocks drawn at
   random from the pool (several draws) and for the first image's blocks in reading order;
   and the number of whole known images needed.

Also the key space, ``(3 b^2)!`` permutations: ``48!`` (about 2^203) for ``b = 4``. No
attack here enumerates keys, so the key space says nothing about these attacks.

:func:`run_sweep` measures, :func:`format_markdown` makes the tables, :func:`main` is the
command line (``--quick`` for tests).
"""
from __future__ import annotations

# First: it limits the BLAS threads before NumPy loads (see there).
from .security_analysis import (AnalysisConfig, analysis_key, ciphertext_only_section,
                                jsonable, leakage_section, synthetic_images)

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

from ppenc.cipher import encrypt_image  # noqa: E402
from mmseg_ppenc.security.common import recovery_stats  # noqa: E402
from mmseg_ppenc.security.known_plaintext import known_plaintext_attack  # noqa: E402
from mmseg_ppenc.security.metrics import block_mean_thumbnail  # noqa: E402

from .common import markdown_table, number, percent, write_json  # noqa: E402

__all__ = ['SweepConfig', 'FAMILIES', 'key_space_log2', 'ciphertext_thumbnail',
           'thumbnail_section', 'known_blocks', 'first_sufficient', 'blocks_needed',
           'known_plaintext_blocks', 'run_sweep', 'format_markdown', 'format_document',
           'build_parser', 'main']

#: Backbone families of the plugin by block (patch) size.
FAMILIES: Dict[int, str] = {4: 'Swin, Twins (PCPVT/SVT)',
                            8: '(none shipped; a ViT with 8-px patches)',
                            16: 'ViT/DeiT, BEiT, MAE'}


@dataclass
class SweepConfig:
    """What :func:`run_sweep` measures.

    Attributes:
        block_sizes (tuple[int]): Block sizes; ``height`` and ``width`` must be multiples
            of each. Defaults to (4, 8, 16).
        height (int): Synthetic image height. Defaults to 128 (as the security report).
        width (int): Synthetic image width. Defaults to 256.
        num_val (int): Held-out images: leakage metrics and what attacks decrypt.
            Defaults to 12.
        num_pool (int): Images the attacks use. Defaults to 64.
        seed (int): Seed of the images, the analysis key and the block draws. Defaults
            to 0.
        coa_counts (tuple[int]): Encrypted-image counts of the ciphertext-only attack.
            Defaults to (1, 4, 16, 64).
        kpa_draws (int): Random block orders for the known-plaintext count. Defaults
            to 25.
    """
    block_sizes: Tuple[int, ...] = (4, 8, 16)
    height: int = 128
    width: int = 256
    num_val: int = 12
    num_pool: int = 64
    seed: int = 0
    coa_counts: Tuple[int, ...] = (1, 4, 16, 64)
    kpa_draws: int = 25

    #: What ``--quick`` changes (small images, few counts; for tests).
    QUICK = dict(height=64, width=128, num_val=2, num_pool=4, coa_counts=(1, 4),
                 kpa_draws=4)

    def analysis_config(self, block_size: int) -> AnalysisConfig:
        """The security report's configuration for one block size (same images)."""
        return AnalysisConfig(num_val=self.num_val, num_pool=self.num_pool,
                              height=self.height, width=self.width, seed=self.seed,
                              block_size=block_size, coa_counts=tuple(self.coa_counts),
                              variants=('shuffle',))


def key_space_log2(block_size: int, channels: int = 3) -> float:
    """``log2((channels * b^2)!)``: the number of block permutations, in bits."""
    return math.lgamma(channels * block_size ** 2 + 1) / math.log(2)


def ciphertext_thumbnail(image: np.ndarray, block_size: int) -> np.ndarray:
    """The grey block-mean thumbnail at its own resolution, ``(H/b) x (W/b)``.

    Takes an image and nothing else: given an encrypted image, this is what anyone who
    holds it sees without the key (the same array as for the plain image).
    """
    return block_mean_thumbnail(image, block_size)[::block_size, ::block_size]


def thumbnail_section(plains: Sequence[np.ndarray], encs: Sequence[np.ndarray],
                      block_size: int) -> Dict[str, object]:
    """Size of the thumbnail and whether the ciphertext's equals the plain image's.

    Returns:
        dict: ``shape`` and ``pixels`` of the thumbnail of the first image,
        ``fraction_of_pixels`` (``1/b^2``) and ``max_abs_diff``, the largest difference
        between the thumbnails of the encrypted and the plain images (0: identical).
    """
    diff = max(float(np.abs(ciphertext_thumbnail(e, block_size) -
                            ciphertext_thumbnail(p, block_size)).max())
               for p, e in zip(plains, encs))
    shape = ciphertext_thumbnail(encs[0], block_size).shape
    return {'shape': list(shape), 'pixels': int(shape[0] * shape[1]),
            'fraction_of_pixels': 1.0 / block_size ** 2, 'max_abs_diff': diff}


# ------------------------------------------------------------------ known plaintext
def known_blocks(plains: Sequence[np.ndarray], encs: Sequence[np.ndarray], block_size: int,
                 where: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Known (plain, encrypted) single-block pairs.

    Args:
        plains (Sequence[np.ndarray]): Plain images.
        encs (Sequence[np.ndarray]): Their encryptions.
        block_size (int): ``b``.
        where (np.ndarray): ``(N, 3)`` rows ``(image, block row, block column)``.

    Returns:
        list[tuple[np.ndarray, np.ndarray]]: ``b x b x 3`` crops, in the order of
        ``where``; :func:`known_plaintext_attack` takes them as image pairs.
    """
    b = block_size
    return [(plains[i][y * b:(y + 1) * b, x * b:(x + 1) * b],
             encs[i][y * b:(y + 1) * b, x * b:(x + 1) * b]) for i, y, x in where]


def first_sufficient(ok: Callable[[int], bool], limit: int) -> Optional[int]:
    """The smallest ``n`` in ``1..limit`` with ``ok(n)``, for a monotone ``ok``.

    Doubles ``n`` until ``ok`` holds, then bisects. None if ``ok(limit)`` is false.
    """
    hi = 1
    while not ok(hi):
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = hi // 2  # ok(lo) is false (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def blocks_needed(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], perm: np.ndarray,
                  block_size: int) -> Dict[str, Optional[int]]:
    """Known blocks (a prefix of ``pairs``) that the known-plaintext attack needs.

    Both properties only improve with more blocks: the attack groups positions whose
    values agree in every known block, and another block can only split groups. Every
    position is determined once every group is a single position; the key is recovered
    exactly once every group is also paired right, and a group of a correct estimate
    splits into groups that are still paired right. So the count can be bisected.

    Returns:
        dict: ``determined`` (blocks until every position has one candidate) and
        ``exact`` (until the estimate equals the key; at most ``determined``: a group of
        ambiguous positions can be paired right by the attack's tie-break), None when all
        ``pairs`` do not suffice.
    """
    cache: Dict[int, object] = {}

    def attack(n):
        if n not in cache:
            cache[n] = known_plaintext_attack(pairs[:n], block_size)
        return cache[n]

    return {'determined': first_sufficient(lambda n: attack(n).fraction_determined == 1.0,
                                           len(pairs)),
            'exact': first_sufficient(
                lambda n: recovery_stats(attack(n).perm, perm, block_size)['exact'] == 1.0,
                len(pairs))}


def known_plaintext_blocks(pool: Sequence[np.ndarray], key, block_size: int, draws: int,
                           seed: int, max_blocks: int = 1024) -> Dict[str, object]:
    """Section 3: known blocks and known images that give the key away.

    Args:
        pool (Sequence[np.ndarray]): Plain images (encrypted here with ``key``).
        key (SecretKey): The key; only to encrypt and to score, never given to an attack.
        block_size (int): ``b``.
        draws (int): Random block orders.
        seed (int): Seed of the orders (with ``b``).
        max_blocks (int): Blocks of each random order offered to the attack; a draw that
            needs more is reported unresolved. Defaults to 1024.
    """
    b = block_size
    perm = key.block_permutation(b)
    encs = [encrypt_image(p, key, b) for p in pool]
    rows, cols = pool[0].shape[0] // b, pool[0].shape[1] // b
    grid = np.stack(np.meshgrid(np.arange(len(pool)), np.arange(rows), np.arange(cols),
                                indexing='ij'), -1).reshape(-1, 3)
    rng = np.random.default_rng([seed, b])
    drawn = {'determined': [], 'exact': []}
    for _ in range(draws):
        order = rng.permutation(len(grid))[:max_blocks]
        found = blocks_needed(known_blocks(pool, encs, b, grid[order]), perm, b)
        for k, v in found.items():
            drawn[k].append(v)
    one = known_plaintext_attack(known_blocks(pool, encs, b, grid[:1]), b)
    images = first_sufficient(
        lambda n: known_plaintext_attack(list(zip(pool[:n], encs[:n])),
                                         b).fraction_determined == 1.0, len(pool))

    def spread(values):
        if any(v is None for v in values):
            return {'median': None, 'min': None, 'max': None, 'unresolved': True}
        return {'median': float(np.median(values)), 'min': int(min(values)),
                'max': int(max(values))}

    return {'random_blocks': {k: spread(v) for k, v in drawn.items()},
            'draws': draws, 'max_blocks': max_blocks,
            'first_image_in_reading_order': blocks_needed(
                known_blocks(pool, encs, b, grid[:rows * cols]), perm, b),
            'one_block_determined': one.fraction_determined,
            'one_block_exact': recovery_stats(one.perm, perm, b)['exact'],
            'images_needed': images, 'blocks_per_image': rows * cols}


# ------------------------------------------------------------------------- sweep
def run_sweep(cfg: Optional[SweepConfig] = None, log=print) -> Dict[str, object]:
    """Measure every block size of ``cfg`` on one set of images.

    Returns:
        dict: JSON-serialisable results: ``config``, ``key_fingerprint``, and per block
        size (as a string key) ``positions``, ``key_space_log2``, ``thumbnail``,
        ``leakage`` (section 1 of the security report: ``psnr``, ``ssim_luma``,
        ``thumb_ssim``, ...), ``ciphertext_only`` (rows of section 3) and
        ``known_plaintext``.
    """
    cfg = cfg or SweepConfig()
    for b in cfg.block_sizes:
        if cfg.height % b or cfg.width % b:
            raise ValueError(f'Image size {cfg.height}x{cfg.width} is not a multiple of '
                             f'block size {b}; every block size must tile the same images.')
    if not cfg.coa_counts or min(cfg.coa_counts) < 1 or max(cfg.coa_counts) > cfg.num_pool:
        raise ValueError(f'coa_counts {list(cfg.coa_counts)} must lie in 1..num_pool '
                         f'({cfg.num_pool}).')
    t0 = time.time()
    key = analysis_key(cfg.seed, flip_compatible=False)
    val, pool = synthetic_images(cfg.analysis_config(cfg.block_sizes[0]))
    log(f'data: {len(val)} + {len(pool)} synthetic {cfg.height}x{cfg.width} images; '
        f'analysis key {key.fingerprint}')
    out: Dict[str, object] = {'config': asdict(cfg), 'key_fingerprint': key.fingerprint,
                              'block_sizes': {}}
    for b in cfg.block_sizes:
        t1 = time.time()
        acfg = cfg.analysis_config(b)
        keys = {'shuffle': key}
        res = {'families': FAMILIES.get(b, ''), 'positions': 3 * b * b,
               'key_space': f'{3 * b * b}!', 'key_space_log2': key_space_log2(b),
               'thumbnail': thumbnail_section(val, [encrypt_image(v, key, b) for v in val], b),
               'leakage': leakage_section(keys, {'synthetic': val}, b)['shuffle']['synthetic'],
               'ciphertext_only': ciphertext_only_section(keys, pool, val, [],
                                                          acfg)['shuffle'],
               'known_plaintext': known_plaintext_blocks(pool, key, b, cfg.kpa_draws,
                                                         cfg.seed)}
        res['seconds'] = time.time() - t1
        out['block_sizes'][str(b)] = res
        log(f'[block {b}] done in {res["seconds"]:.1f} s')
    out['seconds'] = time.time() - t0
    return jsonable(out)


# ------------------------------------------------------------------------- tables
def _blocks(d: Dict[str, object]) -> str:
    if d.get('unresolved'):
        return 'not reached'
    med = d['median']
    med = f'{med:.0f}' if float(med).is_integer() else f'{med:.1f}'
    return f"{med} ({d['min']}–{d['max']})"


def format_markdown(res: Dict[str, object]) -> str:
    """The summary table (one row per block size) and the ciphertext-only detail table."""
    c = res['config']
    h, w = c['height'], c['width']
    rows, detail = [], []
    for b, r in res['block_sizes'].items():
        th, lk, kp = r['thumbnail'], r['leakage'], r['known_plaintext']
        coa = r['ciphertext_only']
        first, last = coa[0], coa[-1]
        rows.append([f'{b}×{b}', r['families'] or '-',
                     f"{r['key_space']} ≈ 2^{r['key_space_log2']:.0f}",
                     f"{th['shape'][0]}×{th['shape'][1]} (1/{int(b) ** 2} of the pixels)",
                     number(lk['thumb_ssim']), number(lk['ssim_luma']),
                     f"{percent(first['exact'])} / {percent(last['exact'])}",
                     f"{number(first['restored_ssim_luma'])} / "
                     f"{number(last['restored_ssim_luma'])}",
                     _blocks(kp['random_blocks']['determined']),
                     _blocks(kp['random_blocks']['exact']),
                     str(kp['first_image_in_reading_order']['determined'] or 'not reached'),
                     str(kp['images_needed'] or 'not reached')])
        for row in coa:
            detail.append([f'{b}×{b}', row['images'], row['blocks'], percent(row['exact']),
                           percent(row['near']), percent(row['channel']),
                           number(row['restored_psnr'], '.2f'),
                           number(row['restored_ssim_luma']), number(row['restored_ssim_grey'])])
    counts = sorted(c['coa_counts'])
    n1, nmax = counts[0], counts[-1]
    summary = markdown_table(
        ['block', 'families', 'key space', f'thumbnail of a {h}×{w} image',
         'thumbnail SSIM', 'encrypted vs plain SSIM Y',
         f'ciphertext-only: key exact, {n1} / {nmax} images',
         f'restored SSIM Y, {n1} / {nmax} images',
         f"known blocks until all positions are determined: median (min–max, "
         f"{c['kpa_draws']} random draws)",
         'known blocks until the key is exact', 'known blocks in reading order of one image',
         'known images needed'], rows, align=False)
    coa_table = markdown_table(
        ['block', 'encrypted images', 'blocks', 'key exact', 'within 1 px',
         'right channel', 'restored PSNR dB', 'SSIM Y', 'SSIM grey'], detail, align=False)
    return summary + '\n\n' + coa_table + '\n'


def format_document(res: Dict[str, object], command: str) -> str:
    """``docs/privacy_block_sizes.md``: the tables with how they were made."""
    c = res['config']
    diffs = {b: r['thumbnail']['max_abs_diff'] for b, r in res['block_sizes'].items()}
    same = ('exactly at every block size (largest difference over the held-out images: 0)'
            if not any(diffs.values()) else 'up to a largest difference of ' +
            ', '.join(f'{v:g} (block {b})' for b, v in diffs.items()))
    return (
        '# Privacy by block size (4×4 for Swin/Twins, 16×16 for ViT/BEiT/MAE)\n\n'
        'Generated by `tools/analyze_block_sizes.py`; the plain-words discussion is in '
        'SECURITY.md, section "Block size: what Swin and Twins (4×4) cost in privacy". The '
        f"same {c['num_val']} held-out and {c['num_pool']} pool synthetic street scenes "
        f"({c['height']}×{c['width']}, data seed {c['seed']}) and the same analysis key "
        f"({res['key_fingerprint']}, its permutation for each block size) for every "
        'row.\n\n'
        '- **Thumbnail SSIM**: the encrypted image\'s block-mean thumbnail, upsampled to '
        'the image size (nearest neighbour), against the plain image\'s mean over '
        'channels; the same figure as section 1 of the security report. The thumbnail of '
        'the encrypted image equals the plain image\'s ' + same + ', and needs no key.\n'
        '- **Ciphertext-only**: the statistical attack of section 3 on the first N '
        'encrypted pool images; restored = the held-out images decrypted with its '
        'estimate.\n'
        '- **Known blocks**: the known-plaintext attack given single known blocks '
        '(plain and encrypted), drawn at random from the pool images, or the blocks of '
        'the first pool image in reading order; "known images" counts whole images.\n\n'
        + format_markdown(res) +
        f'\nCommand:\n\n```bash\n{command}\n```\n')


# ------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of ``tools/analyze_block_sizes.py``."""
    d = SweepConfig()
    p = argparse.ArgumentParser(
        description='Thumbnail leakage, ciphertext-only and known-plaintext attacks at '
                    'block sizes 4, 8 and 16 on the same synthetic images.')
    p.add_argument('--block-sizes', type=int, nargs='+', default=list(d.block_sizes))
    p.add_argument('--size', type=int, nargs=2, default=None, metavar=('HEIGHT', 'WIDTH'),
                   help=f'image size, multiples of every block size (default: {d.height} '
                        f'{d.width})')
    p.add_argument('--num-val', type=int, default=None, help=f'default: {d.num_val}')
    p.add_argument('--num-pool', type=int, default=None, help=f'default: {d.num_pool}')
    p.add_argument('--coa-counts', type=int, nargs='+', default=None,
                   help=f'default: {" ".join(map(str, d.coa_counts))}')
    p.add_argument('--kpa-draws', type=int, default=None, help=f'default: {d.kpa_draws}')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true',
                   help='small images and counts (for tests); flags given still win')
    p.add_argument('--out', default=os.path.join('work_dirs', 'security',
                                                 'privacy_block_sizes.json'))
    p.add_argument('--md', default=None, help='also write the tables as a Markdown document')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep, print the tables, write the JSON (and ``--md``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    values = dict(SweepConfig.QUICK) if args.quick else {}
    given = {'num_val': args.num_val, 'num_pool': args.num_pool, 'kpa_draws': args.kpa_draws,
             'coa_counts': tuple(args.coa_counts) if args.coa_counts else None}
    if args.size:
        given.update(height=args.size[0], width=args.size[1])
    values.update({k: v for k, v in given.items() if v is not None})
    cfg = SweepConfig(block_sizes=tuple(args.block_sizes), seed=args.seed, **values)
    try:
        res = run_sweep(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    command = ' '.join(['python tools/analyze_block_sizes.py'] + argv)
    res['command'] = command
    print(format_markdown(res))
    print(f'JSON written to {write_json(res, args.out)}')
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, 'w', encoding='utf-8') as f:
            f.write(format_document(res, command))
        print(f'Markdown written to {args.md}')
    return 0
