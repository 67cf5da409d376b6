"""The fault matrix of pretraining.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import glob
import os
import shutil
import signal

import numpy as np
from PIL import Image

from tests import faultrows  # noqa: F401 (registers the rows run on several scripts)
from tests.faultlib import (  # noqa: F401 (the fixtures and the test of the matrix)
    PT_DIM,
    TINY,
    _finish,
    _label_dir,
    _popen_group,
    _wait_for,
    base_argv,
    base_inputs,
    case,
    data,
    expect_error,
    expect_ok,
    half_written,
    kill_when,
    matrix,
    only_run_dir,
    popen,
    read_log,
    run,
    test_fault,
)


@case(
    'pretraining',
    'missing diagram file',
    'exit 2: N of M images have no diagram in DIR (first: NAME); run PHdict.py -- before any training; '
    'a missing labels_TYPE.txt: no labels_TYPE.npy/.txt in DIR; run PHdict.py ... --label_type TYPE',
)
def _missing_diagram(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ph = ctx.tmp / 'ph'
    shutil.copytree(d.gen_ph, ph)
    os.remove(ph / 'v00000007.npy')
    ctx.inputs(d.gen, ph)
    argv = ['-t', d.gen, '-pd', ph, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), '1 of 16 images have no diagram', ph, 'v00000007.jpg', 'PHdict.py')
    labels = _label_dir(ctx, d, np.zeros((16, PT_DIM), np.float32), write_txt=False)
    argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), 'no labels_histogram.npy/.txt', labels, '--label_type histogram')
    assert not out.exists()


def _same_tensors(a, b, where=''):
    """Nested dicts/lists of tensors and numbers equal element for element (tensors bit for bit)."""
    import torch

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f'{where}/{k}')
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tensors(x, y, f'{where}/{i}')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _same_weights(a, b, keys=None):
    """The weights files (or the ``keys`` entries of the checkpoints) ``a`` and ``b`` hold equal tensors."""
    import torch

    sa = torch.load(a, map_location='cpu', weights_only=True)
    sb = torch.load(b, map_location='cpu', weights_only=True)
    if keys:
        sa, sb = {k: sa[k] for k in keys}, {k: sb[k] for k in keys}
    _same_tensors(sa, sb)


@case(
    'pretraining',
    'SIGKILL mid-run, --resume',
    'checkpoint.pth under its final name always loads; --resume RUN_DIR finishes with weights equal tensor '
    'by tensor (and the same per-epoch losses) to an uninterrupted run',
)
def _kill_training(ctx, script):
    import torch

    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    common = ['-t', d.gen, '-pd', d.gen_ph, '-nc', PT_DIM, '-e', 2, '-b', 8, '-si', 1, *TINY]
    ref_out, out = ctx.tmp / 'ref', ctx.tmp / 'killed'
    ctx.outputs(ref_out, out)
    p_ref = popen(script, '-o', ref_out, *common)
    p = popen(script, '-o', out, *common)
    assert kill_when(p, lambda: glob.glob(str(out / '*' / 'checkpoint.pth')), timeout=400), (
        "the run ended before it could be killed"
    )
    ref_res = p_ref.communicate(timeout=400)
    assert p_ref.returncode == 0, ref_res[1][-3000:]
    run_dir = only_run_dir(out)
    assert not half_written(run_dir)
    epoch = torch.load(os.path.join(run_dir, 'checkpoint.pth'), weights_only=True)['epoch']
    assert epoch == 1  # killed after the first epoch's checkpoint, before the end of the second
    assert not os.path.exists(os.path.join(run_dir, 'resnet18_epoch2.pth'))
    expect_ok(run(script, *common, '--resume', run_dir))
    ref_dir = only_run_dir(ref_out)
    _same_weights(os.path.join(run_dir, 'resnet18_epoch2.pth'), os.path.join(ref_dir, 'resnet18_epoch2.pth'))
    _same_weights(
        os.path.join(run_dir, 'checkpoint.pth'),
        os.path.join(ref_dir, 'checkpoint.pth'),
        keys=('model', 'optimizer', 'lr_scheduler', 'epoch', 'rng'),
    )
    log, ref_log = read_log(run_dir), read_log(ref_dir)
    assert [r['epoch'] for r in log] == [1, 2]
    assert [r['train_loss'] for r in log] == [r['train_loss'] for r in ref_log]


@case(
    'pretraining',
    'Ctrl-C as an epoch ends (DataLoader workers forking)',
    'exit 130 (never 0): one line naming --resume; checkpoint intact; --resume finishes the run',
)
def _sigint_training(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = base_argv(script, d, out)
    argv[argv.index('-e') + 1] = 3
    argv[argv.index('-nw') + 1] = 2
    p = _popen_group(script, *argv)
    logs = lambda: glob.glob(str(out / '*' / 'log.jsonl'))  # noqa: E731
    assert _wait_for(p, lambda: logs() and os.path.getsize(logs()[0]) > 0, timeout=180), 'no epoch finished'
    os.killpg(p.pid, signal.SIGINT)
    res = _finish(p, timeout=120)
    assert res.rc == 130 and 'Traceback' not in res.err, res
    last = res.err.strip().splitlines()[-1]
    assert last.startswith('interrupted by SIGINT') and '--resume' in last, res
    run_dir = only_run_dir(out)
    import torch

    if os.path.exists(os.path.join(run_dir, 'checkpoint.pth')):  # written whole, or not at all
        epoch = torch.load(os.path.join(run_dir, 'checkpoint.pth'), map_location='cpu', weights_only=True)['epoch']
        assert epoch == len(read_log(run_dir)), (epoch, read_log(run_dir))
        res = expect_ok(run(script, *argv, '--resume', run_dir))
        assert len(read_log(run_dir)) == 3, res
    else:
        assert not read_log(run_dir)[1:], 'an epoch was logged but its checkpoint was lost'


# ====================================================================================================
# issue 13: the small ones
# ====================================================================================================


@case('pretraining', '--stop_after -3', 'exit 2: names --stop_after; nothing created')
def _stop_after_negative(ctx, script):
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    expect_error(run(script, *base_argv(script, ctx.data, out), '--stop_after', -3), '--stop_after')
    assert not out.exists()


@case(
    'pretraining',
    'label lookup by name (a.png/a.jpg, a/img.jpg/b/img.jpg, x.jpg/x.JPG)',
    'exit 2 naming the images that would share a label; an unambiguous flat (original) naming is accepted',
)
def _label_lookup(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    names = sorted(os.listdir(d.gen))
    jpgs = [n for n in names if n.endswith('.jpg')]
    flat = ctx.tmp / 'flat_ph'  # the original's naming: <basename>.npy
    flat.mkdir()
    for n in jpgs:
        shutil.copy(d.gen_ph / (n[:-4] + '.npy'), flat / (n[:-4] + '.npy'))
    base = ['-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    nested = ctx.tmp / 'nested'  # a/<img>.jpg only: flat naming is unambiguous
    (nested / 'a').mkdir(parents=True)
    for n in jpgs:
        shutil.copy(d.gen / n, nested / 'a' / n)
    ctx.outputs(ctx.tmp / 'ok')
    res = expect_ok(run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'ok', *base))
    assert 'cannot check' in res.err, res  # the original's diagrams carry no record
    shutil.copytree(nested / 'a', nested / 'b')  # b/<img>.jpg too: which diagram is whose?
    expect_error(
        run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o1', *base),
        'a/v00000000.jpg',
        'b/v00000000.jpg',
        'flat',
    )
    shutil.rmtree(nested / 'b')
    shutil.copy(nested / 'a' / jpgs[0], nested / 'a' / (jpgs[0][:-4] + '.JPG'))
    expect_error(
        run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o2', *base), jpgs[0], jpgs[0][:-4] + '.JPG', 'share'
    )
    os.remove(nested / 'a' / (jpgs[0][:-4] + '.JPG'))
    Image.open(nested / 'a' / jpgs[0]).save(nested / 'a' / (jpgs[0][:-4] + '.png'))
    expect_error(run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o3', *base), jpgs[0][:-4] + '.png', 'share')
    matrix = ctx.tmp / 'mat'  # a matrix is matched by relative path only
    expect_ok(
        run('PHdict', d.gen, '-o', matrix, '-it', 'jpg', '-nw', 1, '--label_type', 'histogram', '--numof_dims', PT_DIM)
    )
    os.remove(nested / 'a' / (jpgs[0][:-4] + '.png'))
    expect_error(
        run(script, '-t', nested, '-pd', matrix, '-pc', '--label_type', 'histogram', '-o', ctx.tmp / 'o4', *base),
        'no row',
        'a/v00000000.jpg',
        'same folder',
    )


@case(
    'pretraining',
    '--resume with other settings; resuming a finished run',
    'exit 2 listing each changed setting, no args_resume_*.json left; workers/-e/--stop_after may change; '
    'a finished run says so (exit 0)',
)
def _resume_changes(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    common = ['-t', d.gen, '-pd', d.gen_ph, '-o', out, '-b', 8, *TINY]
    expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 1))
    run_dir = only_run_dir(out)
    res = expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 1, '--resume', run_dir))
    assert 'already finished' in res.out and 'stopped after' not in res.out, res
    before = sorted(os.listdir(run_dir))
    for change, words in (
        (['-nc', 20], ('--numof_classes', '40 -> 20')),
        (['-nc', PT_DIM, '--seed', 5, '--lr_pre', 0.5], ('--seed: 1 -> 5', '--lr_pre')),
        (['-nc', PT_DIM, '--filtration', 'distance'], ('--filtration',)),
    ):
        expect_error(run(script, *common, *change, '-e', 2, '--resume', run_dir), '--resume', *words)
    assert sorted(os.listdir(run_dir)) == before  # nothing written by a refused resume
    res = expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 2, '--stop_after', 1, '--resume', run_dir))
    assert os.path.exists(os.path.join(run_dir, 'resnet18_epoch2.pth')), res


pytest_generate_tests, ledger = matrix('pretraining')
