"""Run every security measurement and report it as tables and JSON.

Experiment driver, not library code: :mod:`security_analysis` runs the measurements
(:func:`run_analysis`); this file formats the report and holds the command line of
``python tools/analyze_security.py``. With no arguments it generates synthetic
Cityscapes-format images and takes well under a minute on a 2-core CPU::

    python tools/analyze_security.py
    python tools/analyze_security.py --images my_photos/ --out results/security.json
    python tools/analyze_security.py --work-dir work_dirs/run1 --key-file keys/run1.key

:func:`format_report` turns the result into Markdown tables (what the tool prints and what
``SECURITY.md`` quotes).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, Optional, Sequence

# First: it limits the BLAS threads before NumPy loads (see there).
from .security_analysis import (VARIANTS, AnalysisConfig, analysis_key, load_user_images,
                                run_analysis)

import numpy as np  # noqa: E402

from ppenc.keys import InvalidKeyError, resolve_key  # noqa: E402
from mmseg_ppenc.security.weights import (load_state_dict,  # noqa: E402
                                          patch_embedding_matrix, weight_matching_attack)

from .common import markdown_table, number, percent  # noqa: E402

__all__ = ['AnalysisConfig', 'run_analysis', 'format_report', 'load_user_images',
           'analysis_key', 'VARIANTS', 'attack_checkpoints', 'build_parser', 'parse_args',
           'main']


# --------------------------------------------------------------------------- report
def format_report(res: Dict[str, object]) -> str:
    """Markdown tables of a :func:`run_analysis` result.

    The tables are in the compact form (``align=False``): ``SECURITY.md`` quotes them as
    the tool prints them.
    """
    parts = []
    leak = res['leakage']
    rows, rows2 = [], []
    for v, per in leak.items():
        for d, m in per.items():
            rows.append([v, f"{d} ({m['num_images']})", number(m['psnr'], '.2f'),
                         number(m['ssim_luma']), number(m['ssim_r']), number(m['ssim_g']),
                         number(m['ssim_b']), number(m['thumb_ssim'])])
            rows2.append([v, f"{d} ({m['num_images']})"] +
                         [f"{m[f'corr_{x}_plain']:.3f} / {m[f'corr_{x}_enc']:.3f}"
                          for x in ('horizontal', 'vertical', 'diagonal')] +
                         [f"{m['entropy_plain']:.3f} / {m['entropy_enc']:.3f}",
                          f"{m['entropy_all_plain']:.3f} / {m['entropy_all_enc']:.3f}"])
    parts.append('### 1. Visual leakage (encrypted vs plain, mean over images)\n\n' +
                 markdown_table(['cipher', 'images', 'PSNR dB', 'SSIM Y', 'SSIM R', 'SSIM G',
                                 'SSIM B', 'block-mean thumbnail SSIM'], rows, align=False))
    parts.append(markdown_table(
        ['cipher', 'images', 'adjacent corr. H plain / enc', 'V plain / enc',
         'diagonal plain / enc', 'entropy per channel plain / enc (bits)',
         'entropy all channels plain / enc'], rows2, align=False))

    rows = []
    for v, lst in res['known_plaintext'].items():
        for r in lst:
            rows.append([v, f"{r['pairs']} {r['source']}", r['blocks'], percent(r['determined']),
                         percent(r['exact']), number(r['heldout_psnr'], '.2f'),
                         number(r['heldout_ssim_luma'])])
    parts.append('### 2. Known-plaintext attack\n\n' + markdown_table(
        ['cipher', 'known pairs', 'blocks', 'positions determined', 'key recovered (exact)',
         'held-out images decrypted: PSNR dB', 'SSIM Y'], rows, align=False))

    rows = []
    for v, lst in res['ciphertext_only'].items():
        for r in lst:
            rows.append([v, f"{r['images']} {r['source']}", r['blocks'], percent(r['exact']),
                         percent(r['pixel']), percent(r['near']), percent(r['channel']),
                         number(r['restored_psnr'], '.2f'), number(r['restored_ssim_luma']),
                         number(r['restored_ssim_grey']), f"{r['seconds']:.1f}"])
    chance = 100.0 / (3 * res['config']['block_size'] ** 2)
    parts.append('### 3. Ciphertext-only attack\n\n' + markdown_table(
        ['cipher', 'encrypted images', 'blocks', 'exact', 'right pixel (any channel)',
         'within 1 px', 'right channel', 'restored PSNR dB', 'SSIM Y', 'SSIM grey', 's'],
        rows, align=False) +
        f'\n\nChance level: {chance:.2f} % exact.')

    rows = []
    for model in ('tiny', 'vit_b'):
        if model not in res['weights']:
            continue
        m = res['weights'][model]
        for r in m['rows']:
            rows.append([m['embedding'], r['mitigation'], percent(r['recovered']),
                         '-' if r['output_change'] is None else f"{r['output_change']:.2e}"])
    parts.append('### 4. Model-weight attack (public plain weights vs uploaded encrypted '
                 'weights)\n\n' + markdown_table(['patch embedding', 'mitigation before upload',
                                                 'key recovered', 'backbone output change'],
                                                rows, align=False) +
                 '\n\n' + res['weights']['note'])

    kh = res['key_handling']
    wk = kh['wrong_key']
    ck = kh['corrupt_key_files']
    rows = [['decrypt with a wrong key',
             f"PSNR {wk['wrong_psnr']:.2f} dB, SSIM Y {wk['wrong_ssim_luma']:.3f} "
             f"(ciphertext: {wk['enc_psnr']:.2f} dB, {wk['enc_ssim_luma']:.3f}; right key: "
             f"{number(wk['right_psnr'], '.2f')} dB)"],
            ['new key file permissions', ck['saved_mode']]]
    for name in ('flipped_bit', 'truncated', 'wrong_header', 'missing'):
        rows.append([f'load a key file: {name.replace("_", " ")}',
                     'refused (InvalidKeyError)' if ck[f'{name}_rejected'] else
                     'ACCEPTED (bug)'])
    wd = kh['work_dir']
    if isinstance(wd, str):
        rows.append(['key material in work_dir', wd])
    else:
        rows.append(['key material in work_dir',
                     f"{wd['files_scanned']} files scanned, " +
                     ('no key material found' if wd['ok'] else
                      'LEAKED in: ' + ', '.join(wd['leaks']))])
        ra = wd.get('replay_attack') or {}
        if ra.get('applicable') is False:
            rows.append(['key from checkpoints by replaying the initialisation',
                         _replay_not_applicable(ra, res)])
        elif ra.get('max_recovery') is not None:
            rows.append(['key from checkpoints by replaying the initialisation',
                         f"{percent(ra['max_recovery'])} of the permutation (chance "
                         f"{percent(ra['chance'])}): " + ('at chance level' if ra['at_chance']
                                                       else 'KEY EXPOSED')])
        if 'key_file' in wd:
            rows.append(['key file permissions', f"{wd['key_file']['mode']} (" +
                         ('owner only' if wd['key_file']['owner_only'] else
                          'readable by others: chmod 600') + ')'])
    parts.append('### 5. Key handling\n\n' +
                 markdown_table(['check', 'result'], rows, align=False))
    return '\n\n'.join(parts) + '\n'


def _replay_not_applicable(replay: Dict[str, object], res: Dict[str, object]) -> str:
    """The replay row of a run from pre-trained weights: what threatens its key instead,
    with the weight-matching figure (measured on the given checkpoints when
    ``--plain-checkpoint`` was passed, else section 4's)."""
    attack = res.get('checkpoint_attack')
    if attack and 'recovered' in attack:
        figure = (f"{percent(attack['recovered'])} of key {attack['key_fingerprint']} "
                  'recovered from the given --plain-checkpoint and --encrypted-checkpoint')
    elif attack:
        figure = ('matched columns of the given --plain-checkpoint and '
                  f"--encrypted-checkpoint have cosine similarity min "
                  f"{attack['matched_cosine_min']:.4f} (1.0: the key is recovered)")
    else:
        rows = (res.get('weights') or {}).get('tiny', {}).get('rows') or [{}]
        figure = (f"{percent(rows[0].get('recovered'))} recovered without mitigation in "
                  'section 4; measure this run with --plain-checkpoint PUBLIC_WEIGHTS '
                  '--encrypted-checkpoint CHECKPOINT')
    return (f"not applicable: the run starts from pre-trained weights "
            f"({replay['pretrained']}), not from a random initialisation. Anyone holding "
            'those public weights recovers the key from its checkpoints by weight matching '
            f'instead: {figure}')


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: The parser of ``tools/analyze_security.py``.
    """
    parser = argparse.ArgumentParser(
        description='Security analysis of block-wise image encryption: leakage metrics, '
                    'known-plaintext, ciphertext-only and model-weight attacks, key '
                    'handling.')
    parser.add_argument('--images', nargs='+', default=[], metavar='PATH',
                        help='extra photos (files or directories) to analyse besides the '
                             'synthetic data')
    parser.add_argument('--out', default='work_dirs/security/security.json',
                        help='JSON output path (default: %(default)s)')
    parser.add_argument('--num-val', type=int, default=12,
                        help='synthetic images for metrics and held-out decryption '
                             '(default: %(default)s)')
    parser.add_argument('--num-pool', type=int, default=64,
                        help='synthetic images available to the attacks '
                             '(default: %(default)s)')
    parser.add_argument('--size', type=int, nargs=2, default=[128, 256],
                        metavar=('HEIGHT', 'WIDTH'),
                        help='synthetic image size, multiples of 16 (default: %(default)s)')
    parser.add_argument('--coa-counts', type=int, nargs='+', default=[1, 2, 4, 8, 16, 32, 64],
                        help='numbers of encrypted images for the ciphertext-only attack '
                             '(default: %(default)s)')
    parser.add_argument('--kpa-pairs', type=int, nargs='+', default=[1, 2, 4],
                        help='numbers of known pairs (default: %(default)s)')
    parser.add_argument('--max-side', type=int, default=512,
                        help='downscale photos to this longest side (default: %(default)s)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                        choices=list(VARIANTS),
                        help='cipher variants to analyse (default: all)')
    parser.add_argument('--no-vit-b', action='store_true',
                        help='skip the ViT-B-sized (768 x 768) weight-attack rows')
    parser.add_argument('--seed', type=int, default=0, help='data and analysis-key seed')
    parser.add_argument('--work-dir', help='a training work_dir to scan for key material')
    parser.add_argument('--key-file', help='the key file of that run (default: '
                                           '$PPENC_KEY_FILE)')
    parser.add_argument('--plain-checkpoint',
                        help='public plain pre-trained weights, to attack together with '
                             '--encrypted-checkpoint')
    parser.add_argument('--encrypted-checkpoint',
                        help='an encrypted model (e.g. what was uploaded to a server)')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        argparse.Namespace: The parsed flags.
    """
    return build_parser().parse_args(argv)


def attack_checkpoints(plain_path: str, enc_path: str,
                       key_file: Optional[str] = None) -> Dict[str, object]:
    """Run the weight attack on two checkpoint files; print and return the outcome.

    Args:
        plain_path (str): Public plain pre-trained checkpoint.
        enc_path (str): The encrypted (key-adapted) checkpoint.
        key_file (str, optional): The key, to measure how much of it was recovered.
            Defaults to None (``$PPENC_KEY_FILE`` if set, else no recovery rate).

    Returns:
        dict: Cosine similarities of the matched columns and, with a key, the recovered
        fraction and the key's fingerprint.
    """
    plain = patch_embedding_matrix(load_state_dict(plain_path))
    enc = patch_embedding_matrix(load_state_dict(enc_path))
    est = weight_matching_attack(plain, enc)
    cos = np.sum(enc / np.linalg.norm(enc, axis=0) *
                 plain[:, est] / np.linalg.norm(plain[:, est], axis=0), axis=0)
    out = {'matched_cosine_min': float(cos.min()), 'matched_cosine_mean': float(cos.mean())}
    if key_file or os.environ.get('PPENC_KEY_FILE'):
        key = resolve_key(key_file)
        pi = key.block_permutation(int(round((plain.shape[1] / 3) ** 0.5)))
        out['recovered'] = float(np.mean(est == pi))
        out['key_fingerprint'] = key.fingerprint
    print('weight attack on the given checkpoints: matched columns have cosine similarity '
          f"min {out['matched_cosine_min']:.6f}, mean {out['matched_cosine_mean']:.6f} "
          '(1.0 = every column matched exactly: the permutation is recovered)' +
          (f"; {100 * out['recovered']:.1f} % of key {out['key_fingerprint']} recovered"
           if 'recovered' in out else ''))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the analysis, print the report and write the JSON.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 for bad input (one ``error: ...`` line on stderr).
    """
    args = parse_args(argv)
    if bool(args.plain_checkpoint) != bool(args.encrypted_checkpoint):
        print('error: --plain-checkpoint and --encrypted-checkpoint go together.',
              file=sys.stderr)
        return 2
    cfg = AnalysisConfig(num_val=args.num_val, num_pool=args.num_pool, seed=args.seed,
                         height=args.size[0], width=args.size[1],
                         coa_counts=tuple(args.coa_counts), kpa_pairs=tuple(args.kpa_pairs),
                         user_images=list(args.images), max_side=args.max_side,
                         work_dir=args.work_dir, key_file=args.key_file,
                         vit_b_embedding=not args.no_vit_b,
                         variants=tuple(args.variants))
    try:
        res = run_analysis(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.plain_checkpoint:
            res['checkpoint_attack'] = attack_checkpoints(
                args.plain_checkpoint, args.encrypted_checkpoint, args.key_file)
    except (InvalidKeyError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_report(res))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2, allow_nan=False)
    print(f'JSON written to {args.out}')
    return 0

