"""The user's training command end to end on synthetic Cityscapes data, measured.

For each config (by default the shipped ViT-L + MLA baseline and proposed configs),
:func:`run_training` runs ``tools/train.py`` in a subprocess, as a user does, with
random initial weights (no pre-trained checkpoint is needed), a short schedule that ends
with one slide validation, and no checkpoint writing. :func:`parse_scalars` then reads
mmengine's ``vis_data/scalars.json``:

- **img/s with data loading**: batch size over the mean iteration time (``time``) of the
  logged windows after the first one (which holds start-up and cuDNN autotuning);
- **GPU idle share**: mean ``data_time`` over mean ``time``: the part of an iteration
  the training process spent waiting for the dataloader workers;
- **validation time per image**: mmengine's mean ``time`` per validation iteration
  (batch 1, slide inference over the whole 1024x2048 image).

:func:`step0_agreement` builds both models from their configs (the proposed model loads
the baseline's random backbone as its pre-trained checkpoint and adapts it to the key,
and gets the baseline's random heads), runs
slide inference under bf16 autocast (where supported) on the first validation images,
plain images for the baseline and ``BlockScramble``-encrypted ones for the proposed
model, and reports the fraction of predicted pixels that differ.
"""
from __future__ import annotations

import copy
import glob
import logging
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

from .common import TOOLS_DIR

__all__ = ['train_overrides', 'run_training', 'parse_scalars', 'step0_agreement', 'main']


def train_overrides(data_root: str, iters: int, batch: int, workers: int,
                    log_interval: int, seed: int = 0) -> List[str]:
    """``--cfg-options`` for a short measured run of a shipped config.

    Args:
        data_root (str): Cityscapes-layout folder (train and val).
        iters (int): Training iterations; validation runs once, after the last.
        batch (int): Training batch size.
        workers (int): Training dataloader workers.
        log_interval (int): Iterations per logged window.
        seed (int): ``randomness.seed``, so that runs start from the same weights.
            Defaults to 0.

    Returns:
        list[str]: ``key=value`` strings.
    """
    root = data_root if data_root.endswith(os.sep) else data_root + os.sep
    return [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'train_dataloader.batch_size={batch}', f'train_dataloader.num_workers={workers}',
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        # Random weights: the machine has no pre-trained checkpoint.
        'model.backbone.init_cfg=None', 'model.pretrained=None',
        f'default_hooks.logger.interval={log_interval}',
        # A ViT-L checkpoint with optimizer state is over 2 GB; the run only measures.
        'default_hooks.checkpoint.interval=-1', 'default_hooks.checkpoint.save_last=False',
        f'randomness.seed={seed}',
        # The poly schedule of the shipped config ends at 80k iterations; keep its shape.
        f'param_scheduler.0.end={max(iters, 1)}',
    ]


def run_training(config: str, work_dir: str, overrides: Sequence[str],
                 timeout_s: float, env: Optional[Dict[str, str]] = None,
                 python: str = sys.executable) -> dict:
    """Run ``tools/train.py CONFIG`` in a subprocess and time it.

    Args:
        config (str): Config path.
        work_dir (str): Its ``--work-dir``.
        overrides (Sequence[str]): ``--cfg-options`` entries.
        timeout_s (float): Seconds before the run is stopped.
        env (dict, optional): Environment (e.g. with ``PPENC_KEY_FILE``). Defaults to
            None (this process's).
        python (str): Interpreter. Defaults to this one.

    Returns:
        dict: ``returncode`` (None after a timeout), ``wall_s``, ``command`` and the
        last 2000 characters of the output in ``log_tail``.
    """
    cmd = [python, osp.join(TOOLS_DIR, 'train.py'), config, '--work-dir', work_dir,
           '--cfg-options', *overrides]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        code = None
        out = (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or '') + \
            f'\n[stopped after {timeout_s:.0f} s]'
    return dict(returncode=code, wall_s=time.time() - t0,
                command=' '.join(['python', 'tools/train.py', osp.relpath(config),
                                  '--cfg-options', *overrides]),
                log_tail=out[-2000:])


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def parse_scalars(work_dir: str, batch: int) -> dict:
    """Throughput, data wait and validation time from mmengine's ``scalars.json``.

    Args:
        work_dir (str): The run's work dir (``<work_dir>/<timestamp>/vis_data/``).
        batch (int): Training batch size.

    Returns:
        dict: ``img_per_s``, ``iter_s``, ``data_s``, ``gpu_idle_share``,
        ``windows`` (logged training windows used), ``val_s_per_img``, ``mIoU``.

    Raises:
        FileNotFoundError: When the run wrote no ``scalars.json``.
    """
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'No */vis_data/scalars.json under {work_dir!r}: the run '
                                'did not reach its first logged iteration.')
    rows = [json.loads(line) for line in open(files[-1]) if line.strip()]
    train = [r for r in rows if 'loss' in r and 'time' in r]
    used = train[1:] if len(train) > 1 else train
    it, dt = _mean([r['time'] for r in used]), _mean([r['data_time'] for r in used])
    val = [r for r in rows if 'mIoU' in r]
    out = dict(windows=len(used), iter_s=it, data_s=dt,
               img_per_s=batch / it if it else None,
               gpu_idle_share=dt / it if it and dt is not None else None,
               loss_first=train[0]['loss'] if train else None,
               loss_last=train[-1]['loss'] if train else None,
               val_s_per_img=val[-1].get('time') if val else None,
               val_data_s_per_img=val[-1].get('data_time') if val else None,
               mIoU=val[-1].get('mIoU') if val else None)
    return out


