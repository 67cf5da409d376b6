"""The fault matrix of bench/transfer.py (``--data``: a user's own task).

Its own rows are here; the machinery is in tests/faultlib.py.  Every run is the tiny preset from scratch on
one seed (no pretraining: the faults lie in the data).
"""

import json
import os

import numpy as np
from PIL import Image

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import case, expect_error, expect_ok, run

QUICK = ['--preset', 'tiny', '--inits', 'scratch', '--seeds', 1, '--labels', 'all', '--name', 't']


def _classes(root, counts, seed=0):
    """An ImageFolder under ``root``: {class: number of 16-px images}."""
    rng = np.random.default_rng(seed)
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f'{i}.png')
    return root


def _argv(ctx, folder):
    return [*QUICK, '--data', folder, '--work', ctx.tmp / 'work', '--out', ctx.tmp / 'results']


@case(
    'transfer',
    '--data with one class folder',
    'exit 2 before any training: one line naming --data and "at least 2 classes"; no result written',
)
def _one_class(ctx, script):
    folder = _classes(ctx.tmp / 'one', {'cat': 12})
    ctx.inputs(folder)
    expect_error(run(script, *_argv(ctx, folder)), '--data', 'at least 2 classes')
    assert not os.listdir(ctx.tmp / 'results')


@case(
    'transfer',
    '--data whose classes are too small to hold out a test image',
    'exit 2: one line naming the class, its count and --val_fraction; no result written',
)
def _too_small(ctx, script):
    folder = _classes(ctx.tmp / 'small', {'a': 12, 'b': 3})  # tiny: --val_fraction 0.1 holds out 0 of 3
    ctx.inputs(folder)
    expect_error(run(script, *_argv(ctx, folder)), "class 'b'", '3 image(s)', '--val_fraction')
    assert not os.listdir(ctx.tmp / 'results')


@case(
    'transfer',
    '--data folder whose content changed since an earlier run',
    'exit 0: a new split of the new content (the cache is keyed by content), not the stale one',
)
def _stale_split(ctx, script):
    folder = _classes(ctx.tmp / 'task', {'a': 12, 'b': 12})
    ctx.outputs(ctx.tmp / 'results')
    expect_ok(run(script, *_argv(ctx, folder)))
    result = ctx.tmp / 'results' / 'transfer_t.json'
    first = json.loads(result.read_text())['runs'][0]
    _classes(folder, {'a': 24, 'b': 24}, seed=1)  # the same path, other images and twice as many
    expect_ok(run(script, *_argv(ctx, folder)))
    second = json.loads(result.read_text())['runs'][0]
    assert not second['cached'] and second['train_images'] > first['train_images'], (first, second)
    assert len(os.listdir(ctx.tmp / 'work' / 'data')) == 2  # both splits kept, each under its content's key
    expect_ok(run(script, *_argv(ctx, folder)))  # unchanged content: the cached run is reused
    assert json.loads(result.read_text())['runs'][0]['cached']


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('transfer')
