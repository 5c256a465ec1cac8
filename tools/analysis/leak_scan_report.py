"""Measuring the leak scan both ways: false positives, detection, cost.

- False positives: hits for random keys on the pretty-printed text of every config
  shipped in the installed mmsegmentation, and on every file under the given log folders
  (for example the work_dirs and temporary folders of a test-suite run). No key is in
  any of them, so every hit is a false positive.
- Detection: the share of the encodings made by ``tests/key_encodings.py`` (every class
  the scan claims, drawn at random) that the scan finds, over many keys.
- Cost: seconds to scan a synthetic mmengine training log of the given size.

:func:`main` is ``tools/benchmark_leak_scan.py``: it prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ppenc.keys import SecretKey
from ppenc.leak_scan import KeyScanner

from .common import REPO_ROOT

__all__ = ['random_keys', 'stock_config_false_positives', 'log_false_positives',
           'detection', 'synthetic_log', 'scan_cost', 'main']


def random_keys(n: int, seed: int) -> List[SecretKey]:
    """``n`` keys drawn from ``seed`` (the same keys on every run)."""
    rng = np.random.default_rng(seed)
    return [SecretKey(rng.integers(0, 256, 32, dtype=np.uint8).tobytes()) for _ in range(n)]


def stock_config_false_positives(keys: Sequence[SecretKey],
                                 block_sizes: Sequence[int] = (8, 16, 32)) -> Dict:
    """Hits on the pretty text of every stock mmseg config (``_base_`` files included)."""
    import mmseg
    from mmengine.config import Config
    root = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
    paths = sorted(glob.glob(osp.join(root, '**', '*.py'), recursive=True))
    scanners = [KeyScanner(k, block_sizes) for k in keys]
    hits, chars, unparsed = [], 0, 0
    t0 = time.perf_counter()
    for path in paths:
        try:
            text = Config.fromfile(path).pretty_text
        except Exception:  # noqa: BLE001 - a few need optional packages: scan the source
            unparsed += 1
            with open(path, encoding='utf-8') as f:
                text = f.read()
        chars += len(text)
        data = text.encode('utf-8', errors='surrogatepass')
        hits += [osp.relpath(path, root) for s in scanners if s.contains(data)]
    return dict(configs=len(paths), scanned_as_source=unparsed, chars=chars,
                keys=len(keys), hits=hits, false_positives=len(hits),
                seconds=time.perf_counter() - t0)


def log_false_positives(folders: Sequence[str], keys: Sequence[SecretKey],
                        max_bytes: int = 64 << 20) -> Dict:
    """Hits on every regular file under ``folders`` (text and binary alike)."""
    scanners = [KeyScanner(k) for k in keys]
    files, size, hits = 0, 0, []
    for folder in folders:
        for d, _, fs in os.walk(folder):
            for f in fs:
                path = osp.join(d, f)
                if not osp.isfile(path) or osp.islink(path) or \
                        osp.getsize(path) > max_bytes:
                    continue
                with open(path, 'rb') as fh:
                    data = fh.read()
                files += 1
                size += len(data)
                hits += [path for s in scanners if s.contains(data)]
    return dict(folders=list(folders), files=files, bytes=size, keys=len(keys), hits=hits,
                false_positives=len(hits))


def detection(n_keys: int) -> Dict:
    """Share of the generated encodings found (``tests/key_encodings.py``)."""
    spec = importlib.util.spec_from_file_location(
        'key_encodings', osp.join(REPO_ROOT, 'tests', 'key_encodings.py'))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    total, found, missed = 0, 0, []
    for seed, key in enumerate(gen.generated_keys(n_keys)):
        scanner = KeyScanner(key)
        for name, form in gen.key_encodings(key, seed).items():
            # As a log line holds it, and as a config dump holds a string (repr'd).
            for text in (f'INFO - notes: {form}\n', f'cfg = dict(notes={form!r})\n'):
                total += 1
                if scanner.contains(text.encode('utf-8', errors='surrogatepass')):
                    found += 1
                else:
                    missed.append(name)
    return dict(keys=n_keys, encodings=total, found=found, rate=found / total,
                missed=sorted(set(missed)))


def synthetic_log(nbytes: int, seed: int = 0) -> bytes:
    """An mmengine-style training log of about ``nbytes`` (numbers, hashes, timestamps)."""
    rng = np.random.default_rng(seed)
    lines, size, it = [], 0, 0
    while size < nbytes:
        it += 1
        line = (f'2026/12/05 01:{it // 60 % 60:02d}:{it % 60:02d} - mmengine - INFO - '
                f'Iter(train) [{it:>5}/80000]  base_lr: 1.0000e-04 lr: {rng.random():.4e}  '
                f'eta: 1 day, 2:{it % 60:02d}:00  time: {rng.random():.4f}  data_time: '
                f'{rng.random() / 10:.4f}  memory: {rng.integers(20000)}  loss: '
                f'{rng.random():.4f}  decode.loss_ce: {rng.random():.4f}  '
                f'decode.acc_seg: {100 * rng.random():.4f}  sha256: '
                f'{rng.integers(1 << 62):016x}{rng.integers(1 << 62):016x}\n')
        lines.append(line)
        size += len(line)
    return ''.join(lines).encode()


def scan_cost(nbytes: int, repeats: int = 3) -> Dict:
    """Median seconds to scan a synthetic log of ``nbytes`` for one key."""
    data = synthetic_log(nbytes)
    scanner = KeyScanner(random_keys(1, 99)[0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hit = scanner.contains(data)
        times.append(time.perf_counter() - t0)
    return dict(bytes=len(data), seconds=float(np.median(times)),
                mb_per_s=len(data) / 1e6 / float(np.median(times)), false_positive=hit)


#: The command's description (its ``--help``), as ``tools/benchmark_leak_scan.py`` gives.
DESCRIPTION = 'The leak scan measured both ways: false positives, detection rate and cost.'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure false positives, detection and cost; print a table and write the JSON.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0.
    """
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument('--logs', nargs='*', default=[], help='folders of run artefacts')
    parser.add_argument('--keys', type=int, default=3, help='random keys for false positives')
    parser.add_argument('--detect-keys', type=int, default=50, help='keys for detection')
    parser.add_argument('--log-mb', type=float, default=15.0, help='size of the timed log')
    parser.add_argument('--out', default='work_dirs/benchmark/leak_scan.json')
    args = parser.parse_args(argv)
    keys = random_keys(args.keys, seed=7)
    result = dict(stock_configs=stock_config_false_positives(keys),
                  logs=log_false_positives(args.logs, keys) if args.logs else None,
                  detection=detection(args.detect_keys),
                  cost=scan_cost(int(args.log_mb * 1e6)))
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
