import glob
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('OMP_NUM_THREADS', '1')
# Scripts run in subprocesses import this checkout's packages, even where the environment's editable install
# (`pip install -e .`) points at another checkout of the project.
os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)


# Modules whose tests run the scripts end to end (subprocesses, training runs): all of them are `slow`.
SLOW_MODULES = {'test_transfer', 'test_bench_smoke', 'test_label_controls'}


def slow_module(name):
    """Is every test of module ``name`` (e.g. 'test_transfer') `slow`? The fault matrix's files are."""
    return name in SLOW_MODULES or name.startswith('test_faults')


def script_fixtures(path):
    """The fixtures a test of file ``path`` may use that start a script or a training run (tests/scriptcalls.py
    reads them in the code: `run_script`, and every fixture of the module or of this file that runs one itself
    or through a helper or another such fixture)."""
    from tests import scriptcalls

    return scriptcalls.script_fixtures(str(path))


def pytest_addoption(parser):
    if importlib.util.find_spec('pytest_timeout') is None:  # pyproject.toml's `timeout` is then a known key
        parser.addini('timeout', 'the per-test time limit in seconds (read by pytest-timeout)')


def pytest_configure(config):
    if not config.pluginmanager.hasplugin('timeout'):
        config.addinivalue_line('markers', 'timeout(seconds): the time limit of a longer test (pytest-timeout)')
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                'pytest-timeout is not installed: no per-test time limit (bash scripts/setup_env.sh installs it)'
            ),
            stacklevel=2,
        )


def shared_fixture_group(item):
    """The module's name when ``item`` uses a fixture of the suite set up once for several tests (scope module or
    session: a module's generated images, training runs, the fault matrix's data), else None."""
    info = getattr(item, '_fixtureinfo', None)
    for defs in info.name2fixturedefs.values() if info else ():
        if defs and defs[-1].scope != 'function' and defs[-1].baseid:  # pytest's own fixtures have no baseid
            return item.module.__name__.rsplit('.', 1)[-1]
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups and `-m` deselects
def pytest_collection_modifyitems(config, items):
    """Mark as `slow` every test that uses a fixture starting a script or a training run, or lives in an
    end-to-end module, so that `bash scripts/test.sh -m "not slow"` is the fast loop. A test that starts one
    through its own code carries `@pytest.mark.slow` itself (tests/test_marks.py checks that it does).

    Under pytest-xdist, the tests of a module sharing its expensive fixtures form one group: with
    `--dist loadgroup` (scripts/test.sh) they run on one worker, which builds those fixtures once; the others
    are spread one by one."""
    xdist = config.pluginmanager.hasplugin('xdist')
    for item in items:
        module = getattr(item, 'module', None)
        if module is None:
            continue
        name = module.__name__.rsplit('.', 1)[-1]
        runners = script_fixtures(item.path) & set(getattr(item, 'fixturenames', ()))
        if slow_module(name) or runners:
            item.add_marker(pytest.mark.slow)
        group = shared_fixture_group(item) if xdist else None
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def root():
    """The repository root (scripts are run from there, as the README does)."""
    return ROOT


def _run_script(script, *args, cwd=None, env=None, timeout=600, check=None):
    """Run ``python <script> args...`` from the repo root (or ``cwd``), as a user would; return the result.

    ``script`` is relative to the repository root (e.g. ``'util/random_image.py'``).
    ``check``: None = don't check, True = assert exit 0, False = assert non-zero exit.
    """
    import subprocess

    full_env = dict(os.environ)
    full_env.setdefault('PYTHONHASHSEED', '0')
    # one thread per process: on 2 shared cores, OpenMP threads spinning against each other make small
    # CPU training steps ten times slower
    full_env.setdefault('OMP_NUM_THREADS', '1')
    full_env.pop('RANK', None), full_env.pop('WORLD_SIZE', None), full_env.pop('LOCAL_RANK', None)
    if env:
        full_env.update(env)
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    res = subprocess.run(cmd, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check is True:
        assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    elif check is False:
        assert res.returncode != 0, f"{cmd} unexpectedly succeeded:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture
def run_script():
    """``run_script('PHdict.py', 'in', '-o', 'out', check=True)`` → CompletedProcess (text stdout/stderr)."""
    return _run_script


def only_run_dir(output):
    """The one run folder a training script made under ``output``."""
    runs = [d for d in glob.glob(os.path.join(output, '*')) if os.path.isdir(d)]
    assert len(runs) == 1, runs
    return runs[0]


def read_log(run_dir):
    """The records of a run's log.jsonl."""
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def make_two_class_task(root, n_train=24, n_val=8, size=40, seed=0):
    """An easy task: class 'dark' holds dark noise images, class 'bright' bright ones."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for cls, (lo, hi) in (('bright', (150, 255)), ('dark', (0, 100))):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)).save(d / f'{i:03d}.png')
    return root / 'train', root / 'val'
