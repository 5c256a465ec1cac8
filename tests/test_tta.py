"""Test-time augmentation (``tools/test.py --tta``) of encrypted models, end to end.

``--tta`` wraps the segmentor in mmseg's ``SegTTAModel`` and runs the config's
``tta_pipeline``. The checks (start checks, ``KeyManagementHook``, normalisation binding)
must look at the segmentor inside the wrapper, every branch of the pipeline must resize
and flip, then pad to the grid and encrypt, and the proposed model must then give the
plain baseline's TTA label maps. Everything here runs the real mmengine Runner, the real
pipelines and the tiny configs on the generated synthetic set (``tests/conftest.py``).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import os.path as osp
import sys
from pathlib import Path
from typing import Dict

import mmcv
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmseg
from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS

from mmseg_ppenc.cli import test as test_cli
from mmseg_ppenc.core.checkpoint import normalization_of
from mmseg_ppenc.core.exactness import segmentor_problems
from mmseg_ppenc.core.keyed import unwrap_model
from mmseg_ppenc.models.encrypted_vit import bind_normalization
from mmseg_ppenc.runner import test as run_test
from mmseg_ppenc.runner import use_tta
from mmseg_ppenc.start_checks import TTA_FIX, check_run, start_problems
from ppenc.errors import ConfigError

from conftest import tiny_config

#: The test loader without worker processes (the CPU tests' setting), on two of the
#: synthetic validation images (6 branches of slide inference each).
LOADER = {'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False,
          'test_dataloader.dataset.indices': 2}
#: mmseg's own tools/test.py, as pip installs it.
MMSEG_TEST_TOOL = Path(mmseg.__file__).resolve().parent / '.mim' / 'tools' / 'test.py'


# --------------------------------------------------------------------------- helpers
def label_maps(out_dir: str) -> Dict[str, np.ndarray]:
    """The label maps that ``--out`` wrote (IoUMetric's PNGs), by file name."""
    names = sorted(os.listdir(out_dir))
    assert names, f'nothing written to {out_dir}'
    return {n: mmcv.imread(osp.join(out_dir, n), flag='unchanged') for n in names}


def differing(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    """Fraction of pixels whose labels differ between two sets of label maps."""
    assert sorted(a) == sorted(b)
    diff = sum(int((a[n] != b[n]).sum()) for n in a)
    return diff / sum(a[n].size for n in a)


def tta_config(setting: str, tmp_path) -> Config:
    """A tiny config switched to TTA as ``tools/test.py --tta`` switches it."""
    cfg = Config.fromfile(tiny_config('mla', setting))
    cfg.work_dir = str(tmp_path / 'wd')
    return use_tta(cfg)


def _tta(cfg: Config, branch_transforms) -> None:
    """Replace the TestTimeAug transform lists of ``cfg``'s test pipeline."""
    cfg.test_dataloader.dataset.pipeline[1]['transforms'] = branch_transforms


def _branch_lists(cfg: Config):
    return copy.deepcopy(cfg.test_dataloader.dataset.pipeline[1]['transforms'])


# --------------------------------------------------------------------------- unwrapping
def test_one_unwrapping_for_every_check(key_env, tmp_path):
    """unwrap_model finds the segmentor in a SegTTAModel; bind_normalization,
    normalization_of and the segmentor rule use it, so the wrapper's own default data
    preprocessor (no mean/std, no channel conversion) is never read. (The shipped
    configs' TTA passing every start check is tests/test_configs.py's.)"""
    cfg = Config.fromfile(tiny_config('mla', 'proposed'))
    init_default_scope('mmseg')
    seg = MODELS.build(copy.deepcopy(cfg.model))
    tta = SegTTAModel(module=seg)
    assert unwrap_model(tta) is seg and unwrap_model(seg) is seg
    assert not hasattr(tta.data_preprocessor, 'mean')  # what the hook used to read
    bind_normalization(tta)  # used to raise "data_preprocessor has no mean/std"
    assert seg.backbone.norm_mean == (123.675, 116.28, 103.53)
    assert normalization_of(tta) == normalization_of(seg) == (
        [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    assert segmentor_problems(tta) == []


# --------------------------------------------------------------------------- start checks
def _refusal(cfg: Config) -> str:
    problems = start_problems(cfg)
    assert len(problems) == 1 and isinstance(problems[0], ConfigError), problems
    return str(problems[0])


def test_tta_branch_without_encryption_is_refused(key_env, tmp_path):
    """The baseline's (plain) TTA pipeline on the proposed model: the encrypted backbone
    would get plain images in every branch. Refused once, naming a branch and the fix."""
    cfg = tta_config('proposed', tmp_path)
    cfg.test_dataloader.dataset.pipeline = Config.fromfile(
        tiny_config('mla', 'baseline')).tta_pipeline
    msg = _refusal(cfg)
    assert 'test_pipeline (6 of 6 TestTimeAug branches, e.g. Resize(' in msg
    assert 'has no BlockScramble, so the encrypted backbone would get plain images' in msg
    assert msg.count('has no BlockScramble') == 1
    assert TTA_FIX in msg

    # Encryption in only some branches: the others are refused. (A TestTimeAug list
    # holds alternatives: BlockScramble in half of the branches, a second
    # LoadAnnotations, which changes nothing, in the other half.)
    cfg = tta_config('proposed', tmp_path)
    lists = _branch_lists(cfg)
    assert lists[-2] == [dict(type='BlockScramble')]
    lists[-2] = [dict(type='BlockScramble'), dict(type='LoadAnnotations')]
    _tta(cfg, lists)
    assert '(6 of 12 TestTimeAug branches' in _refusal(cfg)


def test_transform_after_encryption_in_a_branch_is_refused(key_env, tmp_path):
    """A flip after BlockScramble flips ciphertext, which is no image's encryption."""
    cfg = tta_config('proposed', tmp_path)
    lists = _branch_lists(cfg)
    flips = lists.pop(1)
    lists.insert(len(lists) - 1, flips)  # ..., BlockScramble, RandomFlip, PackSegInputs
    _tta(cfg, lists)
    msg = _refusal(cfg)
    assert 'test_pipeline has RandomFlip after BlockScramble' in msg
    assert TTA_FIX in msg


def test_off_grid_branch_is_refused(key_env, tmp_path):
    """Without PadToGrid, a keep-ratio rescaling leaves the grid in some branches."""
    cfg = tta_config('proposed', tmp_path)
    lists = _branch_lists(cfg)
    assert lists[2] == [dict(type='PadToGrid')]
    del lists[2]
    _tta(cfg, lists)
    msg = _refusal(cfg)
    assert "test_pipeline Resize (keep_ratio/random scale) gives image sizes that depend " \
           "on the image and leave the 16-pixel grid: put dict(type='PadToGrid'" in msg
    assert TTA_FIX in msg
    # A fixed off-grid scale: named with the nearest on-grid sizes.
    cfg = tta_config('proposed', tmp_path)
    lists = _branch_lists(cfg)
    del lists[2]
    lists[0] = [dict(type='Resize', scale=(100, 50), keep_ratio=False),
                dict(type='Resize', scale=(128, 64), keep_ratio=False)]
    _tta(cfg, lists)
    assert 'test_pipeline Resize(scale=(100, 50)) gives an off-grid size' in _refusal(cfg)


def test_tta_needs_a_tta_pipeline(tmp_path, tiny_checkpoints, synthetic_root, monkeypatch):
    """Keyless server configs have no tta_pipeline (rescaling ciphertext does not
    commute with the cipher): --tta says so instead of failing inside mmengine."""
    monkeypatch.setenv('PPENC_DATA_ROOT', synthetic_root)
    with pytest.raises(ConfigError, match='--tta needs tta_pipeline in the config'):
        run_test(tiny_config('mla', 'baseline'), tiny_checkpoints['baseline'],
                 str(tmp_path / 'wd'), {'tta_pipeline': None}, tta=True)
    assert not (tmp_path / 'wd').exists()


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def baseline_maps(tiny_checkpoints, synthetic_root, tmp_path_factory):
    """The plain baseline's label maps, with and without TTA (this project's tool)."""
    root = tmp_path_factory.mktemp('tta_baseline')
    mp = pytest.MonkeyPatch()
    mp.setenv('PPENC_DATA_ROOT', synthetic_root)
    try:
        maps = {}
        for tta in (False, True):
            out = str(root / f'out_tta{int(tta)}')
            run_test(tiny_config('mla', 'baseline'), tiny_checkpoints['baseline'],
                     str(root / f'wd{int(tta)}'), dict(LOADER), out=out, tta=tta)
            maps[tta] = label_maps(out)
    finally:
        mp.undo()
    return maps


def test_baseline_tta_changes_the_labels(baseline_maps):
    """The comparison below is not vacuous: the maps have several classes, and TTA
    (three scales, two flips) changes some labels of the single-scale test."""
    assert len(baseline_maps[True]) == 2  # LOADER's validation images
    for m in baseline_maps[True].values():
        assert m.shape == (64, 128) and len(np.unique(m)) >= 3
    assert differing(baseline_maps[False], baseline_maps[True]) > 0.01


def test_proposed_tta_equals_baseline_tta(key_env, tmp_path, tiny_checkpoints, baseline_maps,
                                          capsys):
    """``tools/test.py CONFIG CKPT --tta --out DIR`` on the proposed config and its
    encrypted checkpoint writes the plain baseline's TTA label maps.

    Every branch encrypts its own resized, flipped and padded image and the adapted
    backbone computes what the plain one computes on the plain image, up to float32
    summation order (the permuted patch embedding adds its products in another order,
    about 1e-7 relative). A label can only change where the plain model's two best
    averaged class scores are that close, a vanishing fraction of pixels: at most 0.1 %
    is allowed (none differ in practice).
    """
    out = str(tmp_path / 'out')
    rc = test_cli.main([tiny_config('mla', 'proposed'), tiny_checkpoints['proposed'],
                        '--work-dir', str(tmp_path / 'wd'), '--tta', '--out', out,
                        '--cfg-options'] + [f'{k}={v}' for k, v in LOADER.items()])
    assert rc == 0
    assert 'Test results: aAcc=' in capsys.readouterr().out
    assert differing(baseline_maps[True], label_maps(out)) <= 1e-3


def _load_mmseg_test_tool():
    if not MMSEG_TEST_TOOL.is_file():
        pytest.skip('mmseg was installed without its tools (.mim/tools/test.py)')
    spec = importlib.util.spec_from_file_location('mmseg_test_tool', MMSEG_TEST_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mmseg_test_tool_tta_on_proposed(key_env, tmp_path, tiny_checkpoints, baseline_maps,
                                         monkeypatch):
    """mmseg's own ``tools/test.py --tta`` (mmengine's Runner, so KeyManagementHook is
    the only check) on the shipped proposed config: accepted, and the plain baseline's
    TTA label maps (it used to be refused for a mean/std the wrapper lacks)."""
    tool = _load_mmseg_test_tool()
    out = str(tmp_path / 'out')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', tiny_config('mla', 'proposed'), tiny_checkpoints['proposed'],
        '--work-dir', str(tmp_path / 'wd'), '--tta', '--out', out,
        '--cfg-options'] + [f'{k}={v}' for k, v in LOADER.items()])
    monkeypatch.setenv('LOCAL_RANK', '0')
    tool.main()
    assert differing(baseline_maps[True], label_maps(out)) <= 1e-3


def test_hook_refuses_plain_tta_pipeline_under_mmengine_runner(key_env, tmp_path,
                                                               tiny_checkpoints):
    """mmseg's tools/test.py --tta with the baseline's plain tta_pipeline on the
    proposed model: mmengine's Runner runs no start check, so KeyManagementHook must
    refuse it (before, it looked for the backbone on the wrapper, found none, and the
    run went on with 70 % of the labels wrong)."""
    cfg = tta_config('proposed', tmp_path)
    cfg.test_dataloader.dataset.pipeline = Config.fromfile(
        tiny_config('mla', 'baseline')).tta_pipeline
    cfg.merge_from_dict(LOADER)
    cfg.load_from = tiny_checkpoints['proposed']
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ConfigError, match='TestTimeAug branches, e.g. .* has no '
                                          'BlockScramble, so the encrypted backbone'):
        runner.test()


def test_hook_checks_the_segmentor_inside(key_env, tmp_path):
    """check_run on the built TTA model and pipeline: the data preprocessor's channel
    conversion is the segmentor's (bgr_to_rgb=True), so BlockScramble's default 'bgr'
    passes, and a real mismatch is still found."""
    cfg = tta_config('proposed', tmp_path)
    init_default_scope('mmseg')
    from mmseg_ppenc.start_checks import _build_probe
    model, datasets = _build_probe(cfg, ['test'])
    assert isinstance(model, SegTTAModel)
    bind_normalization(model)
    check_run(model, datasets)  # no false channel-order message
    lists = _branch_lists(cfg)
    lists[-2] = [dict(type='BlockScramble', channel_order='rgb')]
    _tta(cfg, lists)
    model, datasets = _build_probe(cfg, ['test'])
    bind_normalization(model)
    with pytest.raises(ConfigError, match=r"test_pipeline.TestTimeAug.BlockScramble has "
                                          r"channel_order='rgb' but the data "
                                          r"preprocessor has bgr_to_rgb=True"):
        check_run(model, datasets)
