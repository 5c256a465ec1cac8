"""Runner hook that keeps one key consistent across a run and out of its artefacts."""
from __future__ import annotations

import os
import os.path as osp
from typing import Iterable, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from . import __version__
from .keys import InvalidKeyError, SecretKey, resolve_key

__all__ = ['KeyManagementHook', 'find_key_material', 'key_components']

CIPHER_NAME = 'block-shuffle-v1'


def find_key_material(paths: Iterable[str], key: SecretKey,
                      max_bytes: Optional[int] = None) -> List[str]:
    """Files (searched recursively) that contain the key's bytes, hex or base64.

    Args:
        paths (Iterable[str]): Files or directories.
        key (SecretKey): The key to look for.
        max_bytes (int, optional): Skip files larger than this. Defaults to None (all).

    Returns:
        list[str]: Offending file paths (never the key itself).
    """
    forms = key.material_forms()
    hits = []
    for path in paths:
        files = [path] if osp.isfile(path) else [
            osp.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            try:
                if max_bytes is not None and osp.getsize(f) > max_bytes:
                    continue
                with open(f, 'rb') as fh:
                    data = fh.read()
            except OSError:
                continue
            low = data.lower()
            if any(form in data or form.lower() in low for form in forms):
                hits.append(f)
    return hits


def _iter_transforms(obj, depth: int = 0):
    """Every transform object inside a dataset/pipeline tree."""
    if obj is None or depth > 8:
        return
    for attr in ('dataset', 'datasets'):
        sub = getattr(obj, attr, None)
        if sub is not None:
            for s in (sub if isinstance(sub, (list, tuple)) else [sub]):
                yield from _iter_transforms(s, depth + 1)
    pipeline = getattr(obj, 'pipeline', None)
    if pipeline is not None:
        yield from _iter_transforms(pipeline, depth + 1)
    transforms = getattr(obj, 'transforms', None)
    if isinstance(transforms, (list, tuple)):
        for t in transforms:
            if isinstance(t, (list, tuple)):  # TestTimeAug holds lists of lists
                for tt in t:
                    yield tt
                    yield from _iter_transforms(tt, depth + 1)
            else:
                yield t
                yield from _iter_transforms(t, depth + 1)


def key_components(runner, modes: Tuple[str, ...]) -> List[Tuple[str, str, int]]:
    """``(where, fingerprint, block_size)`` for every key-using component of a run.

    Args:
        runner (Runner): The runner.
        modes (tuple[str]): Dataloaders to inspect among ``'train'``, ``'val'``, ``'test'``.
    """
    found = []
    model = getattr(runner.model, 'module', runner.model)
    for name, m in model.named_modules():
        fp = getattr(m, 'key_fingerprint', None)
        if isinstance(fp, str):
            found.append((f'model.{name}' if name else 'model', fp,
                          int(getattr(m, 'block_size'))))
    for mode in modes:
        loop = getattr(runner, f'_{mode}_loop', None)
        loader = getattr(loop, 'dataloader', None)
        if loader is None:
            continue
        for t in _iter_transforms(getattr(loader, 'dataset', None)):
            fp = getattr(t, 'key_fingerprint', None)
            if isinstance(fp, str):
                found.append((f'{mode}_pipeline.{type(t).__name__}', fp,
                              int(getattr(t, 'block_size'))))
    return found


@HOOKS.register_module()
class KeyManagementHook(Hook):
    """Checks that a run uses one key consistently and never leaks it.

    - Before training / validation / testing: every key-using component (pipelines'
      ``BlockScramble``, the ``EncryptedVisionTransformer``) must have this hook's key
      fingerprint, and every cipher block size must equal the backbone's patch size;
      slide-inference windows must lie on the block grid.
    - Every checkpoint's ``meta['ppenc']`` records the key fingerprint and cipher
      parameters (never the key).
    - ``resume`` / ``load_from`` refuse a checkpoint made with another key (and, unless
      ``allow_unkeyed_checkpoint``, one that records no key).
    - The dumped config, the config text stored in checkpoints and the logs are scanned
      for the key's raw, hex and base64 forms; the run fails loudly if any is found.

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

    def _key(self) -> SecretKey:
        return resolve_key(self.key_file)

    # ----------------------------------------------------------------- consistency
    def _check_components(self, runner, modes: Tuple[str, ...]) -> None:
        comps = key_components(runner, modes)
        problems = [f'{where} uses key {fp}' for where, fp, _ in comps
                    if fp != self.fingerprint]
        model = getattr(runner.model, 'module', runner.model)
        backbone = getattr(model, 'backbone', None)
        patch = getattr(backbone, 'patch_size', None)
        if patch is not None:
            problems += [f'{where} uses block size {b}, but the backbone patch size is '
                         f'{patch}' for where, _, b in comps if b != patch]
            test_cfg = getattr(model, 'test_cfg', None) or {}
            if test_cfg.get('mode') == 'slide':
                for name in ('crop_size', 'stride'):
                    vals = test_cfg.get(name, ())
                    if any(int(v) % patch for v in vals):
                        problems.append(f'model.test_cfg.{name}={tuple(vals)} is not a '
                                        f'multiple of the block size {patch}: slide '
                                        'windows would leave the block grid')
        if problems:
            raise InvalidKeyError(
                f'Key/cipher mismatch in this run (expected key {self.fingerprint}): '
                + '; '.join(problems) + '. Use one key file for every component (leave '
                'key_file=None everywhere and set PPENC_KEY_FILE) and block_size equal '
                'to the ViT patch size.')
        if not comps:
            print_log('KeyManagementHook: no component of this run uses a key.',
                      logger='current', level=30)

    def before_train(self, runner) -> None:
        self._check_components(runner, ('train', 'val'))
        self._scan(runner)

    def before_val(self, runner) -> None:
        self._check_components(runner, ('val',))

    def before_test(self, runner) -> None:
        self._check_components(runner, ('test',))
        self._scan(runner)

    # ----------------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = getattr(runner.model, 'module', runner.model)
        meta = checkpoint.setdefault('meta', {})
        meta['ppenc'] = dict(
            key_fingerprint=self.fingerprint,
            cipher=CIPHER_NAME,
            block_size=int(getattr(getattr(model, 'backbone', None), 'patch_size', 16)),
            flip_compatible=self._key().flip_compatible,
            version=__version__)
        cfg_text = meta.get('cfg')
        if isinstance(cfg_text, str):
            key = self._key()
            if any(f.decode('latin-1').lower() in cfg_text.lower()
                   for f in key.material_forms()):
                raise RuntimeError('Key material found in the config text that would be '
                                   'stored in the checkpoint; remove it from the config '
                                   '(configs must name a key file, never key bytes).')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = (checkpoint.get('meta') or {}).get('ppenc')
        if meta is None:
            if self.allow_unkeyed_checkpoint:
                return
            raise InvalidKeyError(
                'The checkpoint being loaded records no mmseg_ppenc key fingerprint, so '
                f'it is not known to belong to key {self.fingerprint}. Encrypt plain '
                'models with tools/encrypt_model.py, or set '
                'KeyManagementHook(allow_unkeyed_checkpoint=True) if you are sure.')
        fp = meta.get('key_fingerprint')
        if fp != self.fingerprint:
            raise InvalidKeyError(
                f'Key fingerprint mismatch: the checkpoint was made with key {fp}, but '
                f'this run uses key {self.fingerprint}. Select the key the checkpoint was '
                'trained with (PPENC_KEY_FILE) or start from a checkpoint of this key.')

    # ----------------------------------------------------------------- leakage
    def _scan(self, runner) -> None:
        key = self._key()
        hits = []
        cfg_text = runner.cfg.pretty_text if runner.cfg is not None else ''
        if any(f.decode('latin-1').lower() in cfg_text.lower()
               for f in key.material_forms()):
            hits.append('the run config')
        paths = [p for p in (runner.log_dir,) if p and osp.isdir(p)]
        work_dir = runner.work_dir
        if work_dir and osp.isdir(work_dir):
            paths += [osp.join(work_dir, f) for f in os.listdir(work_dir)
                      if f.endswith(('.py', '.json', '.log', '.txt', '.yaml'))]
        hits += find_key_material(paths, key, max_bytes=64 << 20)
        if hits:
            raise RuntimeError('KEY MATERIAL LEAKED: the secret key (raw, hex or base64) '
                               f'appears in: {", ".join(hits)}. Delete these files, '
                               'rotate the key, and name the key only by file path '
                               '(PPENC_KEY_FILE).')

    def after_run(self, runner) -> None:
        self._scan(runner)
