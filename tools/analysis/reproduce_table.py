"""Table I of Sueyoshi et al. (arXiv 2507.12730) in miniature, on this CPU.

Experiment driver, not library code: it lives in the repository's ``tools/analysis/``
and reads the tiny configs of the checkout it sits in. Run it as
``python tools/reproduce_table.py --out-dir work_dirs/table1``.

The paper fine-tunes ImageNet-pre-trained SETR models on Cityscapes in three settings
(``docs/method.md``, "The method"): **baseline** (plain model, plain images),
**conventional 2** (plain model, encrypted images) and **proposed** (model encrypted with
the key, encrypted images). Its headline is a pattern: proposed is about as good as
baseline, and conventional 2 is far below both, because a block-wise pixel shuffle
breaks the match between the pre-trained patch embedding and its input. That pattern
needs pre-training to be worth a lot. This driver rebuilds the experiment at toy scale
so that it is:

1. **Data** (:mod:`textures`): texture mosaics. Eight classes that differ only by the
   orientation and period of a grating inside each 16x16 block; colour, contrast and
   brightness are random per region, so they carry no information. A scarce fine-tuning
   set (24 images of 64x128 by default), like Cityscapes against ImageNet.
2. **Pre-training stand-in for ImageNet** (:func:`pretrain.pretrain_backbone`): the tiny
   configs' own ViT backbone learns, on an unlimited stream of *plain* mosaics with
   continuous orientations and periods, to decode every pixel's orientation bin and
   period bin from the tokens. A related task, not the fine-tuning labels.
3. **Fine-tuning** (:func:`finetune.finetune`): the nine tiny configs
   ``configs/ppenc/tiny/setr_tiny_{mla,pup,naive}_synthetic_{baseline,conventional2,
   proposed}.py`` in the real mmengine ``Runner``, with the data set swapped for the
   mosaics (:func:`finetune.make_finetune_config`), all from the same pre-trained
   checkpoint (``init_cfg=Pretrained``; ``EncryptedVisionTransformer`` encrypts it with
   the key for proposed). A fourth cell, **scratch**, is the baseline without pre-training: how
   much pre-training is worth here, and the floor conventional 2 can fall to.
4. **Seeds**: every cell is run once per seed; a seed sets the fine-tuning seed *and*
   the key (one key file per seed). Data and pre-training stay fixed. Results are the
   per-seed values, their mean and their sample standard deviation.
5. **Frozen backbone**: the same grid with the backbone frozen after initialisation and
   only the decoder trained. Conventional 2 cannot re-learn its patch embedding there,
   which shows the mechanism directly.
6. **Evaluation**: the configs' ``IoUMetric`` (aAcc / mIoU / mAcc) on the val split.

Outputs: ``table1.md``, ``table1.json`` (per decoder and cell: per-seed mIoU, mean,
std, and the other metrics; key fingerprints, never key bytes) and ``table1.png``
(:mod:`table1_report`). ``--quick`` runs every stage at toy sizes (for tests).
:func:`finetune.evaluate_at_init` evaluates a cell's model right after initialisation,
which shows that proposed and baseline start from the same function while
conventional 2 does not.

Runs are deterministic per (seed, key) on a given machine and thread count: every Runner
is seeded, data loading is in-process and the thread count is fixed
(:attr:`ExperimentConfig.threads`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ppenc.keys import InvalidKeyError, SecretKey

from . import textures
from .common import (CELLS, DECODERS, SETTINGS, TITLES, default_config_dir,
                     tiny_config_path)
from .finetune import evaluate_at_init, finetune, make_finetune_config
from .pretrain import load_backbone_config, pretrain_backbone
from .table1_report import (PAPER_TABLE1, compare, format_markdown, plot_miou, summarise,
                            write_outputs)

__all__ = [
    'DECODERS', 'SETTINGS', 'CELLS', 'TITLES', 'ExperimentConfig', 'default_config_dir',
    'tiny_config_path', 'load_backbone_config', 'pretrain_backbone', 'prepare_keys',
    'make_finetune_config', 'finetune', 'evaluate_at_init', 'summarise', 'compare',
    'run_experiment', 'format_markdown', 'plot_miou', 'PAPER_TABLE1', 'build_parser',
    'parse_args', 'config_from_args', 'main'
]


# --------------------------------------------------------------------------- settings
@dataclass
class ExperimentConfig:
    """Settings of the miniature Table I experiment.

    Args:
        out_dir (str): Output directory. Defaults to ``'work_dirs/table1'``.
        seeds (Sequence[int]): One full grid per seed; a seed sets the fine-tuning seed
            and selects the key. Defaults to ``(0, 1, 2)``.
        iters (int): Fine-tuning iterations per run (batch size 8, from the configs).
            Defaults to 200.
        lr (float): Fine-tuning SGD learning rate (poly decay). Defaults to 0.01.
        pretrain_iters (int): Pre-training iterations. Defaults to 1500.
        pretrain_batch_size (int): Mosaics per pre-training step. Defaults to 32.
        pretrain_lr (float): AdamW peak learning rate of pre-training. Defaults to 1e-3.
        decoders (Sequence[str]): Subset of :data:`DECODERS`. Defaults to all three.
        cells (Sequence[str]): Subset of :data:`CELLS`. Defaults to all four.
        frozen (bool): Also run the frozen-backbone grid. Defaults to True.
        num_train (int): Fine-tuning images. Defaults to 24.
        num_val (int): Validation images. Defaults to 32.
        height (int): Image height (multiple of 16, at least 64). Defaults to 64.
        width (int): Image width (multiple of 16, at least 64). Defaults to 128.
        data_seed (int): Seed of the data set and of pre-training. Defaults to 0.
        key_dir (str, optional): Directory of the per-seed key files
            ``table1_seed<N>.key``; missing ones are created (mode 600), present ones
            reused. Defaults to None (``<out_dir>/keys``).
        threads (int, optional): ``torch.set_num_threads`` during the experiment (restored
            afterwards). One thread is the default: these models are so small that a
            second thread mostly adds synchronisation, which becomes costly when other
            processes share the cores; a fixed count also keeps float reductions, and so
            the results, identical between runs. None leaves torch's setting.
            Defaults to 1.
        log_interval (int): Iterations between logged training losses. Defaults to 50.
        config_dir (str, optional): Directory of the tiny configs. Defaults to None
            (``configs/ppenc/tiny`` of this checkout).
        verbose (bool): Show mmengine's INFO logs on the console. Defaults to False.
    """

    out_dir: str = 'work_dirs/table1'
    seeds: Sequence[int] = (0, 1, 2)
    iters: int = 200
    lr: float = 0.01
    pretrain_iters: int = 1500
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    decoders: Sequence[str] = DECODERS
    cells: Sequence[str] = CELLS
    frozen: bool = True
    num_train: int = 24
    num_val: int = 32
    height: int = 64
    width: int = 128
    data_seed: int = 0
    key_dir: Optional[str] = None
    threads: Optional[int] = 1
    log_interval: int = 50
    config_dir: Optional[str] = None
    verbose: bool = False

    #: What ``--quick`` changes: every stage at toy sizes, for the tests.
    QUICK = dict(seeds=(0, 1), iters=4, pretrain_iters=6, pretrain_batch_size=8,
                 num_train=4, num_val=2, log_interval=2)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the expected and the actual value of a bad field."""
        for name, allowed in (('decoders', DECODERS), ('cells', CELLS)):
            chosen = list(getattr(self, name))
            bad = [c for c in chosen if c not in allowed]
            if bad or not chosen or len(set(chosen)) != len(chosen):
                raise ValueError(f'{name} must be distinct values among {list(allowed)}, '
                                 f'got {chosen}.')
        seeds = list(self.seeds)
        if (not seeds or len(set(seeds)) != len(seeds)
                or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds)):
            raise ValueError(f'seeds must be distinct non-negative integers, got {seeds}.')
        for name in ('iters', 'pretrain_batch_size', 'num_train', 'num_val',
                     'log_interval'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
        if self.pretrain_iters < 0:
            raise ValueError(f'pretrain_iters must be >= 0, got {self.pretrain_iters}.')
        for name in ('height', 'width'):
            v = int(getattr(self, name))
            if v < 64 or v % 16:
                raise ValueError(f'{name} must be a multiple of 16 and at least 64 (the '
                                 f'crop size), got {v}.')
        if not self.lr > 0 or not self.pretrain_lr > 0:
            raise ValueError(f'learning rates must be > 0, got lr={self.lr}, '
                             f'pretrain_lr={self.pretrain_lr}.')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads must be >= 1 or None, got {self.threads}.')


# --------------------------------------------------------------------------- keys
def prepare_keys(key_dir: str, seeds: Sequence[int],
                 log: Callable[[str], None] = print) -> Dict[int, Tuple[str, SecretKey]]:
    """One key per seed: ``<key_dir>/table1_seed<N>.key``, created (mode 600) or reused.

    Reusing keeps a rerun into the same out-dir comparable: conventional 2 and proposed
    depend on the key as well as on the seed.

    Returns:
        dict: ``{seed: (absolute key path, key)}``; log only fingerprints.
    """
    keys = {}
    for seed in seeds:
        path = osp.abspath(osp.join(key_dir, f'table1_seed{int(seed)}.key'))
        how = 'reusing key'
        if not osp.exists(path):
            os.makedirs(key_dir, exist_ok=True)
            SecretKey.generate().save(path)
            how = 'new key'
        key = SecretKey.load(path)
        log(f'seed {seed}: {how} {key.fingerprint}')
        keys[int(seed)] = (path, key)
    return keys


# --------------------------------------------------------------------------- experiment
@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _backbone_summary(bb: dict) -> str:
    return (f'{bb.get("type")}, {bb.get("embed_dims")}-d, {bb.get("num_layers")} layers, '
            f'{bb.get("num_heads")} heads, patch {bb.get("patch_size", 16)}')


def _versions() -> dict:
    import mmengine
    import mmseg
    return dict(python=platform.python_version(), torch=torch.__version__,
                mmseg=mmseg.__version__, mmengine=mmengine.__version__,
                numpy=np.__version__)


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole miniature Table I and write ``table1.{md,json,png}`` to ``out_dir``.

    Steps: keys, data, pre-training, then for every seed, decoder and cell one fine-tune
    and evaluation with the mmengine Runner (and the same with a frozen backbone).

    Args:
        exp (ExperimentConfig): The settings.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: Everything written to ``table1.json``: ``decoders`` and ``frozen``
        (``{decoder: {cell: summarise(...)}}``), ``seeds``, ``seconds``, ``settings``,
        ``key_fingerprints``, ``pretrain``, ``backbone``, ``timings``, ``machine``,
        ``versions``.
    """
    exp.validate()
    t_start = time.time()
    load_start = _loadavg()
    out_dir = exp.out_dir
    os.makedirs(out_dir, exist_ok=True)
    seeds = [int(s) for s in exp.seeds]
    with _torch_threads(exp.threads):
        keys = prepare_keys(exp.key_dir or osp.join(out_dir, 'keys'), seeds, log)

        t0 = time.time()
        data_root = osp.join(out_dir, 'data', f'mosaics_s{exp.data_seed}_{exp.num_train}x'
                             f'{exp.num_val}_{exp.height}x{exp.width}')
        # The directory name fixes the file set; the writer refuses foreign files.
        textures.make_texture_dataset(data_root, exp.num_train, exp.num_val,
                                      (exp.height, exp.width), seed=exp.data_seed)
        t_data = time.time() - t0
        log(f'data: {exp.num_train} train / {exp.num_val} val mosaics of '
            f'{exp.height}x{exp.width} in {data_root} ({t_data:.1f} s)')

        backbone_cfg, pre_cfg = load_backbone_config(exp.config_dir)
        ckpt = osp.join(out_dir, 'pretrained_tiny_vit.pth')
        log(f'pre-training {_backbone_summary(backbone_cfg)} for {exp.pretrain_iters} '
            'iterations on plain mosaics')
        pre_stats = pretrain_backbone(backbone_cfg, pre_cfg, ckpt, exp.pretrain_iters,
                                      exp.data_seed, exp.pretrain_batch_size,
                                      exp.pretrain_lr, [k for _, k in keys.values()], log)
        log(f'pre-training done in {pre_stats["time_s"]:.0f} s: held-out orientation / '
            f'period accuracy {pre_stats["heldout_orientation_acc"]:.1f} / '
            f'{pre_stats["heldout_period_acc"]:.1f} %')
        plain_state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict

        grids = [('decoders', False)] + ([('frozen', True)] if exp.frozen else [])
        runs = [(g, seed, d, c) for g, _ in grids for seed in seeds
                for d in exp.decoders for c in exp.cells]
        per_cell: Dict[str, Dict[str, Dict[str, List[dict]]]] = {g: {} for g, _ in grids}
        batch_size = None
        t_ft = time.time()
        for k, (grid, seed, decoder, cell) in enumerate(runs, 1):
            key_file, key = keys[seed]
            pretrained = cell != 'scratch'
            setting = 'baseline' if cell == 'scratch' else cell
            cfg = make_finetune_config(
                decoder, setting, data_root=data_root,
                pretrained=osp.abspath(ckpt) if pretrained else None,
                work_dir=osp.join(out_dir, 'runs', grid, f'seed{seed}',
                                  f'{decoder}_{cell}'),
                iters=exp.iters, seed=seed, lr=exp.lr, log_interval=exp.log_interval,
                verbose=exp.verbose, config_dir=exp.config_dir)
            batch_size = int(cfg.train_dataloader.batch_size)
            expected = None
            if pretrained:
                expected = (encrypt_vit_state_dict(plain_state, key, pre_cfg['mean'],
                                                   pre_cfg['std'], prefix='')
                            if setting == 'proposed' else plain_state)
            tag = (f'[{k}/{len(runs)}] {"frozen " if grid == "frozen" else ""}seed {seed} '
                   f'{TITLES[decoder]} / {TITLES[cell]}')
            res = finetune(cfg, key_file, expected, freeze_backbone=grid == 'frozen')
            res.update(seed=seed, key_fingerprint=key.fingerprint,
                       backbone_type=cfg.model.backbone.type)
            per_cell[grid].setdefault(decoder, {}).setdefault(cell, []).append(res)
            log(f'{tag}: aAcc {res["aAcc"]:.2f}  mIoU {res["mIoU"]:.2f}  mAcc '
                f'{res["mAcc"]:.2f}  (final loss {res["final_loss"]}, '
                f'{res["train_time_s"] + res["val_time_s"]:.0f} s)')
        t_ft = time.time() - t_ft

    settings = asdict(exp)
    settings.update(decoders=list(exp.decoders), cells=list(exp.cells), seeds=seeds,
                    batch_size=batch_size, key_dir=None)
    settings.pop('verbose')
    result = dict(
        experiment='Table I in miniature (Sueyoshi, Nishikawa, Kiya, arXiv 2507.12730)',
        seeds=seeds,
        decoders={d: {c: summarise(v) for c, v in row.items()}
                  for d, row in per_cell['decoders'].items()},
        frozen={d: {c: summarise(v) for c, v in row.items()}
                for d, row in per_cell.get('frozen', {}).items()},
        seconds=None,
        settings=settings,
        key_fingerprints={str(s): keys[s][1].fingerprint for s in seeds},
        backbone=dict(config=backbone_cfg, summary=_backbone_summary(backbone_cfg)),
        pretrain=dict(pre_stats, checkpoint=osp.basename(ckpt)),
        timings=dict(data_s=round(t_data, 1), pretrain_s=pre_stats['time_s'],
                     finetune_s=round(t_ft, 1)),
        machine=dict(cpu_count=os.cpu_count(), torch_threads=exp.threads or
                     torch.get_num_threads(), loadavg_start=load_start,
                     loadavg_end=_loadavg()),
        versions=_versions(),
    )
    result['seconds'] = round(time.time() - t_start, 1)
    write_outputs(result, out_dir)
    return result


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser (defaults are those of :class:`ExperimentConfig`).

    Returns:
        argparse.ArgumentParser: The parser of ``tools/reproduce_table.py``.
    """
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description='Table I of Sueyoshi et al. in miniature: '
                                'baseline / conventional 2 / proposed / scratch x MLA / '
                                'PUP / Naive x seeds, full fine-tuning and frozen backbone.')
    p.add_argument('--out-dir', default=d.out_dir,
                   help=f'output directory (default: {d.out_dir})')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help=f'seeds; each sets the fine-tuning seed and the key '
                   f'(default: {" ".join(map(str, d.seeds))})')
    p.add_argument('--iters', type=int, default=None,
                   help=f'fine-tuning iterations per run (default: {d.iters})')
    p.add_argument('--pretrain-iters', type=int, default=None,
                   help=f'pre-training iterations (default: {d.pretrain_iters})')
    p.add_argument('--decoders', nargs='+', choices=DECODERS, default=list(DECODERS),
                   help='decoders (default: all)')
    p.add_argument('--cells', nargs='+', choices=CELLS, default=list(CELLS),
                   help='cells: the settings and scratch (default: all)')
    p.add_argument('--train', type=int, default=None,
                   help=f'fine-tuning images (default: {d.num_train})')
    p.add_argument('--val', type=int, default=None,
                   help=f'validation images (default: {d.num_val})')
    p.add_argument('--no-frozen', dest='frozen', action='store_false',
                   help='skip the frozen-backbone grid')
    p.add_argument('--key-dir', default=None,
                   help='directory of the per-seed keys table1_seed<N>.key (default: '
                   'OUT_DIR/keys; missing keys are created with mode 600)')
    p.add_argument('--quick', action='store_true',
                   help='every stage at toy sizes, in a few minutes (for tests): '
                   + ', '.join(f'{k}={v}' for k, v in ExperimentConfig.QUICK.items()))
    p.add_argument('--threads', type=int, default=d.threads,
                   help=f'torch threads (default: {d.threads}; see ExperimentConfig)')
    p.add_argument('--verbose', action='store_true',
                   help="show mmengine's INFO logs and library warnings")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        argparse.Namespace: The parsed flags.
    """
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed flags: defaults, then ``--quick``, then
    every flag given explicitly."""
    values = dict(ExperimentConfig.QUICK) if args.quick else {}
    explicit = dict(seeds=args.seeds, iters=args.iters, pretrain_iters=args.pretrain_iters,
                    num_train=args.train, num_val=args.val)
    values.update({k: v for k, v in explicit.items() if v is not None})
    return ExperimentConfig(out_dir=args.out_dir, decoders=args.decoders, cells=args.cells,
                            frozen=args.frozen, key_dir=args.key_dir, threads=args.threads,
                            verbose=args.verbose, **values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the experiment and print the table and the total runtime.

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).

    Returns:
        int: 0 on success, 2 for bad settings, a missing config or a bad key file (one
        ``error: ...`` line on stderr).
    """
    args = parse_args(argv)
    if not args.verbose:
        # mmseg/mmengine deprecation notices would repeat for every run.
        warnings.filterwarnings('ignore', module=r'(mmseg|mmengine|mmcv)(\.|$)')
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    exp = config_from_args(args)
    try:
        exp.validate()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        result = run_experiment(exp)
    except (FileNotFoundError, FileExistsError, InvalidKeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print()
    print(format_markdown(result))
    print(f'Wrote {osp.join(args.out_dir, "table1.md")}, table1.json and table1.png; '
          f'total runtime {result["seconds"] / 60:.1f} min ({result["seconds"]:.0f} s; '
          f'load average at start {result["machine"]["loadavg_start"]}, end '
          f'{result["machine"]["loadavg_end"]}).')
    return 0
