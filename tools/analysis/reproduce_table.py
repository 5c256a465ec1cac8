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

This is the second version of the miniature (``docs/table1.md`` keeps the design log of
both versions). It is built so that the outcome is not fixed by the design:

1. **Distant pre-training** (:func:`pretrain.pretrain_backbone`, :mod:`textures_v2`): the
   tiny configs' own ViT classifies *plain single-texture images* by orientation (an
   image-level task, mean-pooled tokens). The fine-tuning task is segmentation of
   mosaics of large regions in another domain (square-wave gratings and plaids), whose
   classes (pattern x period range, orientation random) are not a function of the
   pre-training labels (:func:`textures_v2.label_dependence`).
2. **Fine-tuning** (:func:`finetune.finetune`): the nine tiny configs
   ``configs/ppenc/tiny/setr_tiny_{mla,pup,naive}_synthetic_{baseline,conventional2,
   proposed}.py`` in the real mmengine ``Runner``, with the data set swapped for the
   mosaics (:func:`finetune.make_finetune_config`), from the seed's pre-trained
   checkpoint (``init_cfg=Pretrained``; ``EncryptedVisionTransformer`` encrypts it with
   the key for proposed). A fourth cell, **scratch**, is the baseline without
   pre-training.
3. **Independent seeds**: a seed draws its own train / val / test images, its own
   pre-training run, its own key and the fine-tuning seed.
4. **Tune on val, report on test**: the val split was used only to choose the design
   (criterion: baseline − scratch); the tables report the test split.
5. **Statistics** (:mod:`stats`): per-seed paired differences with a 95 % t-interval and
   a TOST equivalence test of proposed − baseline at a margin fixed before the run
   (``plan.json``).
6. **Frozen backbone** (one decoder by default): only the decoder trains. Its baseline
   cell is the *frozen probe before fine-tuning*: how much of the task the pre-trained
   features already solve.

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
import json
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
from PIL import Image

from ppenc.keys import InvalidKeyError, SecretKey

from . import textures_v2
from .common import (CELLS, DECODERS, SETTINGS, TITLES, default_config_dir,
                     tiny_config_path)
