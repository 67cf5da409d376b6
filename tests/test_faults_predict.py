"""The fault matrix of predict.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import csv
import glob
import os
import shutil

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import case, expect_error, expect_ok, run

# ====================================================================================================
# issue 13: data loss -- predict.py -o
# ====================================================================================================


@case(
    'predict',
    '-o is an input image, the -pw weights, a folder, or a file it did not write',
    'exit 2: one line naming -o and what it is; nothing changed; an earlier prediction CSV is replaced',
)
def _predict_output(ctx, script):
    d = ctx.data
    images = ctx.tmp / 'images'
    shutil.copytree(d.task / 'val', images)
    weights = ctx.tmp / 'w' / 'ft.pth'
    weights.parent.mkdir()
    shutil.copy(d.finetuned, weights)
    notes = ctx.tmp / 'notes.txt'
    notes.write_text('my notes\n')
    ctx.inputs(images, weights, notes)
    base = [images, '-pw', weights, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32, '-nw', 0]
    first = sorted(glob.glob(str(images / '*' / '*.png')))[0]
    for target, words in (
        (first, ('input image',)),
        (weights, ('-pw',)),
        (images, ('folder',)),
        (notes, ('not a CSV', '--overwrite')),
    ):
        for extra in ([], ['--overwrite']) if target != notes else ([],):
            expect_error(run(script, *base, '-o', target, *extra), '-o', *words)
    previous = ctx.tmp / 'pred.csv'
    previous.write_text('path,top1,top1_prob\nold.png,dark,1.0\n')
    ctx.outputs(ctx.tmp / 'w')
    expect_ok(run(script, *base, '-o', previous))
    with open(previous, newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ['path', 'top1', 'top1_prob'] and len(rows) == 1 + 4 and 'old.png' not in previous.read_text()


@case(
    'predict',
    '--classes listing the classes in another order than classes.json beside the weights',
    'exit 2: one line naming --classes, classes.json and the first output they disagree on; nothing written; '
    'the same order is accepted',
)
def _classes_order(ctx, script):
    d = ctx.data
    weights = ctx.tmp / 'w' / 'ft.pth'
    weights.parent.mkdir()
    shutil.copy(d.finetuned, weights)
    (ctx.tmp / 'w' / 'classes.json').write_text('["bright", "dark"]\n')  # the order finetuning.py wrote
    swapped, same = ctx.tmp / 'swapped.txt', ctx.tmp / 'same.txt'
    swapped.write_text('dark\nbright\n')
    same.write_text('bright\ndark\n')
    ctx.inputs(d.task, weights.parent, swapped, same)
    out = ctx.tmp / 'pred.csv'
    base = [d.task / 'val', '-pw', weights, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32, '-nw', 0, '-o', out]
    expect_error(run(script, *base, '--classes', swapped), '--classes', 'classes.json', "'dark' as output 0")
    assert not out.exists()
    expect_ok(run(script, *base, '--classes', same))
    with open(out, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r['truth'] in ('bright', 'dark') for r in rows)


@case(
    'predict',
    'pretraining (PH regression) weights copied out of their run folder',
    'exit 2 for its checkpoint.pth (its mode says pretraining), nothing written; the plain weights file cannot '
    'tell: exit 0 with one warning that it may be regression weights, named like pretraining.py\'s',
)
def _regression_copied_out(ctx, script):
    d = ctx.data
    alone = ctx.tmp / 'alone'  # no args.json, no classes.json beside the weights
    alone.mkdir()
    for name in ('checkpoint.pth', 'resnet18_epoch1.pth'):
        shutil.copy(os.path.join(d.pt_run, name), alone / name)
    ctx.inputs(d.task, alone)
    out = ctx.tmp / 'out' / 'pred.csv'
    base = [d.task / 'val', '-o', out, '-nw', 0, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32]
    expect_error(run(script, *base, '-pw', alone / 'checkpoint.pth'), alone / 'checkpoint.pth', 'pretraining')
    assert not out.parent.exists()
    res = expect_ok(run(script, *base, '-pw', alone / 'resnet18_epoch1.pth'))
    [warning] = [ln for ln in res.err.splitlines() if ln.startswith('warning: ')]
    for words in ('no classes.json', 'pretraining (PH regression) weights', "named like pretraining.py's weights"):
        assert words in warning, warning
    ctx.outputs(out.parent)


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('predict')
