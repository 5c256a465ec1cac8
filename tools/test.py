"""Evaluate a checkpoint (same flags as mmsegmentation's tools/test.py)."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.runner import ConfigError, DictAction, test
    from mmseg_ppenc.keys import InvalidKeyError
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='directory to save predicted label maps')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        metrics = test(args.config, args.checkpoint, args.work_dir, args.cfg_options,
                       args.launcher, args.out)
    except (ConfigError, InvalidKeyError) as e:
        sys.exit(f'error: {e}')
    if metrics:
        print('Test results: ' + '  '.join(f'{k}={float(v):.2f}' for k, v in
                                           metrics.items() if np.ndim(v) == 0))


if __name__ == '__main__':
    main()
