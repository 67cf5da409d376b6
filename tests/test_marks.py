"""The `slow` mark holds: every test that starts a script or a training run -- through a fixture (tests/conftest.py
marks those) or through its own code (the test carries @pytest.mark.slow) -- is left out of `-m "not slow"`,
the fast loop. The reading of the code is tests/scriptcalls.py's."""

import ast
import glob
import os
import textwrap

import pytest

from tests import conftest, scriptcalls

TESTS = os.path.dirname(os.path.abspath(__file__))
TEST_FILES = sorted(glob.glob(os.path.join(TESTS, 'test_*.py')))

# Tests calling something that looks like a run but starts none: test -> why. Each must still be found by the
# reading (so the list cannot outlive its reason).
NOT_A_RUN = {
    'test_compat.py::test_training_main_applies_the_special_values': 'launch is replaced: main only reads the flags',
    'test_gpu_path.py::test_two_nccl_ranks_on_one_gpu_refused_in_one_line_by_the_cli': 'run_cli of init_distributed',
    'test_gpu_path.py::test_train_one_epoch_waits_for_the_device_only_at_log_intervals': (
        'the epoch loop on a 5-parameter net over in-memory batches (a unit test of the loop)'
    ),
    'test_gpu_path.py::test_a_non_finite_loss_still_stops_the_run': 'the epoch loop on a 5-parameter net, 8 batches',
}


def _marks_slow(decorators):
    return any(
        (scriptcalls._dotted(d.func if isinstance(d, ast.Call) else d) or '').endswith('mark.slow') for d in decorators
    )


def _module_marked_slow(mod):
    for node in mod.tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == 'pytestmark' for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            if _marks_slow(values):
                return True
    return False


def unmarked_runs(path):
    """{test: how it starts a script} for the tests of ``path`` that start one and are not marked `slow`."""
    mod = scriptcalls.load(path)
    if conftest.slow_module(os.path.basename(path)[:-3]) or _module_marked_slow(mod):
        return {}
    found = {}
    for name, (fn, class_decorators) in scriptcalls.test_functions(path).items():
        if _marks_slow(fn.decorator_list) or _marks_slow(class_decorators):
            continue
        if {a.arg for a in fn.args.args + fn.args.kwonlyargs} & conftest.script_fixtures(path):
            continue  # conftest marks it
        chain = scriptcalls.starts_script(mod, fn.name)
        if chain:
            found[name] = ' -> '.join(chain)
    return found


def test_every_test_starting_a_script_is_slow():
    missing = {}
    for path in TEST_FILES:
        for name, chain in unmarked_runs(path).items():
            key = f'{os.path.basename(path)}::{name}'
            if key not in NOT_A_RUN:
                missing[key] = chain
    assert not missing, 'these tests start a script or a run: mark them @pytest.mark.slow\n' + '\n'.join(
        f'  {k}: {v}' for k, v in sorted(missing.items())
    )


def test_the_exemptions_are_still_needed():
    found = {f'{os.path.basename(p)}::{n}' for p in TEST_FILES for n in unmarked_runs(p)}
    assert set(NOT_A_RUN) <= found, set(NOT_A_RUN) - found


@pytest.mark.parametrize(
    'test_file, test, how',
    [
        ('test_pretraining.py', 'test_pre_and_post_labels', 'fixture generated'),  # a module fixture runs one
        ('test_pretraining.py', 'test_torchrun_two_processes', 'subprocess.run'),
        ('test_modes.py', 'test_simultaneous', 'fixture simultaneous_run'),
        ('test_random_image.py', 'test_killed_run_resumes_to_identical_output', 'subprocess.Popen'),
        ('test_predict.py', 'test_refused', 'predict_in_process'),  # a helper of the module runs main in-process
    ],
)
def test_the_reading_finds_script_runs(test_file, test, how):
    path = os.path.join(TESTS, test_file)
    chain = scriptcalls.starts_script(scriptcalls.load(path), test)
    assert chain and chain[0] == how, chain


def test_conftest_marks_the_users_of_a_running_fixture():
    assert {'generated', 'run_script'} <= conftest.script_fixtures(os.path.join(TESTS, 'test_pretraining.py'))
    assert 'simultaneous_run' in conftest.script_fixtures(os.path.join(TESTS, 'test_modes.py'))
    assert 'task' not in conftest.script_fixtures(os.path.join(TESTS, 'test_modes.py'))  # it writes images only


def test_an_unmarked_run_through_a_helper_is_found(tmp_path):
    """The check can fail: a new test starting a script through a helper, and one without the mark."""
    path = tmp_path / 'test_new.py'
    path.write_text(
        textwrap.dedent(
            '''
            import pytest
            from subprocess import run as sh
            from tests.conftest import _run_script
            from tests.faultlib import run as fault_run
            import pretraining


            def _helper(x):
                return sh(['true'])


            @pytest.fixture
            def made(tmp_path):
                return _run_script('PHdict.py', tmp_path)


            def test_helper():
                _helper(1)


            def test_fault_run():
                fault_run('PHdict', '-h')


            def test_main(tmp_path):
                pretraining.main(None)


            def test_made(made):  # marked by conftest through its fixture
                pass


            @pytest.mark.slow
            def test_marked():
                _helper(2)


            def test_pure():
                assert 1 + 1 == 2
            '''
        )
    )
    found = unmarked_runs(str(path))
    assert set(found) == {'test_helper', 'test_fault_run', 'test_main'}, found
    assert found['test_helper'] == '_helper -> sh'
    assert 'made' in conftest.script_fixtures(str(path))
