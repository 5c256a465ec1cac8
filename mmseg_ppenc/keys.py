"""Deprecated alias of :mod:`ppenc.keys` (moved in 0.2; this alias goes in the next release)."""
import warnings

from ppenc.keys import *  # noqa: F401,F403
from ppenc.keys import __all__  # noqa: F401

warnings.warn('mmseg_ppenc.keys moved to ppenc.keys; import it from there '
              '(mmseg_ppenc.keys goes in the next release).', DeprecationWarning, stacklevel=2)
