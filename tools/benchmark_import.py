"""Start-up cost of the plugin: import time and peak memory of each entry point.

Every case runs in a fresh interpreter (``-X importtime`` is not used: it slows imports
down), interleaved over ``--repeats`` rounds; the table gives medians.

    python tools/benchmark_import.py [--repeats 5] [--out work_dirs/benchmark/import.json]
    python tools/benchmark_import.py --baseline-root OLD_CHECKOUT   # also time an old tree

With ``--baseline-root`` the same cases run against another checkout of the package (for
example ``git worktree add ../old <commit>``), in the same rounds, and the table shows the
ratio new/old. It also lists which heavy libraries each case loaded.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ('torch', 'mmseg', 'mmengine', 'mmcv', 'timm', 'scipy')
# name -> (python code or tool argv)
CASES = {
    'import mmseg_ppenc (registers all)': ['-c', 'import mmseg_ppenc'],
    'import ppenc.keys': ['-c', 'import ppenc.keys'],
    'import ppenc.cipher': ['-c', 'import ppenc.cipher'],
    'import ppenc.dataset': ['-c', 'import ppenc.dataset'],
    'tools/keygen.py --help': ['tools/keygen.py', '--help'],
    'tools/encrypt_dataset.py --help': ['tools/encrypt_dataset.py', '--help'],
    'tools/make_synthetic_cityscapes.py --help': ['tools/make_synthetic_cityscapes.py',
                                                  '--help'],
}
_PROBE = ('import resource, sys, runpy, io, contextlib; sys.argv = {argv!r}; '
          'f = io.StringIO();\n'
          'with contextlib.redirect_stdout(f):\n'
          '    try:\n'
          '        (runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0] != "-c" '
          'else exec(sys.argv[1]))\n'
          '    except SystemExit:\n'
          '        pass\n'
          'print("PROBE", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, '
          '[m for m in {heavy!r} if m in sys.modules])')


def run_case(args, root: str) -> dict:
    """Run one case in a fresh interpreter rooted at ``root``; wall seconds, peak RSS."""
    argv = [os.path.join(root, args[0])] + args[1:] if args[0] != '-c' else args
    code = _PROBE.format(argv=argv, heavy=HEAVY)
    env = dict(os.environ, PYTHONPATH=root)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=root, env=env, timeout=600)
    wall = time.perf_counter() - t0
    line = [ln for ln in res.stdout.splitlines() if ln.startswith('PROBE')]
    if res.returncode or not line:
        return dict(error=(res.stderr or res.stdout)[-500:], wall_s=wall)
    _, rss, heavy = line[-1].split(' ', 2)
    return dict(wall_s=wall, peak_rss_mib=int(rss) / 1024, heavy=eval(heavy))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--baseline-root', help='another checkout to compare with')
    p.add_argument('--out', default=os.path.join(ROOT, 'work_dirs', 'benchmark',
                                                 'import.json'))
    args = p.parse_args(argv)
    roots = {'new': ROOT}
    if args.baseline_root:
        roots['old'] = os.path.abspath(args.baseline_root)
    samples = {(c, r): [] for c in CASES for r in roots}
    last = {}
    for _ in range(args.repeats):
        for case, cargs in CASES.items():
            for tag, root in roots.items():
                if tag == 'old' and cargs[0] != '-c' and \
                        not os.path.isfile(os.path.join(root, cargs[0])):
                    continue
                out = run_case(cargs, root)
                last[(case, tag)] = out
                if 'error' not in out:
                    samples[(case, tag)].append(out)
    rows = []
    for case in CASES:
        row = dict(case=case)
        for tag in roots:
            got = samples[(case, tag)]
            if got:
                row[tag] = dict(wall_s=statistics.median(s['wall_s'] for s in got),
                                peak_rss_mib=statistics.median(s['peak_rss_mib'] for s in got),
                                heavy=got[-1]['heavy'])
            elif (case, tag) in last:
                row[tag] = dict(error=last[(case, tag)].get('error', 'not run'))
        rows.append(row)
    cols = list(roots)
    print('| case | ' + ' | '.join(f'{t} s | {t} MiB | {t} loads' for t in cols)
          + (' | new/old time |' if 'old' in roots else ' |'))
    print('|---' * (1 + 3 * len(cols) + ('old' in roots)) + '|')
    for row in rows:
        cells = []
        for t in cols:
            r = row.get(t, {})
            if 'wall_s' in r:
                cells += [f'{r["wall_s"]:.2f}', f'{r["peak_rss_mib"]:.0f}',
                          ', '.join(r['heavy']) or '-']
            else:
                cells += ['error', '', '']
        ratio = ''
        if 'old' in roots and 'wall_s' in row.get('old', {}) and 'wall_s' in row.get('new', {}):
            ratio = f' | {row["new"]["wall_s"] / row["old"]["wall_s"]:.3f}'
        elif 'old' in roots:
            ratio = ' | n/a'
        print(f'| {row["case"]} | ' + ' | '.join(cells) + ratio + ' |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(dict(repeats=args.repeats, python=sys.version.split()[0], rows=rows), f,
                  indent=1)
    print(f'JSON report: {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
