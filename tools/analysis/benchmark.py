"""Speed benchmarks behind ``tools/benchmark.py``: cipher cost, training throughput, memory.

Three comparisons, each measured side by side in one run:

1. **Cipher cost** (:func:`cipher_cost.bench_cipher`, :func:`cipher_cost.bench_pipeline`):
   ``BlockScramble`` on a 768x768 crop and a 1024x2048 image against a plain copy of the
   same array, and its share of the stock Cityscapes training pipeline's per-sample time.
2. **Encryption at train time** (:func:`train_speed.bench_train`): images/s and memory of
   the baseline, conventional 2 and proposed models at the plugin's defaults, same model
   and shapes.
3. **Stock mmseg vs the plugin** (:func:`train_speed.bench_train`): stock SETR (float32,
   mmcv attention) against fused attention + bf16 mixed precision (where supported), and
   against the opt-in speed switches (see :data:`common.SWITCHES`).

The timing rules are in :mod:`train_speed`; the models in :mod:`variants`; the report in
:mod:`benchmark_report`; the step profile in :mod:`profile_step`. This module runs the
chosen sections (:func:`run`) and holds the command line (:func:`main`); it also
re-exports the public names of those modules that callers of the benchmark use.

This module is part of the repository's tools, not of the installed package: it reads
the configs of the checkout it lives in (``configs/ppenc`` two levels above this file)
unless told otherwise.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import mmseg_ppenc  # noqa: F401  (compat fixes and registrations before mmseg)
import numpy as np
import torch

from .benchmark_report import compare, format_report, throughput_ratio
from .cipher_cost import bench_cipher, bench_pipeline
from .common import (ARCHS, CONFIG_DIR, DECODERS, SWITCHES, TIMERS, default_timer,
                     parse_variant, summarize, time_interleaved, time_sequential,
                     variant_name, write_json)
from .profile_step import profile_step
from .train_speed import bench_train
from .variants import model_configs

__all__ = ['SWITCHES', 'TIMERS', 'default_timer', 'time_interleaved', 'time_sequential',
           'summarize', 'bench_cipher', 'bench_pipeline', 'model_configs', 'parse_variant',
           'variant_name', 'bench_train', 'throughput_ratio', 'compare', 'format_report',
           'write_json', 'run', 'CONFIG_DIR', 'SECTIONS', 'parse_args', 'main']


def _meta(argv: Optional[Sequence[str]], device: str) -> dict:
    """The machine, the versions and the command, recorded with the report."""
    name = platform.processor() or platform.machine()
    cuda = device.startswith('cuda') and torch.cuda.is_available()
    if cuda:
        name = torch.cuda.get_device_name()
    return dict(device=device, device_name=name, torch=torch.__version__,
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if cuda else None,
                gpu_memory_mib=(torch.cuda.get_device_properties(0).total_memory / 2 ** 20
                                if cuda else None),
                numpy=np.__version__, python=platform.python_version(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                tf32_cudnn=torch.backends.cudnn.allow_tf32,
                command=' '.join(['python', 'tools/benchmark.py', *(argv or [])]),
                time=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


#: Sections of a run (:func:`run`), in the order they run.
SECTIONS = ('cipher', 'pipeline', 'train', 'profile')


def run(sections: Sequence[str] = ('cipher', 'pipeline', 'train'),
        argv: Optional[Sequence[str]] = None, cipher_repeats: int = 50,
        pipeline_repeats: int = 20, log: Callable[[str], None] = print,
        out: Optional[str] = None, profile_variant: str = 'baseline',
        profile_steps: int = 1, **train_kwargs) -> dict:
    """Run the chosen sections and compare the results.

    Args:
        sections (Sequence[str]): Any of :data:`SECTIONS`.
        argv (Sequence[str], optional): The command-line arguments, recorded in meta.
        cipher_repeats (int): Repetitions of :func:`bench_cipher`. Defaults to 50.
        pipeline_repeats (int): Samples per pipeline in :func:`bench_pipeline`.
            Defaults to 20.
        log (callable): Progress messages. Defaults to ``print``.
        out (str, optional): JSON path rewritten after every section and every variant,
            so that a run cut short keeps what it measured. Defaults to None.
        profile_variant (str): Variant spec the ``'profile'`` section breaks down (see
            :func:`parse_variant`). Defaults to ``'baseline'``.
        profile_steps (int): Profiled steps. Defaults to 1.
        **train_kwargs: Arguments of :func:`bench_train` (``arch``, ``decoder``,
            ``size``, ``batch``, ``device``, ``seed`` and ``config_dir`` also apply to
            the profile); its ``timer`` (if given) also applies to the cipher
            sections, which are timed in CPU time by default.

    Returns:
        dict: ``meta``, the sections' results and ``comparisons``.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f'sections must be among {list(SECTIONS)}; got {sorted(unknown)}')
    report: Dict[str, Any] = dict(meta=_meta(argv, train_kwargs.get('device', 'cpu')))

    def save() -> None:
        if out:
            report['comparisons'] = compare(report)
            write_json(report, out)

    # numpy work runs on the CPU whatever the training device is.
    cipher_timer = train_kwargs.get('timer') or 'cpu'
    if 'cipher' in sections:
        log('Cipher: BlockScramble vs copy ...')
        report['cipher'] = bench_cipher(cipher_repeats, timer=cipher_timer)
        save()
    if 'pipeline' in sections:
        log('Cipher: share of the stock Cityscapes train pipeline ...')
        report['pipeline'] = bench_pipeline(pipeline_repeats, timer=cipher_timer)
        save()
    if 'train' in sections:
        log('Training throughput ...')
        partial: List[dict] = []

        def on_result(rec: dict) -> None:
            partial.append(rec)
            report['train'] = dict(partial=True, variants=partial)
            if out:
                write_json(report, out)

        report['train'] = bench_train(log=log, on_result=on_result, **train_kwargs)
        save()
    if 'profile' in sections:
        log(f'Profile of one training step ({profile_variant}) ...')
        keys = ('arch', 'decoder', 'size', 'batch', 'device', 'seed', 'config_dir')
        try:
            report['profile'] = profile_step(
                profile_variant, steps=profile_steps, log=log,
                **{k: train_kwargs[k] for k in keys if k in train_kwargs})
        except Exception as e:  # noqa: BLE001  (the other sections' results stay)
            report['profile'] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
            log(f'  profile failed: {report["profile"]["error"]}')
        save()
    report['comparisons'] = compare(report)
    report['meta']['max_rss_mib'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
                                     (2 ** 20 if sys.platform == 'darwin' else 2 ** 10))
    save()
    return report


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of ``tools/benchmark.py`` and fill in the device defaults.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        argparse.Namespace: The flags, with ``size``, ``steps``, ``warmup`` and
        ``stock_batches`` set for the device when not given.
    """
    p = argparse.ArgumentParser(
        description='Benchmark the cipher and training throughput (see docs/benchmarks.md)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default: cpu)")
    p.add_argument('--arch', default='tiny', choices=list(ARCHS),
                   help="'tiny' = the CPU configs in configs/ppenc/tiny (default)")
    p.add_argument('--decoder', default='mla', choices=list(DECODERS))
    p.add_argument('--size', type=int, default=None,
                   help='square crop side (default: 128 for tiny, else 768)')
    p.add_argument('--batch', type=int, default=4,
                   help='batch of the plugin variants (default: 4)')
    p.add_argument('--stock-batches', type=int, nargs='+', default=None,
                   help='batches of stock fp32 mmseg (default: --batch on the CPU, '
                        '2 and --batch on a GPU; out-of-memory is reported, not fatal)')
    p.add_argument('--steps', type=int, default=None,
                   help='measured train steps per variant (default: 20 CPU, 10 GPU)')
    p.add_argument('--warmup', type=int, default=None,
                   help='warm-up steps per variant (default: 2 CPU, 3 GPU)')
    p.add_argument('--cpu-threads', type=int, default=1,
                   help='torch threads for CPU training steps (default: 1, the most '
                        'stable timing on a shared machine; 0 keeps torch\'s default)')
    p.add_argument('--compile', action='store_true',
                   help='also time the plugin baseline with torch.compile of the backbone '
                        '(ignored with --variants)')
    letters = ', '.join(f'{k}={v[0]}' for k, v in SWITCHES.items())
    p.add_argument('--variants', nargs='+', default=None, metavar='SPEC',
                   help='variants to time instead of the default set: SETTING[+LETTERS] '
                        'with SETTING in stock, baseline, conventional2, proposed and '
                        f'switch letters {letters} (e.g. stock baseline baseline+FC '
                        'proposed+FCD+B)')
    p.add_argument('--variant-budget', type=float, default=None, metavar='S',
                   help='GPU: seconds one variant may take (build, compile, steps) before '
                        'it is abandoned and reported as an error (default: no limit)')
    p.add_argument('--time-budget', type=float, default=None, metavar='S',
                   help='seconds after start when no further variant begins and running '
                        'ones are stopped (default: no limit)')
    p.add_argument('--sections', nargs='+', default=['cipher', 'pipeline', 'train'],
                   choices=list(SECTIONS),
                   help="default: cipher pipeline train; 'profile' breaks one step down")
    p.add_argument('--profile-variant', default='baseline', metavar='SPEC',
                   help='variant the profile section breaks down (default: baseline)')
    p.add_argument('--config-dir', default=None,
                   help='configs/ppenc folder to read (default: this checkout\'s)')
    p.add_argument('--cipher-repeats', type=int, default=50)
    p.add_argument('--pipeline-repeats', type=int, default=20)
    p.add_argument('--out', default=os.path.join('work_dirs', 'benchmark', 'benchmark.json'),
                   help='JSON report path (default: work_dirs/benchmark/benchmark.json)')
    args = p.parse_args(argv)
    gpu = args.device.startswith('cuda')
    if args.size is None:
        args.size = 128 if args.arch == 'tiny' else 768
    if args.steps is None:
        args.steps = 10 if gpu else 20
    if args.warmup is None:
        args.warmup = 3 if gpu else 2
    if args.stock_batches is None:
        args.stock_batches = sorted({2, args.batch}) if gpu else [args.batch]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark, print its tables and write the JSON report.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0; bad settings end the process with one ``error: ...`` line (exit 1).
    """
    start = time.time()
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        report = run(sections=args.sections, argv=argv,
                     cipher_repeats=args.cipher_repeats,
                     pipeline_repeats=args.pipeline_repeats, out=args.out,
                     profile_variant=args.profile_variant, arch=args.arch,
                     decoder=args.decoder, size=args.size, batch=args.batch,
                     stock_batches=args.stock_batches, device=args.device,
                     steps=args.steps, warmup=args.warmup,
                     compile_backbone=args.compile, cpu_threads=args.cpu_threads or None,
                     variants=args.variants, variant_budget_s=args.variant_budget,
                     deadline=(start + args.time_budget if args.time_budget else None),
                     config_dir=args.config_dir)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    print()
    print(format_report(report))
    print(f'\nJSON report: {write_json(report, args.out)}')
    return 0
