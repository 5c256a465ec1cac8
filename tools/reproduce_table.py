"""Reproduce the paper's Table I in miniature on this CPU (see mmseg_ppenc.reproduce).

Pre-trains the tiny ViT on plain images of a stand-in task, fine-tunes SETR-MLA/PUP/Naive
in the three settings (baseline, conventional 2, proposed) on synthetic Cityscapes-format
data with the mmengine Runner, evaluates them with IoUMetric and writes
``table1.md``, ``table1.json`` and ``table1.png`` to ``--out-dir``.

Example::

    python tools/reproduce_table.py --out-dir work_dirs/table1
"""
import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.keys import InvalidKeyError
    from mmseg_ppenc.reproduce import (DECODERS, SETTINGS, ExperimentConfig,
                                       format_markdown, run_experiment)
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (defaults are those of :class:`ExperimentConfig`)."""
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description='Table I of Sueyoshi et al. in miniature: '
                                'baseline / conventional 2 / proposed x MLA / PUP / Naive.')
    p.add_argument('--out-dir', default=d.out_dir,
                   help=f'output directory (default: {d.out_dir})')
    p.add_argument('--seed', type=int, default=d.seed,
                   help=f'seed of data, pre-training and fine-tuning (default: {d.seed})')
    p.add_argument('--iters', type=int, default=d.iters,
                   help=f'fine-tuning iterations per run (default: {d.iters})')
    p.add_argument('--pretrain-iters', type=int, default=d.pretrain_iters,
                   help=f'pre-training iterations (default: {d.pretrain_iters})')
    p.add_argument('--decoders', nargs='+', choices=DECODERS, default=list(DECODERS),
                   help='decoders (default: all)')
    p.add_argument('--settings', nargs='+', choices=SETTINGS, default=list(SETTINGS),
                   help='settings (default: all)')
    p.add_argument('--train', type=int, default=d.num_train,
                   help=f'synthetic training images (default: {d.num_train})')
    p.add_argument('--val', type=int, default=d.num_val,
                   help=f'synthetic validation images (default: {d.num_val})')
    p.add_argument('--key-file', default=None,
                   help='key file (default: OUT_DIR/table1.key, created with mode 600 '
                   'if missing, reused otherwise)')
    p.add_argument('--no-scratch', dest='scratch', action='store_false',
                   help='skip the reference runs of the baseline without pre-training')
    p.add_argument('--threads', type=int, default=d.threads,
                   help=f'torch threads (default: {d.threads}; see ExperimentConfig)')
    p.add_argument('--verbose', action='store_true',
                   help="show mmengine's INFO logs and library warnings")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run the experiment and print the table and the total runtime."""
    args = parse_args(argv)
    if not args.verbose:
        # mmseg/mmengine deprecation notices would repeat for every run.
        warnings.filterwarnings('ignore', module=r'(mmseg|mmengine|mmcv)(\.|$)')
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    exp = ExperimentConfig(out_dir=args.out_dir, seed=args.seed, iters=args.iters,
                           pretrain_iters=args.pretrain_iters, decoders=args.decoders,
                           settings=args.settings, num_train=args.train,
                           num_val=args.val, key_file=args.key_file,
                           scratch_reference=args.scratch, threads=args.threads,
                           verbose=args.verbose)
    try:
        exp.validate()
    except ValueError as e:
        sys.exit(f'error: {e}')
    t0 = time.time()
    try:
        result = run_experiment(exp)
    except (FileNotFoundError, InvalidKeyError) as e:  # missing config or bad key file
        sys.exit(f'error: {e}')
    total = time.time() - t0
    print()
    print(format_markdown(result))
    print(f'Wrote {os.path.join(args.out_dir, "table1.md")}, table1.json and table1.png; '
          f'total runtime {total / 60:.1f} min ({total:.0f} s; load average at start '
          f'{result["machine"]["loadavg_start"]}, end {result["machine"]["loadavg_end"]}).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
