"""Where the time of one SETR training step goes: backbone, neck, heads, losses, optimizer.

:func:`profile_step` runs the step of a benchmark variant (see
:func:`common.parse_variant`) piece by piece, with the same arithmetic as
``model.train_step``, and times each piece:

- forward: data preprocessor, backbone, neck, decode head, auxiliary heads, losses;
- backward: the losses and heads (decode head, auxiliary heads), the neck, the backbone.
  The backward is split by cutting the graph at the neck's and the heads' inputs
  (detached leaves that keep their gradients) and running the parts one after another:
  the same kernels as one ``backward()`` call, in separate stretches;
- the optimizer step, and the host copies of the logged values.

On a GPU, pieces are timed with CUDA events and no host synchronisation in between, so a
piece's time includes any wait for the CPU to queue its kernels. Then ``torch.profiler``
records one ordinary ``train_step`` for the heaviest kernels and the count of operations
that make the host wait for the device.

:func:`loss_path` breaks the heads' loss path down further (resize, loss, accuracy,
backward), mmseg's against the fast loss path (switch ``L``), on the same logits,
whatever the profiled variant's switches.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from .common import (markdown_table, parse_variant, quiet_mmengine, temp_key_file,
                     time_interleaved, time_sequential, variant_name)
from .variants import Variant, model_configs

__all__ = ['profile_step', 'segmented_step', 'loss_path', 'format_profile']

#: Operations after which the host waits for the device.
SYNC_OPS = ('aten::_local_scalar_dense', 'aten::nonzero', 'cudaStreamSynchronize',
            'cudaDeviceSynchronize', 'cudaEventSynchronize')


class _Marks:
    """Timestamps between pieces: CUDA events on a GPU, ``perf_counter`` elsewhere."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.names: List[str] = []
        self.stamps: list = []
        self.mark('start')

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.stamps.append(ev)
        else:
            self.stamps.append(time.perf_counter())
        self.names.append(name)

    def durations(self) -> Dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            ms = [a.elapsed_time(b) for a, b in zip(self.stamps, self.stamps[1:])]
        else:
            ms = [(b - a) * 1e3 for a, b in zip(self.stamps, self.stamps[1:])]
        return dict(zip(self.names[1:], ms))


