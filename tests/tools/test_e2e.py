"""Step-0 agreement of the end-to-end GPU driver (tools/analysis/e2e.py), on the CPU."""
import os.path as osp
import sys
import warnings

import pytest

from conftest import REPO, tiny_config

sys.path.insert(0, osp.join(REPO, 'tools'))
from analysis import e2e as E  # noqa: E402


@pytest.mark.parametrize('decoder', ['mla', 'naive'])
def test_step0_agreement_is_exact_in_fp32(decoder, key_env, synthetic_root):
    """Proposed (random 'pre-trained' backbone adapted to the key, encrypted images) and
    baseline predict the same labels at step 0 in float32; conventional 2 does not."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        same = E.step0_agreement(tiny_config(decoder, 'baseline'),
                                 tiny_config(decoder, 'proposed'), synthetic_root,
                                 num_images=2, device='cpu', bf16=False)
        other = E.step0_agreement(tiny_config(decoder, 'baseline'),
                                  tiny_config(decoder, 'conventional2'), synthetic_root,
                                  num_images=2, device='cpu', bf16=False)
    assert same['pixels'] > 0 and same['differ_fraction'] < 1e-3, same
    assert other['differ_fraction'] > 0.05, other
