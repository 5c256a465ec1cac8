"""Measure what the block encryption protects and what it does not.

Prints Markdown tables (visual leakage, known-plaintext, ciphertext-only and model-weight
attacks, key handling) and writes the numbers as JSON. With no arguments it generates
synthetic Cityscapes-format images and takes well under a minute on a 2-core CPU:

    python tools/analyze_security.py
    python tools/analyze_security.py --images my_photos/ --out results/security.json
    python tools/analyze_security.py --work-dir work_dirs/run1 --key-file keys/run1.key
"""
import argparse
import json
import os
import sys

# The attacks work on many small (256..768) matrices; on a busy machine, multi-threaded
# BLAS makes those calls over ten times slower than one thread. Set before NumPy loads;
# an explicit setting in the environment wins.
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '1')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.keys import InvalidKeyError
    from mmseg_ppenc.security.analysis import (VARIANTS, AnalysisConfig, format_report,
                                               run_analysis)
    from mmseg_ppenc.security.weights import (load_state_dict, patch_embedding_matrix,
                                              weight_matching_attack)
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def parse_args(argv=None):
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
    return parser.parse_args(argv)


def attack_checkpoints(plain_path, enc_path, key_file=None):
    """Run the weight attack on two checkpoint files; print and return the outcome."""
    import numpy as np
    from mmseg_ppenc.keys import resolve_key
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


def main(argv=None):
    args = parse_args(argv)
    if bool(args.plain_checkpoint) != bool(args.encrypted_checkpoint):
        sys.exit('error: --plain-checkpoint and --encrypted-checkpoint go together.')
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
        sys.exit(f'error: {e}')
    print(format_report(res))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2, allow_nan=False)
    print(f'JSON written to {args.out}')


if __name__ == '__main__':
    main()
