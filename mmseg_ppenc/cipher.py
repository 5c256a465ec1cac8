"""Deprecated alias of :mod:`ppenc.cipher` (moved in 0.2; this alias goes in the next release)."""
import warnings

from ppenc.cipher import *  # noqa: F401,F403
from ppenc.cipher import __all__  # noqa: F401

warnings.warn('mmseg_ppenc.cipher moved to ppenc.cipher; import it from there '
              '(mmseg_ppenc.cipher goes in the next release).', DeprecationWarning, stacklevel=2)
