"""The fault matrix of visMap.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import shutil

import numpy as np
from PIL import Image

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import case, digest, expect_error, expect_ok, run


@case(
    'visMap',
    '-o is the -pw weights, a file it did not write, or its own earlier grid',
    'exit 2: one line naming -o and what it is; nothing changed; its own earlier grid replaced with --overwrite only',
)
def _vismap_output(ctx, script):
    weights = ctx.tmp / 'w.pth'
    shutil.copy(ctx.data.pretrained, weights)
    notes = ctx.tmp / 'notes.txt'
    notes.write_text('my notes\n')
    photo = ctx.tmp / 'photo.png'
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(photo)
    ctx.inputs(weights, notes, photo)
    ctx.outputs(ctx.tmp)
    expect_error(run(script, '-pw', weights, '-o', weights), '-o', 'the -pw weights')
    expect_error(run(script, '-pw', ctx.tmp, '-o', weights), '-o', 'the -pw weights')  # a folder: its newest .pth
    for other in (notes, photo):
        expect_error(run(script, '-pw', weights, '-o', other), '-o', str(other), 'not a filter grid')
        expect_error(run(script, '-pw', weights, '-o', other, '--overwrite'), '-o', 'not a filter grid')
    grid = ctx.tmp / 'grid.png'
    expect_ok(run(script, '-pw', weights, '-o', grid))
    first = digest(grid)
    expect_error(run(script, '-pw', weights, '-o', grid), '-o', 'earlier filter grid', '--overwrite')
    assert digest(grid) == first
    expect_ok(run(script, '-pw', weights, '-o', grid, '--overwrite', '--max_filters', 8))
    assert digest(grid) != first
    with Image.open(grid) as im:
        assert im.info.get('Software') == 'visMap.py'


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('visMap')
