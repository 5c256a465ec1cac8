"""The models the benchmark trains: stock mmseg SETR and the plugin's settings, with the
opt-in speed switches (:data:`common.SWITCHES`).

:func:`model_configs` reads the configs (the checkout's ``configs/ppenc`` unless told
otherwise), :class:`Variant` builds one model, optimizer wrapper and batch and runs its
training step, and :func:`variant_plan` lists the variants a benchmark run times.
"""
from __future__ import annotations

import copy
import gc
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mmseg_ppenc.compat import replace_syncbn

from .common import (ARCHS, CONFIG_DIR, DECODERS, SETTINGS, SWITCHES, parse_variant,
                     stock_setr_config_path, variant_name)

__all__ = ['model_configs', 'synthetic_batch',
           'saved_for_backward_mib', 'Variant', 'variant_plan']


def _prepare(model_cfg: dict, size: int) -> dict:
    """Random init, BN instead of SyncBN (one process), and the input size."""
    model_cfg = copy.deepcopy(model_cfg)
    replace_syncbn(model_cfg)
    model_cfg['pretrained'] = None
    model_cfg['backbone']['init_cfg'] = None
    model_cfg['backbone']['img_size'] = (size, size)
    model_cfg['data_preprocessor']['size'] = (size, size)
    return model_cfg


