"""Backbones whose first layer is a non-overlapping patch projection, adapted to the key.

One mechanism for every such backbone (mmseg's ``VisionTransformer``, ``BEiT``, ``MAE``,
``SwinTransformer``, ``PCPVT``, ``SVT``):

- :func:`input_projection` finds the backbone's input patch projection (mmseg's
  ``PatchEmbed.projection``), checks that the exact adaptation applies to it (a
  ``Conv2d`` with 3 input channels, kernel = stride, padding 0, dilation 1, groups 1)
  and decides where the constant offset goes: the projection bias, or an absolute
  position embedding added right after the projection when there is no bias. A norm
  after the projection (Swin, Twins, ``patch_norm=True``) is fine, since the adapted
  projection's output is the plain one exactly, but then the offset must be in the bias.
- :class:`EncryptedBackboneMixin` turns a stock mmseg backbone class into its encrypted
  variant: it takes ``key_file`` (and ``mean``/``std``), keeps the stock arguments and
  state-dict names, and applies :func:`mmseg_ppenc.adaptation.adapt_state_dict` to the
  pre-trained weights on ``init_weights``, after checking the checkpoint's record
  (:func:`mmseg_ppenc.core.checkpoint.check_checkpoint`).

Overlapping stems (MiT/SegFormer's 7x7 stride-4 patch embedding, MSCAN, ResNet) mix pixels
of several cipher blocks in one output and cannot be adapted exactly; they are refused
with that reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmseg.models.utils import PatchEmbed
from torch import nn

from mmseg_ppenc.adaptation import (
    OVERLAP_FIX,
    PATCH_FAMILIES,
    ProjectionSite,
    adapt_state_dict,
    offset_site,
)
from mmseg_ppenc.core.checkpoint import check_checkpoint, read_checkpoint
from mmseg_ppenc.core.exactness import normalization_problem
from mmseg_ppenc.core.keyed import KeyedComponent, unwrap_model
from ppenc.errors import ConfigError
from ppenc.keys import SecretKey, resolve_key
from ppenc.meta import plain_floats

__all__ = ['InputProjection', 'input_projection', 'projection_problems',
           'EncryptedBackboneMixin', 'bind_normalization', 'pretrained_checkpoint']


def pretrained_checkpoint(init_cfg) -> Optional[str]:
    """The checkpoint a backbone's ``init_cfg`` loads, or None when it loads none.

    Args:
        init_cfg (dict | list[dict] | None): mmengine ``init_cfg`` (``pretrained=PATH``
            becomes ``dict(type='Pretrained', checkpoint=PATH)`` in mmseg's backbones).
    """
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for c in cfgs:
        if isinstance(c, dict) and c.get('type') in ('Pretrained', 'Pretrained_Part') \
                and c.get('checkpoint'):
            return str(c['checkpoint'])
    return None


@dataclass(frozen=True)
class InputProjection:
    """A backbone's input patch projection, checked for the exact adaptation.

    Attributes:
        module (str): Module path of the projection ``Conv2d`` (e.g.
            ``'patch_embed.projection'``, ``'patch_embeds.0.projection'``).
        site (ProjectionSite): Its state-dict keys and where the offset goes.
        block_size (int): The patch size, which is the cipher block size.
        norm (bool): Whether a norm follows the projection.
    """

    module: str
    site: ProjectionSite
    block_size: int
    norm: bool


def _describe(conv: nn.Module) -> str:
    if not isinstance(conv, nn.Conv2d):
        return type(conv).__name__
    return (f'Conv2d(in_channels={conv.in_channels}, kernel_size={tuple(conv.kernel_size)}, '
            f'stride={tuple(conv.stride)}, padding={conv.padding}, '
            f'dilation={tuple(conv.dilation)}, groups={conv.groups})')


def projection_problems(conv: nn.Module, block_size: Optional[int] = None) -> List[str]:
    """Why ``conv`` is not a non-overlapping patch projection (empty when it is one).

    Args:
        conv (nn.Module): The backbone's first layer.
        block_size (int, optional): The cipher block size it must match. Defaults to None
            (any).
    """
    if not isinstance(conv, nn.Conv2d):
        return [f'it is a {type(conv).__name__}, not a Conv2d']
    k, s = tuple(conv.kernel_size), tuple(conv.stride)
    problems = []
    if conv.in_channels != 3:
        problems.append(f'it has {conv.in_channels} input channels, not 3')
    if k[0] != k[1]:
        problems.append(f'its kernel {k} is not square')
    if k != s:
        problems.append(f'its kernel {k} differs from its stride {s}, so its patches '
                        + ('overlap' if s[0] < k[0] or s[1] < k[1] else 'leave gaps'))
    if conv.padding != (0, 0) and conv.padding != 0:
        problems.append(f'it pads by {conv.padding}')
    if tuple(conv.dilation) != (1, 1):
        problems.append(f'it is dilated by {tuple(conv.dilation)}')
    if conv.groups != 1:
        problems.append(f'it has {conv.groups} groups')
    if block_size is not None and k[0] != block_size:
        problems.append(f'its kernel {k[0]} differs from the block size {block_size}')
    return problems


def input_projection(backbone: nn.Module, patch_embed: Optional[str] = None,
                     pos_embed: Optional[Tuple[str, int]] = None,
                     offset_to_pos_embed: bool = False, bias_fix: str = '',
                     block_size: Optional[int] = None) -> InputProjection:
    """Find and check a backbone's input patch projection; decide where the offset goes.

    Args:
        backbone (nn.Module): The built backbone.
        patch_embed (str, optional): Module path of its input ``PatchEmbed``. Defaults
            to None: the module holding the backbone's first ``Conv2d``.
        pos_embed (tuple[str, int], optional): ``(name, extra)`` of an absolute position
            embedding added right after the projection (and norm), whose first ``extra``
            entries are not patch tokens. Used when the projection has no bias (or with
            ``offset_to_pos_embed``). Defaults to None.
        offset_to_pos_embed (bool): Put the offset into the position embedding rather
            than the bias when no norm follows the projection (mmseg's ViT: its default
            ``patch_bias=False`` checkpoints have no bias). Defaults to False.
        bias_fix (str): How to give the backbone a projection bias, for the message when
            a norm follows a bias-less projection. Defaults to ``''``.
        block_size (int, optional): Also require this patch size. Defaults to None.

    Returns:
        InputProjection: The checked projection.

    Raises:
        ConfigError: the first layer is not a non-overlapping patch projection (an
            overlapping stem), or the offset has nowhere to go.
    """
    name = type(backbone).__name__
    if patch_embed is None:
        convs = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError(f'{name} has no Conv2d input layer. ' + OVERLAP_FIX)
        path = convs[0]
        parent_path = path.rpartition('.')[0]
    else:
        parent_path = patch_embed
        path = f'{patch_embed}.projection'
    try:
        conv = backbone.get_submodule(path)
        parent = backbone.get_submodule(parent_path)
    except AttributeError:
        raise ConfigError(f'{name} has no module {path!r}, the input patch projection '
                          'this class expects.') from None
    problems = projection_problems(conv, block_size)
    if problems:
        raise ConfigError(f'{name} cannot be adapted exactly to block-encrypted images: its '
                          f'input layer {path} is {_describe(conv)}, and '
                          + '; '.join(problems) + '. ' + OVERLAP_FIX)
    if not isinstance(parent, PatchEmbed) or parent.projection is not conv:
        raise ConfigError(f'{name}: its input layer {path} is not the projection of an '
                          'mmseg PatchEmbed, so what follows it is not known and the '
                          'adaptation cannot place its offset.')
    norm = parent.norm is not None
    pos = None
    if pos_embed is not None and isinstance(getattr(backbone, pos_embed[0], None),
                                            nn.Parameter):
        pos = pos_embed
    site = offset_site(path, conv.bias is not None,
                       type(parent.norm).__name__ if norm else None, pos,
                       offset_to_pos_embed, name, bias_fix)
    return InputProjection(path, site, int(conv.kernel_size[0]), norm)


class EncryptedBackboneMixin(KeyedComponent):
    """Makes a stock mmseg backbone with a patch-projection input the encrypted variant.

    Put it before the stock class among the bases:
    ``class EncryptedX(EncryptedBackboneMixin, X)``. The
    variant takes every argument of ``X`` plus ``key_file``, ``mean`` and ``std``; its
    modules and state-dict names are those of ``X``, so stock checkpoints load.

    ``init_weights()`` loads the pre-trained weights exactly as ``X`` does (``init_cfg``
    / ``pretrained``), then applies the exact adaptation
    (:func:`mmseg_ppenc.adaptation.adapt_state_dict`) to the input projection, so the
    model fed encrypted images computes what ``X`` computes on plain images.

    - Without pre-trained weights the adaptation is skipped and the reason logged:
      permuting a random initialisation gives an equally random start, while the
      checkpoint records the config and the seed, from which anyone can rebuild that
      initialisation and read the key's permutation off the projection by matching
      columns (:func:`mmseg_ppenc.security.weights.replay_initialisation_attack`).
    - It is never applied twice: a pre-trained checkpoint whose ``meta['ppenc']`` shows
      it is already encrypted with this key is loaded as is (one of another key or
      block size is refused), and the record is checked against the weights first
      (:func:`mmseg_ppenc.core.checkpoint.check_checkpoint`).
    - The normalisation is folded into the weights. By default the backbone follows the
      segmentor's data preprocessor: :func:`bind_normalization` copies it in before the
      weights are initialised (``KeyManagementHook`` does this at runner start). An
      explicit ``mean``/``std`` that differs from the preprocessor's is refused there.

    The block size is the patch size: :attr:`block_size` is the projection's kernel.
    ``KeyManagementHook`` and the start checks compare it, and the backbone's
    ``patch_size``, with ``BlockScramble``'s block size.

    A variant sets the class attribute ``ppenc_family``, the name of its
    :class:`~mmseg_ppenc.adaptation.PatchFamily` in
    :data:`~mmseg_ppenc.adaptation.PATCH_FAMILIES`: where its input ``PatchEmbed`` and
    absolute position embedding are, whether the offset prefers the position embedding,
    and how to give the projection a bias (for messages). The offline model encryption
    (``tools/encrypt_model.py``) reads the same entry, so both find the same projection
    and put the offset in the same place. Without one (None), the input projection is
    the backbone's first ``Conv2d`` and the offset goes into its bias.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean, in the channel order the
            backbone sees. Defaults to None (the data preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None (the data
            preprocessor's).
        *args, **kwargs: The arguments of the stock backbone.
    """

    ppenc_family: Optional[str] = None

    def __init__(self,
                 *args,
                 key_file: Optional[str] = None,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        name = type(self).__name__
        if (mean is None) != (std is None):
            raise ConfigError(f'{name}: give both mean and std, or neither (then both '
                              'follow the data preprocessor).')
        if mean is not None and (len(mean) != 3 or len(std) != 3):
            raise ConfigError(f'mean and std need 3 values, got {list(mean)} and '
                              f'{list(std)}.')
        if self.ppenc_family is None:
            self._ppenc_input = input_projection(self)
        else:
            fam = PATCH_FAMILIES[self.ppenc_family]
            self._ppenc_input = input_projection(self, fam.patch_embed, fam.pos_embed,
                                                 fam.offset_to_pos_embed, fam.bias_fix)
        self.key_file = key_file
        # None until bound to the data preprocessor (see bind_normalization).
        self.norm_mean = None if mean is None else tuple(float(v) for v in mean)
        self.norm_std = None if std is None else tuple(float(v) for v in std)
        self.norm_given = mean is not None
        # Resolve now: a missing key fails when the model is built, not mid-run.
        self.key_fingerprint = self._key().fingerprint
        self._ppenc_adapted = False
        self._bias_in_checkpoint: Optional[bool] = None

    @property
    def block_size(self) -> int:
        """Cipher block size, which is the patch size of the input projection."""
        return self._ppenc_input.block_size

    @property
    def projection_site(self) -> ProjectionSite:
        """Where the input projection and its offset are in this backbone's state dict."""
        return self._ppenc_input.site

    def _key(self) -> SecretKey:
        return resolve_key(self.key_file)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Records whether the weights being loaded carry a projection bias (the loaders of
        # init_weights are non-strict, so a missing one would keep its random init).
        inp = getattr(self, '_ppenc_input', None)
        if inp is not None:
            self._bias_in_checkpoint = f'{prefix}{inp.module}.bias' in state_dict
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self) -> None:
        """Load pre-trained weights as the stock backbone does, then encrypt them exactly."""
        name = type(self).__name__
        if self._ppenc_adapted:
            # Re-initialising would replace the (possibly fine-tuned) weights and then
            # encrypt them again; mmengine's BaseModule also skips a second call.
            print_log(f'{name}.init_weights() called again; skipped (weights are already '
                      'encrypted).', logger='current', level=30)
            return
        ckpt = pretrained_checkpoint(self.init_cfg)
        if ckpt is not None and (self.norm_mean is None or self.norm_std is None):
            raise ConfigError(
                f'{name} does not know the normalisation to adapt the weights for: add '
                'KeyManagementHook to custom_hooks (it takes mean/std from '
                'model.data_preprocessor before the weights are initialised), call '
                'mmseg_ppenc.models.bind_normalization(segmentor) before init_weights(), '
                'or pass mean=/std= to the backbone.')
        key = self._key()
        meta = None
        # Checked before loading, so that refused weights are never in the model. A
        # remote checkpoint cannot be read here; mmengine downloads it below.
        if ckpt is not None and '://' not in ckpt:
            what = f'the pre-trained checkpoint {ckpt}'
            meta = check_checkpoint(
                read_checkpoint(ckpt, 'pre-trained checkpoint', mmap=True), what,
                fingerprint=key.fingerprint, block_size=self.block_size,
                mean=self.norm_mean, std=self.norm_std, allow_missing=True,
                mismatch_fix='Use the plain pre-trained checkpoint, or select the key it '
                'was encrypted with.', adapted_key=key)
        self._bias_in_checkpoint = None
        super().init_weights()
        proj_bias = self.get_submodule(self._ppenc_input.module).bias
        if proj_bias is not None and self._bias_in_checkpoint is False:
            # A pre-trained checkpoint without a projection bias: the bias must start at
            # zero, so that the offset the adaptation adds is the only difference from
            # the plain model, not PyTorch's random initial values.
            with torch.no_grad():
                proj_bias.zero_()
            print_log('The pre-trained checkpoint has no patch-embedding bias; it starts '
                      'at zero.', logger='current')
        if ckpt is None:
            print_log(f'{name} has no pre-trained weights (no init_cfg checkpoint): the '
                      'key adaptation is skipped. A permuted random initialisation is no '
                      'better a start than the random one, and the checkpoint\'s config '
                      'and seed would let anyone rebuild it and read the key off the patch '
                      'embedding.', logger='current')
        elif meta is not None:
            verified = ('its patch-embedding digest matches'
                        if meta.get('patch_embed_sha256') else 'it records no digest')
            print_log(f'Pre-trained checkpoint is already encrypted with key '
                      f'{key.fingerprint} ({verified}); loaded as is.', logger='current')
        else:
            self.load_state_dict(adapt_state_dict(self.state_dict(), key,
                                                  self._ppenc_input.site, self.norm_mean,
                                                  self.norm_std))
            print_log(f'Encrypted the {name} patch embedding ({self._ppenc_input.module}) '
                      f'with key {key.fingerprint} (exact adaptation).', logger='current')
        self._ppenc_adapted = True


def bind_normalization(model) -> None:
    """Give every encrypted backbone (:class:`EncryptedBackboneMixin`) in ``model`` the
    normalisation of the model's data preprocessor.

    Call before ``init_weights()``. A backbone built without ``mean``/``std`` takes the
    preprocessor's; one built with other values is refused.

    Args:
        model (nn.Module): A segmentor, possibly wrapped (DDP, ``SegTTAModel``): the
            segmentor inside is bound to its own data preprocessor.

    Raises:
        ConfigError: an explicit ``mean``/``std`` differs from the preprocessor's, or
            neither the backbone nor the preprocessor states a normalisation.
    """
    # A TTA wrapper's own data preprocessor never runs and has no mean/std.
    model = unwrap_model(model)
    pre = getattr(model, 'data_preprocessor', None)
    pmean, pstd = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    pre_norm = (None, None)
    # mmseg's preprocessor has mean/std buffers exactly when it normalises.
    if pmean is not None and pstd is not None:
        pre_norm = (plain_floats(pmean), plain_floats(pstd))
    for name, m in model.named_modules():
        if not isinstance(m, EncryptedBackboneMixin):
            continue
        where = f'model.{name}' if name else 'model'
        if m.norm_given:
            problem = normalization_problem((m.norm_mean, m.norm_std), pre_norm, where)
            if problem:
                raise ConfigError(f'Normalisation mismatch: {problem}.')
            continue
        if pre_norm[0] is None:
            raise ConfigError(
                f'{where} follows the data preprocessor\'s normalisation, but '
                'model.data_preprocessor has no mean/std: set mean/std on the data '
                'preprocessor (or on the backbone).')
        m.norm_mean, m.norm_std = tuple(pre_norm[0]), tuple(pre_norm[1])
