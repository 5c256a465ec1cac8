"""What several drivers of ``tools/analysis`` share: names of the grid, paths, timing,
tables.

- the paper's grid: :data:`ARCHS`, :data:`BACKBONES`, :data:`DECODERS`, :data:`SETTINGS`,
  :data:`CELLS`, :data:`METRICS`, their titles and the paper's Table I
  (:data:`PAPER_TABLE1`);
- the benchmark's variants: :data:`VARIANT_SETTINGS`, the speed :data:`SWITCHES`,
  :func:`parse_variant` and :func:`variant_name`;
- the checkout's files: :data:`REPO_ROOT`, :data:`TOOLS_DIR`, :data:`CONFIG_DIR`, the tiny
  configs (:func:`tiny_config_path`, :func:`load_config`) and mmseg's stock SETR configs
  (:func:`stock_setr_config_path`);
- timing: :func:`time_interleaved`, :func:`time_sequential`, :func:`summarize`,
  :func:`summary`;
- output: :func:`markdown_table`, :func:`fmt`, :func:`number`, :func:`percent`,
  :func:`write_json`;
- small run helpers: :func:`temp_key_file`, :func:`quiet_mmengine`.

torch is imported only inside the functions that need it, so that the light drivers
(``collect_table``, ``security_report``) do not load it for a table.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import os.path as osp
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'REPO_ROOT', 'TOOLS_DIR', 'CONFIG_DIR', 'ARCHS', 'BACKBONES', 'DECODERS', 'SETTINGS',
    'CELLS', 'METRICS', 'VARIANT_SETTINGS', 'BACKBONE_TITLES', 'DECODER_TITLES',
    'SETTING_TITLES', 'TITLES', 'PAPER_TABLE1', 'SWITCHES', 'parse_variant', 'variant_name',
    'default_config_dir', 'tiny_config_path', 'load_config', 'stock_setr_config_path',
    'TIMERS', 'sync', 'default_timer', 'time_interleaved', 'time_sequential', 'summarize',
    'summary', 'markdown_table', 'fmt', 'number', 'percent', 'write_json', 'temp_key_file',
    'quiet_mmengine'
]

# --------------------------------------------------------------------------- paths
#: The checkout this file belongs to (it is ``tools/analysis/common.py``): the drivers
#: read its configs, never the installed package's location (a wheel has no configs).
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: The checkout's ``tools/`` folder (``tools/train.py`` and the other entry points).
TOOLS_DIR = osp.join(REPO_ROOT, 'tools')
#: The checkout's own ``configs/ppenc``.
CONFIG_DIR = osp.join(REPO_ROOT, 'configs', 'ppenc')

# --------------------------------------------------------------------------- the grid
#: Backbones of the benchmark: the tiny CPU configs and the paper's two.
ARCHS: Tuple[str, ...] = ('tiny', 'vit-b', 'vit-l')
#: Backbones of the paper's Table I, in its row order.
BACKBONES: Tuple[str, ...] = ('vit-b', 'vit-l')
#: Decoders of the paper's Table I, in its row order.
DECODERS: Tuple[str, ...] = ('mla', 'pup', 'naive')
#: The three settings of the paper, in its column order.
SETTINGS: Tuple[str, ...] = ('baseline', 'conventional2', 'proposed')
#: The cells of the miniature grid: the paper's settings plus the baseline without
#: pre-training.
CELLS: Tuple[str, ...] = SETTINGS + ('scratch',)
#: The metrics of ``IoUMetric`` that Table I reports, in its order.
METRICS: Tuple[str, ...] = ('aAcc', 'mIoU', 'mAcc')
#: Settings of a benchmark variant: stock mmseg and the plugin's three settings.
VARIANT_SETTINGS: Tuple[str, ...] = ('stock',) + SETTINGS

BACKBONE_TITLES: Dict[str, str] = {'vit-b': 'ViT-B', 'vit-l': 'ViT-L'}
DECODER_TITLES: Dict[str, str] = {'mla': 'MLA', 'pup': 'PUP', 'naive': 'Naive'}
SETTING_TITLES: Dict[str, str] = {'baseline': 'baseline', 'conventional2': 'conventional 2',
                                  'proposed': 'proposed'}
#: Titles of the miniature's decoders and cells.
TITLES: Dict[str, str] = {**DECODER_TITLES, **SETTING_TITLES,
                          'scratch': 'scratch (no pre-training)'}

#: Table I of Sueyoshi, Nishikawa, Kiya (arXiv 2507.12730): Cityscapes val,
#: (aAcc, mIoU, mAcc) in %.
PAPER_TABLE1: Dict[str, Dict[str, Dict[str, Tuple[float, float, float]]]] = {
    'vit-b': {
        'mla': {'baseline': (94.74, 71.79, 81.50), 'conventional2': (89.09, 39.87, 46.61),
                'proposed': (94.54, 70.99, 80.85)},
        'pup': {'baseline': (93.90, 64.35, 74.68), 'conventional2': (89.40, 44.65, 54.44),
                'proposed': (94.06, 67.08, 75.08)},
        'naive': {'baseline': (93.79, 68.14, 78.39), 'conventional2': (88.78, 40.59, 49.94),
                  'proposed': (94.52, 70.64, 80.80)},
    },
    'vit-l': {
        'mla': {'baseline': (95.20, 73.26, 81.43), 'conventional2': (92.33, 53.55, 62.32),
                'proposed': (94.88, 72.57, 80.69)},
        'pup': {'baseline': (94.66, 67.14, 76.13), 'conventional2': (89.25, 38.59, 44.63),
                'proposed': (94.52, 66.20, 74.57)},
        'naive': {'baseline': (94.96, 71.38, 81.03), 'conventional2': (89.60, 42.03, 49.06),
                  'proposed': (94.96, 70.51, 79.02)},
    },
}

# --------------------------------------------------------------------------- variants
#: Opt-in speed switches of a benchmark variant (``parse_variant('baseline+FCD+B')``):
#: letter -> (name in reports, what the variant does, the config option a training run
#: sets).
SWITCHES: Dict[str, Tuple[str, str, str]] = {
    'F': ('fused-opt', 'fused optimizer step',
          'optim_wrapper.optimizer.fused=True'),
    'C': ('channels-last', 'neck and heads in channels-last format',
          "custom_hooks=[dict(type='ChannelsLastHook')]"),
    'D': ('deferred-log', 'logged losses copied to the host once per log interval',
          "default_hooks.runtime_info.type=DeferredLogRuntimeInfoHook"),
    'L': ('fast-loss', "heads' logits resized by matrix products, acc_seg from argmax",
          'default_hooks.fast_loss.type=FastLossHook'),
    'B': ('compile-backbone', 'torch.compile of the backbone',
          'model.backbone.compile() (no config switch; measured for reference)'),
    'M': ('compile-model', 'torch.compile of the whole segmentor forward + losses',
          'model.compile (no config switch; measured for reference)'),
    'S': ('compile-step', "torch.compile of the whole train_step (mmengine's switch)",
          'compile=True'),
}


def parse_variant(spec: str) -> Tuple[str, str]:
    """Split ``'<setting>[+<switch letters>]'`` (e.g. ``'baseline+FCD+S'``).

    Args:
        spec (str): A setting among ``stock``, ``baseline``, ``conventional2``,
            ``proposed``, then ``+`` and letters of :data:`SWITCHES` (any grouping).

    Returns:
        tuple[str, str]: The setting and the switch letters in :data:`SWITCHES` order.

    Raises:
        ValueError: For an unknown setting or letter, or switches on the stock model.
    """
    setting, _, rest = spec.partition('+')
    if setting not in VARIANT_SETTINGS:
        raise ValueError(f'Variant {spec!r}: the setting must be one of stock, baseline, '
                         f'conventional2, proposed; got {setting!r}.')
    letters = rest.replace('+', '')
    bad = sorted(set(letters) - set(SWITCHES))
    if bad:
        raise ValueError(f'Variant {spec!r}: unknown switch letter(s) {bad}; expected '
                         'letters of ' + ', '.join(f'{k} ({v[0]})' for k, v in
                                                   SWITCHES.items()) + '.')
    if setting == 'stock' and letters:
        raise ValueError(f'Variant {spec!r}: the stock model runs as mmseg ships it; '
                         'put switches on baseline, conventional2 or proposed.')
    if 'M' in letters and 'S' in letters:
        raise ValueError(f'Variant {spec!r}: M and S both compile the forward; pick one.')
    return setting, ''.join(k for k in SWITCHES if k in letters)


def variant_name(setting: str, switches: str, batch: int) -> str:
    """Report name, e.g. ``'plugin baseline +fused-opt b8'`` or ``'stock fp32 b2'``."""
    if setting == 'stock':
        return f'stock fp32 b{batch}'
    extra = ''.join(f' +{SWITCHES[k][0]}' for k in switches)
    return f'plugin {setting}{extra} b{batch}'


# --------------------------------------------------------------------------- configs
def default_config_dir() -> str:
    """``configs/ppenc/tiny`` of the repository this tool belongs to (never the installed
    package's location, which has no configs in a wheel install)."""
    return osp.join(CONFIG_DIR, 'tiny')


def tiny_config_path(decoder: str, setting: str, config_dir: Optional[str] = None) -> str:
    """Path of a tiny CPU config, e.g. ``tiny_config_path('mla', 'proposed')``.

    Args:
        decoder (str): One of :data:`DECODERS`.
        setting (str): One of :data:`SETTINGS`.
        config_dir (str, optional): Folder of the tiny configs. Defaults to None
            (:func:`default_config_dir`).

    Returns:
        str: The config's path.

    Raises:
        FileNotFoundError: the config does not exist.
    """
    path = osp.join(config_dir or default_config_dir(),
                    f'setr_tiny_{decoder}_synthetic_{setting}.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Tiny config {path!r} not found; expected the configs of '
                                'configs/ppenc/tiny/ (pass config_dir to use others).')
    return path


def stock_setr_config_path(decoder: str) -> str:
    """mmseg's own ViT-L SETR Cityscapes config for ``decoder`` (from its ``.mim``).

    Raises:
        FileNotFoundError: mmsegmentation was installed without its configs.
    """
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', 'setr',
                    f'setr_vit-l_{decoder}_8xb1-80k_cityscapes-768x768.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Expected the stock mmseg config at {path}; install '
                                'mmsegmentation 1.2.2 from its wheel (it ships .mim).')
    return path


