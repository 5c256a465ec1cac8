"""What content hashing costs on an ``encrypt_dataset`` rerun, as ratios measured in one run.

    python tools/benchmark_hashing.py [--images 200] [--unique 8] [--height 1024]
                                      [--width 2048] [--workers N] [--repeat 3]
                                      [--target-images 5000] [--disk-mb-s 500]
                                      [--out work_dirs/benchmark/hashing.json]

Builds a Cityscapes-layout tree of ``--images`` frames of 2048x1024 PNG (Cityscapes has
5000) with their label maps: ``--unique`` synthetic scenes, copied to make up the count
(generating one takes about 2 s; copies cost the same to hash and to encrypt). On that
tree it times the first encryption, a rerun that hashes every source (the default), a
rerun that trusts size and mtime (``--trust-mtime``), the planning both reruns start with,
and SHA-256 over every source alone. Nothing changes between the runs, so the reruns
encrypt nothing: their difference is the hashing. Times scale linearly with the number of
files, so each is also extrapolated to ``--target-images``.

The page cache is warm (the first run has just read the tree). On a cold cache the hashing
rerun also reads every byte from disk; the table shows that time at ``--disk-mb-s``.
Prints a table and writes JSON.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import shutil
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def _best(fn, repeat):
    """Shortest wall time of ``repeat`` calls of ``fn`` (the least disturbed by others),
    and the last result."""
    best, result = float('inf'), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _expect(ok, what, summary):
    if not ok:  # the timings would not measure what the table says
        raise RuntimeError(f'{what} did unexpected work:\n{summary.format()}')


def _build_tree(root, images, unique, height, width):
    """A Cityscapes tree of ``images`` frames copied round-robin from ``unique`` scenes."""
    from ppenc.synthetic import make_synthetic_cityscapes
    gen = osp.join(root, 'scenes')
    make_synthetic_cityscapes(gen, num_train=unique, num_val=0, height=height, width=width,
                              seed=0)
    scenes = []
    for d, _, files in sorted(os.walk(osp.join(gen, 'leftImg8bit'))):
        for f in sorted(files):
            lab = osp.join(d.replace('leftImg8bit', 'gtFine'),
                           f.replace('_leftImg8bit', '_gtFine_labelTrainIds'))
            scenes.append((osp.join(d, f), lab))
    src = osp.join(root, 'src')
    img_dir = osp.join(src, 'leftImg8bit', 'train', 'bench')
    lab_dir = osp.join(src, 'gtFine', 'train', 'bench')
    os.makedirs(img_dir)
    os.makedirs(lab_dir)
    for i in range(images):
        img, lab = scenes[i % len(scenes)]
        stem = f'bench_{i:06d}_000019'
        shutil.copyfile(img, osp.join(img_dir, stem + '_leftImg8bit.png'))
        shutil.copyfile(lab, osp.join(lab_dir, stem + '_gtFine_labelTrainIds.png'))
    shutil.rmtree(gen)
    return src


def _sha256_tree(src):
    total = 0
    for d, _, files in os.walk(src):
        for f in files:
            h = hashlib.sha256()
            with open(osp.join(d, f), 'rb') as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b''):
                    h.update(chunk)
                    total += len(chunk)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=200, help='frames in the tree')
    parser.add_argument('--unique', type=int, default=8, help='distinct generated scenes')
    parser.add_argument('--height', type=int, default=1024, help='frame height (px)')
    parser.add_argument('--width', type=int, default=2048, help='frame width (px)')
    parser.add_argument('--workers', type=int, default=None,
                        help='encrypt_dataset workers (default: its own, min(4, CPUs))')
    parser.add_argument('--repeat', type=int, default=3, help='timed reruns, best kept')
    parser.add_argument('--target-images', type=int, default=5000,
                        help='extrapolate to this many frames (Cityscapes: 5000)')
    parser.add_argument('--disk-mb-s', type=float, default=500.0,
                        help='disk read speed for the cold-cache estimate (MB/s)')
    parser.add_argument('--workdir', default=None,
                        help='where to build the tree (default: a new temporary folder, '
                        'deleted afterwards)')
    parser.add_argument('--out', default='work_dirs/benchmark/hashing.json')
    args = parser.parse_args(argv)
    for name in ('images', 'unique', 'repeat', 'target_images'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    from ppenc.dataset import encrypt_dataset, plan_dataset
    from ppenc.keys import SecretKey
    key = SecretKey.generate()  # in memory only: nothing to leak, nothing to clean up
    root = tempfile.mkdtemp(prefix='ppenc_hashing_', dir=args.workdir)
    try:
        t0 = time.perf_counter()
        src = _build_tree(root, args.images, args.unique, args.height, args.width)
        build = time.perf_counter() - t0
        dst = osp.join(root, 'dst')

        def run(**kw):
            return encrypt_dataset(src, dst, key, workers=args.workers, progress=False, **kw)

        first, s = _best(run, 1)
        _expect(s.images_encrypted == args.images, 'the first run', s)
        rerun_hash, s = _best(run, args.repeat)
        _expect(s.images_encrypted == s.files_copied == 0, 'the hashing rerun', s)
        rerun_mtime, s = _best(lambda: run(trust_mtime=True), args.repeat)
        _expect(s.images_encrypted == s.files_copied == 0, 'the --trust-mtime rerun', s)
        plan, _ = _best(lambda: plan_dataset(src), args.repeat)
        sha, nbytes = _best(lambda: _sha256_tree(src), args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    scale = args.target_images / args.images
    cold = nbytes * scale / (args.disk_mb_s * 1e6)
    result = dict(
        images=args.images, unique_scenes=args.unique, height=args.height, width=args.width,
        workers=args.workers, cpus=os.cpu_count(), source_bytes=nbytes,
        build_seconds=build, target_images=args.target_images,
        seconds=dict(first_encryption=first, rerun_hash=rerun_hash,
                     rerun_trust_mtime=rerun_mtime, plan=plan, sha256_alone=sha),
        ratios=dict(rerun_hash_vs_first=rerun_hash / first,
                    rerun_trust_mtime_vs_first=rerun_mtime / first,
                    rerun_hash_vs_trust_mtime=rerun_hash / rerun_mtime),
        sha256_mb_per_s=nbytes / sha / 1e6,
        extrapolated_seconds=dict(first_encryption=first * scale,
                                  rerun_hash=rerun_hash * scale,
                                  rerun_trust_mtime=rerun_mtime * scale,
                                  cold_cache_read=cold),
        disk_mb_s=args.disk_mb_s, page_cache='warm')
    ext, r = result['extrapolated_seconds'], result['ratios']
    rows = [('', f'{args.images} frames', f'{args.target_images} (extrapolated)',
             'vs first run'),
            ('first encryption', f'{first:.3f} s', f'{ext["first_encryption"]:.0f} s', '1'),
            ('rerun, hash every source (default)', f'{rerun_hash:.3f} s',
             f'{ext["rerun_hash"]:.0f} s', f'{r["rerun_hash_vs_first"]:.4f}'),
            ('rerun, --trust-mtime', f'{rerun_mtime:.3f} s',
             f'{ext["rerun_trust_mtime"]:.0f} s', f'{r["rerun_trust_mtime_vs_first"]:.4f}'),
            ('  of which planning (both reruns)', f'{plan:.3f} s', f'{plan * scale:.0f} s',
             f'{plan / first:.4f}'),
            ('SHA-256 of every source alone', f'{sha:.3f} s', f'{sha * scale:.0f} s',
             f'{sha / first:.4f}'),
            (f'cold cache: read {nbytes * scale / 1e9:.1f} GB at {args.disk_mb_s:.0f} MB/s',
             '', f'{cold:.0f} s', f'{cold / ext["first_encryption"]:.4f}')]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    print(f'hash rerun / trust-mtime rerun: {r["rerun_hash_vs_trust_mtime"]:.2f}; '
          f'SHA-256 at {result["sha256_mb_per_s"]:.0f} MB/s (warm page cache); '
          f'{nbytes / 1e6:.0f} MB of sources')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
