"""The Vision Transformer adapted to block-encrypted images."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS

from mmseg_ppenc.adaptation import encrypt_vit_state_dict
from mmseg_ppenc.core.checkpoint import check_checkpoint, read_checkpoint
from mmseg_ppenc.core.exactness import normalization_problem, patch_embedding_problems
from mmseg_ppenc.core.keyed import KeyedComponent, unwrap_model
from mmseg_ppenc.models.fast_vit import FastVisionTransformer
from ppenc.errors import ConfigError
from ppenc.keys import SecretKey, resolve_key
from ppenc.meta import plain_floats

__all__ = ['EncryptedVisionTransformer', 'bind_normalization', 'pretrained_checkpoint']


def pretrained_checkpoint(init_cfg) -> Optional[str]:
    """The checkpoint a backbone's ``init_cfg`` loads, or None when it loads none.

    Args:
        init_cfg (dict | list[dict] | None): mmengine ``init_cfg`` (``pretrained=PATH``
            becomes ``dict(type='Pretrained', checkpoint=PATH)`` in mmseg's ViT).
    """
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for c in cfgs:
        if isinstance(c, dict) and c.get('type') in ('Pretrained', 'Pretrained_Part') \
                and c.get('checkpoint'):
            return str(c['checkpoint'])
    return None


@MODELS.register_module()
class EncryptedVisionTransformer(FastVisionTransformer, KeyedComponent):
    """mmseg's ``VisionTransformer`` whose pre-trained weights are encrypted with the key.

    A :class:`~mmseg_ppenc.models.FastVisionTransformer`, so its attention is fused by
    default (``attn_impl='stock'`` gives mmcv's path); module and parameter names are
    those of ``VisionTransformer``.

    ``init_weights()`` loads the pre-trained weights exactly as the parent does
    (``init_cfg`` / ``pretrained``), then applies the exact adaptation of
    :func:`mmseg_ppenc.adaptation.encrypt_vit_state_dict`, so the model fed encrypted
    images computes what the plain model computes on plain images. The weights stay a
    stock ``VisionTransformer`` state dict.

    Without pre-trained weights (no ``init_cfg`` checkpoint, no ``pretrained``) the
    adaptation is skipped and the reason logged: permuting a random initialisation gives
    an equally random start, so it adds nothing to training, while the checkpoint records
    the config and the seed, from which anyone can rebuild that initialisation and read
    the key's permutation off the patch embedding by matching columns
    (:func:`mmseg_ppenc.security.weights.replay_initialisation_attack`).

    The adaptation is never applied twice: a pre-trained checkpoint whose
    ``meta['ppenc']`` shows it is already encrypted with this key is loaded as is (one
    encrypted with another key is refused), and weights loaded afterwards by the Runner
    (``load_from`` / ``resume``) replace the adapted ones. The record is checked against
    the weights first (:func:`mmseg_ppenc.core.checkpoint.check_checkpoint`): a record copied
    onto plain weights is refused, so that they are not trained unadapted as if they were
    encrypted.

    The adaptation folds the data preprocessor's normalisation into the weights. By
    default the backbone follows the segmentor's data preprocessor: the backbone cannot
    see it when it is built, so :func:`bind_normalization` copies it in before the
    weights are initialised (``KeyManagementHook`` does this at runner start, before
    ``init_weights``; :func:`mmseg_ppenc.apis.load_encrypted_model` too). An explicit
    ``mean``/``std`` that differs from the preprocessor's is refused there.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float], optional): Normalisation mean, in the channel order the
            ViT sees. Defaults to None (the data preprocessor's).
        std (Sequence[float], optional): Normalisation std. Defaults to None (the data
            preprocessor's).
        **kwargs: Every argument of ``mmseg.models.backbones.VisionTransformer``, and
            ``attn_impl`` of ``FastVisionTransformer``.
    """

    def __init__(self,
                 *args,
                 key_file: Optional[str] = None,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if (mean is None) != (std is None):
            raise ConfigError('EncryptedVisionTransformer: give both mean and std, or '
                              'neither (then both follow the data preprocessor).')
        if mean is not None and (len(mean) != 3 or len(std) != 3):
            raise ConfigError(f'mean and std need 3 values, got {list(mean)} and '
                              f'{list(std)}.')
        # The start checks refuse these from the config already (with the config's
        # names); this covers a backbone built directly.
        proj = self.patch_embed.projection
        problems = patch_embedding_problems(
            'EncryptedVisionTransformer', proj.in_channels,
            patch_norm=self.patch_embed.norm is not None, patch_bias=proj.bias is not None)
        if problems:
            raise ConfigError('; '.join(problems) + '.')
        self.key_file = key_file
        # None until bound to the data preprocessor (see bind_normalization).
        self.norm_mean = None if mean is None else tuple(float(v) for v in mean)
        self.norm_std = None if std is None else tuple(float(v) for v in std)
        self.norm_given = mean is not None
        # Resolve now: a missing key fails when the model is built, not mid-run.
        self.key_fingerprint = self._key().fingerprint
        self._ppenc_adapted = False
        self._bias_in_checkpoint: Optional[bool] = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Records whether the weights being loaded carry a projection bias (the loader of
        # init_weights is non-strict, so a missing one would keep its random init).
        self._bias_in_checkpoint = f'{prefix}patch_embed.projection.bias' in state_dict
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def block_size(self) -> int:
        """Cipher block size, which is the patch size."""
        return self.patch_size

    def _key(self) -> SecretKey:
        return resolve_key(self.key_file)

    def init_weights(self) -> None:
        """Load pre-trained weights as the parent does, then encrypt them exactly."""
        if self._ppenc_adapted:
            # Re-initialising would replace the (possibly fine-tuned) weights and then
            # encrypt them again; mmengine's BaseModule also skips a second call.
            print_log('EncryptedVisionTransformer.init_weights() called again; '
                      'skipped (weights are already encrypted).', logger='current',
                      level=30)
            return
        ckpt = pretrained_checkpoint(self.init_cfg)
        if ckpt is not None and (self.norm_mean is None or self.norm_std is None):
            raise ConfigError(
                'EncryptedVisionTransformer does not know the normalisation to adapt the '
                'weights for: add KeyManagementHook to custom_hooks (it takes mean/std '
                'from model.data_preprocessor before the weights are initialised), call '
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
                fingerprint=key.fingerprint, block_size=self.patch_size,
                mean=self.norm_mean, std=self.norm_std, allow_missing=True,
                mismatch_fix='Use the plain pre-trained checkpoint, or select the key it '
                'was encrypted with.', adapted_key=key)
        self._bias_in_checkpoint = None
        super().init_weights()
        proj_bias = self.patch_embed.projection.bias
        if proj_bias is not None and self._bias_in_checkpoint is False:
            # A pre-trained checkpoint without a projection bias (patch_bias=True here):
            # the bias must start at zero, so that the offset the adaptation adds is the
            # only difference from the plain model, not PyTorch's random initial values.
            with torch.no_grad():
                proj_bias.zero_()
            print_log('The pre-trained checkpoint has no patch-embedding bias; it starts '
                      'at zero.', logger='current')
        if ckpt is None:
            print_log('EncryptedVisionTransformer has no pre-trained weights (no init_cfg '
                      'checkpoint): the key adaptation is skipped. A permuted random '
                      'initialisation is no better a start than the random one, and the '
                      'checkpoint\'s config and seed would let anyone rebuild it and read '
                      'the key off the patch embedding.', logger='current')
        elif meta is not None:
            verified = ('its patch-embedding digest matches'
                        if meta.get('patch_embed_sha256') else 'it records no digest')
            print_log(f'Pre-trained checkpoint is already encrypted with key '
                      f'{key.fingerprint} ({verified}); loaded as is.', logger='current')
        else:
            adapted = encrypt_vit_state_dict(self.state_dict(), key, self.norm_mean,
                                             self.norm_std, prefix='')
            self.load_state_dict(adapted)
            print_log(f'Encrypted the ViT patch embedding with key {key.fingerprint} '
                      '(exact adaptation).', logger='current')
        self._ppenc_adapted = True


def bind_normalization(model) -> None:
    """Give every :class:`EncryptedVisionTransformer` in ``model`` the normalisation of
    the model's data preprocessor.

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
        if not isinstance(m, EncryptedVisionTransformer):
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
