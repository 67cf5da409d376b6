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
    from util.cli import build, checks, compat
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
    checks.check_common_args(args)
    checks.check_mode_args(args)
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


# ====================================================================================================
# issue 26: label matrices of several filtrations, --size_normalise, auto ranges
# ====================================================================================================


def _renamed_copies(src, dest, k=4):
    """The first ``k`` images of ``src`` under new names in ``dest`` (rows a label matrix of ``src`` lacks):
    {new name: the original's name}."""
    dest.mkdir()
    names = {}
    for p in sorted(src.glob('*.jpg'))[:k]:
        shutil.copy(p, dest / f'copy_{p.name}')
        names[f'copy_{p.name}'] = p.name
    return names


def _pretraining_sets(argv):
    """(train, val) that pretraining.py builds for ``argv``, in this process."""
    from util.cli import build, checks, compat

    args = importlib.import_module('pretraining').get_args_parser().parse_args([str(a) for a in argv])
    compat.resolve_special_values(args)
    checks.check_common_args(args)
    checks.check_mode_args(args)
    return build.build_pretraining_sets(args)


def _val_rows_equal_train_rows(argv, ph, label_type, names, dim):
    """The -val labels computed in the loader equal the label matrix's rows of the images they copy."""
    from util.ph.labels import load_label_matrix

    _, val = _pretraining_sets(argv)
    stem = ph / f'labels_{label_type}'
    matrix, rows = load_label_matrix(f'{stem}.npy', f'{stem}.txt', dim)
    for i, rel in enumerate(val.rel_paths):
        np.testing.assert_allclose(val[i][1], matrix[rows.index(names[rel])], rtol=1e-5, atol=1e-6, err_msg=rel)


