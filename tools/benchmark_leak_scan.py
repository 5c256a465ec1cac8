"""The leak scan measured both ways: false positives, detection rate and cost.

    python tools/benchmark_leak_scan.py [--logs DIR ...] [--keys 3] [--detect-keys 50]
                                        [--log-mb 15] [--out work_dirs/benchmark/leak_scan.json]

False positives are counted on the pretty-printed text of every stock mmseg config and on
every file under ``--logs`` (point it at the work_dirs and temporary folders of a test
run); detection on the generator of encodings kept in ``tests/key_encodings.py``; cost on
a synthetic training log. Prints a table and writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--logs', nargs='*', default=[], help='folders of run artefacts')
    parser.add_argument('--keys', type=int, default=3, help='random keys for false positives')
    parser.add_argument('--detect-keys', type=int, default=50, help='keys for detection')
    parser.add_argument('--log-mb', type=float, default=15.0, help='size of the timed log')
    parser.add_argument('--out', default='work_dirs/benchmark/leak_scan.json')
    args = parser.parse_args(argv)
    from tools.analysis import leak_scan_report as r
    keys = r._random_keys(args.keys, seed=7)
    result = dict(stock_configs=r.stock_config_false_positives(keys),
                  logs=r.log_false_positives(args.logs, keys) if args.logs else None,
                  detection=r.detection(args.detect_keys),
                  cost=r.scan_cost(int(args.log_mb * 1e6)))
    s, d, c = result['stock_configs'], result['detection'], result['cost']
    rows = [('stock mmseg configs (pretty text)',
             f'{s["false_positives"]} hits / {s["configs"]} configs x {s["keys"]} keys')]
    if result['logs']:
        lg = result['logs']
        rows.append(('files under --logs', f'{lg["false_positives"]} hits / {lg["files"]} '
                     f'files ({lg["bytes"] / 1e6:.1f} MB) x {lg["keys"]} keys'))
    rows += [('detection (generated encodings)',
              f'{d["found"]}/{d["encodings"]} = {100 * d["rate"]:.1f} % over {d["keys"]} keys'),
             (f'cost, {c["bytes"] / 1e6:.1f} MB log',
              f'{c["seconds"]:.2f} s ({c["mb_per_s"]:.1f} MB/s)')]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f'{a:<{width}}  {b}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
