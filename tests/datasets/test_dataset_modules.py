"""ppenc.dataset's structure: small modules without import cycles, a framework-free
import, the worker context passed explicitly, and one key scanner per run."""
import ast
import os
import os.path as osp
import subprocess
import sys

import pytest

import ppenc.dataset
from ppenc.dataset import encrypt_dataset, pool
from ppenc.keys import SecretKey
from ppenc.synthetic import make_synthetic_cityscapes

PACKAGE = 'ppenc.dataset'
PACKAGE_DIR = osp.dirname(ppenc.dataset.__file__)
MAX_LINES = 600


def _sources():
    out = {}
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith('.py'):
            with open(osp.join(PACKAGE_DIR, name), encoding='utf-8') as f:
                out[name[:-3]] = f.read()
    return out


def _package_imports(module: str, source: str):
    """Modules of the package that ``module`` imports, anywhere in it (at the top, inside
    functions, under ``if TYPE_CHECKING``): every import statement counts."""
    found = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = PACKAGE if module == '__init__' or node.level == 1 else None
                assert base is not None, f'{module}: relative import beyond the package'
                target = f'{base}.{node.module}' if node.module else base
            else:
                target = node.module or ''
            # "from ppenc.dataset import plan" imports the submodule plan.
            names = [target] + [f'{target}.{a.name}' for a in node.names]
        else:
            continue
        for n in names:
            if n.startswith(PACKAGE + '.'):
                sub = n[len(PACKAGE) + 1:].split('.')[0]
                if sub != module and osp.isfile(osp.join(PACKAGE_DIR, sub + '.py')):
                    found.add(sub)
    return found


def test_modules_are_small():
    sizes = {m: s.count('\n') for m, s in _sources().items()}
    assert 'encrypt' not in sizes  # split into the modules below, not kept as a shim
    assert {'paths', 'manifest', 'plan', 'writer'} <= set(sizes)
    assert all(n <= MAX_LINES for n in sizes.values()), sizes


def test_no_import_cycles_inside_the_package():
    # The package __init__ re-exports every module; cycles among the modules proper are
    # what would make one of them unimportable on its own.
    graph = {m: _package_imports(m, s) for m, s in _sources().items() if m != '__init__'}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            cycle = stack[stack.index(m):] + [m]
            pytest.fail('import cycle in ppenc.dataset: ' + ' -> '.join(cycle))
        if m in done:
            return
        stack.append(m)
        for dep in sorted(graph[m]):
            visit(dep)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    # The layering the modules document: paths and images at the bottom, writer on top.
    assert graph['paths'] == set() and graph['images'] == set()
    assert graph['manifest'] == {'paths'}
    assert not any('writer' in deps for deps in graph.values())


def test_package_imports_without_frameworks():
    code = ('import sys, ppenc.dataset, ppenc.dataset.manifest; '
            'heavy = {"torch", "mmseg", "mmengine", "mmcv", "scipy", "cv2", "tqdm"}; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == '[]'


def test_public_api():
    for name in ('encrypt_dataset', 'plan_dataset', 'read_manifest', 'MANIFEST_NAME',
                 'check_output_format', 'DEFAULT_MAX_PIXELS', 'LAYOUTS',
                 'DatasetEncryptionError', 'DatasetWriteError', 'EncryptionSummary',
                 'SkippedFile', 'WorkItem', 'DatasetPlan', 'TIME_FIELDS'):
        assert name in ppenc.dataset.__all__ and hasattr(ppenc.dataset, name), name


def test_worker_context_is_passed_not_pickled_nor_global(tmp_path):
    """No module-global run state in the parent, and the context (key included) reaches
    the forked workers as the pool initializer's argument, by inheritance. SecretKey
    refuses to be pickled, so a finished run with two workers shows that the key never
    went through a pipe."""
    assert not hasattr(pool, '_STATE') and pool.can_fork()
    src = str(tmp_path / 'src')
    make_synthetic_cityscapes(src, num_train=2, num_val=1, height=32, width=64, seed=1)
    summary = encrypt_dataset(src, str(tmp_path / 'enc'), SecretKey.generate(), workers=2,
                              progress=False)
    assert summary.images_encrypted == 3 and summary.files_copied == 3
    assert pool._WORKER_CONTEXT is None  # only forked children ever hold a context


def test_one_key_scanner_per_run(tmp_path, monkeypatch):
    """The leak scan's KeyScanner (costly to derive) is built once per run and reused
    for every label map and included file, not once per file."""
    from ppenc import leak_scan
    built = []
    real = leak_scan.KeyScanner

    class Counting(real):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(leak_scan, 'KeyScanner', Counting)
    src = str(tmp_path / 'src')
    make_synthetic_cityscapes(src, num_train=3, num_val=1, height=32, width=64, seed=2)
    with open(osp.join(src, 'notes.txt'), 'w') as f:
        f.write('plain notes\n')
    summary = encrypt_dataset(src, str(tmp_path / 'enc'), SecretKey.generate(), workers=1,
                              progress=False, include=['*.txt'])
    assert summary.files_copied == 5  # 4 label maps and notes.txt, each scanned
    assert len(built) == 1
