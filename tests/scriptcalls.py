"""Which test functions and fixtures start a script or a training run: a static reading of tests/*.py.

A function *starts a script* when its body (nested functions included) calls one of the RUNNERS -- a
subprocess, a script's ``main``/``run_cli``, a training mode or the epoch loop -- or calls or names a function
or fixture of the test suite that does (a helper of its own module, of tests/conftest.py or tests/faultlib.py).
tests/conftest.py marks every test using such a fixture `slow`; tests/test_suite.py checks that every test
starting a script through its own code carries the mark, so that ``-m "not slow"`` stays the fast loop.
"""

import ast
import fnmatch
import functools
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
# modules of the suite whose helpers other test files import
SHARED = {'tests.conftest': 'conftest.py', 'tests.faultlib': 'faultlib.py', 'tests.faultrows': 'faultrows.py'}

# module -> the attributes (fnmatch patterns) that start a process or a training run when called
RUNNER_ATTRS = {
    'subprocess': {'run', 'Popen', 'call', 'check_call', 'check_output', 'getoutput', 'getstatusoutput'},
    'os': {'system', 'popen', 'fork', 'execv', 'execve', 'execvp', 'spawnv', 'spawnl', 'posix_spawn'},
    'runpy': {'run_path', 'run_module'},
    'multiprocessing': {'Process', 'Pool', 'get_context'},
    'torch.multiprocessing': {'spawn', 'start_processes', 'Process'},
    'util.train.modes': {'run*'},  # every training mode (run, run_pretraining, run_simultaneous, ...)
    'util.train.engine': {'train_one_epoch', 'fit'},
}
# a call of `<module>.<name>` or of an imported `<name>`, whatever the module (a script's entry points)
RUNNER_NAMES = {'main', 'run_cli', 'train_one_epoch'}


def _dotted(node):
    """'a.b.c' for the expression a.b.c, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return '.'.join([node.id, *reversed(parts)])
    return None


def _is_fixture(fn):
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if (_dotted(target) or '').split('.')[-1] == 'fixture':
            return True
    return False


def _imports(nodes):
    """name -> dotted origin for the import statements among ``nodes``."""
    aliases = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f'{node.module}.{a.name}'
    return aliases


class Module:
    """One test file: its imports, its top-level functions (class methods by their bare name) and fixtures."""

    def __init__(self, path):
        self.path = path
        with open(path) as f:
            self.tree = ast.parse(f.read(), path)
        self.aliases = _imports(self.tree.body)  # local name -> dotted origin ('tests.faultlib.run', ...)
        self.funcs = {}  # name -> FunctionDef (top level, and methods of top-level classes)
        self.fixtures = set()
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.funcs[node.name] = node
                if _is_fixture(node):
                    self.fixtures.add(node.name)
            elif isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.funcs.setdefault(sub.name, sub)


@functools.lru_cache(maxsize=None)
def load(path):
    return Module(path)


def _shared(name):
    return load(os.path.join(TESTS, SHARED[name]))


def _runner(origin):
    """Is the dotted origin of a called name (after resolving imports) a runner?"""
    mod, _, attr = origin.rpartition('.')
    if attr in RUNNER_NAMES and mod:
        return True
    return any(fnmatch.fnmatchcase(attr, pattern) for pattern in RUNNER_ATTRS.get(mod, ()))


def _refs(mod, fn):
    """What ``fn``'s body calls or names: ('runner', text) or ('func', Module, name)."""
    aliases = {**mod.aliases, **_imports(ast.walk(fn))}  # the imports inside the function too
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            text = _dotted(node.func)
            if not text:
                continue
            head, _, rest = text.partition('.')
            origin = aliases.get(head, head) + ('.' + rest if rest else '')
            if _runner(origin):
                yield ('runner', text)
            elif '.' in origin and origin.rsplit('.', 1)[0] in SHARED:
                yield ('func', _shared(origin.rsplit('.', 1)[0]), origin.rsplit('.', 1)[1])
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                if node.func.value.id == 'self':
                    yield ('func', mod, node.func.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            origin = aliases.get(node.id)
            if origin is None:
                yield ('func', mod, node.id)
            elif origin.rsplit('.', 1)[0] in SHARED:
                yield ('func', _shared(origin.rsplit('.', 1)[0]), origin.rsplit('.', 1)[1])


def _fixture_module(mod, name):
    """The module defining fixture ``name`` as seen from ``mod`` (its own, else tests/conftest.py)."""
    if name in mod.fixtures:
        return mod
    conf = _shared('tests.conftest')
    return conf if name in conf.fixtures else None


def starts_script(mod, name, via_fixtures=True, _seen=None):
    """The chain by which ``mod``'s function ``name`` starts a script (['helper', 'subprocess.run']), or None.

    ``via_fixtures``: follow its parameters to the fixtures they name (a test's or a fixture's own)."""
    seen = set() if _seen is None else _seen
    key = (mod.path, name)
    fn = mod.funcs.get(name)
    if fn is None or key in seen:
        return None
    seen.add(key)
    for ref in _refs(mod, fn):
        if ref[0] == 'runner':
            return [ref[1]]
        _, where, callee = ref
        if where is mod and callee in mod.fixtures and callee != name:
            continue  # a fixture named in a body is not called: only parameters use fixtures
        chain = starts_script(where, callee, via_fixtures, seen)
        if chain:
            return [callee, *chain]
    if via_fixtures:
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for a in args:
            where = _fixture_module(mod, a.arg)
            if where is not None:
                chain = starts_script(where, a.arg, True, seen)
                if chain:
                    return [f'fixture {a.arg}', *chain]
    return None


@functools.lru_cache(maxsize=None)
def script_fixtures(path):
    """The fixtures visible from test file ``path`` (its own and conftest's) that start a script."""
    mod = load(path)
    conf = _shared('tests.conftest')
    found = {name for name in mod.fixtures if starts_script(mod, name)}
    found |= {name for name in conf.fixtures if name not in mod.fixtures and starts_script(conf, name)}
    return frozenset(found)


def test_functions(path):
    """The test functions of ``path``: name -> FunctionDef, with the decorators of their class if any."""
    mod = load(path)
    out = {}
    for node in mod.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith('test'):
            out[node.name] = (node, [])
        elif isinstance(node, ast.ClassDef) and node.name.startswith('Test'):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith('test'):
                    out[f'{node.name}::{sub.name}'] = (sub, node.decorator_list)
    return out
