"""``ppenc-train``: train a segmentor (the flags of mmsegmentation's ``tools/train.py``)."""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from mmengine.config import DictAction

from ppenc.cli import fail, missing_environment, user_errors

__all__ = ['build_parser', 'main']

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``CONFIG [--work-dir DIR] [--resume] [--amp]
        [--cfg-options K=V ...] [--launcher L] [--local-rank N]``.
    """
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work_dir')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train from a config.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 after training, 2 for a bad config, missing data or a wrong key.
    """
    args = build_parser().parse_args(argv)
    # torch.distributed.launch passes --local-rank; mmengine reads the environment.
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if missing_environment():
        return 1
    from mmseg_ppenc.runner import train
    try:
        train(args.config, args.work_dir, args.cfg_options, args.resume, args.amp,
              args.launcher)
    except user_errors() as e:
        return fail(e)
    return 0