def _val_batches(cfg, n: int) -> list:
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS
    ds = DATASETS.build(cfg.val_dataloader.dataset)
    if len(ds) < n:
        raise ValueError(f'The validation set has {len(ds)} images; {n} were asked for.')
    return [pseudo_collate([ds[i]]) for i in range(n)]


def step0_agreement(baseline_cfg: str, proposed_cfg: str, data_root: str,
                    num_images: int = 2, seed: int = 0, device: str = 'cuda',
                    bf16: bool = True, cfg_options: Optional[dict] = None) -> dict:
    """Fraction of predicted pixels that differ between baseline and proposed at step 0.

    Args:
        baseline_cfg (str): Baseline config path.
        proposed_cfg (str): Proposed config path (its key from ``$PPENC_KEY_FILE``).
        data_root (str): Cityscapes-layout folder with a ``val`` split.
        num_images (int): Validation images compared. Defaults to 2.
        seed (int): Seed of both models' random weights. Defaults to 0.
        device (str): ``'cuda'`` or ``'cpu'``. Defaults to ``'cuda'``.
        bf16 (bool): Infer under bf16 autocast (on the CPU too). Defaults to True.
        cfg_options (dict, optional): Extra overrides for both configs (e.g. a smaller
            test crop). Defaults to None.

    Returns:
        dict: ``differ_fraction`` (all compared pixels), ``per_image``, ``pixels``,
        ``precision``, ``seconds``.
    """
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmseg_ppenc.compat import replace_syncbn
    from mmseg_ppenc.models.encrypted_vit import bind_normalization
    from mmengine.logging import MMLogger
    # init_weights logs one line per parameter.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    t0 = time.time()
    preds = {}
    root = data_root if data_root.endswith(os.sep) else data_root + os.sep
    # The baseline's random backbone stands in for pre-trained weights: the proposed
    # backbone loads it as its pre-trained checkpoint and adapts it to the key (a
    # proposed model without pre-trained weights is never adapted, by design).
    scratch = tempfile.mkdtemp(prefix='ppenc-step0-')
    ckpt = osp.join(scratch, 'backbone.pth')
    for name, path in (('baseline', baseline_cfg), ('proposed', proposed_cfg)):
        cfg = Config.fromfile(path)
        init_default_scope(cfg.get('default_scope', 'mmseg'))
        init_cfg = None if name == 'baseline' else dict(type='Pretrained', checkpoint=ckpt)
        cfg.merge_from_dict({'val_dataloader.dataset.data_root': root,
                             'model.pretrained': None, **(cfg_options or {})})
        cfg.model.backbone.init_cfg = init_cfg
        model_cfg = copy.deepcopy(cfg.model)  # a ConfigDict: heads read test_cfg.mode
        replace_syncbn(model_cfg)
        torch.manual_seed(seed)
        model = MODELS.build(model_cfg)
        bind_normalization(model)  # what KeyManagementHook does at the start of a run
        model.init_weights()
        if name == 'baseline':
            torch.save({'state_dict': model.backbone.state_dict()}, ckpt)
            rest = {k: v.clone() for k, v in model.state_dict().items()
                    if not k.startswith('backbone.')}
        else:
            # Loading the checkpoint draws no random numbers where a random backbone
            # initialisation did, so the heads' initialisation differs: copy them.
            model.load_state_dict(rest, strict=False)
        model.to(device).eval()
        out = []
        dtype = torch.bfloat16 if bf16 else None
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype,
                                             enabled=bf16):
            for batch in _val_batches(cfg, num_images):
                res = model.test_step(batch)
                out.append(res[0].pred_sem_seg.data.cpu())
        preds[name] = out
        del model
        if device.startswith('cuda'):
            torch.cuda.empty_cache()
    shutil.rmtree(scratch, ignore_errors=True)
    per_image = [float((a != b).float().mean()) for a, b in
                 zip(preds['baseline'], preds['proposed'])]
    pixels = sum(p.numel() for p in preds['baseline'])
    differ = sum(int((a != b).sum()) for a, b in zip(preds['baseline'], preds['proposed']))
    return dict(differ_fraction=differ / pixels, per_image=per_image, pixels=pixels,
                images=num_images, precision='bf16 autocast' if bf16 else 'fp32',
                seconds=time.time() - t0)


