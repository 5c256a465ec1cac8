"""Which transforms a keyless server may run on encrypted images, and why.

:func:`check_keyless_pipeline` checks a pipeline against an allow-list of transforms
proven to commute with the block cipher, before the pipeline is built; everything else is
refused with the reason and the alternative.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence

from mmseg.registry import TRANSFORMS

from ppenc.errors import KeylessPipelineError

__all__ = ['ALLOWED_TRANSFORMS', 'ALTERNATIVES', 'check_keyless_pipeline']


#: Transform name -> why it is allowed on encrypted data without the key.
ALLOWED_TRANSFORMS: Dict[str, str] = {
    'LoadImageFromFile': 'reads the stored (encrypted) pixels',
    'LoadImageFromNDArray': 'wraps an (encrypted) array',
    'LoadAnnotations': 'label maps are stored in the clear',
    'PackSegInputs': 'packs without changing pixels',
    'GridRandomCrop': 'crop on the block grid',
    'EncryptedPhotoMetric': 'element-wise brightness/contrast',
    'EncryptedRandomFlip': 'flip, with a flip-compatible key only',
}

_RESIZE_FIX = ('none on the server: resizing blends pixels of different positions and '
               'blocks. The client can encrypt several rescaled copies of the data '
               'offline (see docs/workflow.md)')
#: Known non-commuting transforms -> the alternative to use.
ALTERNATIVES: Dict[str, str] = {
    'RandomCrop': 'GridRandomCrop(crop_size=..., cat_max_ratio=...): offsets and size on '
                  'the block grid',
    'RandomFlip': 'EncryptedRandomFlip(flip_compatible=True), with data encrypted by a '
                  'key from `tools/keygen.py --flip-compatible`',
    'PhotoMetricDistortion': 'EncryptedPhotoMetric: brightness and contrast only (hue and '
                             'saturation mix the colour channels that the cipher '
                             'shuffles across)',
    'RandomResize': _RESIZE_FIX,
    'Resize': _RESIZE_FIX,
    'RandomChoiceResize': _RESIZE_FIX,
    'ResizeToMultiple': _RESIZE_FIX,
    'ResizeShortestEdge': _RESIZE_FIX,
    'RandomRotate': 'none: rotation moves pixels across blocks',
    'RandomRotFlip': 'none: rotation moves pixels across blocks',
    'RandomCutOut': 'none (cut-out at arbitrary positions fills parts of blocks)',
    'RandomMosaic': 'none (mosaic tiles are not aligned to the block grid)',
    'BioMedical3DRandomCrop': 'GridRandomCrop',
    'AdjustGamma': 'none as shipped; a per-value gamma commutes but is not provided',
    'CLAHE': 'none: histogram equalisation works on pixel neighbourhoods',
    'RGB2Gray': 'none: mixes channels',
    'BlockScramble': 'none: BlockScramble needs the key. A keyless server reads data '
                     'encrypted offline by tools/encrypt_dataset.py',
    'TestTimeAug': 'a plain test pipeline (no multi-scale or flip test on encrypted '
                   'images)',
}


def _type_name(t: Any) -> str:
    if isinstance(t, dict):
        name = t.get('type')
        if isinstance(name, type):
            return name.__name__
        return str(name).split('.')[-1]  # drop a registry scope ('mmseg.RandomCrop')
    return type(t).__name__


def _resolve(t: Any):
    if isinstance(t, dict):
        name = t.get('type')
        if isinstance(name, type):
            return name
        return TRANSFORMS.get(name)
    return type(t)


def _allowed_classes() -> Dict[type, str]:
    out = {}
    for name in ALLOWED_TRANSFORMS:
        cls = TRANSFORMS.get(name)
        if cls is not None:
            out[cls] = name
    return out


def _param(t: Any, cls: type, name: str, default: Any = None) -> Any:
    """A transform's parameter from its config dict (or class default) or object."""
    if isinstance(t, dict):
        if name in t:
            return t[name]
        try:
            p = inspect.signature(cls.__init__).parameters.get(name)
        except (TypeError, ValueError):
            p = None
        return p.default if p is not None and p.default is not p.empty else default
    return getattr(t, name, default)


def check_keyless_pipeline(pipeline: Sequence[Any], manifest: Optional[dict] = None,
                           where: str = 'pipeline') -> List[str]:
    """Check that every transform of ``pipeline`` commutes with the block cipher.

    Args:
        pipeline (Sequence[dict | callable]): Transform configs or objects.
        manifest (dict, optional): The dataset manifest; when given, block sizes must
            match it and a flip needs a flip-compatible key. Defaults to None.
        where (str): Name of the pipeline, for messages. Defaults to ``'pipeline'``.

    Returns:
        list[str]: The transform names, in order.

    Raises:
        KeylessPipelineError: a transform outside the allow-list (the message names it,
            says why it does not commute and what to use instead), a block size that
            differs from the data's, or a flip on data without a flip-compatible key.
    """
    allowed = _allowed_classes()
    names, problems = [], []
    for i, t in enumerate(pipeline):
        name = _type_name(t)
        names.append(name)
        cls = _resolve(t)
        if cls not in allowed:
            alt = ALTERNATIVES.get(name, 'none known: it is not on the allow-list of '
                                         'transforms proven to commute with the cipher')
            problems.append(f'{where}[{i}] {name} does not commute with block '
                            f'encryption; alternative: {alt}')
            continue
        if name == 'LoadImageFromFile' and _param(t, cls, 'color_type') == 'grayscale':
            problems.append(f'{where}[{i}] LoadImageFromFile(color_type="grayscale") mixes '
                            'the channels of encrypted pixels; use color_type="color"')
        bs = _param(t, cls, 'block_size')
        if manifest is not None and bs is not None and bs != manifest.get('block_size'):
            problems.append(f'{where}[{i}] {name} has block_size={bs}, but the data was '
                            f'encrypted with block_size={manifest.get("block_size")}')
        if getattr(cls, 'requires_flip_compatible_key', False) and manifest is not None:
            if not manifest.get('flip_compatible'):
                problems.append(
                    f'{where}[{i}] {name}: the data was encrypted with key '
                    f'{manifest.get("key_fingerprint")}, which is not flip-compatible, so '
                    'flipping encrypted images does not equal encrypting flipped ones. '
                    'Remove the flip, or have the client re-encrypt the data with a key '
                    'from `tools/keygen.py --flip-compatible`')
            expected = _param(t, cls, 'key_fingerprint') if isinstance(t, dict) else \
                getattr(t, 'expected_fingerprint', None)
            if expected and expected != manifest.get('key_fingerprint'):
                problems.append(f'{where}[{i}] {name} expects key {expected}, but the data '
                                f'was encrypted with key {manifest.get("key_fingerprint")}')
    if problems:
        allowed_names = ', '.join(ALLOWED_TRANSFORMS)
        raise KeylessPipelineError(
            'This keyless encrypted pipeline contains transforms that do not commute with '
            'the block cipher (the model would not see encrypted versions of augmented '
            'images):\n  - ' + '\n  - '.join(problems) +
            f'\nAllowed transforms: {allowed_names}.')
    return names
