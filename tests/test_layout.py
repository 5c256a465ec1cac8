"""The installed package holds library code only: experiment drivers live in
tools/analysis/, and no module finds repository files relative to its own location
(a wheel install has no configs/ or docs/ next to the package)."""
import ast
import os
import os.path as osp
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = (Path(REPO) / 'ppenc', Path(REPO) / 'mmseg_ppenc')
MODULES = sorted(p for pkg in PACKAGES for p in pkg.rglob('*.py'))


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


@pytest.mark.parametrize('path', MODULES, ids=[str(p.relative_to(REPO)) for p in MODULES])
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


def _runs_as_a_program(tree: ast.AST) -> bool:
    """Whether a module is a program: an ``if __name__ == '__main__'`` block, or an
    ``argparse`` parser built outside a ``build_parser`` function (the tools' pattern)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and any(
                isinstance(n, ast.Name) and n.id == '__name__' for n in ast.walk(node.test)):
            return True
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name != 'build_parser':
            for n in ast.walk(node):
                if isinstance(n, ast.Attribute) and n.attr == 'ArgumentParser':
                    return True
    return False


@pytest.mark.parametrize('path', MODULES, ids=[str(p.relative_to(REPO)) for p in MODULES])
def test_experiment_drivers_are_not_in_the_packages(path: Path) -> None:
    """Programs live in the ``cli`` subpackages (thin tools) or in tools/analysis/, under
    whatever name they are added."""
    if 'cli' in path.relative_to(REPO).parts:
        return
    assert not _runs_as_a_program(ast.parse(path.read_text(), str(path))), (
        f'{path.relative_to(REPO)} is a program; experiment drivers belong in '
        'tools/analysis/, command-line tools in the cli subpackages.')


def test_the_driver_check_sees_a_driver() -> None:
    assert _runs_as_a_program(ast.parse("if __name__ == '__main__':\n    run()"))
    assert _runs_as_a_program(ast.parse(
        "import argparse\ndef main():\n    p = argparse.ArgumentParser()"))
    assert not _runs_as_a_program(ast.parse(
        "import argparse\ndef build_parser():\n    return argparse.ArgumentParser()"))


def test_drivers_live_in_tools_analysis() -> None:
    names = set(os.listdir(osp.join(REPO, 'tools', 'analysis')))
    assert {'security_report.py'} <= names


def _import_graph(packages=('ppenc', 'mmseg_ppenc')) -> dict:
    """Module -> modules of ``packages`` it imports, at module level or in functions."""
    mods = {}
    for pkg in packages:
        for path in sorted((Path(REPO) / pkg).rglob('*.py')):
            name = '.'.join(path.relative_to(REPO).with_suffix('').parts)
            mods[name.removesuffix('.__init__')] = path
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == '__init__.py' else mod.rsplit('.', 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([base] if base else []))
                targets = [base] + [f'{base}.{a.name}' for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit('.', 1)[0] if '.' in t else ''
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def _cycle(graph: dict) -> list:
    """One import cycle of ``graph`` (a list of modules), or ``[]``."""
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return []


def test_no_import_cycle_in_the_packages() -> None:
    """Lazy (function-level) imports count: a cycle through them is still a tangle."""
    assert _cycle(_import_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) == []


def test_client_package_never_imports_the_plugin() -> None:
    graph = _import_graph()
    assert {m: sorted(t for t in ts if t.startswith('mmseg_ppenc'))
            for m, ts in graph.items() if m.startswith('ppenc')
            and any(t.startswith('mmseg_ppenc') for t in ts)} == {}
