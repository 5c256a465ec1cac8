"""Every check a run must pass before mmengine writes a single file.

mmengine's ``Runner.__init__`` creates the work_dir, opens the log, writes
``vis_data/config.py`` and dumps the config before any hook runs, so a hook can only
refuse a run whose key leaked after the leak is on disk. These checks therefore run on
the config itself, before a Runner exists:

1. no ``bytes`` value anywhere in the config;
2. the leak scan (:mod:`ppenc.leak_scan`) of the config text, its file name, the
   work_dir and the experiment name, for every key the run can select;
3. key selection: every key file the run names (or ``$PPENC_KEY_FILE``) exists and is a
   valid key;
4. exactness and key consistency, on the segmentor and pipelines built from the config
   (nothing is loaded: no weights, no dataset files) with the same rules that
   :class:`mmseg_ppenc.hooks.KeyManagementHook` applies to the real objects at runner
   start (:func:`check_run`).

:class:`mmseg_ppenc.runner.PPEncRunner` calls :func:`check_before_start` in ``from_cfg``,
which every entry point uses (``tools/train.py``, ``tools/test.py``, ``mim train``,
``tools/dist_train.sh``, the slurm launchers); ``ppenc-check`` prints
:func:`start_problems`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mmcv.transforms import TestTimeAug

from mmseg_ppenc.core.exactness import (
    channel_problems,
    pipeline_problems,
    preprocessor_pad_problems,
    segmentor_problems,
)
from mmseg_ppenc.core.keyed import is_keyed, keyed_components
from mmseg_ppenc.models.data_preprocessor import EncryptedSegDataPreProcessor
from mmseg_ppenc.transforms.block_scramble import BlockScramble
from mmseg_ppenc.transforms.pad import PadToGrid
from ppenc.errors import ConfigError, GridError, InvalidKeyError, KeyLeakError, PpencError
from ppenc.grid import slide_problems
from ppenc.keys import KEY_ENV_VAR, SecretKey

__all__ = ['check_before_start', 'start_problems', 'check_run', 'run_keys',
           'scan_config', 'dataset_pipelines', 'MODES']

#: Dataloaders a run may use, in order.
MODES = ('train', 'val', 'test')


# --------------------------------------------------------------------------- config text
def _key_file_values(node: Any) -> Iterator[str]:
    """Every ``key_file='...'`` string in a config tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == 'key_file' and isinstance(v, (str, os.PathLike)):
                yield os.fspath(v)
            else:
                yield from _key_file_values(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _key_file_values(v)


def run_keys(cfg) -> Dict[str, SecretKey]:
    """The keys a run can select: ``$PPENC_KEY_FILE`` and every ``key_file`` it names.

    Files that cannot be read as keys are left out here; the components that need them
    refuse them with the reason (:func:`check_before_start` builds those components).

    Args:
        cfg (mmengine.Config): The run config.

    Returns:
        dict[str, SecretKey]: fingerprint -> key.
    """
    paths = list(dict.fromkeys(_key_file_values(cfg.to_dict())))
    if os.environ.get(KEY_ENV_VAR):
        paths.append(os.environ[KEY_ENV_VAR])
    keys: Dict[str, SecretKey] = {}
    for path in paths:
        try:
            key = SecretKey.load(path)
        except (PpencError, OSError):
            continue
        keys[key.fingerprint] = key
    return keys


def _block_sizes(cfg) -> Tuple[int, ...]:
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    patch = backbone.get('patch_size') if isinstance(backbone, dict) else None
    sizes = backbone.get('patch_sizes') if isinstance(backbone, dict) else None
    if patch is None and isinstance(sizes, (list, tuple)) and sizes:
        patch = sizes[0]  # Twins: the first stage's patch embedding meets the image
    return tuple(sorted({16} | ({int(patch)} if isinstance(patch, int) else set())))


def scan_config(cfg, keys: Dict[str, SecretKey]) -> None:
    """Refuse a config that holds bytes or key material, in its text or in the names of
    the files the run would write.

    Args:
        cfg (mmengine.Config): The run config (with ``work_dir`` set).
        keys (dict[str, SecretKey]): The keys to look for (:func:`run_keys`).

    Raises:
        ConfigError: the config holds ``bytes``.
        KeyLeakError: key material in the config text, its file name, the work_dir or the
            experiment name. Nothing has been written.
    """
    from ppenc.leak_scan import KeyScanner, find_bytes_values
    paths = find_bytes_values(cfg)
    if paths:
        raise ConfigError(
            f'The config holds bytes at {", ".join(paths)}; configs must never hold key '
            'material or other raw bytes (mmengine copies them into the work_dir, the log '
            'and every checkpoint). Name the key by file (key_file=PATH, or leave '
            f'key_file=None and set {KEY_ENV_VAR}). Nothing was written.')
    if not keys:
        return
    # The texts mmengine writes or names files after: the dump, the log header and the
    # directory and file names.
    places = [('the config', cfg.pretty_text.encode('utf-8', errors='surrogatepass')),
              ('the config file name', os.fsencode(getattr(cfg, 'filename', '') or '')),
              ('the work_dir path', os.fsencode(str(cfg.get('work_dir') or ''))),
              ('the experiment name', str(cfg.get('experiment_name') or '').encode())]
    sizes = _block_sizes(cfg)
    for key in keys.values():
        scanner = KeyScanner(key, sizes)
        found = [where for where, data in places if data and scanner.contains(data)]
        if found:
            raise KeyLeakError(
                f'Key material (of key {key.fingerprint}) found in {" and ".join(found)}. '
                'The run was refused before anything was written. Remove it: name the key '
                f'only by file (key_file=PATH or {KEY_ENV_VAR}), and choose a work_dir and '
                'config name that do not derive from the key. If the config was shared, '
                'rotate the key.')


# --------------------------------------------------------------------------- built objects
class _Pipeline:
    """A dataset stand-in for the checks: its pipeline and whether it is pre-encrypted."""

    def __init__(self, pipeline: Any, pre_encrypted: bool) -> None:
        self.pipeline = pipeline
        # Read by the checks as "this dataset is encrypted on disk" (a keyless dataset's
        # manifest); the real manifest is checked by KeylessServerHook at runner start.
        self.manifest = {} if pre_encrypted else None


def _leaf_datasets(ds: Any, depth: int = 0) -> Iterator[dict]:
    if not isinstance(ds, dict) or depth > 8:
        return
    inner = ds.get('dataset')
    inners = ds.get('datasets')
    if isinstance(inner, dict):
        yield from _leaf_datasets(inner, depth + 1)
    if isinstance(inners, (list, tuple)):
        for d in inners:
            yield from _leaf_datasets(d, depth + 1)
    if 'pipeline' in ds:
        yield ds


def _active_modes(cfg, modes: Optional[Sequence[str]]) -> List[str]:
    if modes is not None:
        return [m for m in modes if cfg.get(f'{m}_dataloader')]
    return [m for m in MODES if cfg.get(f'{m}_dataloader') and cfg.get(f'{m}_cfg')]


def _build_probe(cfg, modes: Sequence[str]):
    """The segmentor (random weights, nothing loaded) and the pipelines of ``cfg``."""
    import copy

    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    scope = cfg.get('default_scope', 'mmseg')
    with DefaultScope.overwrite_default_scope(scope):
        model_cfg = copy.deepcopy(cfg.model)
        if isinstance(model_cfg, dict) and cfg.get('data_preprocessor') and \
                'data_preprocessor' not in model_cfg:
            model_cfg['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
        model = MODELS.build(model_cfg)
        datasets = []
        for mode in modes:
            loader = cfg.get(f'{mode}_dataloader') or {}
            for leaf in _leaf_datasets(loader.get('dataset')):
                keyless = leaf.get('type') == 'KeylessEncryptedDataset'
                pipeline = Compose(copy.deepcopy(leaf.get('pipeline') or []))
                datasets.append((mode, _Pipeline(pipeline, keyless)))
    return model, datasets


def check_run(model: Any, datasets: Sequence[Tuple[str, Any]],
              fingerprint: Optional[str] = None) -> None:
    """The rules of an exact, single-key encrypted run, on built objects.

    Shared by :func:`check_before_start` (objects built from the config) and
    :class:`mmseg_ppenc.hooks.KeyManagementHook` (the runner's own objects).

    Args:
        model (nn.Module): The (unwrapped) segmentor; its backbone's normalisation must
            already be bound (:func:`mmseg_ppenc.models.encrypted_vit.bind_normalization`).
        datasets (Sequence[tuple[str, Any]]): ``(mode, dataset)`` of the dataloaders in use.
        fingerprint (str, optional): The key every component must use. Defaults to None
            (all components must agree with each other).

    Raises:
        InvalidKeyError: components use different keys, or a block size differs from the
            patch size.
        GridError: slide inference would leave the block grid.
        ConfigError: the run would not be exact.
    """
    comps = keyed_components(model, datasets)
    want = fingerprint or (comps[0][1] if comps else None)
    problems = [f'{where} uses key {fp}' for where, fp, _ in comps if fp != want]
    backbone = getattr(model, 'backbone', None)
    patch = getattr(backbone, 'patch_size', None)
    if patch is not None:
        problems += [f'{where} uses block size {b}, but the backbone patch size is '
                     f'{patch}: set block_size={patch}' for where, _, b in comps if b != patch]
    if problems:
        raise InvalidKeyError(
            f'Key/cipher mismatch in this run (expected key {want}): ' + '; '.join(problems)
            + '. Use one key file for every component (leave key_file=None everywhere and '
            f'set {KEY_ENV_VAR}) and block_size equal to the ViT patch size.')
    if not comps:
        return
    block = int(patch or comps[0][2])
    problems = list(segmentor_problems(model))
    grid = slide_problems(getattr(model, 'test_cfg', None), block)
    pre = getattr(model, 'data_preprocessor', None)
    bgr_to_rgb = bool(getattr(pre, 'channel_conversion', False))
    modes = {mode for mode, _ in datasets}
    for mode, dataset in datasets:
        for i, transforms in enumerate(dataset_pipelines(dataset)):
            where = f'{mode}_pipeline' + (f'[{i}]' if i else '')
            scrambles = [(f'{where}.BlockScramble', t) for t in transforms
                         if isinstance(t, BlockScramble)]
            if not scrambles and is_keyed(backbone) and not is_keyed(pre) and \
                    getattr(dataset, 'manifest', None) is None:
                # e.g. tools/test.py --tta with a config's stock tta_pipeline.
                problems.append(
                    f'{where} has no BlockScramble, so the encrypted backbone would get '
                    'plain images: end the pipeline with BlockScramble before '
                    'PackSegInputs (for --tta, in every branch of tta_pipeline)')
            problems += channel_problems(scrambles, bgr_to_rgb)
            problems += pipeline_problems(mode, transforms, block)
            if scrambles:
                enc = transforms.index(scrambles[0][1])
                pads = [t for t in transforms[:enc] if isinstance(t, PadToGrid)]
                problems += preprocessor_pad_problems(pre, pads, block,
                                                      training=mode == 'train')
    if isinstance(pre, EncryptedSegDataPreProcessor):
        # EncryptedSegDataPreProcessor pads raw pixels to its size before encrypting when
        # pad_to_grid=True; without it the parent would pad the encrypted batch.
        pads = [_SizePad(getattr(pre, 'size', None))] if pre.pad_to_grid else []
        for training in ([True] if 'train' in modes else []) + [False]:
            problems += preprocessor_pad_problems(pre, pads, block, training)
    problems = list(dict.fromkeys(problems))
    if grid and not problems:
        raise GridError('Slide inference would leave the cipher block grid: '
                        + '; '.join(grid) + '.')
    if grid or problems:
        raise ConfigError('This encrypted run would not be exact: '
                          + '; '.join(grid + problems) + '.')


class _SizePad:
    """Stands for the raw pad of ``EncryptedSegDataPreProcessor(pad_to_grid=True)``."""

    def __init__(self, size) -> None:
        self.size = size


def dataset_pipelines(dataset: Any, depth: int = 0) -> List[List[Any]]:
    """The transform lists of every leaf dataset, one per ``TestTimeAug`` branch.

    Args:
        dataset: A dataset, dataset wrapper or :class:`_Pipeline`.
        depth (int): Recursion depth (wrappers nest). Defaults to 0.
    """
    if dataset is None or depth > 8:
        return []
    out: List[List[Any]] = []
    for attr in ('dataset', 'datasets'):
        sub = getattr(dataset, attr, None)
        if sub is not None:
            for d in (sub if isinstance(sub, (list, tuple)) else [sub]):
                out += dataset_pipelines(d, depth + 1)
    transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', None)
    if isinstance(transforms, (list, tuple)):
        branches: List[List[Any]] = [[]]
        for t in transforms:
            subs = getattr(t, 'subroutines', None)
            if isinstance(t, TestTimeAug) and subs:
                # Each subroutine is one full augmented branch.
                branches = [b + list(getattr(sub, 'transforms', sub)) for b in branches
                            for sub in subs]
            else:
                branches = [b + [t] for b in branches]
        out += branches
    return out


def _hook_fingerprints(cfg) -> List[str]:
    """Fingerprints of the run's ``KeyManagementHook``\\ s (building them resolves keys)."""
    from mmseg.registry import HOOKS

    # By registry name: the hook module itself uses this module's check_run.
    key_hook = HOOKS.get('KeyManagementHook')
    out = []
    for hook in cfg.get('custom_hooks') or []:
        if not isinstance(hook, dict):
            continue
        cls = HOOKS.get(hook.get('type')) if isinstance(hook.get('type'), str) \
            else hook.get('type')
        if isinstance(cls, type) and issubclass(cls, key_hook):
            out.append(HOOKS.build(dict(hook)).fingerprint)
    return out


# --------------------------------------------------------------------------- entry points
def _stages(cfg, modes: Optional[Sequence[str]]):
    """The checks in order, each a callable that raises a user error."""
    state: Dict[str, Any] = {}

    def leak():
        scan_config(cfg, run_keys(cfg))

    def keys():
        state['hook_fps'] = _hook_fingerprints(cfg)

    def run():
        from mmseg_ppenc.models.encrypted_vit import bind_normalization
        model, datasets = _build_probe(cfg, _active_modes(cfg, modes))
        bind_normalization(model)
        fps = state.get('hook_fps') or [None]
        check_run(model, datasets, fps[0])

    return [leak, keys, run]


def start_problems(cfg, modes: Optional[Sequence[str]] = None) -> List[PpencError]:
    """Every refusal :func:`check_before_start` would raise, collected.

    Args:
        cfg (mmengine.Config): The run config (``work_dir`` set as the tool sets it).
        modes (Sequence[str], optional): Dataloaders to check. Defaults to None (those
            with a dataloader and a loop config).

    Returns:
        list[PpencError]: The refusals, in the order the checks run; empty when the run
        may start. A refusal of the config text or of a key stops the checks that need it.
    """
    problems: List[PpencError] = []
    for stage in _stages(cfg, modes):
        try:
            stage()
        except PpencError as e:
            problems.append(e)
            if isinstance(e, (KeyLeakError, InvalidKeyError)) or \
                    stage.__name__ == 'leak':
                break
        except Exception as e:  # noqa: BLE001 - the Runner would fail on it the same way
            problems.append(ConfigError(
                f'building the model or a pipeline of this config failed with '
                f'{type(e).__name__}: {e}'))
    return problems


def check_before_start(cfg, modes: Optional[Sequence[str]] = None) -> None:
    """Run every start check on ``cfg``; raise the first refusal. Writes nothing.

    Args:
        cfg (mmengine.Config): The run config.
        modes (Sequence[str], optional): Dataloaders to check. Defaults to None (those
            with a dataloader and a loop config).

    Raises:
        PpencError: the first refusal (:class:`ConfigError`, :class:`KeyLeakError`,
            :class:`InvalidKeyError`, :class:`GridError`), naming the problem and the fix.
    """
    for stage in _stages(cfg, modes):
        stage()
