"""The fault matrix of pretraining.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import glob
import importlib
import json
import os
import shutil
import signal

import numpy as np
from PIL import Image

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import (
    PT_DIM,
    TINY,
    _finish,
    _label_dir,
    _popen_group,
    _wait_for,
    base_argv,
    base_inputs,
    case,
    expect_error,
    expect_ok,
    half_written,
    kill_when,
    only_run_dir,
    popen,
    read_log,
    run,
    tree_digests,
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


@case(
    'pretraining',
    '--cache_dir whose cache.json is missing or corrupt',
    'exit 2: one line naming --cache_dir and cache.json; nothing in the cache changed, no run folder',
)
def _cache_record(ctx, script):
    cache = ctx.tmp / 'cache'
    out = ctx.tmp / 'out'
    argv = ['-o', out, '-nc', PT_DIM, '-n', 8, '-nv', 4, '-e', 1, '-b', 8, '--cache_dir', cache, *TINY]
    ctx.outputs(cache, out)
    expect_ok(run(script, *argv))
    shutil.rmtree(out)
    meta = cache / 'cache.json'
    recorded = meta.read_text()
    for damage in ('missing', 'corrupt'):
        if damage == 'missing':
            meta.unlink()
        else:
            meta.write_text(recorded[: len(recorded) // 2])  # torn: not JSON
        before = tree_digests(cache)
        line = expect_error(run(script, *argv, '--filtration', 'distance'), '--cache_dir', 'cache.json')
        assert ('no record' in line) if damage == 'missing' else ('cannot be read' in line), line
        assert tree_digests(cache) == before and not out.exists()
    meta.write_text(recorded)  # the record back: the cache is used again
    expect_ok(run(script, *argv))


@case(
    'pretraining',
    '--resume with a checkpoint.pth of another run copied in (same head; another head; no settings inside)',
    'exit 2: one line naming its checkpoint and the differing settings (or the head sizes); no args_resume_*.json '
    'left; the run folder unchanged',
)
def _foreign_checkpoint(ctx, script):
    import torch

    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    common = ['-t', d.gen, '-pd', d.gen_ph, '-b', 8, *TINY]
    dirs = {}
    for name, extra in (('mine', []), ('other_seed', ['--seed', 7]), ('other_head', ['-nc', 20])):
        argv = ['-nc', PT_DIM, *extra] if '-nc' not in extra else extra
        expect_ok(run(script, *common, '-o', ctx.tmp / name, *argv, '-e', 2, '--stop_after', 1))
        dirs[name] = only_run_dir(ctx.tmp / name)
    mine = dirs['mine']
    ctx.outputs(ctx.tmp)
    resume = [*common, '-o', ctx.tmp / 'mine', '-nc', PT_DIM, '-e', 2, '--resume', mine]
    checkpoint = os.path.join(mine, 'checkpoint.pth')
    shutil.copy(checkpoint, ctx.tmp / 'own.pth')
    headless = torch.load(os.path.join(dirs['other_head'], 'checkpoint.pth'), weights_only=True)
    del headless['args']  # a checkpoint that records no settings: only its tensors tell
    torch.save(headless, ctx.tmp / 'headless.pth')
    for source, words in (
        (os.path.join(dirs['other_seed'], 'checkpoint.pth'), ('its checkpoint', '--seed: 7 -> 1')),
        (os.path.join(dirs['other_head'], 'checkpoint.pth'), ('its checkpoint', '--numof_classes: 20 -> 40')),
        (ctx.tmp / 'headless.pth', ('head of 20 outputs', '40 (-nc)')),
    ):
        shutil.copy(source, checkpoint)
        before = tree_digests(mine)
        expect_error(run(script, *resume), '--resume', *words)
        assert tree_digests(mine) == before and not glob.glob(os.path.join(mine, 'args_resume_*'))
    shutil.copy(ctx.tmp / 'own.pth', checkpoint)  # its own checkpoint back: the run resumes
    expect_ok(run(script, *resume))
    assert os.path.exists(os.path.join(mine, 'resnet18_epoch2.pth'))


def _ph_matrix(src, out, *extra):
    """PHdict.py's histogram label matrix (-nc PT_DIM) of ``src`` in ``out``, with ``extra`` label flags."""
    dims = ['--label_type', 'histogram', '--numof_dims', PT_DIM]
    return expect_ok(run('PHdict', src, '-o', out, '-it', 'jpg', '-nw', 1, *dims, *extra))


