"""The shape of tools/analysis: one import style, no import cycle, no use of another
module's private names, no file over 600 lines (see tools/analysis/__init__.py).

Static checks with ``ast``: nothing is imported, so they run in milliseconds and also
see imports inside functions, which a runtime check would only see when they run.
"""
import ast
import os.path as osp
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import REPO

TOOLS = Path(REPO) / 'tools'
PACKAGE = TOOLS / 'analysis'
MODULES = sorted(PACKAGE.glob('*.py'))
MAX_LINES = 600


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding='utf-8'), str(path))


def intra_imports(tree: ast.AST, names: Set[str]) -> List[Tuple[str, str, int]]:
    """``(module, imported name or '', line)`` of every import of a package module.

    Args:
        tree (ast.AST): A module of the package.
        names (set[str]): The package's module names.

    Returns:
        list[tuple[str, str, int]]: ``from .common import x`` gives ``('common', 'x',
        line)``; ``from . import common`` gives ``('common', '', line)``.
    """
    out = []
    for node in ast.walk(tree):  # walks function bodies too: lazy imports count
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.module:
                out += [(node.module.split('.')[0], a.name, node.lineno) for a in node.names]
            else:
                out += [(a.name, '', node.lineno) for a in node.names if a.name in names]
    return out


def module_aliases(tree: ast.AST, is_package_module) -> Dict[str, str]:
    """Local name -> package module, for every import that binds a module object."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            for a in node.names:
                full = f'{base}.{a.name}' if base else a.name
                if is_package_module(node.level, full):
                    aliases[a.asname or a.name] = full.split('.')[-1]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if is_package_module(0, a.name) and a.asname:
                    aliases[a.asname] = a.name.split('.')[-1]
    return aliases


def private_uses(tree: ast.AST, is_package_module) -> List[Tuple[str, int]]:
    """``from M import _x`` and ``M._x`` where ``M`` is a module of the package."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and \
                is_package_module(node.level, node.module):
            bad += [(f'{node.module}.{a.name}', node.lineno) for a in node.names
                    if a.name.startswith('_')]
    aliases = module_aliases(tree, is_package_module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in aliases and node.attr.startswith('_') and \
                not node.attr.startswith('__'):
            bad.append((f'{aliases[node.value.id]}.{node.attr}', node.lineno))
    return bad


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """A cycle of ``graph`` as a list of nodes (first repeated last), or ``[]``."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


NAMES = {p.stem for p in MODULES}


def _in_package(level: int, module: str) -> bool:
    """For a module of tools/analysis: does the import name one of its modules?"""
    return level == 1 and module in NAMES


def _outside(level: int, module: str) -> bool:
    """For tests and shims: ``analysis.X`` (with tools/ on sys.path)."""
    parts = module.split('.')
    return level == 0 and len(parts) == 2 and parts[0] == 'analysis' and parts[1] in NAMES


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for path in MODULES:
        graph[path.stem] = {m for m, _, _ in intra_imports(_parse(path), NAMES)
                            if m != '__init__'}
    return graph


# --------------------------------------------------------------------------- the package
def test_the_package_has_its_modules():
    assert {'__init__', 'common', 'benchmark', 'reproduce_table', 'pretrain',
            'security_report', 'collect_table'} <= NAMES


@pytest.mark.parametrize('path', MODULES, ids=[p.name for p in MODULES])
def test_file_is_at_most_600_lines(path: Path):
    n = len(path.read_text(encoding='utf-8').splitlines())
    assert n <= MAX_LINES, f'{path.name} has {n} lines; split it by responsibility'


def test_intra_package_imports_are_acyclic():
    graph = import_graph()
    assert all(m in NAMES for deps in graph.values() for m in deps), graph
    cycle = find_cycle(graph)
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


@pytest.mark.parametrize('path', MODULES, ids=[p.name for p in MODULES])
def test_no_private_names_of_another_module(path: Path):
    assert private_uses(_parse(path), _in_package) == []


@pytest.mark.parametrize('path', MODULES, ids=[p.name for p in MODULES])
def test_one_import_style(path: Path):
    """Relative imports only; no sys.path edits, ``__package__`` checks or script mode."""
    tree = _parse(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level in (0, 1), (path.name, node.lineno)
            if node.level == 0:
                root = node.module.split('.')[0]
                assert root not in NAMES | {'analysis', 'tools'}, (path.name, node.lineno)
        elif isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split('.')[0]
                assert root not in NAMES | {'analysis', 'tools', 'runpy'}, \
                    (path.name, node.lineno, a.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) != ('sys', 'path'), (path.name, node.lineno)
        elif isinstance(node, ast.Name):
            assert node.id not in ('__package__', '__name__'), (path.name, node.lineno)


# --------------------------------------------------------------------------- users
SHIMS = sorted(p for p in TOOLS.glob('*.py')
               if any(_outside(n.level, n.module or '') for n in ast.walk(_parse(p))
                      if isinstance(n, ast.ImportFrom)))
USERS = SHIMS + sorted(p for p in (Path(REPO) / 'tests').rglob('*.py')
                       if 'analysis' in p.read_text(encoding='utf-8'))


def test_every_command_has_its_shim():
    shims = {p.name for p in SHIMS}
    assert {'benchmark.py', 'benchmark_e2e.py', 'gpu_report.py', 'collect_table.py',
            'reproduce_table.py', 'analyze_security.py', 'analyze_block_sizes.py',
            'benchmark_leak_scan.py'} <= shims


@pytest.mark.parametrize('path', SHIMS, ids=[p.name for p in SHIMS])
def test_shims_all_do_the_same(path: Path):
    """``from analysis.X import main`` and ``sys.exit(main())``, nothing else of X."""
    tree = _parse(path)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and _outside(n.level, n.module or '')]
    assert len(imports) == 1 and [a.name for a in imports[0].names] == ['main'], path.name
    module = PACKAGE / (imports[0].module.split('.')[1] + '.py')
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'main'
               for n in _parse(module).body), module.name
    assert "sys.exit(main())" in path.read_text(encoding='utf-8'), path.name


@pytest.mark.parametrize('path', USERS, ids=[osp.relpath(p, REPO) for p in USERS])
def test_users_take_public_names_only(path: Path):
    assert private_uses(_parse(path), _outside) == []


# --------------------------------------------------------------------------- the checks
def test_the_checks_see_such_code():
    """Each check fails on the tangle it exists for."""
    lazy = ast.parse('def f():\n    from .benchmark import run\n')
    assert intra_imports(lazy, {'benchmark'}) == [('benchmark', 'run', 2)]
    assert find_cycle({'benchmark': {'profile_step'}, 'profile_step': {'benchmark'}}) == [
        'benchmark', 'profile_step', 'benchmark']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
    code = ('from . import benchmark as bm\nfrom .common import _table\n'
            'x = bm._Variant\ny = bm.run\nz = bm.__doc__\n')
    assert private_uses(ast.parse(code), lambda level, m: level == 1 and m in (
        'benchmark', 'common')) == [('common._table', 2), ('benchmark._Variant', 3)]
    test_code = 'from analysis import benchmark as bm\nbm._synthetic_batch(1, 2, 3, 0)\n'
    assert private_uses(ast.parse(test_code), _outside) == [
        ('benchmark._synthetic_batch', 2)]
