"""The single home of keyed-run logic, shared by transforms, models, hooks, tools and APIs.

- :mod:`.errors`: every exception the plugin raises for a user error;
- :mod:`.meta`: the one checkpoint reader and the checkpoint's ``meta['ppenc']`` record
  (build, read, check against the run);
- :mod:`.grid`: block-grid rules (pads, crops, slide windows, strides);
- :mod:`.exactness`: start-of-run rules that make an encrypted run exact or refuse it
  (segmentor allow-list, channel order, resizing and padding around ``BlockScramble``);
- :mod:`.keyed`: the protocol of components that use the secret key, and how a run's
  components are found.

Nothing here imports torch, mmengine or mmseg at module level, so client-side code (key
generation, dataset encryption) can use it cheaply.
"""
from .errors import (CheckpointReadError, CheckpointRecordError, ConfigError,
                     DatasetEncryptionError, GridError, InvalidKeyError,
                     KeylessPipelineError, ModelEncryptionError, PpencError)
from .grid import (check_on_grid, grid_pad, nearest_on_grid, off_grid_hint, pad_to_grid,
                   slide_problems, to_pair)
from .keyed import KeyedComponent, is_keyed, keyed_components, unwrap_model
from .meta import (CIPHER_NAME, META_KEY, build_meta, check_checkpoint, check_meta,
                   meta_of, read_checkpoint, read_checkpoint_meta)

__all__ = [
    'PpencError', 'ConfigError', 'InvalidKeyError', 'KeylessPipelineError', 'GridError',
    'ModelEncryptionError', 'DatasetEncryptionError', 'CheckpointReadError',
    'CheckpointRecordError', 'CIPHER_NAME', 'META_KEY', 'build_meta', 'check_checkpoint',
    'check_meta', 'meta_of', 'read_checkpoint', 'read_checkpoint_meta', 'to_pair', 'grid_pad',
    'pad_to_grid', 'nearest_on_grid', 'off_grid_hint', 'check_on_grid', 'slide_problems',
    'KeyedComponent', 'is_keyed', 'keyed_components', 'unwrap_model'
]
