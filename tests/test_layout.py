"""The installed package holds library code only: experiment drivers live in
tools/analysis/, and no module finds repository files relative to its own location
(a wheel install has no configs/ or docs/ next to the package)."""
import ast
import os
import os.path as osp
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = Path(REPO) / 'mmseg_ppenc'
MODULES = sorted(PACKAGE.rglob('*.py'))


def _climbs_from_own_file(tree: ast.AST) -> bool:
    """Whether the code calls ``dirname(dirname(... __file__ ...))``: a path above the
    module's own directory, i.e. into the checkout around the package."""
    def is_dirname(node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and
                getattr(node.func, 'attr', getattr(node.func, 'id', None)) == 'dirname')

    for node in ast.walk(tree):
        if is_dirname(node) and node.args and is_dirname(node.args[0]):
            if any(isinstance(n, ast.Name) and n.id == '__file__'
                   for n in ast.walk(node.args[0])):
                return True
        if (isinstance(node, ast.Attribute) and node.attr == 'parents' and
                any(isinstance(n, ast.Name) and n.id == '__file__'
                    for n in ast.walk(node.value))):
            return True
    return False


@pytest.mark.parametrize('path', MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_reaches_into_the_checkout(path: Path) -> None:
    assert not _climbs_from_own_file(ast.parse(path.read_text(), str(path))), (
        f'{path.relative_to(REPO)} builds a path above the package from __file__; take it '
        'from an argument, or move the code to tools/.')


def test_the_check_sees_such_code() -> None:
    assert _climbs_from_own_file(ast.parse(
        "import os.path as osp\nR = osp.dirname(osp.dirname(osp.abspath(__file__)))"))
    assert _climbs_from_own_file(ast.parse("from pathlib import Path\n"
                                           "R = Path(__file__).resolve().parents[1]"))
    assert not _climbs_from_own_file(ast.parse(
        "import os.path as osp\nHERE = osp.dirname(osp.abspath(__file__))"))


@pytest.mark.parametrize('name', ['reproduce.py', 'benchmark.py',
                                  osp.join('security', 'analysis.py')])
def test_experiment_drivers_are_not_in_the_package(name: str) -> None:
    assert not (PACKAGE / name).exists(), f'mmseg_ppenc/{name} belongs in tools/analysis/'


def test_drivers_live_in_tools_analysis() -> None:
    names = set(os.listdir(osp.join(REPO, 'tools', 'analysis')))
    assert {'reproduce_table.py', 'security_report.py'} <= names
