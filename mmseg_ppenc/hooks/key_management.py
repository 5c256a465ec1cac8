"""Runner hook that keeps one key consistent across a run and out of its artefacts."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from mmseg_ppenc.core.checkpoint import check_checkpoint, normalization_of
from mmseg_ppenc.core.keyed import (
    keyed_components,
    knows_built_dataloaders,
    run_dataloaders,
    unwrap_model,
)
from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.start_checks import check_run, setting_warning
from ppenc.errors import ConfigError, InvalidKeyError, KeyLeakError
from ppenc.keys import SecretKey, resolve_key
from ppenc.leak_scan import find_bytes_values, find_key_material, text_contains_key
from ppenc.meta import META_KEY, build_meta

__all__ = ['KeyManagementHook']


@HOOKS.register_module()
class KeyManagementHook(Hook):
    """Checks that a run uses one key consistently and never leaks it.

    - At runner start (``before_run``, which mmengine calls before it initialises the
      weights): an encrypted backbone (``EncryptedVisionTransformer``,
      ``EncryptedSwinTransformer``, ...) without ``mean``/``std`` takes them from the
      data preprocessor, and an explicit one that differs is refused. Then
      the run must be exact or is refused (:mod:`mmseg_ppenc.core.exactness`): the
      segmentor type is on the allow-list (SAN is refused), ``BlockScramble``'s channel
      order matches the preprocessor's ``bgr_to_rgb``, image sizes reaching the ViT stay
      on the block grid (resizing, slide windows), the data preprocessor never pads an
      encrypted batch, and a test-time pad reaches mmseg's post-processing.
    - A run whose images are encrypted but whose backbone is not adapted to the key
      ("conventional 2") is warned about in the log, unless the config sets
      ``ppenc_setting = 'conventional2'`` (``PPEncRunner`` does this at start, before
      the hook runs; with another runner the hook does it at the first loop).
    - Before training / validation / testing: every key-using component (pipelines'
      ``BlockScramble``, the encrypted backbone) must have this hook's key
      fingerprint, and every cipher block size must equal the backbone's patch size.
    - Every checkpoint's ``meta['ppenc']`` records the key fingerprint and cipher
      parameters (never the key).
    - ``resume`` / ``load_from`` refuse a checkpoint made with another key (and, unless
      ``allow_unkeyed_checkpoint``, one that records no key) or adapted for another
      normalisation than the model's.
    - At runner start, a config holding a ``bytes`` value anywhere is refused (a key
      pasted as bytes); the run config, its dump and the logs are scanned for the key in
      any form :mod:`ppenc.leak_scan` knows (bytes, latin-1 text, escaped
      literals, hex with any separators, integer sequences, the block permutation and its
      inverse), again before training/testing, in the config text stored in every
      checkpoint and after the run; the run fails loudly if anything is found.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        allow_unkeyed_checkpoint (bool): Accept loading checkpoints without a recorded key
            (e.g. plain models trained elsewhere). Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, key_file: Optional[str] = None,
                 allow_unkeyed_checkpoint: bool = False) -> None:
        self.key_file = key_file
        self.allow_unkeyed_checkpoint = allow_unkeyed_checkpoint
        self.fingerprint = self._key().fingerprint
        # (config id, key fingerprint, block sizes) of the last config found clean.
        self._clean_cfg: Optional[tuple] = None
        self._setting_warned = False

    def _key(self) -> SecretKey:
        return resolve_key(self.key_file)

    # ----------------------------------------------------------------- consistency
    def _check_components(self, runner, modes: Tuple[str, ...]) -> None:
        comps = keyed_components(unwrap_model(runner.model),
                                 list(run_dataloaders(runner, modes)))
        problems = [f'{where} uses key {fp}' for where, fp, _ in comps
                    if fp != self.fingerprint]
        model = unwrap_model(runner.model)
        backbone = getattr(model, 'backbone', None)
        patch = getattr(backbone, 'patch_size', None)
        if patch is not None:
            problems += [f'{where} uses block size {b}, but the backbone patch size is '
                         f'{patch}: set block_size={patch}' for where, _, b in comps
                         if b != patch]
        if problems:
            raise InvalidKeyError(
                f'Key/cipher mismatch in this run (expected key {self.fingerprint}): '
                + '; '.join(problems) + '. Use one key file for every component (leave '
                'key_file=None everywhere and set PPENC_KEY_FILE) and block_size equal '
                'to the ViT patch size.')
        if not comps:
            print_log('KeyManagementHook: no component of this run uses a key.',
                      logger='current', level=30)

    def _check_exact(self, runner, modes: Tuple[str, ...]) -> None:
        """Refuse a run whose encrypted inputs could reach the ViT changed or off-grid
        (the rules of :func:`mmseg_ppenc.start_checks.check_run`, on the runner's own
        model and built dataloaders)."""
        check_run(unwrap_model(runner.model), list(run_dataloaders(runner, modes)),
                  self.fingerprint)

    def before_run(self, runner) -> None:
        """Before any work and before weights load: refuse a config holding bytes or the
        key, bind the backbone's normalisation and check that the run is exact."""
        cfg = getattr(runner, 'cfg', None)
        paths = find_bytes_values(cfg) if cfg is not None else []
        if paths:
            raise ConfigError(
                f'The run config holds bytes at {", ".join(paths)}. Configs must never '
                'hold key material or other raw bytes: mmengine copies the config into '
                'the work_dir, the log and every checkpoint. Remove the value and name '
                'the key by file (key_file=PATH, or leave key_file=None and set '
                'PPENC_KEY_FILE); if key bytes were pasted, delete this work_dir\'s '
                'config and logs and rotate the key.')
        early = knows_built_dataloaders(runner)
        if not early:
            print_log('KeyManagementHook: this run does not use PPEncRunner, so the start '
                      'checks ran only now, after mmengine wrote the work_dir, the log and '
                      'the config dump, and the data checks wait for the first loop. Set '
                      "runner_type = 'PPEncRunner' in the config (the shipped configs do) "
                      'so that a refused run writes nothing.', logger='current', level=30)
        self._scan(runner)
        bind_normalization(unwrap_model(runner.model))
        self._check_exact(runner, ('train', 'val', 'test') if early else ())

    def before_train(self, runner) -> None:
        self._check_loops(runner, ('train', 'val'))
        self._scan(runner)

    def before_val(self, runner) -> None:
        self._check_loops(runner, ('val',))

    def before_test(self, runner) -> None:
        self._check_loops(runner, ('test',))
        self._scan(runner)

    def _check_loops(self, runner, modes: Tuple[str, ...]) -> None:
        # With PPEncRunner the data were checked at before_run already (and a plain
        # backbone on encrypted images warned about in its log); these loops are built
        # now, so any runner's can be read.
        if not knows_built_dataloaders(runner):
            self._check_exact(runner, modes)
            self._warn_setting(runner, modes)
        self._check_components(runner, modes)

    def _warn_setting(self, runner, modes: Tuple[str, ...]) -> None:
        """Log, once per run, that the backbone is not adapted to the key although the
        images are encrypted (:func:`mmseg_ppenc.start_checks.setting_warning`)."""
        if self._setting_warned:
            return
        warning = setting_warning(getattr(runner, 'cfg', None) or {},
                                  unwrap_model(runner.model),
                                  list(run_dataloaders(runner, modes)))
        if warning:
            self._setting_warned = True
            print_log(warning, logger='current', level=30)

    # ----------------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap_model(runner.model)
        meta = checkpoint.setdefault('meta', {})
        mean, std = normalization_of(model)
        meta[META_KEY] = build_meta(
            self.fingerprint,
            int(getattr(getattr(model, 'backbone', None), 'patch_size', 16)),
            self._key().flip_compatible, mean, std)
        cfg_text = meta.get('cfg')
        if isinstance(cfg_text, str):
            if text_contains_key(cfg_text, self._key(), self._block_sizes(runner)):
                raise KeyLeakError('Key material found in the config text that would be '
                                   'stored in the checkpoint; remove it from the config '
                                   '(configs must name a key file, never key bytes).')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Check a ``load_from`` / ``resume`` checkpoint (also ``tools/test.py``'s) with
        :func:`mmseg_ppenc.core.checkpoint.check_checkpoint`, before mmengine loads it."""
        model = unwrap_model(runner.model)
        mean, std = normalization_of(model)
        check_checkpoint(checkpoint, 'the checkpoint being loaded',
                         fingerprint=self.fingerprint,
                         block_size=getattr(getattr(model, 'backbone', None), 'patch_size',
                                            None),
                         mean=mean, std=std, allow_missing=self.allow_unkeyed_checkpoint,
                         missing_fix='Encrypt plain models with tools/encrypt_model.py, or '
                         'set KeyManagementHook(allow_unkeyed_checkpoint=True) if you are '
                         'sure.',
                         mismatch_fix='Select the key the checkpoint was trained with '
                         '(PPENC_KEY_FILE) or start from a checkpoint of this key.')

    # ----------------------------------------------------------------- leakage
    @staticmethod
    def _block_sizes(runner) -> Tuple[int, ...]:
        backbone = getattr(unwrap_model(runner.model), 'backbone', None)
        patch = getattr(backbone, 'patch_size', None)
        return tuple(sorted({16, int(patch)})) if patch else (16,)

    def _scan(self, runner) -> None:
        key = self._key()
        sizes = self._block_sizes(runner)
        hits = []
        cfg = getattr(runner, 'cfg', None)
        # A Runner's config does not change during the run, and formatting it
        # (pretty_text runs yapf) costs about a second: scan each config object once.
        if cfg is not None and self._clean_cfg != (id(cfg), key.fingerprint, sizes):
            if text_contains_key(cfg.pretty_text, key, sizes):
                hits.append('the run config')
            else:
                self._clean_cfg = (id(cfg), key.fingerprint, sizes)
        paths = [p for p in (runner.log_dir,) if p and osp.isdir(p)]
        work_dir = runner.work_dir
        if work_dir and osp.isdir(work_dir):
            paths += [osp.join(work_dir, f) for f in os.listdir(work_dir)
                      if f.endswith(('.py', '.json', '.log', '.txt', '.yaml'))]
        hits += find_key_material(paths, key, max_bytes=64 << 20, block_sizes=sizes)
        if hits:
            raise KeyLeakError('KEY MATERIAL LEAKED: the secret key (or its permutation) '
                               f'appears in: {", ".join(hits)}. Delete these files, '
                               'rotate the key, and name the key only by file path '
                               '(PPENC_KEY_FILE).')

    def after_run(self, runner) -> None:
        self._scan(runner)
