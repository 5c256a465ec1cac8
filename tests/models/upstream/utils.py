"""Helpers shared by the restated mmseg backbone checks (upstream's ``utils.py`` holds
``check_norm_state``; the rest says how the encrypted variants differ where they do)."""
import pytest
from torch.nn.modules.batchnorm import _BatchNorm

from mmseg_ppenc.models import EncryptedBackboneMixin
from ppenc.errors import CheckpointReadError, ConfigError
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

#: The checkpoint path upstream's init checks use; no such file exists.
MISSING = 'PATH_THAT_DO_NOT_EXIST'
#: The normalisation an encrypted variant needs before it can adapt pre-trained weights
#: (in a run, ``KeyManagementHook`` binds the data preprocessor's).
NORM = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def class_id(cls) -> str:
    """Test id of a backbone class: its name, so stock and encrypted runs read apart."""
    return cls.__name__


def is_encrypted(cls) -> bool:
    """Whether ``cls`` is one of the plugin's encrypted variants."""
    return issubclass(cls, EncryptedBackboneMixin)


def check_norm_state(modules, train_state: bool) -> bool:
    """Whether every batch norm among ``modules`` is in ``train_state``."""
    return all(m.training == train_state for m in modules if isinstance(m, _BatchNorm))


def check_init_combinations(cls, **kw) -> None:
    """Upstream's ``pretrained``/``init_cfg`` combinations for backbone class ``cls``.

    One deviation for the encrypted variants: a checkpoint that does not exist is refused
    with :class:`~ppenc.errors.CheckpointReadError` (a ``ValueError`` naming the file),
    read before anything is loaded, where the stock loader raises ``OSError``; it needs
    ``mean``/``std`` to get that far, and without them the variant refuses first because
    it cannot adapt weights for an unknown normalisation.

    Args:
        cls (type): The backbone class.
        **kw: Size arguments added to every construction.
    """
    model = cls(**kw, pretrained=None, init_cfg=None)
    assert model.init_cfg is None
    model.init_weights()

    pre = dict(type='Pretrained', checkpoint=MISSING)
    # init_cfg, or the deprecated pretrained, naming a file that does not exist.
    for args in (dict(pretrained=None, init_cfg=pre), dict(pretrained=MISSING, init_cfg=None)):
        if not is_encrypted(cls):
            model = cls(**kw, **args)
            assert model.init_cfg == pre
            with pytest.raises(OSError):
                model.init_weights()
            continue
        model = cls(**kw, **args, **NORM)
        assert model.init_cfg == pre
        with pytest.raises(CheckpointReadError, match=f'{MISSING} does not exist'):
            model.init_weights()
        model = cls(**kw, **args)
        with pytest.raises(ConfigError, match='does not know the normalisation'):
            model.init_weights()

    # An init_cfg of an unsupported type fails when the weights are initialised.
    model = cls(**kw, pretrained=None, init_cfg=123)
    with pytest.raises(TypeError):
        model.init_weights()

    # pretrained must be a str or None; it and init_cfg cannot both be given.
    with pytest.raises(TypeError):
        cls(**kw, pretrained=123, init_cfg=None)
    for args in (dict(pretrained=MISSING, init_cfg=pre), dict(pretrained=MISSING, init_cfg=123),
                 dict(pretrained=123, init_cfg=pre), dict(pretrained=123, init_cfg=123)):
        with pytest.raises(AssertionError):
            cls(**kw, **args)
