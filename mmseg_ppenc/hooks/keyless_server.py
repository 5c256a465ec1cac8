"""Runner-start checks of keyless server runs on offline-encrypted data."""
from __future__ import annotations

from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from mmseg_ppenc.core.checkpoint import (
    check_checkpoint,
    normalization_of,
    patch_embed_keys,
    read_checkpoint,
    state_dict_of,
)
from mmseg_ppenc.core.keyed import is_keyed, knows_built_dataloaders, run_dataloaders, unwrap_model
from mmseg_ppenc.datasets.keyless import KeylessEncryptedDataset
from ppenc.errors import KeylessPipelineError
from ppenc.grid import slide_problems
from ppenc.meta import META_KEY, build_meta

__all__ = ['KeylessServerHook']


@HOOKS.register_module()
class KeylessServerHook(Hook):
    """Runner-start checks for keyless training/testing on encrypted data.

    - Every dataloader's dataset is a :class:`KeylessEncryptedDataset`, and all were
      encrypted with one key (by fingerprint; the server never has the key).
    - No model component needs the key (e.g. ``EncryptedVisionTransformer``): the server
      uses the stock ``VisionTransformer`` with a checkpoint encrypted on the client.
    - The backbone's ``init_cfg`` checkpoint records (``meta['ppenc']``) the same key as
      the data; ``load_from``/``resume`` checkpoints that record a key must match it.
      Every checkpoint is checked as on every load path
      (:func:`mmseg_ppenc.core.checkpoint.check_checkpoint`): its record must belong to its
      weights (patch-embedding digest), and the weights must be adapted for the model's
      normalisation.
    - Slide-inference windows lie on the block grid; the patch size equals the block size.
    - Checkpoints saved by the server get ``meta['ppenc']`` from the manifest, so the
      client can tell which key a served model belongs to.

    Args:
        allow_plain_init (bool): Accept an ``init_cfg`` checkpoint that records no key
            (e.g. training from scratch, or the "conventional 2" comparison of a plain
            model on encrypted data). Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_plain_init: bool = False) -> None:
        self.allow_plain_init = allow_plain_init
        self.manifest: Optional[dict] = None
        self._pending: Optional[dict] = None

    def before_run(self, runner) -> None:
        # PPEncRunner tells which loops are built; another runner's loops are read when
        # they run (reading one at before_run would build it, e.g. the training data of
        # a test run).
        if knows_built_dataloaders(runner):
            self._setup(runner, ('train', 'val', 'test'))

    def before_train(self, runner) -> None:
        if self.manifest is None:
            self._setup(runner, ('train', 'val'))

    def before_val(self, runner) -> None:
        if self.manifest is None:
            self._setup(runner, ('val',))

    def before_test(self, runner) -> None:
        if self.manifest is None:
            self._setup(runner, ('test',))

    def _setup(self, runner, modes) -> None:
        """Read the data's manifest from the built loops among ``modes`` and check the run
        against it, then any checkpoint loaded before the loops ran."""
        manifests = []
        loaded = list(run_dataloaders(runner, modes))
        training = any(mode == 'train' for mode, _ in loaded)
        for mode, ds in loaded:
            if not isinstance(ds, KeylessEncryptedDataset):
                raise KeylessPipelineError(
                    f'{mode}_dataloader.dataset is {type(ds).__name__}, not '
                    'KeylessEncryptedDataset: wrap it, dict(type="KeylessEncryptedDataset", '
                    'dataset=dict(...)), so that its data and pipeline are checked.')
            manifests.append((mode, ds.manifest))
        if not manifests:
            return
        fps = {m['key_fingerprint'] for _, m in manifests}
        if len(fps) > 1:
            detail = ', '.join(f'{mode}: {m["key_fingerprint"]}' for mode, m in manifests)
            raise KeylessPipelineError(f'The datasets of this run were encrypted with '
                                       f'different keys ({detail}); use one key.')
        self.manifest = manifests[0][1]
        fp, block = self.manifest['key_fingerprint'], self.manifest['block_size']
        model = unwrap_model(runner.model)
        problems = []
        for name, m in model.named_modules():
            if is_keyed(m):
                problems.append(f'model.{name} ({type(m).__name__}) needs the key; a keyless '
                                'server uses the stock VisionTransformer with a checkpoint '
                                'encrypted by tools/encrypt_model.py')
        backbone = getattr(model, 'backbone', None)
        patch = getattr(backbone, 'patch_size', None)
        if patch is not None and patch != block:
            problems.append(f'the backbone patch size is {patch} but the data was '
                            f'encrypted with block_size={block}')
        problems += slide_problems(getattr(model, 'test_cfg', None), block)
        init_cfg = runner.cfg.get('model', {}).get('backbone', {}).get('init_cfg')
        ckpt = init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None
        if training and not (runner.cfg.get('resume') or runner.cfg.get('load_from')):
            where = ckpt or 'none: model.backbone.init_cfg'
            # A remote checkpoint cannot be read here (mmengine downloads it later).
            local = isinstance(ckpt, str) and '://' not in ckpt
            loaded = read_checkpoint(ckpt, 'initial checkpoint', mmap=True) if local else {}
            try:
                self._check(runner, loaded, f'the initial checkpoint ({where})',
                            'A plain pre-trained model on encrypted data is the inaccurate '
                            '"conventional 2" setting. Encrypt it on the client with '
                            'tools/encrypt_model.py (or set KeylessServerHook('
                            'allow_plain_init=True) deliberately).')
            except KeylessPipelineError as e:
                problems.append(str(e))
        if problems:
            raise KeylessPipelineError('Keyless server run misconfigured:\n  - ' +
                                       '\n  - '.join(problems))
        print_log(f'KeylessServerHook: data encrypted with key {fp} (block size {block}, '
                  f'flip-compatible: {bool(self.manifest.get("flip_compatible"))}); no key '
                  'on this machine is used.', logger='current')
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._check_loaded(runner, pending)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.manifest is None:
            return
        checkpoint.setdefault('meta', {})[META_KEY] = build_meta(
            self.manifest['key_fingerprint'], self.manifest['block_size'],
            bool(self.manifest.get('flip_compatible')))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.manifest is None:
            # Loaded before the loops ran (another runner than PPEncRunner): keep what
            # the check reads, the record and the patch embedding, for _setup.
            weights = state_dict_of(checkpoint)
            self._pending = dict(meta=checkpoint.get('meta'), state_dict={
                k: weights[k] for k in patch_embed_keys(weights)})
            return
        self._check_loaded(runner, checkpoint)

    def _check_loaded(self, runner, checkpoint: dict) -> None:
        self._check(runner, checkpoint, 'the checkpoint being loaded',
                    'Load a checkpoint made for the key of the data '
                    '(tools/encrypt_model.py or a server checkpoint).')

    def _check(self, runner, checkpoint, what: str, missing_fix: str) -> None:
        """:func:`mmseg_ppenc.core.checkpoint.check_checkpoint` against the data's key and the
        model's block size and normalisation."""
        mean, std = normalization_of(unwrap_model(runner.model))
        check_checkpoint(checkpoint, what, fingerprint=self.manifest['key_fingerprint'],
                         block_size=self.manifest['block_size'], mean=mean, std=std,
                         allow_missing=self.allow_plain_init, missing_fix=missing_fix,
                         error=KeylessPipelineError)
