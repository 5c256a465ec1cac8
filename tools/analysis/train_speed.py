"""Training-step throughput and memory of stock SETR and the plugin's variants.

:func:`bench_train` builds every variant of :func:`variants.variant_plan` and times its
training step. Timing rules: variants run interleaved on the CPU (one step of each in
turn, rotating the order, so that load from other processes hits all alike) and one
after another on a GPU (so that each one's peak memory is its own); every figure is the
median over the measured repetitions, after warm-up. CPU work is timed in process CPU
time (see :func:`common.default_timer`). GPU steps are timed with CUDA events recorded
between consecutive steps, without a host synchronisation in between, so that the CPU
may queue work ahead as it does in a real run (:func:`common.time_sequential`); every
step copies its logged losses to the host as mmengine's ``RuntimeInfoHook`` does, unless
the variant defers that copy.

Memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU, where PyTorch keeps no
allocator statistics, the bytes that autograd saves for the backward pass (the part of
training memory that depends on the attention implementation), counted once per storage.
"""
from __future__ import annotations

import contextlib
import gc
import signal
import tempfile
import time
from typing import Callable, List, Optional, Sequence

import torch

from .common import (default_timer, quiet_mmengine, summary, temp_key_file,
                     time_interleaved, time_sequential)
from .variants import Variant, model_configs, saved_for_backward_mib, variant_plan

__all__ = ['bench_train']


class _Timeout(Exception):
    """A variant ran past its time budget."""


