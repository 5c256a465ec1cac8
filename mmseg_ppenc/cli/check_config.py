"""``ppenc-check``: run every start check of a config without starting a run.

Prints ``ok`` or one line per refusal (and ``warning: ...`` lines on stderr, e.g. for a
plain backbone on encrypted images), and writes nothing: no work_dir, no log, no config
dump. Run it before submitting a cluster job; the same checks run again when the job
starts (:class:`mmseg_ppenc.runner.PPEncRunner`). With ``--tta`` the config is first
switched to test-time augmentation exactly as ``tools/test.py --tta`` switches it
(:func:`mmseg_ppenc.runner.use_tta`: ``tta_model`` around the model, ``tta_pipeline`` as
the test pipeline), so every branch of the TTA pipeline is checked.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from ppenc.cli import USAGE_ERROR, fail, missing_environment, user_errors

__all__ = ['build_parser', 'main']

MODES = ('train', 'val', 'test')


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        argparse.ArgumentParser: Parser for ``CONFIG [--work-dir DIR] [--mode M ...]
        [--tta] [--skip-paths] [--cfg-options K=V ...]``.
    """
    parser = argparse.ArgumentParser(
        description='Check a config before a run: bytes or key material in the config, '
        'its file name or the work_dir; key files; exactness and key consistency of the '
        'model and pipelines; data and checkpoint paths. Prints "ok" or the refusals and '
        'writes nothing.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='the work_dir the run will use (it is checked '
                        'for key material too); defaults as tools/train.py does')
    parser.add_argument('--mode', nargs='+', choices=MODES, default=None,
                        help='dataloaders to check (default: every one the config sets up)')
    parser.add_argument('--tta', action='store_true',
                        help='check the test-time augmentation setup that tools/test.py '
                        '--tta runs (the config\'s tta_model and tta_pipeline; only the '
                        'test dataloader, unless --mode says otherwise)')
    parser.add_argument('--skip-paths', action='store_true',
                        help='do not check that data and checkpoint paths exist (for a '
                        'config meant for another machine)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check a config and print ``ok`` or the refusals.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 when every check passes, 2 when any refuses the run.
    """
    args = build_parser().parse_args(argv)
    if missing_environment():
        return 1
    from mmseg_ppenc.runner import check_config_paths, load_config, use_tta
    from mmseg_ppenc.start_checks import start_problems
    try:
        cfg = load_config(args.config, args.cfg_options, args.work_dir)
        if args.tta:
            use_tta(cfg)
    except user_errors() as e:
        return fail(e)
    warnings: list = []
    problems = [str(e) for e in start_problems(cfg, args.mode, warnings)]
    if not args.skip_paths:
        default = ('test',) if args.tta else MODES  # a TTA model only tests
        modes = tuple(args.mode or [m for m in default if cfg.get(f'{m}_dataloader')])
        try:
            check_config_paths(cfg, modes)
        except user_errors() as e:
            problems.append(str(e))
    for warning in warnings:
        print(f'warning: {warning}', file=sys.stderr)
    if problems:
        for problem in problems:
            fail(problem)
        return USAGE_ERROR
    print('ok')
    return 0
