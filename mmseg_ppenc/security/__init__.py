"""Security measurements: what block scrambling protects, and what it does not.

Reusable attacks and metrics; the report that runs them all and formats the tables of
``SECURITY.md`` is an experiment driver in the repository
(``tools/analysis/security_report.py``, run as ``tools/analyze_security.py``):

- :mod:`.metrics`: PSNR, SSIM, adjacent-pixel correlation, histogram entropy;
- :mod:`.known_plaintext`: the key from known plain/encrypted pairs;
- :mod:`.ciphertext_only`: the key from encrypted images alone (correlation statistics);
- :mod:`.weights`: the key from an encrypted model and its public plain original, and the
  mitigations a model owner can apply before upload;
- :mod:`.key_checks`: key material in work_dirs, key-file permissions, wrong/corrupt keys;
- :mod:`.common`: block layout helpers and recovery statistics shared by the attacks.

Import it explicitly (``from mmseg_ppenc.security import ...``); ``import mmseg_ppenc``
does not load it.
"""
from mmseg_ppenc.security.ciphertext_only import CiphertextOnlyResult, ciphertext_only_attack
from mmseg_ppenc.security.common import permute_image, recovery_stats, unpermute_image
from mmseg_ppenc.security.known_plaintext import KnownPlaintextResult, known_plaintext_attack
from mmseg_ppenc.security.metrics import (
                                          adjacent_correlation,
                                          block_mean_thumbnail,
                                          histogram_entropy,
                                          leakage_metrics,
                                          luminance,
                                          psnr,
                                          ssim,
)
from mmseg_ppenc.security.weights import sorted_column_attack, weight_matching_attack

__all__ = [
    'psnr', 'ssim', 'luminance', 'adjacent_correlation', 'histogram_entropy',
    'block_mean_thumbnail', 'leakage_metrics', 'known_plaintext_attack',
    'KnownPlaintextResult', 'ciphertext_only_attack', 'CiphertextOnlyResult',
    'weight_matching_attack', 'sorted_column_attack', 'recovery_stats', 'permute_image',
    'unpermute_image'
]