@contextlib.contextmanager
def _time_limit(seconds: Optional[float]):
    """Raise :class:`_Timeout` in the main thread after ``seconds`` (None: no limit)."""
    if not seconds or not hasattr(signal, 'SIGALRM'):
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f'ran past its time budget of {seconds:.0f} s')

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def bench_train(arch: str = 'tiny', decoder: str = 'mla', size: int = 128, batch: int = 2,
                stock_batches: Optional[Sequence[int]] = None, device: str = 'cpu',
                steps: int = 10, warmup: int = 2, compile_backbone: bool = False,
                key_file: Optional[str] = None, seed: int = 0,
                cpu_threads: Optional[int] = 1, timer: Optional[str] = None,
                log: Callable[[str], None] = print,
                variants: Optional[Sequence[str]] = None,
                variant_budget_s: Optional[float] = None,
                deadline: Optional[float] = None, config_dir: Optional[str] = None,
                on_result: Optional[Callable[[dict], None]] = None) -> dict:
    """Training-step throughput and memory of stock SETR and the plugin's variants.

    Args:
        arch (str): ``'tiny'``, ``'vit-b'`` or ``'vit-l'``. Defaults to ``'tiny'``.
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``. Defaults to ``'mla'``.
        size (int): Square crop side. Defaults to 128.
        batch (int): Batch of the plugin variants. Defaults to 2.
        stock_batches (Sequence[int], optional): Batches of the stock fp32 model (without
            ``variants``, the plugin baseline also runs at each, for the equal-batch
            memory ratio). Defaults to ``(batch,)``.
        device (str): ``'cpu'`` or ``'cuda'``. Defaults to ``'cpu'``.
        steps (int): Measured steps per variant. Defaults to 10.
        warmup (int): Unmeasured steps first. Defaults to 2.
        compile_backbone (bool): Without ``variants``: add the plugin baseline with
            its backbone compiled (``model.backbone.compile()``). Defaults to False.
        key_file (str, optional): Key file; a throw-away key when None. Defaults to None.
        seed (int): Seed of weights and data. Defaults to 0.
        cpu_threads (int, optional): ``torch.set_num_threads`` for CPU runs, restored
            afterwards. One thread keeps step times stable on a shared machine (with
            two threads on two busy cores, waits at every parallel region make steps
            vary tenfold). None keeps PyTorch's setting. Defaults to 1.
        timer (str, optional): ``'cpu'`` or ``'wall'``; None picks
            :func:`common.default_timer`. Defaults to None.
        log (callable): Progress messages. Defaults to ``print``.
        variants (Sequence[str], optional): Variant specs for
            :func:`common.parse_variant`
            (e.g. ``['stock', 'baseline', 'baseline+F', 'proposed+FCD+B']``); stock runs
            at each of ``stock_batches``, the others at ``batch``. Defaults to None (the
            stock model and the three settings at the plugin defaults).
        variant_budget_s (float, optional): On a GPU, seconds one variant (build,
            compilation, warm-up and steps) may take before it is abandoned and
            reported as an error. Defaults to None (no limit).
        deadline (float, optional): ``time.time()`` after which no variant starts (and
            none runs past it on a GPU); skipped ones are reported. Defaults to None.
        config_dir (str, optional): ``configs/ppenc`` folder. Defaults to the
            checkout's.
        on_result (callable, optional): Called with each variant's record as soon as it
            is measured (e.g. to write partial results). Defaults to None.

    Returns:
        dict: ``variants``: a list of dicts (``describe()`` fields, ``step`` timing,
        ``img_per_s``, ``peak_mem_mib`` and ``mem_kind``, or ``error``), and the shapes.
    """
    stock_batches = tuple(stock_batches) if stock_batches else (batch,)
    timer = timer or default_timer(device)
    plan = variant_plan(batch, stock_batches, compile_backbone, variants)
    cfgs = model_configs(arch, decoder, size, config_dir)
    cuda = device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for, but torch.cuda.is_available() is '
                           'False.')
    if cuda:
        # What mmseg's default runtime (env_cfg.cudnn_benchmark=True) makes the Runner do.
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    if not cuda and cpu_threads:
        torch.set_num_threads(cpu_threads)
    results: List[dict] = []

    def finish(rec: dict) -> None:
        if 'step' in rec:
            rec['img_per_s'] = rec['batch'] / (rec['step']['median_ms'] / 1e3)
        results.append(rec)
        if on_result is not None:
            on_result(rec)

    with tempfile.TemporaryDirectory() as tmp, quiet_mmengine():
        key_file = key_file or temp_key_file(tmp)

        def build(entry) -> Variant:
            name, setting, b, switches = entry
            log(f'  building {name} ...')
            return Variant(name, setting, b, switches, cfgs, size, device, key_file, seed)

        if cuda:
            # One at a time: each variant's peak memory is its own.
            for entry in plan:
                v = None
                t0 = time.time()
                budget = variant_budget_s
                if deadline is not None:
                    left = deadline - t0
                    budget = left if budget is None else min(budget, left)
                try:
                    if budget is not None and budget < 5:
                        raise _Timeout('skipped: no time left in the run budget')
                    with _time_limit(budget):
                        v = build(entry)
                        for _ in range(warmup):
                            v.step()
                        torch.cuda.synchronize()
                        ready = time.time() - t0
                        torch.cuda.reset_peak_memory_stats()
                        samples = time_sequential(v.step, steps)
                    rec = v.describe()
                    rec.update(step=summary(samples, timer), samples_ms=samples[timer],
                               peak_mem_mib=torch.cuda.max_memory_allocated() / 2 ** 20,
                               mem_kind='cuda max_memory_allocated',
                               build_and_warmup_s=ready)
                except Exception as e:  # noqa: BLE001  (one failed variant, e.g.
                    # out of memory or a torch.compile failure, must not end the run)
                    err = ('out of memory' if isinstance(e, torch.cuda.OutOfMemoryError)
                           else f'{type(e).__name__}: {str(e)[:300]}')
                    rec = dict(name=entry[0], setting=entry[1], batch=entry[2],
                               switches=entry[3], compile=bool(set(entry[3]) & set('BMS')),
                               error=err)
                rec['elapsed_s'] = time.time() - t0
                finish(rec)
                log(f'  {rec["name"]}: ' + (f'{rec["step"]["median_ms"]:.1f} ms/step, '
                                            f'{rec["img_per_s"]:.2f} img/s, '
                                            f'{rec["peak_mem_mib"]:.0f} MiB'
                                            if 'step' in rec else rec['error']) +
                    f' ({rec["elapsed_s"]:.0f} s)')
                if v is not None:
                    v.free()
                del v
                gc.collect()
                torch.cuda.empty_cache()
                if 'B' in entry[3] or 'M' in entry[3] or 'S' in entry[3]:
                    torch._dynamo.reset()  # compiled graphs hold the freed model
        else:
            built = [build(e) for e in plan]
            for v in built:  # warm-up, and the memory measure, outside the timing
                for _ in range(max(warmup - 1, 0)):
                    v.step()
                v.saved_mib = saved_for_backward_mib(v.step)
            log(f'  timing {len(built)} variants interleaved, {steps} steps each ...')
            samples = time_interleaved({v.name: v.step for v in built}, steps, 0,
                                       device)
            for v in built:
                rec = v.describe()
                rec.update(step=summary(samples[v.name], timer),
                           samples_ms=samples[v.name][timer], peak_mem_mib=v.saved_mib,
                           mem_kind='saved for backward (CPU)')
                finish(rec)
                v.free()
            if any(v.compile for v in built):
                torch._dynamo.reset()
    used_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    return dict(arch=arch, decoder=decoder, size=size, batch=batch,
                stock_batches=list(stock_batches), device=device, steps=steps,
                warmup=warmup, interleaved=not cuda, timer=timer,
                torch_threads=used_threads, variants=results)
