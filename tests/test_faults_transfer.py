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


def _work_argv(ctx, name='t'):
    return ['--preset', 'tiny', '--seeds', 1, '--labels', 3, '--name', name, '--work', ctx.tmp / 'work']


@case(
    'transfer',
    '--ph_extra with a flag PHdict.py does not take',
    'exit 2 before any image is made: one line naming --ph_extra and the flag; no work folder, no result',
)
def _bad_ph_extra(ctx, script):
    argv = _work_argv(ctx) + ['--inits', 'scratch', 'ph', '--out', ctx.tmp / 'results', '--ph_extra', '--sigmaa 1']
    expect_error(run(script, *argv), '--ph_extra', '--sigmaa')
    assert not (ctx.tmp / 'work').exists() and not (ctx.tmp / 'results').exists()


@case(
    'transfer',
    '--ph_extra with label flags (the README\'s probe screen: --sigma 1 --max_life 8 ...)',
    'exit 0: the PH pretraining is given the label flags its -pd labels were made with (its check refused them)',
)
def _ph_extra_label_flags(ctx, script):
    extra = '--sigma 1 --max_life 8 --max_birth 12 --min_birth -12'
    argv = _work_argv(ctx) + ['--inits', 'ph', '--label_type', 'persistence_image', '--ph_extra', extra]
    ctx.outputs(ctx.tmp / 'results')
    expect_ok(run(script, *argv, '--out', ctx.tmp / 'results', timeout=600))
    result = json.loads((ctx.tmp / 'results' / 'transfer_t.json').read_text())
    with open(os.path.join(result['pretraining']['ph']['run_dir'], 'args.json'), encoding='utf-8') as f:
        pre = json.load(f)
    assert (pre['sigma'], pre['max_life'], pre['max_birth'], pre['min_birth']) == (1.0, 8.0, 12.0, -12.0), pre


@case(
    'transfer',
    'two runs sharing --work at the same time',
    "exit 0 for both: each pretraining and fine-tuning is made once (the second waits on the run's lock and "
    'reuses it), no run folder removed under the other',
)
def _shared_work(ctx, script):
    import threading

    res = {}

    def one(name):
        argv = _work_argv(ctx, name) + ['--inits', 'scratch', 'ph', '--out', ctx.tmp / name]
        res[name] = run(script, *argv, timeout=900)

    threads = [threading.Thread(target=one, args=(n,)) for n in ('a', 'b')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ('a', 'b'):
        expect_ok(res[name])
        ctx.outputs(ctx.tmp / name)
    runs = ctx.tmp / 'work' / 'runs'
    keys = [k for k in os.listdir(runs) if os.path.isdir(runs / k)]
    assert any(k.startswith('pre_ph_') for k in keys) and len(keys) == 3, keys  # 1 pretraining, 2 fine-tunings
    for k in keys:
        assert len(os.listdir(runs / k)) == 1, (k, os.listdir(runs / k))  # made once, nothing removed
    a, b = (json.loads((ctx.tmp / n / f'transfer_{n}.json').read_text()) for n in ('a', 'b'))
    assert a['pretraining']['ph']['run_dir'] == b['pretraining']['ph']['run_dir']
    assert [a['pretraining']['ph']['seconds'], b['pretraining']['ph']['seconds']].count(None) == 1  # one reused


@case(
    'transfer',
    "killed (with its training subprocess) during a pretraining, after the first epoch's checkpoint",
    'exit 0 on the same command again: the pretraining resumes in its folder from checkpoint.pth (said in the log, '
    'not restarted), its final weights equal those of an uninterrupted run, the table is written',
)
def _killed_during_pretraining(ctx, script):
    import glob
    import signal
    import subprocess
    import sys
    import time

    import torch

    argv = ['--preset', 'tiny', '--inits', 'ph', '--seeds', 1, '--labels', 3, '--name', 't']
    argv += ['--pre_epochs', 3, '--n_images', 96]  # 6 batches an epoch: time to kill between checkpoints
    work, out = ctx.tmp / 'work', ctx.tmp / 'results'
    ctx.outputs(out)
    cmd = [sys.executable, os.path.join(faultlib.ROOT, 'bench', 'transfer.py'), *map(str, argv)]
    cmd += ['--work', str(work), '--out', str(out)]
    # its own session: the kill takes bench/transfer.py and the pretraining.py it runs, as the end of a
    # working session does
    log_file = ctx.tmp / 'killed.log'
    with open(log_file, 'w') as f:
        proc = subprocess.Popen(
            cmd, cwd=faultlib.ROOT, env=faultlib._env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 600
    while not glob.glob(str(work / 'runs' / 'pre_ph_*' / '*' / 'checkpoint.pth')):
        assert proc.poll() is None, f"ended before it could be killed:\n{log_file.read_text()[-3000:]}"
        assert time.time() < deadline, 'no checkpoint.pth appeared'
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = glob.glob(str(work / 'runs' / 'pre_ph_*' / '*' / 'checkpoint.pth'))
    run_dir = os.path.dirname(run_dir)
    final = os.path.join(run_dir, 'resnet18_epoch3.pth')
    assert not os.path.exists(final), 'the pretraining ended before it was killed'
    res = run(script, *argv, '--work', work, '--out', out, timeout=900)
    expect_ok(res)
    assert f'resuming the interrupted run {run_dir}' in res.out, res.out[-3000:]
    result = json.loads((out / 'transfer_t.json').read_text())
    assert result['pretraining']['ph']['run_dir'] == run_dir  # continued in place, not a new folder
    assert os.listdir(os.path.dirname(run_dir)) == [os.path.basename(run_dir)]
    assert (out / 'transfer_t.md').read_text().count('| PH labels') == 1
    # an uninterrupted run of the same command in another work folder: the same weights, exactly (CPU)
    ref = ctx.tmp / 'ref'
    expect_ok(run(script, *argv, '--work', ref, '--out', ctx.tmp / 'ref_results', timeout=900))
    ref_weights = json.loads((ctx.tmp / 'ref_results' / 'transfer_t.json').read_text())['pretraining']['ph']['weights']
    a, b = torch.load(final, weights_only=True), torch.load(ref_weights, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('transfer')
