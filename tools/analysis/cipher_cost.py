"""What the cipher costs on the CPU: ``BlockScramble`` against a plain copy of the same
array, and its share of the stock Cityscapes training pipeline's per-sample time.

Both are numpy work in the dataloader, timed in process CPU time by default (see
:func:`common.default_timer`), interleaved (:func:`common.time_interleaved`).
"""
from __future__ import annotations

import copy
import os.path as osp
import random
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import stock_setr_config_path, summary, temp_key_file, time_interleaved

__all__ = ['bench_cipher', 'bench_pipeline']


def bench_cipher(repeats: int = 50, sizes: Sequence[Tuple[int, int]] = ((768, 768),
                                                                         (1024, 2048)),
                 key_file: Optional[str] = None, seed: int = 0,
                 timer: str = 'cpu') -> dict:
    """``BlockScramble`` vs a plain copy of the same array, per image size.

    The image is BGR uint8, as mmcv's loader yields it, and ``BlockScramble`` runs as in
    the shipped training pipelines (``pad_to_grid=True``, a no-op on the grid). Also
    timed, for reference: the previous implementation's gather with a full-size index
    map.

    Args:
        repeats (int): Measured repetitions per variant. Defaults to 50.
        sizes (Sequence[tuple[int, int]]): (height, width) pairs. Defaults to 768x768
            and 1024x2048.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Image seed. Defaults to 0.
        timer (str): ``'cpu'`` or ``'wall'`` for the headline figures (both are
            recorded). Defaults to ``'cpu'``.

    Returns:
        dict: ``{'HxW': {'copy': {...}, 'scramble': {...}, 'full_map': {...},
        'scramble_over_copy': float}}`` with :func:`common.summary` dicts in
        milliseconds.
    """
    from mmseg_ppenc.transforms import BlockScramble
    rng = np.random.default_rng(seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        scramble = BlockScramble(key_file=key_file or temp_key_file(tmp),
                                 pad_to_grid=True)
        cipher = scramble.cipher
        for h, w in sizes:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            full = cipher.index_map(h, w, 'hwc-bgr')
            flat = img.reshape(-1)
            fns = {
                'copy': img.copy,
                'scramble': lambda img=img: scramble.transform(dict(img=img)),
                'full_map': lambda flat=flat, full=full: np.take(flat, full),
            }
            samples = time_interleaved(fns, repeats, warmup=2)
            res = {k: summary(v, timer) for k, v in samples.items()}
            res['scramble_over_copy'] = (res['scramble']['median_ms'] /
                                         res['copy']['median_ms'])
            out[f'{h}x{w}'] = res
            del full
            cipher._maps.pop((h, w, 'hwc-bgr', False), None)  # a 14-50 MB map
    return out


def bench_pipeline(repeats: int = 20, key_file: Optional[str] = None,
                   seed: int = 0, timer: str = 'cpu') -> dict:
    """Per-sample time of the stock Cityscapes training pipeline, plain and encrypted.

    The pipeline is the ``train_pipeline`` of mmseg's
    ``setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py`` (load PNGs, random resize, 768x768
    random crop, flip, photometric distortion, pack) on a synthetic 1024x2048 street
    scene written as PNGs, as Cityscapes stores them. The encrypted pipeline inserts
    ``BlockScramble(pad_to_grid=True)`` before packing, as the shipped configs do; its
    own time is measured inside the pipeline. Both pipelines see the same random
    augmentation in each repetition.

    Args:
        repeats (int): Measured samples per pipeline. Defaults to 20.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Seed of the scene and of the augmentations. Defaults to 0.
        timer (str): ``'cpu'`` or ``'wall'`` for the headline figures. Defaults to
            ``'cpu'``.

    Returns:
        dict: ``plain``, ``encrypted`` and ``scramble`` (:func:`common.summary` dicts, ms
        per sample) and ``share`` = median scramble time / median plain pipeline time.
    """
    import cv2
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    # mmseg's runtime (env_cfg.mp_cfg.opencv_num_threads=0) runs the pipeline in
    # dataloader workers with OpenCV's own threads off; do the same.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    # The augmentations draw from the global generators; leave them as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return _bench_pipeline(repeats, key_file, seed, timer)
    finally:
        cv2.setNumThreads(cv2_threads)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _bench_pipeline(repeats: int, key_file: Optional[str], seed: int, timer: str) -> dict:
    import cv2
    from mmengine.config import Config
    from mmseg.registry import TRANSFORMS

    from ppenc.synthetic import render_scene
    cfg = Config.fromfile(stock_setr_config_path('mla'))
    stock = copy.deepcopy(cfg.train_dataloader.dataset.pipeline)
    if stock[-1]['type'] != 'PackSegInputs':
        raise RuntimeError(f'Expected the stock pipeline to end in PackSegInputs, got '
                           f'{stock[-1]["type"]}.')
    scramble_time: Dict[str, List[float]] = {'wall': [], 'cpu': []}

    with tempfile.TemporaryDirectory() as tmp:
        img, lab = render_scene(1024, 2048, np.random.default_rng(seed))
        img_path, lab_path = osp.join(tmp, 'img.png'), osp.join(tmp, 'lab.png')
        cv2.imwrite(img_path, np.ascontiguousarray(img[..., ::-1]))
        cv2.imwrite(lab_path, lab)
        plain = [TRANSFORMS.build(t) for t in stock]
        scramble = TRANSFORMS.build(dict(type='BlockScramble', pad_to_grid=True,
                                         key_file=key_file or temp_key_file(tmp)))

        def timed_scramble(results: dict) -> dict:
            w0, c0 = time.perf_counter(), time.process_time()
            out = scramble(results)
            scramble_time['wall'].append((time.perf_counter() - w0) * 1e3)
            scramble_time['cpu'].append((time.process_time() - c0) * 1e3)
            return out

        encrypted = plain[:-1] + [timed_scramble, plain[-1]]

        def run_pipeline(transforms: list, i: int) -> None:
            # Same augmentation for both pipelines in repetition i.
            random.seed(seed + i)
            np.random.seed(seed + i)
            results = dict(img_path=img_path, seg_map_path=lab_path, reduce_zero_label=False,
                           seg_fields=[], label_map=None)
            for t in transforms:
                results = t(results)

        counter = {'plain': 0, 'encrypted': 0}

        def step(name: str, transforms: list) -> Callable[[], None]:
            def fn() -> None:
                run_pipeline(transforms, counter[name])
                counter[name] += 1
            return fn

        samples = time_interleaved({'plain': step('plain', plain),
                                    'encrypted': step('encrypted', encrypted)},
                                   repeats, warmup=1)
    res = {k: summary(v, timer) for k, v in samples.items()}
    res['scramble'] = summary({k: v[-repeats:] for k, v in scramble_time.items()}, timer)
    res['share'] = res['scramble']['median_ms'] / res['plain']['median_ms']
    return res