@case(
    'pretraining',
    '-pd -pc label matrix of several filtrations (PHdict refuses to write them over a single-filtration one)',
    'PHdict: exit 2 naming -o, that folder untouched; pretraining: exit 2 naming --filtration A B when the run '
    'gives one (no traceback, no run folder); with --filtration A B '
    'exit 0, and -val labels computed in the loader equal the matrix rows of the same images',
)
def _several_filtrations(ctx, script):
    d = ctx.data
    ph, valx, out = ctx.tmp / 'ph', ctx.tmp / 'valx', ctx.tmp / 'out'
    ctx.inputs(d.gen)
    ctx.outputs(out)
    names = _renamed_copies(d.gen, valx)
    flags = ['-it', 'jpg', '-nw', 1, '--label_type', 'split_image', '--numof_dims', PT_DIM // 2]
    one = ctx.tmp / 'one'
    expect_ok(run('PHdict', d.gen, '-o', one, *flags))  # one filtration's folder: two are not written over it
    before = tree_digests(one)
    expect_error(run('PHdict', d.gen, '-o', one, *flags, '--filtration', 'signed_distance', 'none'), '-o', one)
    assert tree_digests(one) == before
    res = expect_ok(run('PHdict', d.gen, '-o', ph, *flags, '--filtration', 'signed_distance', 'none'))
    assert f'-nc {PT_DIM}' in res.out, res
    base = ['-t', d.gen, '-pd', ph, '-pc', '--label_type', 'split_image', '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *base, '-o', out), '-pd', '--filtration signed_distance none', 'this run')
    two = [*base, '--filtration', 'signed_distance', 'none']
    expect_error(run(script, *two, '-nc', PT_DIM + 4, '-o', out), f'label dimension {PT_DIM}', '-nc')
    assert not out.exists()
    expect_ok(run(script, *two, '-val', valx, '-o', out))
    with open(os.path.join(only_run_dir(out), 'args.json')) as f:
        assert json.load(f)['filtration'] == ['signed_distance', 'none']
    _val_rows_equal_train_rows([*two, '-val', valx], ph, 'split_image', names, PT_DIM)


@case(
    'pretraining',
    '-pd -pc made with --size_normalise and --max_life auto --sigma auto; -val labels computed in the loader',
    'exit 2 naming --size_normalise when the run lacks it (no run folder); with the same flags (auto = as fitted '
    'in -pd) exit 0, args.json records size_normalise and the fitted values, and the -val labels computed in the '
    'loader equal the matrix rows of the same images (same scale)',
)
def _size_normalised_auto(ctx, script):
    d = ctx.data
    ph, valx, out = ctx.tmp / 'ph', ctx.tmp / 'valx', ctx.tmp / 'out'
    ctx.inputs(d.gen)
    ctx.outputs(out)
    names = _renamed_copies(d.gen, valx)
    auto = ['--max_life', 'auto', '--sigma', 'auto']
    pi = ['--label_type', 'persistence_image']
    expect_ok(
        run('PHdict', d.gen, '-o', ph, '-it', 'jpg', '-nw', 1, *pi, '--numof_dims', PT_DIM, *auto, '--size_normalise')
    )
    with open(ph / 'labels_persistence_image.json') as f:
        fitted = json.load(f)['params']
    base = ['-t', d.gen, '-pd', ph, '-pc', *pi, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY, *auto]
    line = expect_error(run(script, *base, '-o', out), '-pd', '--size_normalise')
    assert '--grids' not in line and 'sigma' not in line and 'max_life' not in line, line  # auto: as fitted there
    expect_error(
        run(script, *base, '--size_normalise', '--sigma', 3, '-o', out), f"--sigma {fitted['sigma']!r}", 'this run: 3.0'
    )
    assert not out.exists()
    expect_ok(run(script, *base, '--size_normalise', '-val', valx, '-o', out))
    with open(os.path.join(only_run_dir(out), 'args.json')) as f:
        recorded = json.load(f)
    assert recorded['size_normalise'] is True and recorded['max_life'] == 'auto'
    assert recorded['fitted_max_life'] == fitted['max_life'] and recorded['fitted_sigma'] == fitted['sigma']
    _val_rows_equal_train_rows([*base, '--size_normalise', '-val', valx], ph, 'persistence_image', names, PT_DIM)
    unfitted = ctx.tmp / 'unfitted'  # explicit values there: 'auto' stands for nothing
    expect_ok(run('PHdict', d.gen, '-o', unfitted, '-it', 'jpg', '-nw', 1, *pi, '--numof_dims', PT_DIM))
    argv = ['-t', d.gen, '-pd', unfitted, '-pc', *pi, '-nc', PT_DIM, '--max_life', 'auto', *TINY, '-o', out]
    expect_error(run(script, *argv), '--max_life 50.0', 'not fitted')


@case(
    'pretraining',
    '--max_life auto / several --filtration values where the labels are made in the loader',
    'exit 2 before any folder: -t DIR --max_life auto (no -pd, or -pd of diagrams) names --max_life auto and '
    '-pd PHDIR -pc; several --filtration values for generated images or diagrams name --filtration',
)
def _auto_in_loader(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    tiny = ['-nc', PT_DIM, '-e', 1, '-b', 8, *TINY, '-o', out]
    for extra in ([], ['-pd', d.gen_ph]):
        line = expect_error(run(script, '-t', d.gen, '--max_life', 'auto', *extra, *tiny), '--max_life auto', '-pc')
        assert 'Traceback' not in line
    two = ['--filtration', 'signed_distance', 'none']
    expect_error(run(script, '-n', 8, *two, *tiny), '--filtration signed_distance none', '-t DIR')
    expect_error(run(script, '-t', d.gen, '-pd', d.gen_ph, *two, *tiny), '--filtration', 'add -pc')
    expect_error(run(script, '-t', d.gen, '--size_normalise', '--filtration', 'none', *tiny), '--size_normalise')
    assert not out.exists()


@case(
    'pretraining',
    '--resume with another -nc of a run that recorded label diagnostics (generated images)',
    'exit 2 naming only the flag that differs (--numof_classes), none of the facts the run recorded',
)
def _resume_names_flags(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-n', 8, '-nv', 4, '-b', 8, *TINY, '-o', out]
    expect_ok(run(script, *argv, '-nc', PT_DIM, '-e', 1))
    run_dir = only_run_dir(out)
    with open(os.path.join(run_dir, 'args.json')) as f:
        assert any(k.startswith('label_diagnostics_') for k in json.load(f))  # facts recorded beside the flags
    line = expect_error(run(script, *argv, '-nc', 20, '-e', 2, '--resume', run_dir), '--numof_classes', '1 setting')
    assert 'label_diagnostics' not in line, line


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
    # torchrun's own traceback has frames in site-packages (inside ROOT when the venv is, as .venv / .venv-ci);
    # none may be a frame of this project's code
    ours_frames = [
        ln
        for ln in res.stderr.splitlines()
        if f'File "{ROOT}' in ln and 'site-packages' not in ln and 'runpy' not in ln
    ]
    assert 'ProcessGroupNCCL' not in res.stderr and not ours_frames, res.stderr[-3000:]
    assert not out.exists()


# ---- issue 28: heavier augmentation ----


@case(
    'pretraining',
    'bad --warp_scale / --warp_rotation / --warp_shear values, or --warp_scale with a step that fills borders',
    'exit 2, one line naming the flag and its range (or --random_rotation/--affine/--crop_padding and what to use '
    'instead); no run folder',
)
def _bad_warp_flags(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    argv = ['-n', 8, '-nv', 0, '-ph', 'post', '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY, '-o', out]
    for extra, words in (
        (['--warp_scale', 0, 1], ['--warp_scale', '0 < LO <= HI <= 1']),
        (['--warp_scale', 0.8, 0.2], ['--warp_scale', '0 < LO <= HI <= 1']),
        (['--warp_scale', 0.2, 1.5], ['--warp_scale', '0 < LO <= HI <= 1']),
        (['--warp_scale', 0.2, 1, '--warp_rotation', 200], ['--warp_rotation', '[0, 180]']),
        (['--warp_scale', 0.2, 1, '--warp_rotation', -5], ['--warp_rotation', '[0, 180]']),
        (['--warp_scale', 0.2, 1, '--warp_shear', 60], ['--warp_shear', '[0, 45]']),
        (['--warp_rotation', 30], ['--warp_rotation', 'give --warp_scale']),
        (['--warp_scale', 0.2, 1, '-rr', 30, '--affine'], ['--random_rotation --affine', '--warp_rotation']),
        (['--warp_scale', 0.2, 1, '-cp', 4], ['--crop_padding', '--warp_shear']),
    ):
        expect_error(run(script, *argv, *extra), *words)
    assert not out.exists()


@case(
    'pretraining',
    '--resume of a --warp_scale -ph post run on fresh images with other --warp_* values, or without them',
    'the run records warp_scale/warp_rotation/warp_shear in args.json; exit 2 naming each --warp_* that differs; '
    'the run folder untouched',
)
def _resume_other_warp(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    base = ['-n', 8, '-nv', 0, '-ph', 'post', '-nc', PT_DIM, '-b', 8, *TINY, '-o', out]
    warp = ['--warp_scale', 0.3, 1, '--warp_rotation', 45, '--warp_shear', 10]
    expect_ok(run(script, *base, *warp, '-e', 1))
    run_dir = only_run_dir(out)
    with open(os.path.join(run_dir, 'args.json')) as f:
        recorded = json.load(f)
    assert (recorded['warp_scale'], recorded['warp_rotation'], recorded['warp_shear']) == ([0.3, 1.0], 45.0, 10.0)
    before = tree_digests(run_dir)
    resume = ['-e', 2, '--resume', run_dir]
    other = ['--warp_scale', 0.3, 1, '--warp_rotation', 90, '--warp_shear', 10]
    line = expect_error(run(script, *base, *other, *resume), '--warp_rotation: 45.0 -> 90.0')
    assert '--warp_scale' not in line and '--warp_shear' not in line, line
    expect_error(run(script, *base, *resume), '--warp_scale', '--warp_rotation', '--warp_shear')
    assert tree_digests(run_dir) == before


# ---- issue 28: contrastive ----


@case(
    'pretraining',
    '-lm contrastive with flags it cannot honour',
    'exit 2, one line naming the flag: --temperature <= 0, --proj_dim 0, --label_type class, -ph post, '
    '--freeze_encoder, and with --ph_weight 0 (no PH labels) -pd/-pc, --label_norm, --label_type random, '
    '--cache_dir, -val; no run folder',
)
def _contrastive_flags(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.inputs(d.gen, d.gen_ph)
    base = ['-lm', 'contrastive', '-o', out, '-e', 1, '-b', 8, '-n', 16, *TINY]
    rows = [
        (['--temperature', 0], ['--temperature must be a positive number', '0']),
        (['--temperature', -0.5], ['--temperature must be a positive number', '-0.5']),
        (['--proj_dim', 0], ['--proj_dim must be at least 1']),
        (['-t', d.gen, '--label_type', 'class'], ['--label_type class', '--ph_weight 0']),
        (['-ph', 'post'], ['-ph pre']),
        (['--freeze_encoder'], ['--freeze_encoder', 'drop it']),
        (['--ph_weight', 0, '-t', d.gen, '-pd', d.gen_ph, '-pc'], ['--ph_weight 0', '-pd -pc', 'without PH labels']),
        (['--ph_weight', 0, '--label_norm', 'standard'], ['--ph_weight 0', '--label_norm standard']),
        (['--ph_weight', 0, '--label_type', 'random'], ['--ph_weight 0', '--label_type random']),
        (['--ph_weight', 0, '--cache_dir', ctx.tmp / 'cache'], ['--ph_weight 0', '--cache_dir']),
        (['--ph_weight', 0, '-t', d.gen, '-val', d.gen], ['--ph_weight 0', '-val']),
    ]
    for extra, words in rows:
        expect_error(run(script, *base, *extra), *words)
    assert not out.exists() and not (ctx.tmp / 'cache').exists()


# ---- issue 28: ph_class ----


@case(
    'pretraining',
    '--label_type ph_class with -nc other than its classes, or without its -pd -pc',
    'exit 2 before any folder: one line naming the label dimension K and -nc (a K-way head only), or -pd PHDIR '
    '-pc, or --label_norm; no run folder',
)
def _ph_class_nc(ctx, script):
    d = ctx.data
    ph = ctx.tmp / 'ph'
    ctx.inputs(d.gen)
    expect_ok(
        run(
            'PHdict',
            d.gen,
            '-o',
            ph,
            '-it',
            'jpg',
            '-nw',
            1,
            '--label_type',
            'ph_class',
            '--ph_classes',
            3,
            '--numof_dims',
            20,
        )
    )
    out = ctx.tmp / 'out'
    base = ['-t', d.gen, '-o', out, '-e', 1, '-b', 8, '--label_type', 'ph_class', *TINY]
    expect_error(run(script, *base, '-pd', ph, '-pc', '-nc', 5), 'label dimension 3', '-nc', 'this run: 5')
    expect_error(run(script, *base, '-pd', ph, '-nc', 3), '--label_type ph_class', '-pd PHDIR -pc')
    expect_error(run(script, *base, '-pd', ph, '-pc', '-nc', 3, '--label_norm', 'standard'), 'drop --label_norm')
    assert not out.exists()
