"""Start-of-run rules that make an encrypted run exact, or refuse it.

The adapted ViT computes exactly what the plain ViT computes only if the tensor it gets
is the block-wise encryption of the tensor the plain ViT would get. Everything between
``BlockScramble`` and the ViT must therefore keep whole blocks and must not change pixel
values in a way that depends on their position, and nothing but the backbone may read
the (encrypted) image. Each helper here returns one sentence per violation, naming the
setting and a value that works; :mod:`mmseg_ppenc.start_checks` raises them before a run
starts. The plugin's own components are recognised by type (a subclass of
``BlockScramble`` is one); mmseg's resize transforms by name (:data:`RESIZE_TRANSFORMS`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from mmseg.datasets.transforms import PackSegInputs

from mmseg_ppenc.core.keyed import unwrap_model
from mmseg_ppenc.transforms.block_scramble import BlockScramble
from mmseg_ppenc.transforms.pad import PadToGrid
from ppenc.grid import off_grid_hint, to_pair
from ppenc.meta import same_values

__all__ = ['EXACT_SEGMENTORS', 'REFUSED_SEGMENTORS', 'RESIZE_TRANSFORMS',
           'segmentor_problems', 'channel_problems', 'preprocessor_pad_problems',
           'pipeline_problems', 'normalization_problem', 'patch_embedding_problems',
           'ADAPTABLE_BACKBONES', 'NOT_ADAPTABLE', 'PADDING_META_KEY']

#: Segmentor types proven exact: only the backbone reads the image; necks and heads read
#: backbone features. Anything else is refused until proven (an allow-list, so a new
#: mmseg segmentor is never accepted by accident).
EXACT_SEGMENTORS: Dict[str, str] = {
    'EncoderDecoder': 'only the backbone reads the image',
    'CascadeEncoderDecoder': 'only the backbone reads the image',
}
#: Segmentors known to read the image outside the backbone, with the reason.
REFUSED_SEGMENTORS: Dict[str, str] = {
    'MultimodalEncoderDecoder': (
        'its decode head (e.g. SAN\'s side adapter) reads the raw image itself and the '
        'CLIP ViT sees a resized copy, so no key-adapted backbone can make it exact'),
    'DepthEstimator': 'it estimates depth, not segmentation; not proven exact',
}
#: Transforms that resize (the output size depends on the input image).
RESIZE_TRANSFORMS = ('Resize', 'RandomResize', 'RandomChoiceResize', 'ResizeShortestEdge',
                     'ResizeToMultiple')
#: The backbones the key adaptation is exact for, as refusals state it.
ADAPTABLE_BACKBONES = (
    'a backbone whose input layer is a non-overlapping patch projection (kernel = stride '
    '= patch size, in_channels=3): EncryptedVisionTransformer for mmseg\'s '
    'VisionTransformer (ViT, DeiT, SETR, Segmenter, DPT configs), EncryptedBEiT, '
    'EncryptedMAE, EncryptedSwinTransformer, EncryptedPCPVT, EncryptedSVT')
#: Why a backbone family cannot be adapted, by class name (subclasses inherit it).
NOT_ADAPTABLE = {
    'ResNet': 'a convolutional network whose stem convolutions overlap (kernel 3 or 7, '
              'stride 2)',
    'MixVisionTransformer': "SegFormer's MiT, whose patch embeddings overlap (kernel 7, "
                            'stride 4)',
    'MSCAN': "SegNeXt's MSCAN, whose convolution stem overlaps (kernel 3, stride 2)",
    'SwinTransformer': 'a Swin Transformer: use its own encrypted variant, '
                       "type='EncryptedSwinTransformer' (block size 4)",
    'PCPVT': "a Twins transformer: use its own encrypted variant, type='EncryptedPCPVT' "
             "or 'EncryptedSVT' (block size 4)",
    'BEiT': "a BEiT/MAE ViT: use its own encrypted variant, type='EncryptedBEiT' or "
            "'EncryptedMAE'",
    'TIMMBackbone': 'a timm model wrapper, whose layers EncryptedVisionTransformer does '
                    'not implement (convert a timm ViT with tools/convert_timm_vit.py)',
    'VPD': "VPD's diffusion model, whose VAE encoder starts with overlapping 3x3 "
           'convolutions',
}
#: Meta key that mmseg's ``postprocess_result`` reads to crop a pad off the prediction.
PADDING_META_KEY = 'img_padding_size'


def segmentor_problems(model: Any) -> List[str]:
    """Problems of a segmentor type for encrypted inputs (empty when it is exact).

    Args:
        model (nn.Module): The segmentor, possibly wrapped (DDP, ``SegTTAModel``).
    """
    model = unwrap_model(model)
    name = type(model).__name__
    # Check the class and its bases by name: a user subclass of EncoderDecoder that
    # overrides nothing is fine, one that overrides ``extract_feat`` is not proven.
    if name in EXACT_SEGMENTORS:
        return []
    head = type(getattr(model, 'decode_head', None)).__name__
    why = REFUSED_SEGMENTORS.get(name)
    if head.startswith('SideAdapterCLIP'):
        why = REFUSED_SEGMENTORS['MultimodalEncoderDecoder']
    if why is None:
        why = ('it is not on the list of segmentors proven exact on encrypted images '
               f'({", ".join(EXACT_SEGMENTORS)}), and its modules may read the image '
               'outside the backbone')
    return [f'segmentor {name} (decode head {head}) cannot be used with encrypted '
            f'images: {why}. Use an {"/".join(EXACT_SEGMENTORS)} config']


def channel_problems(scrambles: Iterable[Tuple[str, Any]], bgr_to_rgb: bool) -> List[str]:
    """Channel-order mismatches between ``BlockScramble`` and the data preprocessor.

    The cipher must act in the channel order the ViT sees: ``channel_order='bgr'`` (the
    image is BGR, encrypt its RGB view) pairs with ``bgr_to_rgb=True``, ``'rgb'`` (encrypt
    the array as it is) with ``bgr_to_rgb=False``.

    Args:
        scrambles (Iterable[tuple[str, BlockScramble]]): ``(where, transform)`` pairs.
        bgr_to_rgb (bool): The data preprocessor's ``bgr_to_rgb``.
    """
    want = 'bgr' if bgr_to_rgb else 'rgb'
    return [f'{where} has channel_order={t.channel_order!r} but the data preprocessor has '
            f'bgr_to_rgb={bool(bgr_to_rgb)}, so the cipher would act in another channel '
            f'order than the ViT sees: set channel_order={want!r}'
            for where, t in scrambles
            if getattr(t, 'channel_order', want) != want]


def _size(v: Any) -> Optional[Tuple[int, int]]:
    if v is None:
        return None
    return to_pair(tuple(v) if isinstance(v, list) else v)


def preprocessor_pad_problems(preprocessor: Any, pads: Sequence[Any], block: int,
                              training: bool) -> List[str]:
    """Cases where the data preprocessor would pad an encrypted batch.

    ``SegDataPreProcessor`` pads after normalisation with a constant, which is not the
    encryption of any plain padding. An encrypted pipeline must bring every image to the
    batch size itself, in uint8, before ``BlockScramble`` (``PadToGrid(size=crop_size)``).

    Args:
        preprocessor (SegDataPreProcessor): The model's data preprocessor.
        pads (Sequence[PadToGrid]): The padding transforms that run before encryption in
            this pipeline (``BlockScramble(pad_to_grid=True)`` counts as one without size).
        block (int): Block side.
        training (bool): Check the training (``size``/``size_divisor``) or the test
            (``test_cfg``) padding.
    """
    if training:
        size = _size(getattr(preprocessor, 'size', None))
        divisor = getattr(preprocessor, 'size_divisor', None)
        where = 'model.data_preprocessor'
    else:
        tcfg = getattr(preprocessor, 'test_cfg', None) or {}
        size, divisor = _size(tcfg.get('size')), tcfg.get('size_divisor')
        where = 'model.data_preprocessor.test_cfg'
    sizes = [_size(getattr(p, 'size', None)) for p in pads]
    # The pipeline guarantees sides that are multiples of ``block`` (BlockScramble
    # refuses others), at least the largest pad size.
    guaranteed = max((s for s in sizes if s is not None), default=None)
    problems = []
    if size is not None:
        if guaranteed is None or guaranteed[0] < size[0] or guaranteed[1] < size[1]:
            hint = f'{size}'
            problems.append(
                f'{where}.size={size} pads smaller images after normalisation, which is '
                'not the encryption of any padded image: put '
                f"dict(type='PadToGrid', size={hint}) before BlockScramble (uint8 pad, "
                'labels 255), in the plain baseline too')
    if divisor and int(divisor) > 1 and block % int(divisor):
        # Images are on the block grid; a divisor that does not divide the block side
        # still pads them. In training, crops are at most the crop size, so a uint8 pad to
        # a crop size that is a multiple of the divisor leaves nothing to pad; test images
        # can be larger than any fixed size.
        ok = training and guaranteed is not None and all(
            v % int(divisor) == 0 for v in guaranteed)
        if not ok:
            problems.append(
                f'{where}.size_divisor={divisor} would pad encrypted images after '
                f'normalisation: remove it (the {block}-pixel grid is enough for the ViT) '
                f'or pad in uint8 with PadToGrid(size=...) to a multiple of {divisor}')
    return problems


def pipeline_problems(mode: str, transforms: Sequence[Any], block: int) -> List[str]:
    """Problems of one built pipeline of an encrypted run.

    - A resize before ``BlockScramble`` whose output size depends on the image (keep
      ratio, random or shortest-edge resizing) needs a pad to the grid before
      encryption, or the run fails on the first off-grid image; a fixed resize scale
      must be on the grid.
    - In validation/test, a pad before encryption must reach the prediction's
      post-processing (``PackSegInputs`` must keep ``img_padding_size``), or the pad is
      stretched into the prediction instead of being cut off.
    - Nothing but ``PackSegInputs`` may follow ``BlockScramble``.

    Args:
        mode (str): ``'train'``, ``'val'`` or ``'test'`` (for messages and the rules).
        transforms (Sequence): The pipeline's transform objects, in order (flattened;
            ``TestTimeAug`` branches in sequence).
        block (int): Block side.
    """
    problems: List[str] = []
    names = [type(t).__name__ for t in transforms]
    encs = [i for i, t in enumerate(transforms) if isinstance(t, BlockScramble)]
    if not encs:
        return problems
    enc = encs[0]
    before = transforms[:enc]
    scramble = transforms[enc]
    pads = [t for t in before if isinstance(t, PadToGrid)]
    last_resize = max((i for i, n in enumerate(names[:enc]) if n in RESIZE_TRANSFORMS),
                      default=-1)
    pad_after_resize = scramble.pad_to_grid or any(
        isinstance(t, PadToGrid) and i > last_resize for i, t in enumerate(before))
    for i, t in enumerate(before):
        n = type(t).__name__
        if n not in RESIZE_TRANSFORMS:
            continue
        scale = getattr(t, 'scale', None)
        fixed = (n == 'Resize' and not getattr(t, 'keep_ratio', False)
                 and isinstance(scale, (tuple, list)) and len(scale) == 2
                 and getattr(t, 'scale_factor', None) is None)
        if fixed:
            bad = [int(v) for v in scale if int(v) % block]
            if bad and not pad_after_resize:
                problems.append(
                    f'{mode}_pipeline {n}(scale={tuple(scale)}) gives an off-grid size: '
                    + '; '.join(f'for {v} {off_grid_hint(v, block)}' for v in bad))
        elif not pad_after_resize:
            problems.append(
                f'{mode}_pipeline {n} (keep_ratio/random scale) gives image sizes that '
                f'depend on the image and leave the {block}-pixel grid: put '
                f"dict(type='PadToGrid', block_size={block}) before BlockScramble "
                f'(or BlockScramble(pad_to_grid=True))'
                + (f" and keep '{PADDING_META_KEY}' in PackSegInputs meta_keys"
                   if mode != 'train' else ''))
    after = [n for t, n in zip(transforms[enc + 1:], names[enc + 1:])
             if not isinstance(t, PackSegInputs)]
    if after:
        problems.append(f'{mode}_pipeline has {", ".join(after)} after BlockScramble: '
                        'every transform must run before encryption (the model must see '
                        'exactly the encrypted image)')
    if mode != 'train' and (pads or scramble.pad_to_grid):
        packs = [t for t in transforms[enc + 1:] if isinstance(t, PackSegInputs)]
        for p in packs:
            keys = tuple(getattr(p, 'meta_keys', ()) or ())
            if PADDING_META_KEY not in keys:
                problems.append(
                    f'{mode}_pipeline pads before BlockScramble but PackSegInputs drops '
                    f"'{PADDING_META_KEY}', so the pad would be stretched into the "
                    'prediction instead of cut off: give PackSegInputs '
                    f"meta_keys=(..., '{PADDING_META_KEY}') (mmseg_ppenc.transforms."
                    'PACK_META_KEYS)')
    return problems


_Norm = Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]


def normalization_problem(given: _Norm, model_norm: _Norm,
                          where: str) -> Optional[str]:
    """A sentence when a component's explicit mean/std differ from the model's.

    Args:
        given (tuple): ``(mean, std)`` set on the component (None = follows the model).
        model_norm (tuple): ``(mean, std)`` of the data preprocessor.
        where (str): The component, as the config names it.
    """
    for name, a, b in (('mean', given[0], model_norm[0]), ('std', given[1], model_norm[1])):
        if a is None or b is None:
            continue
        a, b = [float(v) for v in a], [float(v) for v in b]
        if not same_values(a, b):
            return (f'{where}.{name}={a} differs from the data preprocessor\'s {name}={b}: '
                    f'remove {name} from {where} (it follows the data preprocessor) or '
                    'make them equal')
    return None


def patch_embedding_problems(where: str, in_channels: int, patch_norm: bool,
                             patch_bias: bool) -> List[str]:
    """Patch-embedding settings the key adaptation cannot be exact for.

    Args:
        where (str): The backbone, as the config names it (``'model.backbone'``).
        in_channels (int): The ViT's ``in_channels``.
        patch_norm (bool): The ViT's ``patch_norm`` (a LayerNorm after the projection).
        patch_bias (bool): The ViT's ``patch_bias`` (a bias on the projection).

    Returns:
        list[str]: One sentence per problem, with the fix; empty when adaptable.
    """
    problems = []
    if in_channels != 3:
        problems.append(
            f'{where}.in_channels={in_channels}: the cipher encrypts 3-channel images '
            'and the adaptation permutes the 3 x patch x patch values of each block, so '
            'an encrypted backbone takes RGB input only: set in_channels=3')
    if patch_norm and not patch_bias:
        problems.append(
            f'{where} has patch_norm=True and patch_bias=False: the LayerNorm after the '
            'projection would see the adaptation\'s offset, which must therefore go into '
            'the projection bias: set patch_bias=True (it starts at zero when the '
            'pre-trained checkpoint has none) or patch_norm=False')
    return problems
