"""Speed benchmark: cipher cost, train throughput of the three settings, stock vs plugin.

CPU defaults (tiny shapes, a few minutes on 2 cores):
    python tools/benchmark.py
The real size on a GPU:
    python tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8

Prints Markdown tables with every target marked met / missed and writes the JSON report
(``--out``, default ``work_dirs/benchmark/benchmark.json``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import mmseg_ppenc  # noqa: F401  (compat fixes and registrations first)
    from mmseg_ppenc.benchmark import format_report, run, write_json
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
                   help='also time the plugin baseline with torch.compile of the backbone')
    p.add_argument('--sections', nargs='+', default=['cipher', 'pipeline', 'train'],
                   choices=['cipher', 'pipeline', 'train'])
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
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        report = run(sections=args.sections, argv=argv,
                     cipher_repeats=args.cipher_repeats,
                     pipeline_repeats=args.pipeline_repeats, arch=args.arch,
                     decoder=args.decoder, size=args.size, batch=args.batch,
                     stock_batches=args.stock_batches, device=args.device,
                     steps=args.steps, warmup=args.warmup,
                     compile_backbone=args.compile, cpu_threads=args.cpu_threads or None)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    print()
    print(format_report(report))
    print(f'\nJSON report: {write_json(report, args.out)}')


if __name__ == '__main__':
    main()