def _loss_sum(losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    # BaseModel.parse_losses counts the entries whose name contains 'loss'.
    return sum(v for k, v in losses.items() if 'loss' in k)


def segmented_step(model, optim_wrapper, data: dict) -> Dict[str, float]:
    """One training step of an mmseg ``EncoderDecoder``, timed piece by piece.

    Args:
        model: The segmentor (``backbone``, optional ``neck``, ``decode_head`` and
            optional ``auxiliary_head``).
        optim_wrapper: Its optimizer wrapper (its ``optim_context`` gives autocast).
        data (dict): A batch as the dataloader yields it.

    Returns:
        dict[str, float]: Milliseconds per piece, in order.
    """
    from mmseg.utils import add_prefix
    param = next(model.parameters())
    marks = _Marks(param.device.type == 'cuda')
    batch = model.data_preprocessor(data, True)
    inputs, samples = batch['inputs'], batch['data_samples']
    marks.mark('data preprocessor')
    with optim_wrapper.optim_context(model):
        feats = model.backbone(inputs)
        marks.mark('backbone fwd')
        feats_in = [f.detach().requires_grad_() for f in feats]
        if model.with_neck:
            neck_out = model.neck(feats_in)
            marks.mark('neck fwd')
            heads_in = [f.detach().requires_grad_() for f in neck_out]
        else:
            neck_out, heads_in = feats_in, feats_in
        logits = model.decode_head.forward(heads_in)
        marks.mark('decode head fwd')
        aux_heads = []
        if model.with_auxiliary_head:
            aux = model.auxiliary_head
            aux_heads = list(aux) if isinstance(aux, torch.nn.ModuleList) else [aux]
        aux_logits = [h.forward(heads_in) for h in aux_heads]
        if aux_heads:
            marks.mark('aux heads fwd')
        dec_losses = add_prefix(model.decode_head.loss_by_feat(logits, samples), 'decode')
        aux_losses: Dict[str, torch.Tensor] = {}
        for i, (h, lg) in enumerate(zip(aux_heads, aux_logits)):
            aux_losses.update(add_prefix(h.loss_by_feat(lg, samples), f'aux_{i}'))
        marks.mark('losses fwd')
    _, log_vars = model.parse_losses({**dec_losses, **aux_losses})
    _loss_sum(dec_losses).backward()
    marks.mark('decode head + loss bwd')
    if aux_losses:
        _loss_sum(aux_losses).backward()
        marks.mark('aux heads + losses bwd')
    if model.with_neck:
        torch.autograd.backward(list(neck_out), [f.grad for f in heads_in])
        marks.mark('neck bwd')
    torch.autograd.backward(list(feats), [f.grad for f in feats_in])
    marks.mark('backbone bwd')
    optim_wrapper.step()
    optim_wrapper.zero_grad()
    marks.mark('optimizer')
    for v in log_vars.values():
        v.item()
    marks.mark('log values to host')
    return marks.durations()


#: The pieces of :func:`loss_path`, in order.
LOSS_PIECES = ('resize fwd', 'loss fwd', 'accuracy', 'loss + resize bwd')


def _loss_paths() -> Dict[str, tuple]:
    from mmseg.models.losses import accuracy
    from mmseg.models.utils import resize

    from mmseg_ppenc.models.fast_loss import argmax_accuracy, bilinear_resize
    return {
        'mmseg': (lambda x, size, ac: resize(x, size=size, mode='bilinear',
                                             align_corners=ac),
                  lambda p, t, ig: accuracy(p, t, ignore_index=ig)),
        'fast': (bilinear_resize, argmax_accuracy),
    }


def loss_path(model, optim_wrapper, data: dict, repeats: int = 3, warmup: int = 1) -> dict:
    """The heads' loss path piece by piece: mmseg's against the fast one (switch ``L``).

    Both run on the same logits (the heads' output for ``data``, under the wrapper's
    autocast), with each head's own ``loss_decode``, ``align_corners`` and
    ``ignore_index``, as ``BaseDecodeHead.loss_by_feat`` does (without a pixel sampler,
    which SETR does not use). Per piece, the time of all heads together; the two paths
    alternate, the first one rotating.

    Args:
        model: The segmentor.
        optim_wrapper: Its optimizer wrapper (for autocast).
        data (dict): A batch as the dataloader yields it.
        repeats (int): Measured rounds; medians are reported. Defaults to 3.
        warmup (int): Unmeasured rounds first. Defaults to 1.

    Returns:
        dict: ``heads`` (names), ``pieces`` (:data:`LOSS_PIECES`) and, per path
        (``'mmseg'``, ``'fast'``), milliseconds per piece and their ``total``.
    """
    from mmseg_ppenc.models.fast_loss import has_stock_loss, loss_heads
    heads = [(n, h) for n, h in loss_heads(model) if has_stock_loss(h)]
    if not heads:
        raise ValueError(f'{type(model).__name__} has no head with mmseg\'s loss_by_feat')
    cuda = next(model.parameters()).device.type == 'cuda'
    batch = model.data_preprocessor(data, True)
    samples = batch['data_samples']
    with torch.no_grad(), optim_wrapper.optim_context(model):
        feats = model.extract_feat(batch['inputs'])
        logits = [h.forward(feats) for _, h in heads]
    label = heads[0][1]._stack_batch_gt(samples)
    target = label.squeeze(1)
    paths = _loss_paths()
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in paths}
    order = list(paths)
    for r in range(warmup + repeats):
        for name in order[r % 2:] + order[:r % 2]:
            resize_fn, acc_fn = paths[name]
            xs = [lg.detach().requires_grad_() for lg in logits]
            marks = _Marks(cuda)
            with optim_wrapper.optim_context(model):
                ups = [resize_fn(x, label.shape[2:], h.align_corners)
                       for x, (_, h) in zip(xs, heads)]
                marks.mark('resize fwd')
                losses = []
                for up, (_, h) in zip(ups, heads):
                    decode = (h.loss_decode if isinstance(h.loss_decode, torch.nn.ModuleList)
                              else [h.loss_decode])
                    losses += [ld(up, target, weight=None, ignore_index=h.ignore_index)
                               for ld in decode]
                marks.mark('loss fwd')
                for up, (_, h) in zip(ups, heads):
                    acc_fn(up, target, h.ignore_index)
                marks.mark('accuracy')
            sum(losses).backward()
            marks.mark('loss + resize bwd')
            if r >= warmup:
                runs[name].append(marks.durations())
    out: Dict[str, Any] = dict(heads=[n for n, _ in heads], pieces=list(LOSS_PIECES))
    for name, rs in runs.items():
        ms = {k: statistics.median(d[k] for d in rs) for k in LOSS_PIECES}
        ms['total'] = sum(ms[k] for k in LOSS_PIECES)
        out[name] = ms
    return out


def _kernel_table(prof, top_k: int) -> List[dict]:
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, 'self_device_time_total', None)
        if dev is None:
            dev = getattr(e, 'self_cuda_time_total', 0)
        if dev > 0:
            rows.append(dict(name=e.key[:90], self_ms=dev / 1e3, calls=e.count))
    rows.sort(key=lambda r: -r['self_ms'])
    return rows[:top_k]


