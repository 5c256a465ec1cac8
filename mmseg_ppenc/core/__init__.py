"""The plugin's shared run logic, used by transforms, models, hooks, tools and APIs.

- :mod:`.checkpoint`: the one checkpoint reader, and the check of a checkpoint's
  ``meta['ppenc']`` record (:mod:`ppenc.meta`) against its weights and the run;
- :mod:`.exactness`: start-of-run rules that make an encrypted run exact or refuse it
  (segmentor allow-list, channel order, resizing and padding around ``BlockScramble``);
- :mod:`.keyed`: the protocol of components that use the secret key, and how a run's
  components are found;
- :mod:`.config_overrides`: ``--cfg-options`` merged with clear errors.

The framework-free rules (errors, block grid, record format) live in :mod:`ppenc`.
"""
from mmseg_ppenc.core.checkpoint import check_checkpoint, read_checkpoint, read_checkpoint_meta
from mmseg_ppenc.core.keyed import (
                                         KeyedComponent,
                                         SelectedCipher,
                                         SelectedCipherMixin,
                                         is_keyed,
                                         keyed_components,
                                         unwrap_model,
)

__all__ = ['check_checkpoint', 'read_checkpoint', 'read_checkpoint_meta', 'KeyedComponent',
           'SelectedCipher', 'SelectedCipherMixin', 'is_keyed', 'keyed_components',
           'unwrap_model']
