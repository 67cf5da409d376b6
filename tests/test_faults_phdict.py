"""The fault matrix of PHdict.py.

Its own rows are here; rows run on several scripts are in tests/faultrows.py, the machinery
in tests/faultlib.py.
"""

import glob
import json
import os
import signal

import numpy as np
from PIL import Image

from tests import faultlib, faultrows  # noqa: F401 (faultrows registers the rows run on several scripts)
from tests.faultlib import (
    _finish,
    _popen_group,
    _wait_for,
    case,
    digest,
    expect_error,
    expect_ok,
    half_written,
    kill_when,
    popen,
    run,
    smooth_noise,
    tree_digests,
)


@case(
    'PHdict',
    'SIGKILL mid-run, rerun',
    'only complete .npy under final names; the rerun computes the rest; diagrams and label matrix '
    'byte-identical to an uninterrupted run',
)
def _kill_ph(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    ref = d.ph64_ref
    killed = ctx.tmp / 'killed'
    ctx.outputs(killed)
    p = popen(script, d.gen64, '-o', killed, *d.PH64_ARGS)
    assert kill_when(p, lambda: len(glob.glob(str(killed / 'v*.npy'))) >= 16)
    present = {os.path.basename(p) for p in glob.glob(str(killed / 'v*.npy'))}
    assert 16 <= len(present) < 64 and not (killed / 'labels_histogram.npy').exists()
    assert not half_written(killed)
    # a diagram counts as done once sources.jsonl records what it was made from (appended right after the
    # rename): a kill between the two leaves at most the one diagram being recorded, which is recomputed
    recorded = set()
    for line in (killed / 'sources.jsonl').read_text().splitlines():
        try:
            recorded.add(json.loads(line)['output'])
        except ValueError:
            pass  # the line the kill tore
    done = len(present & recorded)
    assert len(present) - done <= 1, (sorted(present - recorded), len(present))
    res = expect_ok(run(script, d.gen64, '-o', killed, *d.PH64_ARGS))
    assert f'{64 - done} done, {done} skipped' in res.out, res
    assert tree_digests(killed, only='.npy') == tree_digests(ref, only='.npy')
    assert digest(killed / 'labels_histogram.txt') == digest(ref / 'labels_histogram.txt')


# ====================================================================================================
# concurrency
# ====================================================================================================


def _compare_ph64(out, ref):
    assert tree_digests(out, only='.npy', skip_tmp=True).keys() >= tree_digests(ref, only='.npy').keys()
    for rel, h in tree_digests(ref, only='.npy').items():
        assert tree_digests(out, only=rel)[rel] == h, rel
    assert digest(out / 'labels_histogram.txt') == digest(ref / 'labels_histogram.txt')
    with open(out / 'labels_histogram.json') as f, open(ref / 'labels_histogram.json') as g:
        a, b = json.load(f), json.load(g)
    a.pop('shards', None)
    assert a == b
    names = (ref / 'labels_histogram.txt').read_text().splitlines()
    assert len(names) == 64 == len(set(names))


@case(
    'PHdict',
    'two processes, shards 0/2 and 1/2 at once',
    'both exit 0; every image exactly once; diagrams and merged label matrix byte-identical to one process',
)
def _concurrent_shards(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    ref = d.ph64_ref
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    procs = [popen(script, d.gen64, '-o', out, '--shard', f'{k}/2', *d.PH64_ARGS) for k in (0, 1)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    parts = [(out / f'labels_histogram.shard-{k}-of-2.txt').read_text().splitlines() for k in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) + len(parts[1]) == 64
    _compare_ph64(out, ref)


@case(
    'PHdict',
    'two processes on the same shard at once',
    'both exit 0; no file corrupted; outputs byte-identical to one process',
)
def _concurrent_same(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    procs = [popen(script, d.gen64, '-o', out, *d.PH64_ARGS) for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    _compare_ph64(out, d.ph64_ref)


# ====================================================================================================
# issue 13: hangs and signals -- a dead worker is named, an interrupt is one line, 130/143, resumable
# ====================================================================================================


def _slow_ph_folder(root):
    """8 small PNGs and one 1500 x 1500 PNG (about a second of PH: a worker is surely busy on it)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(8):
        Image.fromarray(smooth_noise(rng, 48, 48)).save(root / f'a{i}.png')
    Image.fromarray(smooth_noise(rng, 1500, 1500, sigma=3)).save(root / 'zbig.png')
    return root


def _children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


@case(
    'PHdict',
    'a pool worker SIGKILLed (OOM killer) mid-image',
    'exit 1 within a minute: one line naming the image and how to resume; finished diagrams kept; '
    'rerun completes them byte-identical to an undisturbed run',
)
def _dead_worker(ctx, script):
    src = _slow_ph_folder(ctx.tmp / 'in')
    ctx.inputs(src)
    out, ref = ctx.tmp / 'out', ctx.tmp / 'ref'
    ctx.outputs(out, ref)
    argv = ['-it', 'png', '-nw', 2, '--label_type', 'histogram', '--numof_dims', 20]
    p = _popen_group(script, src, '-o', out, *argv)
    assert _wait_for(p, lambda: glob.glob(str(out / 'a*.npy')) and len(_children(p.pid)) == 2), 'no workers seen'
    for child in _children(p.pid):
        os.kill(child, signal.SIGKILL)
    res = _finish(p, timeout=60)
    line = expect_error(res, 'died', 'SIGKILL', 'resume', rc=1)
    assert any(f'{n}.png' in line for n in ['zbig'] + [f'a{i}' for i in range(8)]), line
    assert not (out / 'labels_histogram.npy').exists()
    kept = tree_digests(out, only='.npy')
    assert kept
    expect_ok(run(script, src, '-o', out, *argv))
    expect_ok(run(script, src, '-o', ref, *argv))
    after = tree_digests(out, only='.npy')
    assert after == tree_digests(ref, only='.npy') and all(after[k] == h for k, h in kept.items())


def _interrupt_ph(ctx, script, sig, rc):
    src = _slow_ph_folder(ctx.tmp / 'in')
    ctx.inputs(src)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-it', 'png', '-nw', 2]
    p = _popen_group(script, src, '-o', out, *argv)
    assert _wait_for(p, lambda: glob.glob(str(out / 'a*.npy'))), 'the run ended before any output'
    os.killpg(p.pid, sig)  # as a terminal sends Ctrl-C: to the whole process group
    res = _finish(p, timeout=60)
    assert res.rc == rc and 'Traceback' not in res.err, res
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip() and not ln.startswith('PH:')]
    assert lines[-1].startswith(f'interrupted by {signal.Signals(sig).name}') and 'resume' in lines[-1], res
    res = expect_ok(run(script, src, '-o', out, *argv))
    assert '0 failed of 9 files' in res.out, res


@case(
    'PHdict',
    'Ctrl-C (SIGINT to the process group) mid-run',
    'exit 130: one line "interrupted ... to resume"; workers gone; rerun completes',
)
def _sigint_ph(ctx, script):
    _interrupt_ph(ctx, script, signal.SIGINT, 130)


@case(
    'PHdict',
    'SIGTERM to the process group mid-run',
    'exit 143: one line "interrupted ... to resume"; workers gone; rerun completes',
)
def _sigterm_ph(ctx, script):
    _interrupt_ph(ctx, script, signal.SIGTERM, 143)


@case('PHdict', '-nw 0 (as the other scripts)', 'exit 0: computed in this process')
def _phdict_nw0(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    ctx.inputs(ctx.data.gen)
    res = expect_ok(run(script, ctx.data.gen, '-o', out, '-it', 'jpg', '-nw', 0))
    assert '16 done, 0 skipped, 0 failed of 16 files' in res.out, res
    assert tree_digests(out, only='.npy') == tree_digests(ctx.data.gen_ph, only='.npy')


# ====================================================================================================
# issue 26: degenerate labels, label statistics, flags checked before any folder
# ====================================================================================================


def _constant_images(root):
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / f'black{i}.png')
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / f'white{i}.png')
    return root


@case(
    'PHdict',
    'all-black / all-white images with --max_life/--sigma auto and --label_norm standard',
    'exit 0 with warnings: auto could not be fitted (no finite pairs) and the values used; a constant label '
    'matrix (diagnostics say why); --label_norm standard on constant components; the json records it',
)
def _constant_label_matrix(ctx, script):
    src = _constant_images(ctx.tmp / 'flat')
    ctx.inputs(src)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-it', 'png', '-nw', 0, '--label_type', 'persistence_image', '--numof_dims', 50]
    res = expect_ok(
        run(script, src, '-o', out, *argv, '--max_life', 'auto', '--sigma', 'auto', '--label_norm', 'standard')
    )
    warnings = [ln for ln in res.err.splitlines() if ln.startswith('warning: ')]
    assert any('could not be fitted' in w and 'no finite pairs' in w and 'max_life 50.0' in w for w in warnings), res
    assert any('every label is the same' in w and 'all black or all white' in w for w in warnings), res
    assert any('--label_norm standard: every label component is constant' in w for w in warnings), res
    assert 'fitted on' not in res.out and 'every label is the same (no variance)' in res.out, res
    meta = json.loads((out / 'labels_persistence_image.json').read_text())
    assert meta['auto']['without_pairs'] == ['H0', 'H1'] and meta['diagnostics']['constant'] is True
    assert meta['label_norm']['constant'] == list(range(50))
    # without auto and --label_norm: the diagnostics still say it (no '-' and silence)
    res = expect_ok(run(script, src, '-o', ctx.tmp / 'plain', *argv))
    assert 'warning: every label is the same' in res.err, res


@case(
    'PHdict',
    '--label_norm_components above what the rows allow (99 on 16 images)',
    'exit 0: one note line naming --label_norm_components and the number kept; labels_TYPE.json records the '
    'directions kept (k, and the K asked)',
)
def _whiten_components(ctx, script):
    ctx.inputs(ctx.data.gen)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-it', 'jpg', '-nw', 0, '--label_type', 'histogram', '--numof_dims', 20, '--label_norm', 'whiten']
    res = expect_ok(run(script, ctx.data.gen, '-o', out, *argv, '--label_norm_components', 99))
    notes = [ln for ln in res.err.splitlines() if '--label_norm_components 99' in ln]
    assert len(notes) == 1 and 'keeping 15' in notes[0], res
    assert 'label whitening (--label_norm whiten, 15 directions)' in res.out, res
    rec = json.loads((out / 'labels_histogram.json').read_text())['label_whiten']
    assert rec['k'] == len(rec['scales']) == len(rec['components']) == 15 and rec['asked'] == 99, rec
    expect_error(
        run(script, ctx.data.gen, '-o', ctx.tmp / 'zero', *argv, '--label_norm_components', 0),
        '--label_norm_components',
    )
    assert not (ctx.tmp / 'zero').exists()


@case(
    'PHdict',
    'degeneracy advice with the levers already in use (split_image, --size_normalise, auto, whiten)',
    'the warnings (printed and recorded for the plot and summary) never suggest a lever the run already uses',
)
def _advice_in_use(ctx, script):
    from util.ph import diagnostics

    ctx.inputs(ctx.data.gen)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-it', 'jpg', '-nw', 0, '--label_type', 'split_image', '--numof_dims', 40, '--size_normalise']
    argv += ['--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto', '--label_norm', 'whiten']
    res = expect_ok(run(script, ctx.data.gen, '-o', out, *argv))
    diag = json.loads((out / 'labels_split_image.json').read_text())['diagnostics']
    assert diag['settings']['label_type'] == 'split_image' and diag['settings']['size_normalise'] is True
    forced = dict(diag, first_component_share=0.95, counts_r2=0.95, generator_params_r2=0.95)  # as if degenerate
    advice = [
        *diagnostics.degeneracy_warnings(forced),
        *(ln for ln in res.err.splitlines() if ln.startswith('warning')),
    ]
    assert len(advice) >= 3
    for lever in ('split_image', '--size_normalise', '--max_life', '--max_birth', '--sigma', '--label_norm'):
        assert not any(lever in a for a in advice), (lever, advice)


@case(
    'PHdict',
    'bad flags found only later: --max_life -5, --shard 3/2, --size_normalise with a grey filtration among several',
    'exit 2 before any folder or PH: one line naming the flag (and the filtration); several size filtrations with '
    '--size_normalise run',
)
def _late_flags(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen)
    out = ctx.tmp / 'out'
    lab = ['-it', 'jpg', '-nw', 0, '--label_type', 'histogram', '--numof_dims', 20]
    expect_error(run(script, d.gen, '-o', out, *lab, '--max_life', -5), '--max_life', '-5')
    expect_error(run(script, d.gen, '-o', out, '-it', 'jpg', '-ch', '--max_life', -5), '--max_life')
    expect_error(run(script, d.gen, '-o', out, '-it', 'jpg', '--shard', '3/2'), '--shard')
    res = run(script, d.gen, '-o', out, *lab, '--size_normalise', '--filtration', 'signed_distance', 'none')
    expect_error(res, '--size_normalise', '--filtration none')
    assert '--- filtration' not in res.out and not out.exists(), res
    ok = ctx.tmp / 'ok'
    ctx.outputs(ok)
    res = expect_ok(
        run(script, d.gen, '-o', ok, *lab, '--size_normalise', '--filtration', 'signed_distance', 'distance')
    )
    assert 'pretrain with -nc 40 --filtration signed_distance distance --size_normalise' in res.out, res
    assert json.loads((ok / 'labels_histogram.json').read_text())['size_normalise'] == 256


@case(
    'PHdict',
    'several --filtration into a folder of one filtration (and back)',
    'exit 2 before any PH: one line naming -o and what it holds; the label files there unchanged (never a '
    'multi-filtration matrix beside single-filtration diagrams and settings)',
)
def _mixed_filtration_folder(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen)
    single, several = ctx.tmp / 'single', ctx.tmp / 'several'
    ctx.outputs(single, several)
    lab = ['-it', 'jpg', '-nw', 0, '--label_type', 'histogram', '--numof_dims', 20]
    expect_ok(run(script, d.gen, '-o', single, *lab))
    before = tree_digests(single)
    res = run(script, d.gen, '-o', single, *lab, '--filtration', 'signed_distance', 'none')
    expect_error(res, single, 'one filtration', '-o')
    assert tree_digests(single) == before and not (single / 'filtration_none').exists()
    expect_ok(run(script, d.gen, '-o', several, *lab, '--filtration', 'signed_distance', 'none'))
    before = tree_digests(several)
    expect_error(
        run(script, d.gen, '-o', several, *lab), several, 'several filtrations', '--filtration signed_distance none'
    )
    assert tree_digests(several) == before
    res = expect_ok(run(script, d.gen, '-o', several, *lab, '--filtration', 'signed_distance', 'none'))  # resumes
    assert tree_digests(several, only='.npy') == {k: v for k, v in before.items() if k.endswith('.npy')}


@case(
    'PHdict',
    '--label_type ph_class with --ph_classes below 2 or above the number of images (issue 28)',
    'exit 2 before any PH: one line naming --ph_classes and the limit; no output folder',
)
def _ph_class_count(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen)
    out = ctx.tmp / 'out'
    base = [d.gen, '-o', out, '-it', 'jpg', '-nw', 1, '--label_type', 'ph_class', '--numof_dims', 20]
    expect_error(run(script, *base, '--ph_classes', 1), '--ph_classes must be at least 2', 'got 1')
    expect_error(run(script, *base, '--ph_classes', 17), '--ph_classes 17', 'the 16 images', 'at most 16')
    expect_error(
        run(script, *base, '--ph_classes', 4, '--filtration', 'signed_distance', 'none'),
        'ph_class',
        'one --filtration',
    )
    assert not out.exists()


data, test_fault = faultlib.data, faultlib.test_fault  # the matrix's fixture and test
pytest_generate_tests, ledger = faultlib.matrix('PHdict')
