"""``ppenc-test``: evaluate a checkpoint (the flags of mmsegmentation's ``tools/test.py``)."""
from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

from mmengine.config import DictAction

from mmseg_ppenc.cli.train import LAUNCHERS
from ppenc.cli import fail, missing_environment, user_errors

__all__ = ['build_parser', 'format_metrics', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``CONFIG CHECKPOINT [--work-dir DIR]
        [--out DIR] [--tta] [--cfg-options K=V ...] [--launcher L] [--local-rank N]``.
    """
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='directory to save predicted label maps')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s tta_pipeline and '
                        'tta_model)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def format_metrics(metrics: Mapping[str, object]) -> str:
    """The one-line summary printed after testing.

    Args:
        metrics (Mapping[str, object]): What ``Runner.test()`` returned.

    Returns:
        str: ``'Test results: aAcc=..  mIoU=..  mAcc=..'`` with the scalar metrics to two
        decimals (as ``IoUMetric`` rounds them).
    """
    import numpy as np
    return 'Test results: ' + '  '.join(f'{k}={float(v):.2f}' for k, v in metrics.items()
                                        if np.ndim(v) == 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate a checkpoint and print its metrics.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 after testing, 2 for a bad config, a missing checkpoint or a wrong key.
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if missing_environment():
        return 1
    from mmseg_ppenc.runner import test
    try:
        metrics = test(args.config, args.checkpoint, args.work_dir, args.cfg_options,
                       args.launcher, args.out, tta=args.tta)
    except user_errors() as e:
        return fail(e)
    if metrics:
        print(format_metrics(metrics))
    return 0