def load_config(path: str):
    """``mmengine.config.Config.fromfile(path)``, with the plugin imported first.

    Args:
        path (str): Config file.

    Returns:
        mmengine.config.Config: The config.
    """
    import mmseg_ppenc  # noqa: F401  (compat fixes and registrations before mmseg)
    from mmengine.config import Config
    return Config.fromfile(path)


# --------------------------------------------------------------------------- timing
#: ``'cpu'``: CPU time of this process; ``'wall'``: wall-clock time.
TIMERS: Tuple[str, ...] = ('cpu', 'wall')


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.startswith('cuda'):
        import torch
        torch.cuda.synchronize()


def default_timer(device: str) -> str:
    """``'cpu'`` (process CPU time) on the CPU, ``'wall'`` on accelerators.

    On a shared CPU, wall time counts the time other processes hold the cores; the CPU
    time of this process does not, so it is the stable measure of what a step costs
    (about 1 % run-to-run spread here, against 20 % for wall time). A GPU step is
    measured in wall time between synchronisations.
    """
    return 'wall' if device.startswith('cuda') else 'cpu'


def time_interleaved(fns: Dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str = 'cpu') -> Dict[str, Dict[str, List[float]]]:
    """Time several functions in turn, rotating their order every round.

    Args:
        fns (dict[str, callable]): Name -> function without arguments.
        repeats (int): Measured rounds.
        warmup (int): Unmeasured rounds first. Defaults to 1.
        device (str): ``'cuda...'`` synchronises around every call. Defaults to ``'cpu'``.

    Returns:
        dict: Name -> ``{'wall': [...], 'cpu': [...]}``, the ``repeats`` wall-clock and
        process CPU times in milliseconds, in round order.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    names = list(fns)
    samples = {n: {'wall': [], 'cpu': []} for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                samples[name]['wall'].append((w1 - w0) * 1e3)
                samples[name]['cpu'].append((c1 - c0) * 1e3)
    return samples


def time_sequential(fn: Callable[[], Any], repeats: int) -> Dict[str, List[float]]:
    """Time ``repeats`` consecutive CUDA steps without synchronising between them.

    A CUDA event is recorded on the current stream before every step and after the last
    one; the host waits once, at the end. The time between two events is what the GPU
    stream spent on one step, including any time it sat idle waiting for the CPU to
    queue work, which is what a training run sees (a host synchronisation between steps
    would hide that).

    Args:
        fn (callable): One training step.
        repeats (int): Number of steps.

    Returns:
        dict: ``{'wall': [...], 'cpu': [...]}`` in milliseconds: per-step event times,
        and the per-step process CPU time.
    """
    import torch
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    events = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
    cpu = []
    torch.cuda.synchronize()
    for i in range(repeats):
        events[i].record()
        c0 = time.process_time()
        fn()
        cpu.append((time.process_time() - c0) * 1e3)
    events[-1].record()
    torch.cuda.synchronize()
    wall = [events[i].elapsed_time(events[i + 1]) for i in range(repeats)]
    return dict(wall=wall, cpu=cpu)


def summarize(samples_ms: Sequence[float]) -> Dict[str, float]:
    """Median, min and max of timings in milliseconds, and their count."""
    return dict(median_ms=float(statistics.median(samples_ms)),
                min_ms=float(min(samples_ms)), max_ms=float(max(samples_ms)),
                n=len(samples_ms))


def summary(samples: Dict[str, List[float]], timer: str) -> dict:
    """:func:`summarize` of the ``timer`` samples, plus both timers' medians.

    Args:
        samples (dict): ``{'wall': [...], 'cpu': [...]}`` in milliseconds.
        timer (str): One of :data:`TIMERS`: the samples summarised.

    Returns:
        dict: :func:`summarize`'s fields, ``timer``, ``wall_median_ms`` and
        ``cpu_median_ms``.
    """
    if timer not in TIMERS:
        raise ValueError(f'timer must be one of {TIMERS}, got {timer!r}')
    out = summarize(samples[timer])
    out.update(timer=timer, wall_median_ms=float(statistics.median(samples['wall'])),
               cpu_median_ms=float(statistics.median(samples['cpu'])))
    return out


# --------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: bool = True) -> str:
    """A Markdown table.

    Args:
        headers (Sequence[str]): Column titles.
        rows (Sequence[Sequence]): Cells, converted with ``str``.
        align (bool): Pad every column to its widest cell (readable as plain text, as
            the benchmark prints it); False writes the compact form (``|---|``
            separators, no padding) that the committed reports quote. Defaults to True.

    Returns:
        str: The table's lines joined by newlines, without a final newline.
    """
    if not align:
        lines = ['| ' + ' | '.join(str(h) for h in headers) + ' |',
                 '|' + '---|' * len(headers)]
        return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in r) + ' |'
                                  for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(row: Sequence[Any]) -> str:
        return '| ' + ' | '.join(str(x).ljust(w) for x, w in zip(row, widths)) + ' |'

    return '\n'.join([line(headers), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                     + [line(r) for r in rows])


def fmt(v: Optional[float], digits: int = 2) -> str:
    """``v`` with ``digits`` decimals, ``'-'`` for None."""
    if v is None:
        return '-'
    return f'{v:.{digits}f}'


def number(v: Optional[float], spec: str = '.3f', none: str = 'inf') -> str:
    """``v`` formatted with ``spec``; ``none`` for None (a PSNR of identical images,
    stored as None in strict JSON)."""
    return none if v is None else format(v, spec)


def percent(v: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, ``'-'`` for None."""
    return '-' if v is None else f'{100 * v:.1f} %'


def write_json(report: dict, path: str) -> str:
    """Write ``report`` as indented JSON (directories created); returns the path."""
    d = osp.dirname(osp.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    return path


# --------------------------------------------------------------------------- runs
def temp_key_file(tmp: str) -> str:
    """A new throw-away key saved in the folder ``tmp``; returns its path."""
    from ppenc.keys import SecretKey
    path = osp.join(tmp, 'benchmark.key')
    SecretKey.generate().save(path)
    return path


@contextlib.contextmanager
def quiet_mmengine():
    """Silence mmengine's INFO logs (one line per parameter from ``init_weights``)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
