"""Module layering: the tree's subpackages import downwards only, the PH side stays light (no torch), and the
package has no import cycles."""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each layer may import from the project (besides itself). Lower layers first; ARCHITECTURE.md draws this.
ALLOWED = {
    'util.errors': set(),
    'util.io': {'util.errors'},
    'util.ph': {'util.errors', 'util.io'},
    'util.config': {'util.errors', 'util.io', 'util.ph'},
    'util.plot': {'util.errors', 'util.io', 'util.ph'},
    'models': {'util.errors', 'util.io'},
    'util.train': {'util.errors', 'util.io', 'util.ph', 'util.config', 'util.plot', 'models'},
    'util.cli': {'util.errors', 'util.io', 'util.ph', 'util.config', 'util.plot', 'models', 'util.train'},
}
# Upward imports still to be removed (none: the run configuration is built once, in util/cli).
KNOWN_UPWARD = set()


@pytest.mark.slow
@pytest.mark.parametrize(
    'module',
    ['util.ph.cubical', 'util.ph.vectorise', 'util.ph.generator', 'util.ph.labels', 'util.random_image', 'PHdict'],
)
def test_ph_side_imports_no_torch(module):
    code = (
        f"import sys, {module}; heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules); "
        f"print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '', f"importing {module} loaded {out.stdout.strip()}"


def _modules():
    """Every module of util/ and models/ as (dotted name, path)."""
    for package in ('util', 'models'):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith('.py'):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, '.')
                    yield rel.removesuffix('.__init__'), os.path.join(folder, name)


def _is_module(dotted):
    path = os.path.join(ROOT, *dotted.split('.'))
    return os.path.exists(path + '.py') or os.path.exists(os.path.join(path, '__init__.py'))


def _imports(path):
    """Project modules imported by one file (at any depth: function-level imports count too)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f'{node.module}.{a.name}'
                found.add(sub if _is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split('.')[0] in ('util', 'models')}


def _layer(module):
    """The entry of ALLOWED a module belongs to (None: an entry point such as util/random_image.py)."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + '.'):
            return layer
    return None


def test_layers_import_downwards_only():
    bad = []
    for module, path in _modules():
        layer = _layer(module)
        if layer is None:
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if (module, imported) in KNOWN_UPWARD:
                continue
            if target is not None and target != layer and target not in ALLOWED[layer]:
                bad.append(f'{module} imports {imported} ({layer} may import {sorted(ALLOWED[layer]) or "nothing"})')
    assert not bad, '\n'.join(bad)


def test_data_sets_sit_below_the_data_sources():
    """One direction inside util/train: sources (and the -pd checks, --label_norm) build data sets from the
    dataset classes of datasets.py, which imports none of them (nor the loop above them)."""
    path = os.path.join(ROOT, 'util', 'train', 'datasets.py')
    above = {
        'util.train.sources',
        'util.train.phdir',
        'util.train.label_scaling',
        'util.train.engine',
        'util.train.loaders',
        'util.train.modes',
    }
    assert not _imports(path) & above, sorted(_imports(path) & above)


def test_every_library_module_is_in_a_layer():
    """util/ holds subpackages plus the bottom modules and the original's two entry points, nothing else."""
    entry_points = {'util', 'util.random_image', 'util.ImageDatasetsDownloader'}
    stray = [m for m, _ in _modules() if _layer(m) is None and m not in entry_points]
    assert not stray, stray


def test_no_import_cycles_and_no_private_cross_imports():
    graph = {module: _imports(path) - {module} for module, path in _modules()}
    state = {}

    def visit(m, path):
        if state.get(m) == 'done':
            return
        assert state.get(m) != 'open', 'import cycle: ' + ' -> '.join(path + [m])
        state[m] = 'open'
        for n in sorted(graph.get(m, ())):
            visit(n, path + [m])
        state[m] = 'done'

    for m in sorted(graph):
        visit(m, [])
    for module, path in _modules():
        tree = ast.parse(open(path, encoding='utf-8').read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] in ('util', 'models'):
                private = [a.name for a in node.names if a.name.startswith('_')]
                assert not private, f"{path} imports private {private} from {node.module}"