def profile_step(spec: str = 'baseline', arch: str = 'vit-l', decoder: str = 'mla',
                 size: int = 768, batch: int = 8, device: str = 'cuda', seed: int = 0,
                 steps: int = 1, warmup: int = 2, top_k: int = 15,
                 config_dir: Optional[str] = None,
                 log: Callable[[str], None] = print) -> dict:
    """Time the pieces of a training step and profile one ordinary step.

    Args:
        spec (str): Variant (:func:`common.parse_variant`). Defaults to
            ``'baseline'`` (the plugin defaults).
        arch (str): ``'tiny'``, ``'vit-b'`` or ``'vit-l'``. Defaults to ``'vit-l'``.
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``. Defaults to ``'mla'``.
        size (int): Square crop side. Defaults to 768.
        batch (int): Batch size. Defaults to 8.
        device (str): ``'cuda'`` or ``'cpu'``. Defaults to ``'cuda'``.
        seed (int): Seed of weights and data. Defaults to 0.
        steps (int): Timed piece-by-piece steps (medians are reported). Defaults to 1.
        warmup (int): Ordinary steps first. Defaults to 2.
        top_k (int): Kernels listed. Defaults to 15.
        config_dir (str, optional): ``configs/ppenc`` folder. Defaults to the checkout's.
        log (callable): Progress messages. Defaults to ``print``.

    Returns:
        dict: ``segments`` (name, ms, share of their sum), ``segments_total_ms``,
        ``step_ms`` (one ordinary step, same clock), ``top_kernels``, ``sync_ops``
        (op -> calls in one step), ``loss_path`` (:func:`loss_path`) and the variant's
        description.
    """
    setting, switches = parse_variant(spec)
    if steps < 1:
        raise ValueError(f'steps must be >= 1, got {steps}')
    cfgs = model_configs(arch, decoder, size, config_dir)
    cuda = device.startswith('cuda')
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = variant_name(setting, switches, batch)
    with tempfile.TemporaryDirectory() as tmp, quiet_mmengine():
        v = Variant(name, setting, batch, switches, cfgs, size, device, temp_key_file(tmp),
                    seed)
        try:
            for _ in range(warmup):
                v.step()
            runs = [segmented_step(v.model, v.optim_wrapper, v.data) for _ in range(steps)]
            seg = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            losses = loss_path(v.model, v.optim_wrapper, v.data)
            clock = (time_sequential(v.step, 3)['wall'] if cuda else
                     [time_interleaved({'s': v.step}, 1, 0)['s']['wall'][0]])
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                with torch.profiler.record_function('train_step'):
                    v.step()
                if cuda:
                    torch.cuda.synchronize()
            kernels = _kernel_table(prof, top_k) if cuda else []
            calls = {e.key: e.count for e in prof.key_averages()}
            syncs = {op: calls.get(op, 0) for op in SYNC_OPS}
            desc = v.describe()
        finally:
            v.free()
    total = sum(seg.values())
    log(f'  pieces sum to {total:.1f} ms; an ordinary step takes '
        f'{statistics.median(clock):.1f} ms')
    return dict(variant=desc, arch=arch, decoder=decoder, size=size, batch=batch,
                device=device, steps=steps,
                segments=[dict(name=k, ms=ms, share=ms / total if total else 0.0)
                          for k, ms in seg.items()],
                segments_total_ms=total, step_ms=statistics.median(clock),
                top_kernels=kernels, sync_ops=syncs, loss_path=losses)


def format_profile(prof: dict) -> str:
    """Markdown tables of a :func:`profile_step` result."""
    rows = [[s['name'], f"{s['ms']:.1f}", f"{100 * s['share']:.1f} %"]
            for s in prof['segments']]
    rows.append(['sum of pieces', f"{prof['segments_total_ms']:.1f}", ''])
    rows.append(['ordinary train_step', f"{prof['step_ms']:.1f}", ''])
    parts = [f"Profile: {prof['variant']['name']}, {prof['arch']} + {prof['decoder']}, "
             f"{prof['size']}x{prof['size']}, {prof['device']} (median of "
             f"{prof['steps']} piece-by-piece steps)\n\n" +
             markdown_table(['piece', 'ms', 'share'], rows)]
    if prof.get('top_kernels'):
        parts.append('Heaviest kernels in one step\n\n' + markdown_table(
            ['kernel', 'self ms', 'calls'],
            [[k['name'], f"{k['self_ms']:.1f}", str(k['calls'])]
             for k in prof['top_kernels']]))
    lp = prof.get('loss_path')
    if lp:
        rows = [[k, f"{lp['mmseg'][k]:.1f}", f"{lp['fast'][k]:.1f}"]
                for k in lp['pieces'] + ['total']]
        parts.append(f"Loss path of {len(lp['heads'])} heads, same logits (median ms)\n\n" +
                     markdown_table(['piece', 'mmseg', 'fast loss path (L)'], rows))
    syncs = ', '.join(f'{k} x{n}' for k, n in prof['sync_ops'].items() if n)
    parts.append(f"Host-device synchronisations in one step: {syncs or 'none recorded'}")
    return '\n\n'.join(parts)
