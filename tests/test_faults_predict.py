"""The fault matrix of predict.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import csv
import glob
import shutil

from tests import faultrows  # noqa: F401 (registers the rows run on several scripts)
from tests.faultlib import case, data, expect_error, expect_ok, matrix, run, test_fault  # noqa: F401 (the fixtures and the test of the matrix)

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


pytest_generate_tests, ledger = matrix('predict')