# ---------------------------------------------------------------------------------------- bench/: the top layer
# The benchmarks sit above everything else: a bench module may import util/*, models, the other bench modules and
# the top-level scripts it times (bench/ph_engine_bench.py runs PHdict's main in-process); nothing in util/,
# models/, scripts/ or the top-level scripts imports bench.
def _top_level_modules():
    """The project's importable top-level names: the scripts beside README.md and every folder of Python files
    (packages, and namespace packages such as tests/ and scripts/)."""
    names = {n[:-3] for n in os.listdir(ROOT) if n.endswith('.py')}
    folders = [n for n in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, n)) and not n.startswith('.')]
    return names | {n for n in folders if any(f.endswith('.py') for f in os.listdir(os.path.join(ROOT, n)))}


def _top_level_imports(path):
    """The top-level names of every absolute import in one file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split('.')[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[0] for a in node.names)
    return found


def _py_files(*entries):
    for entry in entries:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
        for folder, _, names in os.walk(path):
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith('.py'))


def test_bench_is_the_top_layer():
    project = _top_level_modules()
    scripts = sorted(n for n in project if os.path.isfile(os.path.join(ROOT, n + '.py')))
    assert {'bench', 'tests', 'scripts'} <= project and 'PHdict' in scripts, (project, scripts)
    may_import = {'util', 'models', 'bench', *scripts}
    bench_files = list(_py_files('bench'))
    assert len(bench_files) >= 10, bench_files
    bad = [
        f'{os.path.relpath(path, ROOT)} imports {name}'
        for path in bench_files
        for name in sorted(_top_level_imports(path) & project - may_import)
    ]
    below = list(_py_files('util', 'models', 'scripts', *(s + '.py' for s in scripts)))
    bad += [f'{os.path.relpath(path, ROOT)} imports bench' for path in below if 'bench' in _top_level_imports(path)]
    assert not bad, '\n'.join(bad)


# Library code: everything but the command-line layer (util/cli) and the scripts.
LIBRARY = ('util/ph', 'util/io', 'util/train', 'util/plot', 'util/config.py', 'util/errors.py', 'models')


def _library_files():
    for entry in LIBRARY:
        path = os.path.join(ROOT, entry)
        if path.endswith('.py'):
            yield path
            continue
        for folder, _, names in os.walk(path):
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith('.py'))


def test_library_code_never_reads_the_flags():
    """Only util/cli reads the argparse Namespace: no ``args.<flag>`` in library code (the run configuration of
    util.config reaches it instead)."""
    found = []
    for path in _library_files():
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'args':
                found.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}: args.{node.attr}')
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == 'vars'
                and any(isinstance(a, ast.Name) and a.id == 'args' for a in node.args)
            ):
                found.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}: vars(args)')
    assert not found, '\n'.join(found)


def test_public_functions_are_annotated():
    """The public functions of models/, util/ph/, util/train/ and util/io/ state their parameter and return types."""
    bare = []
    for package in ('models', 'util/ph', 'util/train', 'util/io'):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT).replace(os.sep, '/')
                if not name.endswith('.py'):
                    continue
                for node in ast.parse(open(path, encoding='utf-8').read()).body:
                    if isinstance(node, ast.FunctionDef) and not node.name.startswith('_'):
                        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                        if node.returns is None or any(
                            a.annotation is None for a in args if a.arg not in ('self', 'cls')
                        ):
                            bare.append(f'{rel}:{node.lineno} {node.name}')
    assert not bare, bare


def test_architecture_names_every_module():
    """ARCHITECTURE.md is the map: every module of util/, models/ and bench/ is named there (by its file name
    without .py), so a new module gets a room on the page."""
    text = open(os.path.join(ROOT, 'ARCHITECTURE.md'), encoding='utf-8').read()
    words = set(re.findall(r'[A-Za-z_][A-Za-z0-9_]*', text))
    missing = []
    for package in ('util', 'models', 'bench'):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith('.py') and name != '__init__.py' and name[:-3] not in words:
                    missing.append(os.path.relpath(os.path.join(folder, name), ROOT))
    assert not missing, f"ARCHITECTURE.md does not name {missing}"
