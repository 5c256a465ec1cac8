"""tools/slurm_train.sh and tools/slurm_test.sh forward mmseg's interface to srun.

A stand-in ``srun`` placed first on PATH records the arguments it receives (and, in one
test, runs the command it was given, as srun does on each node).
"""
import os
import os.path as osp
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import REPO

# Records its argv (NUL-separated) and PYTHONPATH; with SRUN_EXEC=1 it skips its own
# options (-p VALUE, --name=value) and runs the rest, like srun on one node.
FAKE_SRUN = r'''#!/usr/bin/env bash
printf '%s\0' "$@" > "$SRUN_RECORD"
printf '%s' "${PYTHONPATH:-}" > "$SRUN_RECORD.pythonpath"
if [ "${SRUN_EXEC:-0}" = 1 ]; then
  while [ $# -gt 0 ]; do
    case "$1" in
      -p) shift 2 ;;
      --*=*) shift ;;
      *) break ;;
    esac
  done
  exec "$@"
fi
exit "${SRUN_EXIT:-0}"
'''


@pytest.fixture
def srun(tmp_path: Path) -> dict:
    """Environment with the stand-in srun first on PATH, and where it records."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    script = bin_dir / 'srun'
    script.write_text(FAKE_SRUN)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items()
           if k not in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PYTHON')}
    env.update(PATH=f'{bin_dir}{os.pathsep}{env.get("PATH", "")}',
               SRUN_RECORD=str(tmp_path / 'srun_argv'), PYTHON=sys.executable)
    return env


def run(script: str, args: List[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', osp.join(REPO, 'tools', script)] + args, env=env,
                          capture_output=True, text=True, timeout=300)


def recorded(env: dict) -> Optional[List[str]]:
    path = Path(env['SRUN_RECORD'])
    if not path.exists():
        return None
    return path.read_bytes().decode().split('\0')[:-1]


def srun_options(gpus: int, per_node: int, cpus: int, partition: str, job: str) -> list:
    return ['-p', partition, f'--job-name={job}', f'--gres=gpu:{per_node}',
            f'--ntasks={gpus}', f'--ntasks-per-node={per_node}', f'--cpus-per-task={cpus}',
            '--kill-on-bad-exit=1']


def test_train_defaults_as_mmseg(srun: dict) -> None:
    res = run('slurm_train.sh', ['gpu', 'setr', 'configs/x.py'], srun)
    assert res.returncode == 0, res.stderr
    assert recorded(srun) == srun_options(4, 4, 5, 'gpu', 'setr') + [
        sys.executable, '-u', osp.join(REPO, 'tools', 'train.py'), 'configs/x.py',
        '--launcher=slurm']
    # The checkout comes first on the tasks' module path.
    assert Path(srun['SRUN_RECORD'] + '.pythonpath').read_text().split(os.pathsep)[0] == \
        REPO


def test_train_forwards_environment_and_arguments(srun: dict) -> None:
    env = dict(srun, GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='6',
               SRUN_ARGS='--time=2:00:00 --qos=high')
    res = run('slurm_train.sh', ['part a', 'job', 'cfg.py', '--work-dir', 'work dir/x',
                                 '--cfg-options', 'train_cfg.max_iters=10', '--resume'], env)
    assert res.returncode == 0, res.stderr
    assert recorded(env) == srun_options(16, 8, 6, 'part a', 'job') + [
        '--time=2:00:00', '--qos=high', sys.executable, '-u',
        osp.join(REPO, 'tools', 'train.py'), 'cfg.py', '--launcher=slurm', '--work-dir',
        'work dir/x', '--cfg-options', 'train_cfg.max_iters=10', '--resume']


def test_test_forwards_checkpoint_and_arguments(srun: dict) -> None:
    env = dict(srun, GPUS='2', GPUS_PER_NODE='2', SRUN_ARGS='--exclusive')
    res = run('slurm_test.sh', ['gpu', 'eval', 'cfg.py', 'iter_80000.pth', '--out', 'preds'],
              env)
    assert res.returncode == 0, res.stderr
    assert recorded(env) == srun_options(2, 2, 5, 'gpu', 'eval') + [
        '--exclusive', sys.executable, '-u', osp.join(REPO, 'tools', 'test.py'), 'cfg.py',
        'iter_80000.pth', '--launcher=slurm', '--out', 'preds']


@pytest.mark.parametrize('script,args', [
    ('slurm_train.sh', ['gpu', 'job']),
    ('slurm_test.sh', ['gpu', 'job', 'cfg.py']),
])
def test_missing_arguments_are_a_usage_error(srun: dict, script: str, args: list) -> None:
    res = run(script, args, srun)
    assert res.returncode == 2 and 'usage:' in res.stderr
    assert recorded(srun) is None  # srun was never called


def test_srun_failure_is_the_exit_status(srun: dict) -> None:
    res = run('slurm_train.sh', ['gpu', 'job', 'cfg.py'], dict(srun, SRUN_EXIT='3'))
    assert res.returncode == 3


def test_forwarded_command_reaches_the_train_tool(srun: dict, tmp_path: Path) -> None:
    """Run what srun was given: tools/train.py accepts --launcher=slurm and reports the
    missing config as the user error it is (before any process group starts)."""
    missing = str(tmp_path / 'missing_config.py')
    res = run('slurm_train.sh', ['gpu', 'job', missing, '--work-dir', str(tmp_path / 'w')],
              dict(srun, SRUN_EXEC='1'))
    assert res.returncode == 2, res.stderr
    assert f"error: Config file {missing!r} not found" in res.stderr
