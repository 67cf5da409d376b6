"""The fault matrix of finetuning.py (training, and --evaluate).

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import csv
import os
import shutil

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import TINY, base_argv, case, expect_error, expect_ok, only_run_dir, run


@case('finetuning', '-val equal to -t', 'exit 0 with a warning naming -val and -t')
def _val_is_train(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    ctx.inputs(d.task)
    res = expect_ok(
        run(script, '-t', d.task / 'train', '-val', d.task / 'train', '-o', out, '-nc', 2, '-e', 1, '-b', 8, *TINY)
    )
    assert 'warning: -val' in res.err and 'training folder -t' in res.err, res


@case(
    'evaluation',
    'class names with a comma, a quote (CSV files)',
    'exit 0: per_class.csv and confusion_matrix.csv read back by the csv module with the names intact',
)
def _csv_names(ctx, script):
    d = ctx.data
    val = ctx.tmp / 'val'
    names = ['bright, "very"', 'dark']
    for src, name in zip(('bright', 'dark'), names):
        shutil.copytree(d.task / 'val' / src, val / name)
    ctx.inputs(val, d.finetuned)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    expect_ok(run(script, '--evaluate', '-val', val, '-pw', d.finetuned, '-o', out, '-nc', 2, '-b', 8, *TINY))
    run_dir = only_run_dir(out)
    with open(os.path.join(run_dir, 'per_class.csv'), newline='') as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == names and all(len(r) == 4 for r in rows), rows
    with open(os.path.join(run_dir, 'confusion_matrix.csv'), newline='') as f:
        assert next(csv.reader(f))[1:] == names


@case(
    ('finetuning', 'evaluation'),
    'a task with one class folder',
    'exit 2: one line naming -t (-val) and "at least 2 classes"; no run folder',
)
def _one_class(ctx, script):
    d = ctx.data
    one = ctx.tmp / 'one'
    for split in ('train', 'val'):
        shutil.copytree(d.task / split / 'dark', one / split / 'dark')
    ctx.inputs(one, d.finetuned)
    out = ctx.tmp / 'out'
    argv = base_argv(script, d, out)
    argv = [one / 'train' if a == d.task / 'train' else one / 'val' if a == d.task / 'val' else a for a in argv]
    argv[argv.index('-nc') + 1] = 1
    expect_error(run(script, *argv), '-t' if script == 'finetuning' else '-val', 'at least 2 classes')
    argv.remove('-nc'), argv.remove(1)  # -nc left to the folders
    expect_error(run(script, *argv), 'at least 2 classes')
    assert not out.exists() or not os.listdir(out)


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('finetuning', 'evaluation')
