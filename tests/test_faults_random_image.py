"""The fault matrix of util/random_image.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import glob

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import (
    case,
    expect_error,
    expect_ok,
    half_written,
    kill_when,
    popen,
    run,
    temp_files,
    tree_digests,
)

# ====================================================================================================
# SIGKILL in the middle of each long stage, then a rerun
# ====================================================================================================


@case(
    'random_image',
    'SIGKILL mid-run, rerun',
    'only complete images under final names; the rerun skips them and ends byte-identical to an uninterrupted run',
)
def _kill_generation(ctx, script):
    ref, killed = ctx.tmp / 'ref', ctx.tmp / 'killed'
    argv = ['-n', 96, '-is', 48, '-nw', 1, '--preview', 0]
    p_ref = popen(script, '-o', ref, *argv)
    p = popen(script, '-o', killed, *argv)
    ctx.outputs(killed)
    assert kill_when(p, lambda: len(glob.glob(str(killed / '*.jpg'))) >= 24)
    assert p_ref.wait(timeout=300) == 0
    done = len(glob.glob(str(killed / '*.jpg')))
    assert 24 <= done < 96
    assert not half_written(killed)
    res = expect_ok(run(script, '-o', killed, *argv))
    assert f'skipped {done} already present' in res.out, res
    assert tree_digests(killed, only='.jpg') == tree_digests(ref, only='.jpg')
    assert len(tree_digests(ref, only='.jpg')) == 96 and not temp_files(killed)  # its own temp files removed


# ====================================================================================================
# issue 28: the spectrum option and the slope range
# ====================================================================================================


@case(
    'random_image',
    'unknown --spectrum, or a -br whose original spectrum underflows (-br 20 20: every image flat)',
    'exit 2: one line naming the flag (and the largest beta that works, or --spectrum isotropic); nothing '
    'created (-br 20 20 used to redraw its first image forever)',
)
def _bad_spectrum(ctx, script):
    out = ctx.tmp / 'out'
    argv = ['-o', out, '-n', 4, '-is', 32, '-nw', 1, '--preview', 0]
    expect_error(run(script, *argv, '--spectrum', 'diagonal'), '--spectrum', 'original, isotropic')
    assert not out.exists()
    line = expect_error(run(script, *argv, '-br', 20, 20, timeout=60), '--beta_range', '--spectrum isotropic')
    assert 'keep beta <= ' in line, line
    assert not out.exists()
    expect_ok(run(script, *argv, '-br', 20, 20, '--spectrum', 'isotropic', timeout=60))  # its filter is scaled
    assert len(glob.glob(str(out / '*.jpg'))) == 4


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('random_image')
