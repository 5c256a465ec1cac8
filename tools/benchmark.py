"""Speed benchmark: cipher cost, train throughput of the three settings, stock vs plugin.

CPU defaults (tiny shapes, a few minutes on 2 cores):
    python tools/benchmark.py
The real size on a GPU:
    python tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8

Prints Markdown tables and writes the JSON report (``--out``, default
``work_dirs/benchmark/benchmark.json``), rewritten after every variant. The drivers live
in ``tools/analysis/``.
"""
import argparse
import os
import sys
import time

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TOOLS))
sys.path.insert(0, _TOOLS)
try:
    import mmseg_ppenc  # noqa: F401  (compat fixes and registrations first)
    from analysis.benchmark import SECTIONS, SWITCHES, format_report, run, write_json
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python (on a GPU machine: tools/benchmark_gpu.sh).')


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Benchmark the cipher and training throughput (see docs/benchmarks.md)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default: cpu)")
    p.add_argument('--arch', default='tiny', choices=['tiny', 'vit-b', 'vit-l'],
                   help="'tiny' = the CPU configs in configs/ppenc/tiny (default)")
    p.add_argument('--decoder', default='mla', choices=['mla', 'pup', 'naive'])
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


def main(argv=None):
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


if __name__ == '__main__':
    main()
