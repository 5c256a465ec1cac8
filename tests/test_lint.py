"""The package and the tools pass the project's ruff configuration (pyproject.toml).

ruff is part of the ``tests`` extra and pinned in requirements/constraints.txt, so a
missing ruff is a broken environment and fails here rather than being skipped.
"""
import os.path as osp
import subprocess
import sys

from conftest import REPO


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache',
                           '--output-format', 'concise', 'ppenc', 'mmseg_ppenc', 'tools',
                           'tests'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert 'No module named ruff' not in proc.stderr, (
        'ruff is missing: install the test extra (pip install -e ".[tests]" -c '
        'requirements/constraints.txt, as tools/setup_env.sh does).')
    assert proc.returncode == 0, f'ruff findings:\n{proc.stdout}{proc.stderr}'


def test_ruff_uses_the_project_configuration(tmp_path):
    """The configured line length (100, not ruff's default 88) is what ruff applies."""
    def check(line: str) -> subprocess.CompletedProcess:
        path = tmp_path / 'snippet.py'
        path.write_text(line + '\n')
        return subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache',
                               '--config', osp.join(REPO, 'pyproject.toml'), str(path)],
                              capture_output=True, text=True, timeout=300)

    ok = check('x = ' + repr('a' * 94))  # 100 characters
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_long = check('x = ' + repr('a' * 95))  # 101 characters
    assert too_long.returncode == 1 and 'E501' in too_long.stdout, too_long.stdout