def main(argv: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> int:
    """Train each config, read its figures, compare step 0; write the JSON report as it
    goes (``tools/benchmark_e2e.py``; see its ``--help``).

    Args:
        argv (Sequence[str], optional): Arguments without the program name. Defaults to
            None (``sys.argv``).
        log (callable): Progress messages. Defaults to ``print``.

    Returns:
        int: 0 (a failed run is recorded in the report, not fatal).
    """
    import argparse
    p = argparse.ArgumentParser(description='Measure tools/train.py end to end on '
                                            'synthetic Cityscapes data (random weights)')
    p.add_argument('--configs', nargs='+', default=[
        'configs/ppenc/setr_vit-l_mla_cityscapes_baseline.py',
        'configs/ppenc/setr_vit-l_mla_cityscapes_proposed.py'])
    p.add_argument('--data-root', required=True,
                   help='Cityscapes-layout folder (tools/make_synthetic_cityscapes.py)')
    p.add_argument('--work-dir', required=True, help='parent of the runs\' work dirs')
    p.add_argument('--key-file', default=None,
                   help='key for the encrypted configs (default: $PPENC_KEY_FILE)')
    p.add_argument('--iters', type=int, default=30)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--log-interval', type=int, default=5)
    p.add_argument('--run-timeout', type=float, default=120,
                   help='seconds per training run before it is stopped (default: 120)')
    p.add_argument('--agreement-images', type=int, default=2,
                   help='validation images for the step-0 comparison (0: skip)')
    p.add_argument('--device', default='cuda')
    p.add_argument('--cfg-options', nargs='*', default=[],
                   help='extra key=value overrides for every training run')
    p.add_argument('--agreement-options', nargs='*', default=[],
                   help='extra key=value overrides for the step-0 comparison models')
    p.add_argument('--out', required=True, help='JSON report path (rewritten as it goes)')
    args = p.parse_args(argv)
    env = dict(os.environ)
    if args.key_file:
        env['PPENC_KEY_FILE'] = os.path.abspath(args.key_file)
    # The data lives in a scratch folder of the measuring machine: the report names it
    # $DATA_ROOT (the folder tools/make_synthetic_cityscapes.py wrote) instead.
    data_root = osp.abspath(args.data_root).rstrip(os.sep)

    def portable(text: str) -> str:
        return text.replace(data_root, '$DATA_ROOT')

    report: dict = dict(iters=args.iters, batch=args.batch, workers=args.workers,
                        data_root='$DATA_ROOT', runs={})

    def save() -> None:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)

    overrides = train_overrides(data_root, args.iters, args.batch, args.workers,
                                args.log_interval) + list(args.cfg_options)
    for config in args.configs:
        name = osp.splitext(osp.basename(config))[0]
        wd = osp.join(args.work_dir, name)
        log(f'e2e: training {name} for {args.iters} iterations ...')
        res = run_training(config, wd, overrides, args.run_timeout, env)
        try:
            res.update(parse_scalars(wd, args.batch))
        except FileNotFoundError as e:
            res['error'] = str(e)
        res.update(command=portable(res['command']), log_tail=portable(res['log_tail']))
        report['runs'][name] = res
        log(f'  exit {res["returncode"]} after {res["wall_s"]:.0f} s; '
            + ', '.join(f'{k}={res.get(k)}' for k in ('img_per_s', 'gpu_idle_share',
                                                      'val_s_per_img', 'mIoU')))
        if res['returncode'] != 0:
            log(res['log_tail'][-1500:])
        save()
    if args.agreement_images > 0 and len(args.configs) >= 2:
        log('e2e: step-0 predictions, baseline vs proposed ...')
        os.environ.update({k: v for k, v in env.items() if k == 'PPENC_KEY_FILE'})
        extra = dict(kv.split('=', 1) for kv in args.agreement_options)
        extra = {k: json.loads(v) if v[:1] in '[{0123456789-' or v in ('true', 'false',
                                                                      'null') else v
                 for k, v in extra.items()}
        try:
            report['step0'] = step0_agreement(args.configs[0], args.configs[-1],
                                              args.data_root, args.agreement_images,
                                              device=args.device, cfg_options=extra)
            log(f"  differing pixels: {report['step0']['differ_fraction']:.6f}")
        except Exception as e:  # noqa: BLE001  (the training figures stay)
            report['step0'] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
            log(f"  failed: {report['step0']['error']}")
        save()
    return 0
