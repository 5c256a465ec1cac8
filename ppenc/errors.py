"""Exceptions of mmseg_ppenc.

Every error a user can cause derives from :class:`PpencError` (a ``ValueError``), so tools
print its message as one ``error: ...`` line instead of a traceback. Messages name the
problem, the expected and the actual value, and the fix; they never contain key material.
"""

__all__ = ['PpencError', 'ConfigError', 'InvalidKeyError', 'KeylessPipelineError',
           'GridError', 'ModelEncryptionError', 'DatasetEncryptionError', 'DatasetWriteError',
           'KeyLeakError', 'CheckpointReadError', 'CheckpointRecordError',
           'CheckpointLayoutError']


class PpencError(ValueError):
    """Base class of the plugin's user errors."""


class ConfigError(PpencError):
    """A config names something that does not exist or cannot work; the message says how
    to fix it."""


class InvalidKeyError(PpencError):
    """A key is missing, unreadable, corrupt or does not match another component's key."""


class KeylessPipelineError(ConfigError):
    """A keyless (server-side) encrypted run is misconfigured."""


class GridError(ConfigError):
    """A setting would move an input off the cipher's block grid."""


class ModelEncryptionError(PpencError):
    """A checkpoint cannot be encrypted or is not what it claims to be."""


class CheckpointReadError(ConfigError, ModelEncryptionError):
    """A checkpoint file is missing, corrupt, or refused by ``torch.load(weights_only=True)``.

    Raised by the one checkpoint reader (:func:`mmseg_ppenc.core.checkpoint.read_checkpoint`) for
    every path that reads one: a config error for training and testing, a model-encryption
    error for ``tools/encrypt_model.py``.
    """


class CheckpointRecordError(InvalidKeyError, ModelEncryptionError):
    """A checkpoint's ``meta['ppenc']`` record does not belong to its weights (it was copied
    from another file, or the weights were changed after encryption)."""


class CheckpointLayoutError(ModelEncryptionError, KeyError):
    """A state dict holds no input patch projection of a supported backbone family, or
    several, or one of an overlapping stem (:func:`mmseg_ppenc.adaptation.
    locate_projection`). Also a ``KeyError``, as the key lookups it replaces raised."""

    __str__ = BaseException.__str__  # the message, not KeyError's repr of it


class DatasetEncryptionError(PpencError):
    """A dataset tree cannot be encrypted as asked."""


class DatasetWriteError(DatasetEncryptionError):
    """An encryption run started and could not write its output (read-only or full DST);
    finished outputs are kept and a rerun resumes."""


class KeyLeakError(PpencError, RuntimeError):
    """Key material was found in a config, log or other run artefact. Also a
    ``RuntimeError``: the run cannot go on until the files are deleted and the key
    rotated."""
