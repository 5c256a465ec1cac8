"""The Vision Transformer adapted to block-encrypted images."""
from __future__ import annotations

from typing import Optional, Sequence

from mmengine.logging import print_log
from mmseg.registry import MODELS

from ..adaptation import IMAGENET_MEAN, IMAGENET_STD, encrypt_vit_state_dict
from ..core.keyed import KeyedComponent
from ..core.meta import check_meta, read_checkpoint_meta
from ..keys import SecretKey, resolve_key
from .fast_vit import FastVisionTransformer

__all__ = ['EncryptedVisionTransformer', 'checkpoint_key_meta', 'pretrained_checkpoint']


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


def checkpoint_key_meta(path: str) -> Optional[dict]:
    """The ``meta['ppenc']`` record of a local checkpoint file, or None (see
    :func:`mmseg_ppenc.core.meta.read_checkpoint_meta`)."""
    return read_checkpoint_meta(path)


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
    (``load_from`` / ``resume``) replace the adapted ones.

    Args:
        key_file (str, optional): Key file. Defaults to None (``$PPENC_KEY_FILE``).
        mean (Sequence[float]): The data preprocessor's mean, RGB. Defaults to mmseg's
            ImageNet values.
        std (Sequence[float]): The data preprocessor's std, RGB. Defaults to mmseg's
            ImageNet values.
        **kwargs: Every argument of ``mmseg.models.backbones.VisionTransformer``, and
            ``attn_impl`` / ``torch_compile`` of ``FastVisionTransformer``.
    """

    def __init__(self,
                 *args,
                 key_file: Optional[str] = None,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'mean and std need 3 values (RGB), got {list(mean)} and '
                             f'{list(std)}.')
        if self.patch_embed.norm is not None and self.patch_embed.projection.bias is None:
            raise ValueError('EncryptedVisionTransformer with patch_norm=True needs '
                             'patch_bias=True: the exact offset goes into the projection '
                             'bias. Set patch_bias=True (or patch_norm=False).')
        self.key_file = key_file
        self.norm_mean = tuple(float(v) for v in mean)
        self.norm_std = tuple(float(v) for v in std)
        # Resolve now: a missing key fails when the model is built, not mid-run.
        self.key_fingerprint = self._key().fingerprint
        self._ppenc_adapted = False

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
        super().init_weights()
        key = self._key()
        ckpt = pretrained_checkpoint(self.init_cfg)
        meta = read_checkpoint_meta(ckpt) if ckpt else None
        if ckpt is None:
            print_log('EncryptedVisionTransformer has no pre-trained weights (no init_cfg '
                      'checkpoint): the key adaptation is skipped. A permuted random '
                      'initialisation is no better a start than the random one, and the '
                      'checkpoint\'s config and seed would let anyone rebuild it and read '
                      'the key off the patch embedding.', logger='current')
        elif meta is not None:
            check_meta(meta, key.fingerprint, f'the pre-trained checkpoint {ckpt}',
                       block_size=self.patch_size,
                       mismatch_fix='Use the plain pre-trained checkpoint, or select the '
                       'key it was encrypted with.')
            print_log(f'Pre-trained checkpoint is already encrypted with key '
                      f'{key.fingerprint}; loaded as is.', logger='current')
        else:
            adapted = encrypt_vit_state_dict(self.state_dict(), key, self.norm_mean,
                                             self.norm_std, prefix='')
            self.load_state_dict(adapted)
            print_log(f'Encrypted the ViT patch embedding with key {key.fingerprint} '
                      '(exact adaptation).', logger='current')
        self._ppenc_adapted = True