def model_configs(arch: str = 'tiny', decoder: str = 'mla', size: int = 128,
                  config_dir: Optional[str] = None) -> Dict[str, Tuple[dict, dict]]:
    """``(model_cfg, optim_wrapper_cfg)`` of stock mmseg SETR and the three settings.

    Args:
        arch (str): ``'tiny'`` (the CPU configs in ``configs/ppenc/tiny``), ``'vit-b'`` or
            ``'vit-l'`` (the paper configs). Defaults to ``'tiny'``.
        decoder (str): ``'mla'``, ``'pup'`` or ``'naive'``. Defaults to ``'mla'``.
        size (int): Square input side, a multiple of 16. Defaults to 128.
        config_dir (str, optional): The ``configs/ppenc`` folder to read. Defaults to
            None (:data:`common.CONFIG_DIR`, the checkout's own).

    Returns:
        dict: Keys ``'stock'``, ``'baseline'``, ``'conventional2'``, ``'proposed'``. The
        stock model for ViT-L is mmseg's own config; for the other archs it is the
        baseline config with mmseg's ``VisionTransformer`` and ``OptimWrapper`` put back.
        The plugin settings use ``BF16AmpOptimWrapper`` (the shipped full-size default;
        float32 where bf16 is unsupported). Conventional 2 and proposed get
        ``EncryptedSegDataPreProcessor``, so that encrypting the batch is part of the
        timed step (on the step's device); their shipped configs encrypt in the
        dataloader workers with ``BlockScramble`` instead (see
        :func:`cipher_cost.bench_cipher`).
    """
    from mmengine.config import Config
    if arch not in ARCHS:
        raise ValueError(f"arch must be 'tiny', 'vit-b' or 'vit-l', got {arch!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be 'mla', 'pup' or 'naive', got {decoder!r}")
    if size % 16:
        raise ValueError(f'size must be a multiple of 16 (the patch size), got {size}')

    config_dir = config_dir or CONFIG_DIR
    if not osp.isdir(config_dir):
        raise FileNotFoundError(f'Config folder {config_dir!r} does not exist; expected '
                                'the configs/ppenc folder of a checkout.')

    def path(setting: str) -> str:
        if arch == 'tiny':
            return osp.join(config_dir, 'tiny', f'setr_tiny_{decoder}_synthetic_{setting}.py')
        return osp.join(config_dir, f'setr_{arch}_{decoder}_cityscapes_{setting}.py')

    out = {}
    for setting in SETTINGS:
        cfg = Config.fromfile(path(setting))
        model = _prepare(cfg.model.to_dict(), size)
        optim = cfg.optim_wrapper.to_dict()
        optim['type'] = 'BF16AmpOptimWrapper'
        if setting != 'baseline':
            model['data_preprocessor']['type'] = 'EncryptedSegDataPreProcessor'
        out[setting] = (model, optim)
    if arch == 'vit-l':
        stock = Config.fromfile(stock_setr_config_path(decoder))
        model, optim = _prepare(stock.model.to_dict(), size), stock.optim_wrapper.to_dict()
    else:
        model, optim = copy.deepcopy(out['baseline'][0]), copy.deepcopy(
            Config.fromfile(path('baseline')).optim_wrapper.to_dict())
        model['backbone']['type'] = 'VisionTransformer'
        model['backbone'].pop('attn_impl', None)
        optim['type'] = 'OptimWrapper'
    if model['backbone']['type'] != 'VisionTransformer' or optim['type'] != 'OptimWrapper':
        raise RuntimeError(f'The stock model should use VisionTransformer and '
                           f'OptimWrapper, got {model["backbone"]["type"]} and '
                           f'{optim["type"]}.')
    out['stock'] = (model, optim)
    return {k: out[k] for k in ('stock',) + SETTINGS}


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int) -> dict:
    """What the dataloader yields: BGR uint8 images and int64 labels, on the CPU.

    Args:
        batch (int): Images in the batch.
        size (int): Square image side.
        num_classes (int): Labels are drawn from ``range(num_classes)``.
        seed (int): Seed of images and labels.

    Returns:
        dict: ``inputs`` (list of ``(3, size, size)`` uint8 tensors) and ``data_samples``
        (``SegDataSample`` with ``gt_sem_seg`` and the shapes in their metainfo).
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                                    generator=g))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size),
                                                    generator=g))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def saved_for_backward_mib(step: Callable[[], Any]) -> float:
    """MiB of distinct storages autograd saves for backward during one ``step``."""
    seen: Dict[Tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[(str(t.device), st.data_ptr())] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2 ** 20


class Variant:
    """One model + optimizer wrapper + batch, ready to train.

    Args:
        name (str): Report name (:func:`common.variant_name`).
        setting (str): One of :data:`common.VARIANT_SETTINGS`.
        batch (int): Batch size.
        switches (str): Letters of :data:`common.SWITCHES`.
        cfgs (dict): :func:`model_configs`.
        size (int): Square crop side.
        device (str): ``'cpu'`` or ``'cuda'``.
        key_file (str): Key of the encrypted settings.
        seed (int): Seed of weights and data.
    """

    def __init__(self, name: str, setting: str, batch: int, switches: str,
                 cfgs: dict, size: int, device: str, key_file: str, seed: int) -> None:
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        from mmseg_ppenc.hooks.channels_last import to_channels_last
        from mmseg_ppenc.models.fast_loss import enable_fast_loss
        # mmseg's own config file (ViT-L stock) carries no `_scope_`; without a default
        # scope its data preprocessor would be looked up in mmengine's root registry.
        init_default_scope('mmseg')
        self.name, self.setting, self.batch = name, setting, batch
        self.switches = switches
        self.compile = 'B' in switches or 'M' in switches or 'S' in switches
        self.device = device
        model_cfg, optim_cfg = copy.deepcopy(cfgs[setting])
        if setting in ('conventional2', 'proposed'):
            model_cfg['data_preprocessor']['key_file'] = key_file
        if setting == 'proposed':
            model_cfg['backbone']['key_file'] = key_file
        if 'F' in switches:
            optim_cfg.setdefault('optimizer', {})['fused'] = True
        torch.manual_seed(seed)
        self.model = MODELS.build(model_cfg)
        # Initialise on the device: random init of ViT-L takes seconds on a CPU.
        self.model.to(device)
        from mmseg_ppenc.models.encrypted_vit import bind_normalization
        bind_normalization(self.model)  # what KeyManagementHook does at runner start
        self.model.init_weights()
        self.model.train()
        if 'C' in switches:
            to_channels_last(self.model)
        if 'L' in switches:
            enable_fast_loss(self.model)  # what FastLossHook does at runner start
        self.optim_wrapper = build_optim_wrapper(self.model, optim_cfg)
        if 'B' in switches:
            self.model.backbone.compile()
        if 'M' in switches:
            self.model.compile()
        self._train_step = self.model.train_step
        if 'S' in switches:
            # What mmengine's Runner does for `compile=True`.
            self._train_step = torch.compile(self.model.train_step)
        self.defer_log = 'D' in switches
        self._pending: List[torch.Tensor] = []
        num_classes = self.model.decode_head.num_classes
        self.data = synthetic_batch(batch, size, num_classes, seed)
        self.backbone = type(self.model.backbone).__name__
        self.attn = getattr(self.model.backbone, 'attn_impl', 'stock')
        dtype = None
        if hasattr(self.optim_wrapper, 'autocast_dtype'):
            dtype = self.optim_wrapper.autocast_dtype(torch.device(device).type)
        self.precision = 'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'
        self.encryption = ('on-device in EncryptedSegDataPreProcessor (timed)'
                           if setting in ('conventional2', 'proposed') else 'none')

    def step(self) -> Dict[str, torch.Tensor]:
        """One training step, with the host copies of the logged values."""
        log_vars = self._train_step(self.data, self.optim_wrapper)
        if self.defer_log:
            # One copy every 50 steps, as DeferredLogRuntimeInfoHook does.
            self._pending.extend(v.detach().reshape(()) for v in log_vars.values())
            if len(self._pending) >= 50 * len(log_vars):
                torch.stack(self._pending).tolist()
                self._pending = []
        else:
            # mmengine's RuntimeInfoHook: one .item() per logged value, every step.
            for v in log_vars.values():
                v.item()
        return log_vars

    def describe(self) -> dict:
        """The variant's fields in the report."""
        return dict(name=self.name, setting=self.setting, backbone=self.backbone,
                    attention=self.attn, precision=self.precision,
                    compile=self.compile, switches=self.switches,
                    switch_names=[SWITCHES[k][0] for k in self.switches],
                    batch=self.batch, encryption=self.encryption)

    def free(self) -> None:
        """Drop the model, optimizer and batch (and the GPU's cached blocks)."""
        del self.model, self.optim_wrapper, self.data, self._train_step
        self._pending = []
        gc.collect()
        if self.device.startswith('cuda'):
            torch.cuda.empty_cache()


