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
4. the backbone, from its config: an encrypted backbone type given another backbone's
   arguments (the README recipe's type switch on a ResNet, MiT, MSCAN or Swin config), or
   a patch embedding the adaptation cannot be exact for (:func:`backbone_problems`);
5. exactness and key consistency, on the segmentor and pipelines built from the config
   (nothing is loaded: no weights, no dataset files) with the same rules that
   :class:`mmseg_ppenc.hooks.KeyManagementHook` applies to the real objects at runner
   start (:func:`check_run`).

A run that encrypts the images but whose backbone is not adapted to the key (the paper's
"conventional 2" setting) is not refused, but warned about (:func:`setting_warning`)
unless the config says it is meant: ``ppenc_setting = 'conventional2'``.

:class:`mmseg_ppenc.runner.PPEncRunner` calls :func:`check_before_start` in ``from_cfg``,
which every entry point uses (``tools/train.py``, ``tools/test.py``, ``mim train``,
``tools/dist_train.sh``, the slurm launchers); ``ppenc-check`` prints
:func:`start_problems`.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from mmcv.transforms import TestTimeAug

from mmseg_ppenc.core.exactness import (
    ADAPTABLE_BACKBONES,
    NOT_ADAPTABLE,
    channel_problems,
    patch_embedding_problems,
    pipeline_problems,
    preprocessor_pad_problems,
    segmentor_problems,
)
from mmseg_ppenc.core.keyed import KeyedComponent, is_keyed, keyed_components, unwrap_model
from mmseg_ppenc.models.data_preprocessor import EncryptedSegDataPreProcessor
from mmseg_ppenc.transforms.block_scramble import BlockScramble
from mmseg_ppenc.transforms.pad import PadToGrid
from ppenc.errors import ConfigError, GridError, InvalidKeyError, KeyLeakError, PpencError
from ppenc.grid import slide_problems
from ppenc.keys import KEY_ENV_VAR, SecretKey

__all__ = ['check_before_start', 'start_problems', 'check_run', 'run_keys',
           'scan_config', 'dataset_pipelines', 'pipeline_branches', 'segmentor_cfg',
           'backbone_problems', 'setting_warning', 'MODES', 'SETTING_KEY', 'SETTINGS']

#: Dataloaders a run may use, in order.
MODES = ('train', 'val', 'test')
#: Top-level config key naming the paper's setting a config is meant for. Only
#: ``'conventional2'`` changes anything: it silences :func:`setting_warning`.
SETTING_KEY = 'ppenc_setting'
#: Its values.
SETTINGS = ('baseline', 'conventional2', 'proposed')


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


def segmentor_cfg(cfg) -> dict:
    """The segmentor's config in a run config: ``cfg.model``, or the ``module`` of a
    test-time augmentation model (``tools/test.py --tta`` sets ``cfg.model =
    cfg.tta_model`` with ``module`` the original model).

    Args:
        cfg (mmengine.Config): The run config.
    """
    model = cfg.get('model') or {}
    for _ in range(8):  # wrappers nest a few levels at most
        inner = model.get('module') if isinstance(model, dict) else None
        if not isinstance(inner, dict):
            break
        model = inner
    return model if isinstance(model, dict) else {}


def _block_sizes(cfg) -> Tuple[int, ...]:
    backbone = segmentor_cfg(cfg).get('backbone') or {}
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


# --------------------------------------------------------------------------- backbone
#: mmseg's convolutional backbones: their first convolutions overlap neighbouring blocks.
_CONVOLUTIONAL = ('BiSeNetV1', 'BiSeNetV2', 'CGNet', 'DDRNet', 'ERFNet', 'FastSCNN', 'HRNet',
                  'ICNet', 'MobileNetV2', 'MobileNetV3', 'PIDNet', 'STDCNet',
                  'STDCContextPathNet', 'UNet')
_BACKBONES_MODULE = 'mmseg.models.backbones'


def _accepted_args(cls: type) -> Set[str]:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up its bases."""
    names: Set[str] = set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:
        init = vars(klass).get('__init__')
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            break
        names |= {n for n, p in params.items() if p.kind in kinds and n != 'self'}
        if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return names


def _backbones_taking(args: Set[str]) -> List[type]:
    """mmseg's backbone classes that take every argument in ``args``, the closest first
    (fewest other arguments), without subclasses that add nothing."""
    from mmseg.models.backbones import VisionTransformer
    from mmseg.registry import MODELS
    fits = []
    for cls in set(MODELS.module_dict.values()):
        if not isinstance(cls, type) or not cls.__module__.startswith(_BACKBONES_MODULE) \
                or issubclass(cls, VisionTransformer):
            continue
        accepted = _accepted_args(cls)
        if args <= accepted:
            fits.append((len(accepted), cls.__name__, cls))
    if not fits:
        return []
    best = min(n for n, _, _ in fits)
    return [cls for n, _, cls in sorted(fits, key=lambda f: f[:2]) if n == best]


def _why_not_adaptable(classes: Sequence[type]) -> str:
    for klass in classes[0].__mro__:
        if klass.__name__ in NOT_ADAPTABLE:
            return NOT_ADAPTABLE[klass.__name__]
        if klass.__name__ in _CONVOLUTIONAL:
            return ('a convolutional network, whose first convolutions overlap '
                    'neighbouring blocks')
    return 'not a ViT that EncryptedVisionTransformer implements'


def _backbone_class(cfg) -> Optional[type]:
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    backbone = (cfg.get('model') or {}).get('backbone')
    kind = backbone.get('type') if isinstance(backbone, dict) else None
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmseg')):
        return MODELS.get(kind)


def backbone_problems(cfg) -> List[str]:
    """Why the config's key-adapted backbone cannot be built exact, read from the config.

    Applies to a backbone type that is a keyed ``VisionTransformer``
    (``EncryptedVisionTransformer`` and its subclasses): refused are arguments of another
    backbone (the README recipe's type switch applied to a ResNet, MiT, MSCAN or Swin
    config, which would otherwise fail in the build with Python's "unexpected keyword
    argument"), ``in_channels`` other than 3, and ``patch_norm=True`` without
    ``patch_bias``.

    Args:
        cfg (mmengine.Config): The run config.

    Returns:
        list[str]: One sentence per problem, with the fix; empty when none.
    """
    from mmseg.models.backbones import VisionTransformer
    cls = _backbone_class(cfg)
    if not (isinstance(cls, type) and issubclass(cls, VisionTransformer) and
            issubclass(cls, KeyedComponent)):
        return []
    backbone = {k: v for k, v in cfg.model.backbone.items() if k not in ('type', '_scope_')}
    where, name = 'model.backbone', cls.__name__
    unknown = set(backbone) - _accepted_args(cls)
    if unknown:
        args = ', '.join(sorted(unknown))
        others = _backbones_taking(set(backbone))
        if others:
            names = [c.__name__ for c in others]
            names = ', '.join(names[:-1]) + ' or ' + names[-1] if len(names) > 1 \
                else names[0]
            whose = (f'this config\'s backbone is {names}, {_why_not_adaptable(others)}; '
                     'it cannot be adapted to the key')
        else:
            whose = f'{name} does not take them, and no mmseg backbone takes them all'
        return [f'{where} has type={name!r} but arguments of another backbone ({args}): '
                f'{whose}. The key adaptation is exact only for {ADAPTABLE_BACKBONES}. '
                'Keep the config\'s own backbone type (a plain model; with BlockScramble '
                'that is the "conventional 2" setting) or start from a ViT config '
                '(docs/generality.md)']
    defaults = inspect.signature(VisionTransformer.__init__).parameters
    value = {k: backbone.get(k, defaults[k].default)
             for k in ('in_channels', 'patch_norm', 'patch_bias')}
    return patch_embedding_problems(where, value['in_channels'], bool(value['patch_norm']),
                                    bool(value['patch_bias']))


def setting_warning(cfg, model: Any, datasets: Sequence[Tuple[str, Any]]) -> Optional[str]:
    """The warning for a run that encrypts images for a backbone not adapted to the key.

    Such a run (the paper's "conventional 2": a plain model trained and tested on
    encrypted images) is valid but much less accurate than the adapted one, and usually a
    mistake (the recipe's backbone type switch forgotten, or a backbone that cannot be
    adapted). A config that means it says so with ``ppenc_setting = 'conventional2'``.

    Args:
        cfg (mmengine.Config | dict): The run config (for :data:`SETTING_KEY`).
        model (nn.Module): The (unwrapped) segmentor.
        datasets (Sequence[tuple[str, Any]]): ``(mode, dataset)`` of the run.

    Returns:
        str | None: One line, or None when the images are not encrypted here, the
        backbone is adapted, or the config says conventional 2 is meant.

    Raises:
        ConfigError: :data:`SETTING_KEY` has a value not in :data:`SETTINGS`.
    """
    setting = cfg.get(SETTING_KEY)
    if setting is not None and setting not in SETTINGS:
        raise ConfigError(f'{SETTING_KEY}={setting!r} is not a setting: use one of '
                          f'{", ".join(map(repr, SETTINGS))} (or leave it unset).')
    backbone = getattr(model, 'backbone', None)
    if setting == 'conventional2' or backbone is None or \
            any(is_keyed(m) for m in backbone.modules()):
        return None
    encrypting = list(dict.fromkeys(where for where, _, _ in keyed_components(model, datasets)))
    if not encrypting:
        return None
    return (f'This run encrypts the images ({", ".join(encrypting)}) but its backbone '
            f'{type(backbone).__name__} is not adapted to the key: a plain model on '
            'encrypted images, the paper\'s "conventional 2" setting, which is much less '
            'accurate than the adapted one. For the adapted ("proposed") setting use '
            "backbone type='EncryptedVisionTransformer' (ViT backbones only); if "
            f"conventional 2 is meant, set {SETTING_KEY} = 'conventional2' in the config.")


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
    candidates = MODES
    model = cfg.get('model')
    if isinstance(model, dict) and isinstance(model.get('module'), dict):
        # A test-time augmentation model (tools/test.py --tta) only tests: it cannot
        # train, and its data preprocessor comes from the top-level config, so the
        # training rules would be checked against settings that never run.
        candidates = ('test',)
    return [m for m in candidates if cfg.get(f'{m}_dataloader') and cfg.get(f'{m}_cfg')]


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
        model (nn.Module): The segmentor, possibly wrapped (DDP, or the ``SegTTAModel``
            of ``tools/test.py --tta``: the segmentor inside is checked); its backbone's
            normalisation must already be bound
            (:func:`mmseg_ppenc.models.encrypted_vit.bind_normalization`).
        datasets (Sequence[tuple[str, Any]]): ``(mode, dataset)`` of the dataloaders in use.
        fingerprint (str, optional): The key every component must use. Defaults to None
            (all components must agree with each other).

    Raises:
        InvalidKeyError: components use different keys, or a block size differs from the
            patch size.
        GridError: slide inference would leave the block grid.
        ConfigError: the run would not be exact.
    """
    # The segmentor inside a TTA (or DDP) wrapper: the wrapper has no backbone and a
    # default data preprocessor that never runs.
    model = unwrap_model(model)
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
    tta_refused = False
    for mode, dataset in datasets:
        branches = pipeline_branches(dataset)
        plain = [aug for aug, transforms in branches
                 if not any(isinstance(t, BlockScramble) for t in transforms)]
        if plain and is_keyed(backbone) and not is_keyed(pre) and \
                getattr(dataset, 'manifest', None) is None:
            # e.g. tools/test.py --tta with a config's stock tta_pipeline: one sentence
            # for all branches, naming the first.
            some = (f' ({len(plain)} of {len(branches)} TestTimeAug branches, e.g. '
                    f'{plain[0]})' if plain[0] else '')
            problems.append(
                f'{mode}_pipeline{some} has no BlockScramble, so the encrypted backbone '
                'would get plain images: end the pipeline with BlockScramble before '
                'PackSegInputs (for --tta, in every branch of tta_pipeline)')
            tta_refused |= bool(plain[0])
        for aug, transforms in branches:
            # One name for all branches: their BlockScramble is usually one object, and
            # equal messages are merged below.
            where = f'{mode}_pipeline' + ('.TestTimeAug' if aug else '')
            scrambles = [(f'{where}.BlockScramble', t) for t in transforms
                         if isinstance(t, BlockScramble)]
            found = channel_problems(scrambles, bgr_to_rgb)
            found += pipeline_problems(mode, transforms, block)
            if scrambles:
                enc = transforms.index(scrambles[0][1])
                pads = [t for t in transforms[:enc] if isinstance(t, PadToGrid)]
                found += preprocessor_pad_problems(pre, pads, block,
                                                   training=mode == 'train')
            problems += found
            tta_refused |= bool(found and aug)
    if tta_refused:
        problems.append(TTA_FIX)
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


#: The fix for a refused ``tta_pipeline``: the shape of one that is exact.
TTA_FIX = (
    'for tools/test.py --tta, every branch of tta_pipeline must resize and flip first, '
    'then pad to the grid and encrypt: tta_pipeline = [dict(type=\'LoadImageFromFile\'), '
    'dict(type=\'TestTimeAug\', transforms=[[dict(type=\'Resize\', scale_factor=r, '
    'keep_ratio=True) for r in ratios], [dict(type=\'RandomFlip\', prob=0.0), '
    'dict(type=\'RandomFlip\', prob=1.0)], [dict(type=\'PadToGrid\')], '
    '[dict(type=\'LoadAnnotations\')], [dict(type=\'BlockScramble\')], '
    '[dict(type=\'PackSegInputs\', meta_keys=mmseg_ppenc.transforms.PACK_META_KEYS)]])] '
    '(as the shipped proposed configs do)')


class _SizePad:
    """Stands for the raw pad of ``EncryptedSegDataPreProcessor(pad_to_grid=True)``."""

    def __init__(self, size) -> None:
        self.size = size


#: Transform settings that tell test-time augmentation branches apart, for messages.
_BRANCH_ATTRS = ('scale', 'scale_factor', 'keep_ratio', 'prob', 'direction')


def _describe(transforms: Sequence[Any]) -> str:
    """``Resize(scale_factor=0.5, keep_ratio=True), RandomFlip(prob=1.0)``-style text."""
    parts = []
    for t in transforms:
        args = ', '.join(f'{a}={getattr(t, a)!r}' for a in _BRANCH_ATTRS
                         if getattr(t, a, None) is not None)
        parts.append(f'{type(t).__name__}({args})')
    return ', '.join(parts)


def pipeline_branches(dataset: Any, depth: int = 0) -> List[Tuple[str, List[Any]]]:
    """``(augmentation, transforms)`` of every leaf dataset's pipeline, one per
    ``TestTimeAug`` branch.

    A ``TestTimeAug`` runs every combination of its transform lists on each image
    (``tools/test.py --tta``); each combination, with the transforms before and after
    the ``TestTimeAug``, is one full pipeline that must be exact on its own.

    Args:
        dataset: A dataset, dataset wrapper or :class:`_Pipeline`.
        depth (int): Recursion depth (wrappers nest). Defaults to 0.

    Returns:
        list[tuple[str, list]]: ``augmentation`` is ``''`` for a pipeline without
        ``TestTimeAug``, else the branch's own transforms, e.g. ``'Resize(scale_factor=0.5,
        keep_ratio=True), RandomFlip(prob=1.0), ...'``, for messages.
    """
    if dataset is None or depth > 8:
        return []
    out: List[Tuple[str, List[Any]]] = []
    for attr in ('dataset', 'datasets'):
        sub = getattr(dataset, attr, None)
        if sub is not None:
            for d in (sub if isinstance(sub, (list, tuple)) else [sub]):
                out += pipeline_branches(d, depth + 1)
    transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', None)
    if isinstance(transforms, (list, tuple)):
        # (transforms, the TestTimeAug transforms that make this branch)
        branches: List[Tuple[List[Any], List[Any]]] = [([], [])]
        for t in transforms:
            subs = getattr(t, 'subroutines', None)
            if isinstance(t, TestTimeAug) and subs:
                # Each subroutine is one full augmented branch.
                branches = [(b + list(getattr(sub, 'transforms', sub)),
                             aug + list(getattr(sub, 'transforms', sub)))
                            for b, aug in branches for sub in subs]
            else:
                branches = [(b + [t], aug) for b, aug in branches]
        out += [(_describe(aug), b) for b, aug in branches]
    return out


def dataset_pipelines(dataset: Any, depth: int = 0) -> List[List[Any]]:
    """The transform lists of every leaf dataset, one per ``TestTimeAug`` branch
    (:func:`pipeline_branches` without the labels).

    Args:
        dataset: A dataset, dataset wrapper or :class:`_Pipeline`.
        depth (int): Recursion depth (wrappers nest). Defaults to 0.
    """
    return [t for _, t in pipeline_branches(dataset, depth)]


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
def _stages(cfg, modes: Optional[Sequence[str]], warnings: Optional[List[str]] = None):
    """The checks in order, each a callable that raises a user error; warnings (one line
    each) are appended to ``warnings``."""
    state: Dict[str, Any] = {}

    def leak():
        scan_config(cfg, run_keys(cfg))

    def keys():
        state['hook_fps'] = _hook_fingerprints(cfg)

    def backbone():
        problems = backbone_problems(cfg)
        if problems:
            raise ConfigError('; '.join(problems) + '.')

    def run():
        from mmseg_ppenc.models.encrypted_vit import bind_normalization
        model, datasets = _build_probe(cfg, _active_modes(cfg, modes))
        bind_normalization(model)
        fps = state.get('hook_fps') or [None]
        check_run(model, datasets, fps[0])
        warning = setting_warning(cfg, model, datasets)
        if warning and warnings is not None:
            warnings.append(warning)

    return [leak, keys, backbone, run]


def start_problems(cfg, modes: Optional[Sequence[str]] = None,
                   warnings: Optional[List[str]] = None) -> List[PpencError]:
    """Every refusal :func:`check_before_start` would raise, collected.

    Args:
        cfg (mmengine.Config): The run config (``work_dir`` set as the tool sets it).
        modes (Sequence[str], optional): Dataloaders to check. Defaults to None (those
            with a dataloader and a loop config).
        warnings (list[str], optional): Receives the start warnings (one line each).
            Defaults to None (not collected).

    Returns:
        list[PpencError]: The refusals, in the order the checks run; empty when the run
        may start. A refusal of the config text, of a key or of the backbone stops the
        checks that need it.
    """
    problems: List[PpencError] = []
    for stage in _stages(cfg, modes, warnings):
        try:
            stage()
        except PpencError as e:
            problems.append(e)
            if isinstance(e, (KeyLeakError, InvalidKeyError)) or \
                    stage.__name__ in ('leak', 'backbone'):
                break
        except Exception as e:  # noqa: BLE001 - the Runner would fail on it the same way
            problems.append(ConfigError(
                f'building the model or a pipeline of this config failed with '
                f'{type(e).__name__}: {e}'))
    return problems


def check_before_start(cfg, modes: Optional[Sequence[str]] = None) -> List[str]:
    """Run every start check on ``cfg``; raise the first refusal. Writes nothing.

    Args:
        cfg (mmengine.Config): The run config.
        modes (Sequence[str], optional): Dataloaders to check. Defaults to None (those
            with a dataloader and a loop config).

    Returns:
        list[str]: Warnings for a run that may start (one line each,
        :func:`setting_warning`); the caller logs them.

    Raises:
        PpencError: the first refusal (:class:`ConfigError`, :class:`KeyLeakError`,
            :class:`InvalidKeyError`, :class:`GridError`), naming the problem and the fix.
    """
    warnings: List[str] = []
    for stage in _stages(cfg, modes, warnings):
        stage()
    return warnings