@case(
    'pretraining',
    'explicit -pd made with other settings than the flags; -val images the label matrix lacks',
    'exit 2 naming -pd and the differing flag (--max_life, --filtration); with the same flags exit 0, args.json '
    'records them, and the validation labels are computed with them (equal to PHdict.py\'s), said so',
)
def _explicit_pd(ctx, script):
    from util.cli import build, compat, flags
    from util.ph.labels import load_label_matrix

    d = ctx.data
    ph, ph_val, valx = ctx.tmp / 'ph', ctx.tmp / 'ph_val', ctx.tmp / 'valx'
    valx.mkdir()
    for p in sorted(d.gen64.glob('*.jpg'))[:4]:  # other pictures, some under the names of -t's
        shutil.copy(p, valx / p.name)
    ctx.inputs(d.gen, d.gen_ph, d.gen64)
    _ph_matrix(d.gen, ph, '--max_life', 5)
    _ph_matrix(valx, ph_val, '--max_life', 5)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    base = ['-t', d.gen, '-pd', ph, '-pc', '-nc', PT_DIM, '-e', 1, '-b', 8, '-o', out, *TINY]
    expect_error(run(script, *base), '-pd', '--max_life 5', 'this run: 50')
    expect_error(run(script, *base, '-val', valx), '-pd', '--max_life 5')
    expect_error(
        run(script, '-t', d.gen, '-pd', d.gen_ph, '--filtration', 'distance', '-nc', PT_DIM, '-o', out, *TINY),
        '-pd',
        '--filtration',
        'signed_distance',
    )
    assert not out.exists()
    res = expect_ok(run(script, *base, '--max_life', 5, '-val', valx))
    assert f'-val {valx}' in res.out and 'computed in the loader with the settings of -pd' in res.out, res
    with open(os.path.join(only_run_dir(out), 'args.json')) as f:
        recorded = json.load(f)
    assert recorded['max_life'] == 5 and recorded['label_matrix'].startswith('labels_histogram.npy blake2b ')
    args = (
        importlib.import_module('pretraining')
        .get_args_parser()
        .parse_args([str(a) for a in (*base, '--max_life', 5, '-val', valx)])
    )
    compat.resolve_special_values(args)
    flags.check_common_args(args)
    flags.check_mode_args(args)
    _, val = build.build_pretraining_sets(args)
    matrix, names = load_label_matrix(ph_val / 'labels_histogram.npy', ph_val / 'labels_histogram.txt', PT_DIM)
    for i, rel in enumerate(val.rel_paths):
        np.testing.assert_allclose(val[i][1], matrix[names.index(rel)], atol=1e-6, err_msg=rel)


@case(
    'pretraining',
    '--resume after the label matrix was recomputed (other parameters; other images)',
    'exit 2: names -pd and the parameter, or says the label matrix was recomputed; no args_resume_*.json',
)
def _resume_relabelled(ctx, script):
    d = ctx.data
    images, ph = ctx.tmp / 'images', ctx.tmp / 'ph'
    shutil.copytree(d.gen, images)
    _ph_matrix(images, ph, '--max_life', 5)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-t', images, '-pd', ph, '-pc', '-nc', PT_DIM, '--max_life', 5, '-b', 8, '-o', out, *TINY]
    expect_ok(run(script, *argv, '-e', 2, '--stop_after', 1))
    run_dir = only_run_dir(out)
    resume = [*argv, '-e', 2, '--resume', run_dir]
    _ph_matrix(images, ph, '--max_life', 6)  # recomputed with another range
    expect_error(run(script, *resume), '-pd', '--max_life 6', 'this run: 5')
    expect_error(
        run(script, *[a if a != 5 else 6 for a in resume]), '--max_life: 5.0 -> 6.0', 'label matrix was recomputed'
    )
    first = sorted(images.glob('*.jpg'))[0]
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(first)  # an image replaced ...
    _ph_matrix(images, ph, '--max_life', 5)  # ... and the matrix recomputed with the run's parameters
    expect_error(run(script, *resume), '--resume', 'label matrix was recomputed')
    assert not glob.glob(os.path.join(run_dir, 'args_resume_*'))


@case(
    'pretraining',
    '--resume a fine-tuning run with pretraining.py (and --label_norm standard)',
    'exit 2: one line naming the mode (-lm finetuning, not -lm pretraining) before any other setting',
)
def _resume_other_mode(ctx, script):
    d = ctx.data
    ctx.inputs(d.task, d.gen, d.gen_ph)
    ft = ctx.tmp / 'ft'
    ctx.outputs(ft)
    expect_ok(run('finetuning', '-t', d.task / 'train', '-val', d.task / 'val', '-o', ft, '-nc', 2, '-e', 1, *TINY))
    run_dir = only_run_dir(ft)
    before = tree_digests(run_dir)
    for extra in ([], ['--label_norm', 'standard']):
        argv = ['-t', d.gen, '-pd', d.gen_ph, '-nc', PT_DIM, '-o', ctx.tmp / 'out', *TINY, '--resume', run_dir]
        line = expect_error(
            run(script, *argv, *extra),
            '-lm finetuning',
            'not -lm pretraining',
        )
        assert '--label_norm' not in line, line
    assert tree_digests(run_dir) == before


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('pretraining')


# ---- issue 26: run-time faults ----


@case(
    'pretraining',
    'torchrun --nproc_per_node 2 with -p nccl on a machine without GPUs',
    'exit non-zero: at most one line per rank, "error: -p nccl ... -p gloo", no traceback of ours (torchrun adds '
    'its own summary of the failed ranks); no run folder',
)
def _torchrun_nccl_without_gpus(ctx, script):
    import subprocess
    import sys

    import pytest
    import torch

    from tests.conftest import ROOT

    if torch.cuda.is_available():
        pytest.skip('a GPU is visible: NCCL can run here')
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    cmd += [os.path.join(ROOT, 'pretraining.py'), *map(str, base_argv(script, ctx.data, out)), '-p', 'nccl']
    res = subprocess.run(cmd, cwd=ROOT, env=faultlib._env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0, res.stderr[-3000:]
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith('error: ')]
    assert 1 <= len(ours) <= 2 and len(set(ours)) == 1, res.stderr[-3000:]
    assert '-p nccl' in ours[0] and 'CUDA' in ours[0] and '-p gloo' in ours[0], ours
    assert 'ProcessGroupNCCL' not in res.stderr and f'File "{ROOT}' not in res.stderr, res.stderr[-3000:]
    assert not out.exists()