from .finetune import evaluate_at_init, finetune, make_finetune_config
from .pretrain import load_backbone_config, pretrain_backbone
from .table1_report import (PAPER_TABLE1, compare, format_markdown, paired_statistics,
                            plot_miou, summarise, write_outputs)

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
        seeds (Sequence[int]): One full grid per seed. A seed draws its own train, val
            and test images, its own pre-training run, its own key and the fine-tuning
            seed. Defaults to ``(0, 1, 2, 3, 4)``.
        iters (int): Fine-tuning iterations per run (batch size 8, from the configs).
            Defaults to 300.
        lr (float): Fine-tuning SGD learning rate (poly decay). Defaults to 0.01.
        pretrain_iters (int): Pre-training iterations per seed. Defaults to 1000.
        pretrain_batch_size (int): Images per pre-training step. Defaults to 32.
        pretrain_lr (float): AdamW peak learning rate of pre-training. Defaults to 1e-3.
        decoders (Sequence[str]): Subset of :data:`DECODERS`. Defaults to all three.
        cells (Sequence[str]): Subset of :data:`CELLS`. Defaults to all four.
        frozen (bool): Also run the frozen-backbone grid. Defaults to True.
        frozen_decoders (Sequence[str]): Decoders of the frozen grid (those of
            ``decoders`` among them). Defaults to ``('mla',)``.
        num_train (int): Fine-tuning images per seed. Defaults to 96.
        num_val (int): Validation images per seed (tuning only). Defaults to 32.
        num_test (int): Test images per seed (the reported figures). Defaults to 32.
        height (int): Image height (multiple of 16, at least 64). Defaults to 64.
        width (int): Image width (multiple of 16, at least 64). Defaults to 128.
        tost_margin (float): Equivalence margin of the TOST for proposed − baseline, in
            mIoU, fixed before the run (written to ``plan.json``). Defaults to 3.0.
        alpha (float): Level of each one-sided test. Defaults to 0.05.
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
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    iters: int = 300
    lr: float = 0.01
    pretrain_iters: int = 1000
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    decoders: Sequence[str] = DECODERS
    cells: Sequence[str] = CELLS
    frozen: bool = True
    frozen_decoders: Sequence[str] = ('mla',)
    num_train: int = 96
    num_val: int = 32
    num_test: int = 32
    height: int = 64
    width: int = 128
    tost_margin: float = 3.0
    alpha: float = 0.05
    key_dir: Optional[str] = None
    threads: Optional[int] = 1
    log_interval: int = 50
    config_dir: Optional[str] = None
    verbose: bool = False

    #: What ``--quick`` changes: every stage at toy sizes, for the tests.
    QUICK = dict(seeds=(0, 1), iters=4, pretrain_iters=6, pretrain_batch_size=8,
                 num_train=4, num_val=2, num_test=2, log_interval=2)

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
        bad = [d for d in self.frozen_decoders if d not in DECODERS]
        if bad:
            raise ValueError(f'frozen_decoders must be among {list(DECODERS)}, got '
                             f'{list(self.frozen_decoders)}.')
        if not self.tost_margin > 0 or not 0 < self.alpha < 0.5:
            raise ValueError(f'need tost_margin > 0 and 0 < alpha < 0.5, got '
                             f'{self.tost_margin}, {self.alpha}.')
        for name in ('iters', 'pretrain_batch_size', 'num_train', 'num_val', 'num_test',
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


def _write_plan(exp: ExperimentConfig, out_dir: str) -> dict:
    """Write ``plan.json``: the settings, the TOST margin and level, before any run."""
    plan = asdict(exp)
    plan.update(decoders=list(exp.decoders), cells=list(exp.cells),
                seeds=[int(s) for s in exp.seeds], frozen_decoders=list(exp.frozen_decoders),
                key_dir=None, config_dir=None, out_dir=None, written=time.strftime(
                    '%Y-%m-%dT%H:%M:%S%z'),
                tost=dict(comparison='proposed - baseline, test mIoU, per-seed pairs',
                          margin=float(exp.tost_margin), alpha=float(exp.alpha)))
    plan.pop('verbose')
    with open(osp.join(out_dir, 'plan.json'), 'w') as f:
        json.dump(plan, f, indent=1)
    return plan


def _pretrain_summary(per_seed: Dict[int, dict]) -> dict:
    """One pre-training record: the shared settings and the per-seed accuracies' mean."""
    first = next(iter(per_seed.values()))
    out = {k: first[k] for k in ('description', 'iters', 'batch_size', 'lr', 'images_seen')}
    for k in first:
        if k.startswith('heldout_'):
            out[k] = round(float(np.mean([v[k] for v in per_seed.values()])), 2)
    out['per_seed'] = {str(s): v for s, v in per_seed.items()}
    out['time_s'] = round(sum(v['time_s'] for v in per_seed.values()), 1)
    return out


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole miniature Table I and write ``table1.{md,json,png}`` to ``out_dir``.

    For every seed: its key, its data (train / val / test), its pre-training, then one
    fine-tune and evaluation per decoder and cell with the mmengine Runner (and the
    frozen-backbone grid for ``frozen_decoders``). ``plan.json`` (settings and the TOST
    margin) is written before anything runs.

    Args:
        exp (ExperimentConfig): The settings.
        log (Callable[[str], None]): Progress output. Defaults to ``print``.

    Returns:
        dict: Everything written to ``table1.json``: ``decoders`` and ``frozen``
        (``{decoder: {cell: summarise(...)}}``, val figures with a ``test`` part),
        ``paired``, ``tost``, ``frozen_before_finetune``, ``seeds``, ``seconds``,
        ``settings``, ``key_fingerprints``, ``pretrain``, ``label_dependence``,
        ``backbone``, ``timings``, ``machine``, ``versions``.
    """
    exp.validate()
    t_start = time.time()
    load_start = _loadavg()
    out_dir = exp.out_dir
    os.makedirs(out_dir, exist_ok=True)
    plan = _write_plan(exp, out_dir)
    seeds = [int(s) for s in exp.seeds]
    frozen_decoders = [d for d in exp.decoders if d in exp.frozen_decoders]
    grids = [('decoders', list(exp.decoders))]
    if exp.frozen and frozen_decoders:
        grids.append(('frozen', frozen_decoders))
    per_cell: Dict[str, Dict[str, Dict[str, List[dict]]]] = {g: {} for g, _ in grids}
    pre_stats: Dict[int, dict] = {}
    chance: Dict[int, float] = {}
    t_data = t_ft = 0.0
    batch_size = None
    total = len(seeds) * sum(len(ds) for _, ds in grids) * len(exp.cells)
    k = 0
    with _torch_threads(exp.threads):
        keys = prepare_keys(exp.key_dir or osp.join(out_dir, 'keys'), seeds, log)
        backbone_cfg, pre_cfg = load_backbone_config(exp.config_dir)
        from mmseg_ppenc.adaptation import encrypt_vit_state_dict
        for seed in seeds:
            key_file, key = keys[seed]
            t0 = time.time()
            data_root = osp.join(out_dir, 'data', f'seed{seed}_{exp.num_train}x'
                                 f'{exp.num_val}x{exp.num_test}_{exp.height}x{exp.width}')
            # The directory name fixes the file set; the writer refuses foreign files.
            written = textures_v2.make_dataset(
                data_root, dict(train=exp.num_train, val=exp.num_val, test=exp.num_test),
                (exp.height, exp.width), seed=seed)
            chance[seed] = textures_v2.chance_miou(
                np.asarray(Image.open(p.replace(f'{os.sep}img_dir{os.sep}',
                                                f'{os.sep}ann_dir{os.sep}')))
                for p in written['test'])
            t_data += time.time() - t0
            ckpt = osp.join(out_dir, f'pretrained_tiny_vit_seed{seed}.pth')
            log(f'seed {seed}: data in {data_root}; pre-training '
                f'{_backbone_summary(backbone_cfg)} for {exp.pretrain_iters} iterations')
            pre_stats[seed] = pretrain_backbone(
                backbone_cfg, pre_cfg, ckpt, exp.pretrain_iters, seed,
                exp.pretrain_batch_size, exp.pretrain_lr, [key], log)
            log(f'seed {seed}: pre-training done in {pre_stats[seed]["time_s"]:.0f} s, '
                f'held-out orientation accuracy '
                f'{pre_stats[seed]["heldout_orientation_acc"]:.1f} %')
            plain_state = torch.load(ckpt, map_location='cpu',
                                     weights_only=True)['state_dict']
            t1 = time.time()
            for grid, decoders in grids:
                for decoder in decoders:
                    for cell in exp.cells:
                        k += 1
                        pretrained = cell != 'scratch'
                        setting = 'baseline' if cell == 'scratch' else cell
                        cfg = make_finetune_config(
                            decoder, setting, data_root=data_root,
                            pretrained=osp.abspath(ckpt) if pretrained else None,
                            work_dir=osp.join(out_dir, 'runs', grid, f'seed{seed}',
                                              f'{decoder}_{cell}'),
                            iters=exp.iters, seed=seed, lr=exp.lr,
                            log_interval=exp.log_interval, verbose=exp.verbose,
                            config_dir=exp.config_dir)
                        batch_size = int(cfg.train_dataloader.batch_size)
                        expected = None
                        if pretrained:
                            expected = (encrypt_vit_state_dict(
                                plain_state, key, pre_cfg['mean'], pre_cfg['std'],
                                prefix='') if setting == 'proposed' else plain_state)
                        res = finetune(cfg, key_file, expected,
                                       freeze_backbone=grid == 'frozen')
                        res.update(seed=seed, key_fingerprint=key.fingerprint,
                                   backbone_type=cfg.model.backbone.type)
                        per_cell[grid].setdefault(decoder, {}).setdefault(
                            cell, []).append(res)
                        log(f'[{k}/{total}] {"frozen " if grid == "frozen" else ""}seed '
                            f'{seed} {TITLES[decoder]} / {TITLES[cell]}: val mIoU '
                            f'{res["mIoU"]:.2f}, test mIoU {res["test"]["mIoU"]:.2f} '
                            f'(final loss {res["final_loss"]}, '
                            f'{res["train_time_s"] + res["val_time_s"]:.0f} s)')
            t_ft += time.time() - t1

    settings = dict(plan)
    settings.update(batch_size=batch_size)
    grids_out = {g: {d: {c: summarise(v) for c, v in row.items()}
                     for d, row in per_cell.get(g, {}).items()}
                 for g in ('decoders', 'frozen')}
    pre = _pretrain_summary(pre_stats)
    result = dict(
        experiment='Table I in miniature, version 2 (Sueyoshi, Nishikawa, Kiya, '
                   'arXiv 2507.12730)',
        seeds=seeds,
        decoders=grids_out['decoders'],
        frozen=grids_out['frozen'],
        seconds=None,
        settings=settings,
        key_fingerprints={str(s): keys[s][1].fingerprint for s in seeds},
        backbone=dict(config=backbone_cfg, summary=_backbone_summary(backbone_cfg)),
        pretrain=pre,
        chance_test_miou=dict(
            what='expected test mIoU of uniform random guessing per pixel',
            per_seed={str(k): round(v, 2) for k, v in chance.items()},
            mean=round(float(np.mean(list(chance.values()))), 2)),
        label_dependence=textures_v2.label_dependence(textures_v2.ft_region_label_pairs(
            20000, np.random.default_rng(12345))),
        timings=dict(data_s=round(t_data, 1), pretrain_s=pre['time_s'],
                     finetune_s=round(t_ft, 1)),
        machine=dict(cpu_count=os.cpu_count(), torch_threads=exp.threads or
                     torch.get_num_threads(), loadavg_start=load_start,
                     loadavg_end=_loadavg()),
        versions=_versions(),
    )
    result.update(paired_statistics(result, exp.tost_margin, exp.alpha))
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
                   help=f'seeds; each draws its own data, pre-training, key and fine-tuning seed '
                   f'(default: {" ".join(map(str, d.seeds))})')
    p.add_argument('--iters', type=int, default=None,
                   help=f'fine-tuning iterations per run (default: {d.iters})')
    p.add_argument('--lr', type=float, default=None,
                   help=f'fine-tuning SGD learning rate (default: {d.lr})')
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
    p.add_argument('--test', type=int, default=None,
                   help=f'test images (default: {d.num_test})')
    p.add_argument('--frozen-decoders', nargs='+', choices=DECODERS, default=None,
                   help=f'decoders of the frozen grid (default: '
                   f'{" ".join(d.frozen_decoders)})')
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
    explicit = dict(seeds=args.seeds, iters=args.iters, lr=args.lr,
                    pretrain_iters=args.pretrain_iters,
                    num_train=args.train, num_val=args.val, num_test=args.test,
                    frozen_decoders=args.frozen_decoders)
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
