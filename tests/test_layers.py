"""Module layering: the PH side stays light (no torch), and the package has no import cycles."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', ['util.ph', 'util.vectorise', 'util.random_image', 'util.labels', 'PHdict'])
def test_ph_side_imports_no_torch(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules); "
            f"print(','.join(heavy))")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '', f"importing {module} loaded {out.stdout.strip()}"


def _imports(path):
    """Project modules imported by one file (at any depth: function-level imports count too)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for a in node.names:
                sub = f'{base}.{a.name}'
                found.add(sub if os.path.exists(os.path.join(ROOT, *sub.split('.')) + '.py') else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split('.')[0] in ('util', 'models')}


def test_no_import_cycles_and_no_private_cross_imports():
    graph = {}
    for package in ('util', 'models'):
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith('.py') and name != '__init__.py':
                mod = f'{package}.{name[:-3]}'
                graph[mod] = {m for m in _imports(os.path.join(ROOT, package, name)) if m != mod and m in graph
                              or os.path.exists(os.path.join(ROOT, *m.split('.')) + '.py')} - {mod}
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
    for package in ('util', 'models'):
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith('.py'):
                tree = ast.parse(open(os.path.join(ROOT, package, name), encoding='utf-8').read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] in ('util', 'models'):
                        private = [a.name for a in node.names if a.name.startswith('_')]
                        assert not private, f"{package}/{name} imports private {private} from {node.module}"