def variant_plan(batch: int, stock_batches: Sequence[int], compile_backbone: bool,
                 variants: Optional[Sequence[str]] = None
                 ) -> List[Tuple[str, str, int, str]]:
    """``(name, setting, batch, switches)`` of every variant to run, in order.

    Args:
        batch (int): Batch of the plugin variants.
        stock_batches (Sequence[int]): Batches of the stock model.
        compile_backbone (bool): Without ``variants``: add the baseline with a compiled
            backbone.
        variants (Sequence[str], optional): Specs for :func:`common.parse_variant`;
            None gives the default set. Defaults to None.

    Raises:
        ValueError: A spec is bad, or two specs name the same variant.
    """
    if variants:
        plan = []
        for spec in variants:
            setting, switches = parse_variant(spec)
            batches = stock_batches if setting == 'stock' else (batch,)
            plan += [(variant_name(setting, switches, b), setting, b, switches)
                     for b in batches]
        names = [p[0] for p in plan]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f'Variants {dup} are listed twice; list each once.')
        return plan
    plan = [(f'stock fp32 b{b}', 'stock', b, '') for b in stock_batches]
    plan += [(f'plugin baseline b{b}', 'baseline', b, '')
             for b in stock_batches if b != batch]
    plan += [(f'plugin {s} b{batch}', s, batch, '') for s in SETTINGS]
    if compile_backbone:
        plan.append((f'plugin baseline+compile b{batch}', 'baseline', batch, 'B'))
    return plan
