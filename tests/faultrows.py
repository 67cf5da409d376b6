"""Fault-matrix rows run on several scripts (registered in tests.faultlib.CASES; run by tests/test_faults_*.py)."""

import csv
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import struct

import numpy as np
import pytest
from PIL import Image

from tests.faultlib import (
    PT_DIM,
    SCRIPTS,
    TINY,
    _finish,
    _label_dir,
    _popen_group,
    base_argv,
    base_inputs,
    case,
    expect_error,
    expect_ok,
    files_under,
    only_run_dir,
    read_log,
    run,
    smooth_noise,
    tree_digests,
)

# ====================================================================================================
# input faults
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'missing input dir',
    'exit 2: names the missing folder/file; nothing created',
)
def _missing_input(ctx, script):
    out = ctx.tmp / 'out'
    missing = ctx.tmp / 'no_such_dir'
    argv = base_argv(script, ctx.data, out)
    ctx.inputs(*base_inputs(script, ctx.data))
    if script == 'PHdict':
        argv[0] = missing
    elif script in ('pretraining', 'finetuning'):
        argv[argv.index('-t') + 1] = missing
    elif script == 'evaluation':
        argv[argv.index('-val') + 1] = missing
    elif script == 'downloader':
        missing = ctx.tmp / 'no_such_sources.json'
        argv[argv.index('--sources') + 1] = missing
    expect_error(run(script, *argv), missing, 'does not exist' if script != 'downloader' else '--sources')
    assert not out.exists()


def _make_empty_input(ctx, script, non_images):
    """A folder with nothing usable: empty, or holding only non-image files (and, for class folders, classes)."""
    d = ctx.tmp / 'inp'
    d.mkdir()
    if script in ('finetuning', 'evaluation'):
        for cls in ('a', 'b'):
            (d / cls).mkdir()
            if non_images:
                (d / cls / 'notes.txt').write_text('not an image\n')
                (d / cls / 'table.csv').write_text('1,2\n')
    elif non_images:
        (d / 'notes.txt').write_text('not an image\n')
        (d / 'image.jpg.txt').write_text('not an image either\n')
        (d / 'sub').mkdir()
        (d / 'sub' / 'data.npz').write_bytes(b'PK\x05\x06' + b'\0' * 18)
    return d


def _nothing_usable(ctx, script, non_images):
    out = ctx.tmp / 'out'
    argv = base_argv(script, ctx.data, out)
    ctx.inputs(*base_inputs(script, ctx.data))
    if script == 'downloader':
        raw = ctx.tmp / 'raw'
        raw.mkdir()
        if non_images:  # a text file where the archive should be: checksum refused, file kept as .bad
            for name in ('train-images-idx3-ubyte.gz',):
                (raw / name).write_text('not an archive\n')
        argv[argv.index('--raw_file_path') + 1] = raw
        res = run(script, *argv)
        if non_images:
            expect_error(res, raw / 'train-images-idx3-ubyte.gz', 'not the published', '.bad')
            assert (raw / 'train-images-idx3-ubyte.gz.bad').read_text() == 'not an archive\n'  # kept, not opened
        else:
            expect_error(res, 'cannot download train-images-idx3-ubyte.gz', '--raw_file_path')
        assert not glob.glob(str(out / 'MNIST' / '*' / '*' / '*.png'))
        return
    d = _make_empty_input(ctx, script, non_images)
    ctx.inputs(d)
    if script == 'PHdict':
        argv[0] = d
        words = (d, 'no *.jpg files', '-it')
    elif script == 'pretraining':
        argv[argv.index('-t') + 1] = d
        words = (d, 'no images', '-t')
    else:
        flag = '-t' if script == 'finetuning' else '-val'
        argv[argv.index(flag) + 1] = d
        words = (d, 'class folder' if not non_images else 'no valid file')
    expect_error(run(script, *argv), *words)
    assert not glob.glob(str(out / '**' / '*.*'), recursive=True)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'empty dir',
    {
        'PHdict': 'exit 2: no *.jpg files under DIR; set -it',
        'pretraining': 'exit 2: no images under DIR (-t)',
        'finetuning': 'exit 2: no class folder in DIR',
        'evaluation': 'exit 2: no class folder in DIR',
        'downloader': 'exit 2 (offline, empty raw dir): cannot download X; place it at --raw_file_path',
    },
)
def _empty_dir(ctx, script):
    _nothing_usable(ctx, script, non_images=False)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'only non-images',
    {
        'PHdict': 'exit 2: no *.jpg files under DIR',
        'pretraining': 'exit 2: no images under DIR (-t)',
        'finetuning': 'exit 2: no valid file in the class folders of DIR',
        'evaluation': 'exit 2: no valid file in the class folders of DIR',
        'downloader': 'exit 2: non-archive under the archive name: checksum refused, kept as .bad, not opened',
    },
)
def _only_non_images(ctx, script):
    _nothing_usable(ctx, script, non_images=True)


# --- the odd folder, run once per script and shared by the rows below


def _ph_odd(data, ext, skip_bad=False):
    def make():
        out = data.root / f'ph_odd_{ext}{"_skip" if skip_bad else ""}'
        res = run('PHdict', data.odd, '-o', out, '-it', ext, '-nw', 1, '-ch', *(['--skip_bad'] if skip_bad else []))
        return res, out

    return data.cached_run(('ph_odd', ext, skip_bad), make)


def _pt_odd_argv(data, out):
    return ['-t', data.odd, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 11, *TINY]


def _pt_odd(data):
    def make():
        out = data.root / 'pt_odd'
        return run('pretraining', *_pt_odd_argv(data, out)), out

    return data.cached_run('pt_odd', make)


def _ft_odd(data):
    def make():
        out = data.root / 'ft_odd'
        t = data.odd_task
        return run(
            'finetuning', '-t', t / 'train', '-val', t / 'val', '-o', out, '-nc', 2, '-e', 1, '-b', 14, *TINY
        ), out

    return data.cached_run('ft_odd', make)


def _ev_odd(data):
    def make():
        out = data.root / 'ev_odd'
        return run(
            'evaluation',
            '--evaluate',
            '-val',
            data.odd_task / 'val',
            '-pw',
            data.finetuned,
            '-o',
            out,
            '-nc',
            2,
            '-b',
            4,
            *TINY,
        ), out

    return data.cached_run('ev_odd', make)


def _odd_run(ctx, script):
    """The shared run of ``script`` over the odd inputs: (result, output folder), checked for integrity."""
    d = ctx.data
    ctx.inputs(d.odd)
    if script in ('finetuning', 'evaluation'):
        ctx.inputs(d.odd_task)
    res, out = {'pretraining': _pt_odd, 'finetuning': _ft_odd, 'evaluation': _ev_odd}[script](d)
    ctx.outputs(out)
    return res, out


def _bad_file(ctx, script, name):
    """Rows 'truncated JPEG' and 'zero-byte file': named, skipped and counted, the rest processed."""
    d = ctx.data
    if script == 'PHdict':
        ctx.inputs(d.odd)
        res, out = _ph_odd(d, 'jpg')
        ctx.outputs(out)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert name in res.err and 'failed inputs (2)' in res.err, res
        assert '1 done' in res.out and '2 failed of 3 files' in res.out, res
        assert (out / 'good.npy').exists() and not (out / name.replace('.jpg', '.npy')).exists()
        res, out = _ph_odd(d, 'jpg', skip_bad=True)
        ctx.outputs(out)
        assert res.rc == 0 and name in res.err, res
        return
    if script == 'downloader':
        raw, sources = d.mnist
        mine = ctx.tmp / 'raw'
        shutil.copytree(raw, mine)
        target = mine / 't10k-images-idx3-ubyte.gz'
        blob = target.read_bytes()
        blob = blob[: len(blob) // 2] if name == 'truncated.jpg' else b''
        target.write_bytes(blob)
        table = json.loads(sources.read_text())
        for entry in table['MNIST']:  # a source table whose checksum matches the damaged file
            if entry[1] == target.name:
                entry[2] = hashlib.md5(blob).hexdigest()
        (ctx.tmp / 'sources.json').write_text(json.dumps(table))
        ctx.inputs(mine)
        out = ctx.tmp / 'out'
        ctx.outputs(out)
        res = run(
            'downloader',
            '-d',
            'MNIST',
            '--sources',
            ctx.tmp / 'sources.json',
            '--raw_file_path',
            mine,
            '-o',
            out,
            '--no_progress',
        )
        expect_error(res, target, 'cannot read' if blob else 'not an IDX file')
        return
    res, out = _odd_run(ctx, script)
    expect_ok(res)
    assert 'warning: skipped cannot read image' in res.err and name in res.err, res
    run_dir = only_run_dir(out)
    if script == 'evaluation':
        with open(os.path.join(run_dir, 'metrics.json')) as f:
            metrics = json.load(f)
        assert metrics['val_skipped_bad'] == 2 and metrics['val_images'] == 12, metrics
    else:
        (record,) = read_log(run_dir)
        assert record['skipped_bad'] == 2, record
        assert record['images'] == (9 if script == 'pretraining' else 12), record
        assert np.isfinite(record['train_loss'])


BAD_FILE_EXPECT = {
    'PHdict': 'exit 1: file named, others processed, no .npy for it; --skip_bad: exit 0',
    'pretraining': 'skip: warned by name, counted as skipped_bad in log.jsonl',
    'finetuning': 'skip: warned by name, counted as skipped_bad in log.jsonl',
    'evaluation': 'skip: warned by name, counted as val_skipped_bad in metrics.json',
    'downloader': 'exit 2: damaged archive whose checksum matches (--sources): named, no traceback',
}


@case(('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'), 'truncated JPEG', BAD_FILE_EXPECT)
def _truncated(ctx, script):
    _bad_file(ctx, script, 'truncated.jpg')


@case(('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'), 'zero-byte file', BAD_FILE_EXPECT)
def _zero_byte(ctx, script):
    _bad_file(ctx, script, 'zero.jpg')


@case(
    ('pretraining', 'finetuning'),
    'bad image with --bad_images fail',
    'exit 2: names the file and says --bad_images skip; no weights written',
)
def _bad_images_fail(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.inputs(d.odd)
    ctx.outputs(out)
    if script == 'pretraining':
        argv = _pt_odd_argv(d, out)
    else:
        t = d.odd_task
        ctx.inputs(t)
        argv = ['-t', t / 'train', '-val', t / 'val', '-o', out, '-nc', 2, '-e', 1, '-b', 14, *TINY]
    res = run(script, *argv, '--bad_images', 'fail')
    line = expect_error(res, '--bad_images skip')
    assert 'truncated.jpg' in line or 'zero.jpg' in line
    assert not glob.glob(str(out / '*' / '*.pth'))


def _expected_pt_label(data, image):
    import pretraining
    from util.cli.label_flags import vectoriser_from_args
    from util.train.datasets import ComputedLabels

    args = pretraining.get_args_parser().parse_args([str(a) for a in _pt_odd_argv(data, 'unused')])
    return ComputedLabels(vectoriser_from_args(args, PT_DIM), args.filtration).from_image(image)


def _odd_image_ok(ctx, script, name):
    """Rows for 16-bit, RGBA, palette, constant and 1 x 4096 images: converted and used, not skipped."""
    d = ctx.data
    src = d.odd_src
    reference = {
        'sixteen.png': lambda: Image.fromarray(src['sixteen']).convert('RGB'),
        'rgba.png': lambda: Image.fromarray(src['rgba']),
        'palette.png': lambda: Image.open(d.odd / 'palette.png').convert('RGB'),
        'constant.png': lambda: Image.fromarray(np.full((48, 48, 3), 77, np.uint8)),
        'wide.png': lambda: Image.fromarray(src['wide']).convert('RGB'),
        'tall.png': lambda: Image.fromarray(src['tall']).convert('RGB'),
    }[name]()
    if script == 'PHdict':
        from util.ph.cubical import compute_ph

        ctx.inputs(d.odd)
        res, out = _ph_odd(d, 'png')
        ctx.outputs(out)
        expect_ok(res)
        assert name not in res.err
        dgm = np.load(out / name.replace('.png', '.npy'))
        assert dgm.ndim == 2 and dgm.shape[1] == 9 and len(dgm) >= 1 and not np.isnan(dgm).any()
        np.testing.assert_array_equal(dgm, compute_ph(reference))
        if name == 'constant.png':  # one class, born at 0, never dies
            assert len(dgm) == 1 and dgm[0, 0] == 0 and dgm[0, 1] == 0
        if name in ('wide.png', 'tall.png'):
            # a 1-pixel-thick image has the homology of the same row doubled (a product with an interval)
            line = np.asarray(reference.convert('L'))
            doubled = compute_ph(np.concatenate([line, line], axis=0 if name == 'wide.png' else 1))
            assert np.array_equal(dgm[:, :3], doubled[:, :3]), (
                f"{name}: {len(dgm)} pairs, {int((dgm[:, 2] > 1e300).sum())} essential; the doubled line "
                f"has {len(doubled)} pairs, {int((doubled[:, 2] > 1e300).sum())} essential"
            )
            assert int((dgm[:, 2] > 1e300).sum()) == 1 and len(dgm) < 1000  # one component, few local minima
            assert (dgm[:, 3:5] <= [0, 4095] if name == 'wide.png' else dgm[:, 3:5] <= [4095, 0]).all()
        hist = np.load(out / name.replace('.png', 'hist.npy'))
        assert np.isfinite(hist).all()
        return
    import torch

    res, out = _odd_run(ctx, script)
    expect_ok(res)
    assert name not in res.err, res
    if script == 'pretraining':
        import pretraining

        args = pretraining.get_args_parser().parse_args([str(a) for a in _pt_odd_argv(d, ctx.tmp / 'x')])
        train, _ = pretraining.build_pretraining_sets(args)
        image, label = train[train.rel_paths.index(name)]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
        np.testing.assert_allclose(label.numpy(), _expected_pt_label(d, reference), rtol=0, atol=0)
        assert torch.isfinite(label).all()
        return
    import finetuning
    from util.train.datasets import SafeImageFolder, finetune_transforms

    args = finetuning.get_args_parser().parse_args([str(a) for a in TINY])
    from util.cli.build import data_config

    tf = finetune_transforms(data_config(args).augment, train=False)
    folder = SafeImageFolder(d.odd_task / ('train' if script == 'finetuning' else 'val'), tf)
    index = [os.path.basename(p) for p, _ in folder.samples].index(name)
    image, target = folder[index]
    assert target == folder.class_to_idx['a']
    assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
    torch.testing.assert_close(image, tf(reference), rtol=0, atol=0)


ODD_EXPECT = {
    'PHdict': 'ok: converted like the 8-bit source; diagram and -ch histogram finite',
    'pretraining': 'ok: trained on, label = PH of the converted image',
    'finetuning': 'ok: trained on, tensor = that of the converted image',
    'evaluation': 'ok: evaluated, tensor = that of the converted image',
}
ODD_SCRIPTS = ('PHdict', 'pretraining', 'finetuning', 'evaluation')


@case(ODD_SCRIPTS, '16-bit PNG', ODD_EXPECT)
def _sixteen(ctx, script):
    _odd_image_ok(ctx, script, 'sixteen.png')


@case(ODD_SCRIPTS, 'RGBA PNG', ODD_EXPECT)
def _rgba(ctx, script):
    _odd_image_ok(ctx, script, 'rgba.png')


@case(ODD_SCRIPTS, 'palette PNG', ODD_EXPECT)
def _palette(ctx, script):
    _odd_image_ok(ctx, script, 'palette.png')


@case(ODD_SCRIPTS, 'constant image', ODD_EXPECT)
def _constant(ctx, script):
    _odd_image_ok(ctx, script, 'constant.png')


@case(ODD_SCRIPTS, 'huge aspect 4096x1', ODD_EXPECT)
def _wide(ctx, script):
    _odd_image_ok(ctx, script, 'wide.png')


@case(ODD_SCRIPTS, 'huge aspect 1x4096', ODD_EXPECT)
def _tall(ctx, script):
    _odd_image_ok(ctx, script, 'tall.png')


# ====================================================================================================
# output faults (every script)
# ====================================================================================================


def _run_base(ctx, script, out, *extra, fsize=None):
    ctx.inputs(*base_inputs(script, ctx.data))
    return run(script, *base_argv(script, ctx.data, out), *extra, fsize=fsize)


@case(
    SCRIPTS,
    'read-only output (path below a file)',
    'exit 2: cannot create the output folder (names it): Not a directory; nothing written',
)
def _below_a_file(ctx, script):
    blocker = ctx.tmp / 'a_file'
    blocker.write_text('x\n')
    ctx.inputs(blocker)
    out = blocker / 'out'
    expect_error(_run_base(ctx, script, out), out, 'cannot create', 'Not a directory')


@case(
    SCRIPTS,
    'read-only output (read-only mount)',
    'exit 2: cannot create/write to the output folder (names it): Read-only file system',
)
def _read_only_mount(ctx, script):
    out = ctx.tmp / 'ro'
    if ctx.mount_tmpfs(out, '64k', ro=True):
        reason = 'Read-only file system'
    elif os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o500)
        ctx._cleanup.append(lambda: out.chmod(0o700))
        reason = 'Permission denied'
    else:
        pytest.skip('mounting a read-only tmpfs is not permitted here; the path-below-a-file row covers this')
    target = out / 'MNIST' if script == 'downloader' else out
    expect_error(_run_base(ctx, script, out), target, reason)
    assert os.listdir(out) == []


def _fake_earlier_runs(output):
    """Folders named like the run folders of this minute and the next, holding an earlier run's files."""
    import torch

    now = datetime.datetime.now()
    made = []
    for t in (now, now + datetime.timedelta(minutes=1)):
        d = output / t.strftime('%Y_%m%d_%H%M')
        d.mkdir(parents=True, exist_ok=True)
        (d / 'log.jsonl').write_text('{"epoch": 1, "train_loss": 0.5}\n')
        (d / 'args.json').write_text('{"note": "an earlier run"}\n')
        torch.save({'epoch': 1, 'note': 'an earlier run'}, d / 'checkpoint.pth')
        made.append(str(d))
    return made


@case(
    SCRIPTS,
    'output dir already holds a run',
    {
        'random_image': 'ok: same settings -> everything skipped, bytes unchanged; other settings -> exit 2',
        'PHdict': 'ok: same settings -> all skipped, bytes unchanged; other settings -> exit 2',
        'pretraining': 'ok: a new dated run folder; the earlier runs untouched',
        'finetuning': 'ok: a new dated run folder; the earlier runs untouched',
        'evaluation': 'ok: a new dated run folder; the earlier runs untouched',
        'downloader': 'ok: already complete -> nothing redone; a folder it did not write -> exit 2',
    },
)
def _holds_a_run(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script in ('random_image', 'PHdict', 'downloader'):
        expect_ok(_run_base(ctx, script, out))

        def data_mtimes():  # images and arrays are not rewritten (args.json is, with the same bytes)
            return {p: os.stat(p).st_mtime_ns for p in files_under(out) if p.endswith(('.jpg', '.png', '.npy'))}

        before = data_mtimes()
        ctx.inputs(out)  # nothing in it may change from now on
        res = expect_ok(_run_base(ctx, script, out))
        assert data_mtimes() == before and before
        if script == 'random_image':
            assert 'wrote 0 images, skipped 8' in res.out, res
            expect_error(_run_base(ctx, script, out, '--seed', 1), out, 'different settings', '--overwrite')
        elif script == 'PHdict':
            assert '0 done, 16 skipped' in res.out, res
            expect_error(_run_base(ctx, script, out, '--filtration', 'distance'), out, 'other settings', '-o')
        else:
            assert 'already complete' in res.out, res
            foreign = ctx.tmp / 'foreign'
            (foreign / 'MNIST' / 'train' / 'mine').mkdir(parents=True)
            (foreign / 'MNIST' / 'train' / 'mine' / 'keep.png').write_bytes(b'not ours')
            ctx.inputs(foreign)
            expect_error(
                _run_base(ctx, script, foreign),
                foreign / 'MNIST' / 'train',
                'not written by this',
                'remove it or choose another --data_file_path',
            )
        return
    earlier = _fake_earlier_runs(out)
    ctx.inputs(*earlier)
    expect_ok(_run_base(ctx, script, out))
    new = os.path.basename(only_run_dir(out, exclude=earlier))
    stamp = new.rsplit('_', 1)[0] if new.count('_') == 3 else new
    assert re.fullmatch(r'\d{4}_\d{4}_\d{4}(_\d+)?', new), new
    assert (stamp in map(os.path.basename, earlier)) == (new.count('_') == 3), new  # taken names get _2, ...
    produced = {
        'pretraining': 'resnet18_epoch1.pth',
        'finetuning': 'ft_resnet18_epoch1.pth',
        'evaluation': 'metrics.json',
    }[script]
    assert os.path.exists(out / new / produced)


DISK_FULL_EXPECT = {
    'random_image': 'exit 2: cannot write <image>: No space left on device; nothing half-written; after making '
    'room the rerun completes byte-identical to an undisturbed run',
    'PHdict': 'exit 2: cannot write <diagram>.npy: No space left on device; the rerun completes byte-identical',
    'pretraining': 'exit 2: cannot write <run>/checkpoint.pth: No space left on device; no .pth half-written',
    'finetuning': 'exit 2: cannot write <run>/checkpoint.pth: No space left on device; no .pth half-written',
    'evaluation': 'exit 2: cannot write <run>/metrics.json: No space left on device',
    'downloader': 'exit 2: cannot write <png>: No space left on device; the rerun redoes the split, identical',
}
TMPFS_SIZE = {
    'random_image': '12k',
    'PHdict': '16k',
    'pretraining': '1m',
    'finetuning': '1m',
    'evaluation': '8k',
    'downloader': '16k',
}


def _compare_with_reference(ctx, script, out):
    """After a failed run and a rerun in ``out``: the same files, byte for byte, as an undisturbed run."""
    if script == 'random_image':
        ref = ctx.tmp / 'reference'
        expect_ok(run(script, *base_argv(script, ctx.data, ref)))
        assert tree_digests(out, only='.jpg') == tree_digests(ref, only='.jpg')
    elif script == 'PHdict':
        assert tree_digests(out, only='.npy') == tree_digests(ctx.data.gen_ph, only='.npy')
    elif script == 'downloader':
        ref = ctx.data.mnist_ref
        assert tree_digests(out, only='.png') == tree_digests(ref, only='.png')
        assert len(tree_digests(out, only='.png')) == 22


def _disk_full_rerun(ctx, script, out):
    """Rerun ``script`` into ``out`` once there is room; it completes and matches an undisturbed run."""
    if script in ('random_image', 'PHdict', 'downloader'):
        res = expect_ok(_run_base(ctx, script, out))
        _compare_with_reference(ctx, script, out)
        return res


@case(SCRIPTS, 'disk full (small tmpfs, ENOSPC)', DISK_FULL_EXPECT)
def _disk_full_tmpfs(ctx, script):
    out = ctx.tmp / 'small'
    if not ctx.mount_tmpfs(out, TMPFS_SIZE[script]):
        pytest.skip('mounting a tmpfs is not permitted here; the RLIMIT_FSIZE row covers a full disk')
    ctx.outputs(out)
    res = _run_base(ctx, script, out)
    line = expect_error(res, out, 'No space left on device', 'make room')
    _check_disk_error_line(script, line)
    ctx.resize_tmpfs(out, '8m')
    _disk_full_rerun(ctx, script, out)


def _check_disk_error_line(script, line):
    """The file named is the one being written when the disk filled."""
    written = line.split('cannot write ', 1)[1].split(': ', 1)[0]
    if script in ('pretraining', 'finetuning'):
        assert written.endswith('checkpoint.pth') or written.endswith('.pth'), line
    elif script == 'evaluation':
        assert written.endswith(('.csv', '.json')), line
    elif script == 'PHdict':
        assert written.endswith('.npy') or written.endswith('.json'), line
    else:
        assert written.endswith(('.jpg', '.png')), line
    assert not os.path.exists(written) or script == 'evaluation'


FSIZE = {
    'random_image': 1024,
    'PHdict': 1000,
    'pretraining': 2**20,
    'finetuning': 2**20,
    'evaluation': 4096,
    'downloader': 500,
}


@case(
    SCRIPTS,
    'disk full (RLIMIT_FSIZE, EFBIG)',
    dict(
        DISK_FULL_EXPECT,
        evaluation='ok: metrics.json/per_class.csv written; the confusion-matrix picture '
        'that does not fit is skipped with a warning naming it',
        **{
            k: v.replace('No space left on device', 'File too large')
            for k, v in DISK_FULL_EXPECT.items()
            if k != 'evaluation'
        },
    ),
)
def _disk_full_fsize(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    res = _run_base(ctx, script, out, fsize=FSIZE[script])
    if script == 'evaluation':
        expect_ok(res)
        run_dir = only_run_dir(out)
        assert 'could not draw the confusion matrix' in res.err and 'confusion_matrix.png: File too large' in res.err
        assert not os.path.exists(os.path.join(run_dir, 'confusion_matrix.png'))
        assert os.path.exists(os.path.join(run_dir, 'metrics.json'))
        return
    line = expect_error(res, out, 'File too large', 'make room')
    _check_disk_error_line(script, line)
    _disk_full_rerun(ctx, script, out)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation'),
    'label dimension mismatch',
    {
        'PHdict': 'ok: an output folder with a label matrix of another --numof_dims is recomputed, not mixed',
        'pretraining': 'exit 2: labels in FILE have dimension D but --numof_classes is N; pass --numof_classes D',
        'finetuning': 'exit 2: -npc N but FILE has a head of M outputs; drop -npc',
        'evaluation': 'exit 2: FILE has a head of M outputs but the folder has K classes: not fine-tuned weights',
    },
)
def _label_dim(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        ctx.inputs(d.gen)
        for dims in (20, 12):
            expect_ok(
                run(
                    'PHdict',
                    d.gen,
                    '-o',
                    out,
                    '-it',
                    'jpg',
                    '-nw',
                    1,
                    '--label_type',
                    'histogram',
                    '--numof_dims',
                    dims,
                )
            )
            matrix = np.load(out / 'labels_histogram.npy')
            assert matrix.shape == (16, dims)
            with open(out / 'labels_histogram.json') as f:
                assert json.load(f)['dim'] == dims
        return
    if script == 'pretraining':
        labels = _label_dir(ctx, d, np.random.default_rng(0).random((16, 20)).astype(np.float32))
        ctx.inputs(d.gen, labels)
        argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
        expect_error(run(script, *argv), labels / 'labels_histogram.npy', 'dimension 20', '--numof_classes 20')
    elif script == 'finetuning':
        ctx.inputs(d.task, d.pretrained)
        res = _run_base(ctx, script, out, '-pw', d.pretrained, '-npc', 7)
        expect_error(res, d.pretrained, '-npc 7', 'head of 10 outputs', 'drop -npc')
    else:
        argv = base_argv(script, d, out)
        argv[argv.index('-pw') + 1] = d.pretrained
        ctx.inputs(d.task, d.pretrained)
        expect_error(run(script, *argv), d.pretrained, 'head of 10 outputs', '2 classes', 'not fine-tuned')
    assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    ('PHdict', 'pretraining'),
    'NaN/inf in a label file',
    {
        'PHdict': 'exit 1: a saved diagram holding NaN is named as a bad input (an infinite death is a valid '
        'essential class and is kept)',
        'pretraining': 'exit 2: label matrix with NaN or inf rows -> non-finite values in N rows (first: NAME); '
        'diagram with NaN -> FILE contains NaN; delete it and rerun PHdict.py',
    },
)
def _nan_labels(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        dg = ctx.tmp / 'diagrams'
        dg.mkdir()
        names = sorted(p for p in os.listdir(d.gen_ph) if p.endswith('.npy'))[:3]
        for n in names:
            shutil.copy(d.gen_ph / n, dg / n)
        a = np.load(dg / names[1])
        a[0, 1] = np.nan
        np.save(dg / names[1], a)
        b = np.load(dg / names[2])
        b[0, 2] = np.inf
        np.save(dg / names[2], b)
        ctx.inputs(dg)
        res = run('PHdict', dg, '-o', out, '-ch', '-nw', 1)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert names[1] in res.err and names[2] not in res.err, res
        assert not (out / names[1].replace('.npy', 'hist.npy')).exists()
        assert np.isfinite(np.load(out / names[2].replace('.npy', 'hist.npy'))).all()
        return
    ctx.inputs(d.gen, d.gen_ph)
    for bad in (np.nan, np.inf):
        matrix = np.random.default_rng(0).random((16, PT_DIM)).astype(np.float32)
        matrix[5, 3] = bad
        labels = _label_dir(ctx, d, matrix)
        argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
        expect_error(
            run(script, *argv), labels / 'labels_histogram.npy', 'non-finite values in 1 rows', 'v00000005.jpg'
        )
        shutil.rmtree(labels)
    ph = ctx.tmp / 'ph_nan'
    shutil.copytree(d.gen_ph, ph)
    a = np.load(ph / 'v00000003.npy')
    a[1, 2] = np.nan
    np.save(ph / 'v00000003.npy', a)
    argv = ['-t', d.gen, '-pd', ph, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), ph / 'v00000003.npy', 'contains NaN', 'rerun PHdict.py')
    assert not glob.glob(str(out / '*' / '*.pth'))


# ====================================================================================================
# security
# ====================================================================================================


class _Payload:
    """Pickles as a call of ``open(marker, 'w')``: loading it with a full unpickler creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _payload_row(ctx, script, flag):
    import torch

    d = ctx.data
    out = ctx.tmp / 'out'
    marker = ctx.tmp / 'PAYLOAD_RAN'
    # prove the payload runs when loaded without weights_only
    live = ctx.tmp / 'live.pth'
    torch.save({'x': _Payload(ctx.tmp / 'live_marker')}, live)
    torch.load(live, weights_only=False)
    assert (ctx.tmp / 'live_marker').exists()
    evil = ctx.tmp / ('evil_checkpoint.pth' if flag == '--resume' else 'evil_weights.pth')
    torch.save(
        {
            'model': {'conv1.weight': torch.zeros(1)},
            'optimizer': {},
            'lr_scheduler': {},
            'epoch': 1,
            'arch': 'resnet18',
            'payload': _Payload(marker),
        }
        if flag == '--resume'
        else {'conv1.weight': torch.zeros(1), 'fc.weight': _Payload(marker)},
        evil,
        _use_new_zipfile_serialization=flag != '--resume',
    )  # the legacy format too
    ctx.inputs(evil)
    argv = base_argv(script, d, out)
    if flag in argv:  # evaluation: -pw is part of its command
        argv[argv.index(flag) + 1] = evil
    else:
        argv += [flag, evil]
    line = expect_error(run(script, *argv), evil)
    assert 'refusing' in line or 'safely' in line, line
    assert not marker.exists(), "the pickled payload ran"
    assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    ('pretraining', 'finetuning', 'evaluation'),
    'pickle payload as -pw weights',
    'exit 2: refusing to load weights file FILE: it contains a pickled Python object (builtins.open); '
    'the payload never runs (weights_only=True)',
)
def _payload_pw(ctx, script):
    _payload_row(ctx, script, '-pw')


@case(
    ('pretraining', 'finetuning'),
    'pickle payload as --resume checkpoint',
    'exit 2: cannot load checkpoint FILE safely: ...; the payload never runs (weights_only=True)',
)
def _payload_resume(ctx, script):
    _payload_row(ctx, script, '--resume')


@case(
    ('random_image', 'PHdict', 'pretraining', 'finetuning', 'downloader'),
    "original's flag we lack (-dt, -nc2, -pp, -val2), or an abbreviation (PHdict -m 3)",
    'exit 2: one line naming the flag (and ours, for the original\'s flags); nothing created',
)
def _original_flag(ctx, script):
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    # (-m, -s, -c, -pat, -maxb are the original's names of flags we have: tests/test_compat.py)
    flags = {
        'pretraining': [['-dt', 'x'], ['-nc2', '5'], ['-pp', '1'], ['-val2', 'X']],
        'finetuning': [['-nc2', '5']],
        'PHdict': [['-pp', '3'], ['-m', '3']],
        'random_image': [['-p', '0.5']],
        'downloader': [['-v', '0.1']],
    }
    for extra in flags[script]:
        res = run(script, *base_argv(script, ctx.data, out), *extra)
        assert res.rc == 2 and 'Traceback' not in res.err and extra[0] in res.err, res
        if script in ('pretraining', 'finetuning') or extra[0] == '-pp':
            line = expect_error(res, extra[0], 'original')
            assert 'use -' in line or 'no equivalent' in line, line
    assert not out.exists()


# ====================================================================================================
# issue 13: huge images and decompression bombs -- a bad image, named, never decoded
# ====================================================================================================


def png_header(width, height):
    """A PNG whose header claims ``width`` x ``height`` 8-bit grey pixels, with one tiny (truncated) IDAT:
    a decoder that trusted it would allocate width x height bytes before failing."""
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')


def _huge_folder(root, classes=None):
    """Good 40-px PNGs and two huge ones: 9000 x 9000 (over --max_pixels) and 20000 x 20000 (a bomb to PIL)."""
    rng = np.random.default_rng(21)
    for cls in classes or ['']:
        d = root / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(smooth_noise(rng, 40, 40)).save(d / f'good{i}.png')
    first = root / (classes[0] if classes else '')
    (first / 'huge.png').write_bytes(png_header(9000, 9000))
    (first / 'bomb.png').write_bytes(png_header(20000, 20000))
    return root


HUGE_EXPECT = {
    'PHdict': 'exit 1: both named (pixel count), the rest done; --skip_bad: exit 0 with the label matrix',
    'pretraining': 'skip: both warned by name, counted as skipped_bad',
    'finetuning': 'skip: both warned by name, counted as skipped_bad',
    'predict': 'exit 0: both named, left out',
}


@case(
    ('PHdict', 'pretraining', 'finetuning', 'predict'),
    'huge image / decompression bomb (header 9000² and 20000²)',
    HUGE_EXPECT,
)
def _huge_image(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        src = _huge_folder(ctx.tmp / 'in')
        ctx.inputs(src)
        argv = [src, '-o', out, '-it', 'png', '-nw', 1, '--label_type', 'histogram', '--numof_dims', 20]
        res = run(script, *argv)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert 'huge.png is 9000 x 9000' in res.err and 'bomb.png' in res.err and '--max_pixels' in res.err, res
        assert '3 done, 0 skipped, 2 failed of 5 files' in res.out, res
        res = run(script, *argv, '--skip_bad')
        assert res.rc == 0 and 'Traceback' not in res.err, res
        assert (out / 'labels_histogram.txt').read_text().split() == [f'good{i}.png' for i in range(3)]
        res = run(script, *argv, '--skip_bad', '--max_pixels', 0)
        expect_error(res, '--max_pixels')
        return
    if script == 'predict':
        src = _huge_folder(ctx.tmp / 'in')
        ctx.inputs(src, d.finetuned)
        res = run(
            script,
            src,
            '-pw',
            d.finetuned,
            '-u',
            'resnet18',
            '--img_size',
            40,
            '--crop_size',
            32,
            '-nw',
            0,
            '-o',
            out / 'p.csv',
        )
        expect_ok(res)
        assert 'huge.png' in res.err and 'bomb.png' in res.err and '3 images labelled' in res.out, res
        return
    if script == 'pretraining':
        src = _huge_folder(ctx.tmp / 'in')
        argv = ['-t', src, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    else:
        src = _huge_folder(ctx.tmp / 'in', classes=['a', 'b'])
        argv = ['-t', src, '-val', src, '-o', out, '-nc', 2, '-e', 1, '-b', 8, *TINY]
    ctx.inputs(src)
    res = expect_ok(run(script, *argv))
    assert 'huge.png' in res.err and 'bomb.png' in res.err and 'max_pixels' in res.err, res
    (record,) = read_log(only_run_dir(out))
    assert record['skipped_bad'] == 2, record


# ====================================================================================================
# issue 13: odd trees -- symbolic link loops and FIFOs/sockets
# ====================================================================================================


def _odd_tree(root, classes=('a', 'b')):
    """Class folders of 3 PNGs each; in ``a``: a link to its parent (a loop), a link to itself, a FIFO and a
    socket named like images."""
    rng = np.random.default_rng(31)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(smooth_noise(rng, 40, 40)).save(root / cls / f'{i}.png')
    a = root / classes[0]
    os.symlink('..', a / 'up')
    os.symlink('.', a / 'here')
    os.mkfifo(a / 'pipe.png')
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(a / 'sock.png'))
    except OSError:
        pass
    finally:
        sock.close()
    return root


def _sub(script, *argv, timeout=120):
    """Run ``script`` in its own process (a hang fails the row after ``timeout`` s instead of the suite)."""
    return _finish(_popen_group(script, *argv), timeout=timeout)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'predict'),
    'symbolic link loop and a FIFO/socket in the tree',
    'exit 0 within the timeout: every image once, the loop and the FIFO/socket warned about by name, never opened',
)
def _link_loop(ctx, script):
    d = ctx.data
    src = _odd_tree(ctx.tmp / 'in')
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        res = expect_ok(_sub(script, src, '-o', out, '-it', 'png', '-nw', 2, timeout=60))
        assert '6 done, 0 skipped, 0 failed of 6 files' in res.out, res
    elif script == 'predict':
        res = expect_ok(
            _sub(
                script,
                src,
                '-pw',
                d.finetuned,
                '-u',
                'resnet18',
                '--img_size',
                40,
                '--crop_size',
                32,
                '-nw',
                0,
                '-o',
                out / 'p.csv',
            )
        )
        with open(out / 'p.csv', newline='') as f:
            assert sorted(r[0] for r in list(csv.reader(f))[1:]) == [f'{c}/{i}.png' for c in 'ab' for i in range(3)]
    else:
        argv = (
            ['-t', src, '-o', out, '-nc', PT_DIM]
            if script == 'pretraining'
            else ['-t', src, '-val', src, '-o', out, '-nc', 2]
        )
        res = expect_ok(_sub(script, *argv, '-e', 1, '-b', 8, *TINY))
        (record,) = read_log(only_run_dir(out))
        assert record['images'] == 6, record
    assert 'pipe.png' in res.err and 'not a regular file' in res.err, res
    assert 'up' in res.err and 'already listed' in res.err, res


# ====================================================================================================
# issue 13: an output folder inside (or equal to) an input folder
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'finetuning'),
    '-o equal to or inside the input folder',
    'exit 2: one line naming -o and the input flag; the input folder (its args.json) unchanged; nothing made',
)
def _output_inside_input(ctx, script):
    d = ctx.data
    src = ctx.tmp / 'in'
    if script == 'finetuning':
        shutil.copytree(d.task, src)
    else:
        shutil.copytree(d.gen, src)
    ctx.inputs(src)
    before = sorted(files_under(src))
    for out in (src, src / 'sub' / 'out'):
        if script == 'PHdict':
            res, flag = run(script, src, '-o', out, '-it', 'jpg', '-nw', 1), 'TARGET_DIR'
        elif script == 'pretraining':
            res, flag = run(script, '-t', src, '-pd', d.gen_ph, '-o', out, '-nc', PT_DIM, '-e', 1, *TINY), '-t'
        else:
            res, flag = (
                run(
                    script, '-t', src / 'train', '-val', src / 'val', '-o', src / 'val' / 'x', '-nc', 2, '-e', 1, *TINY
                ),
                '-val',
            )
        expect_error(res, '-o', flag, 'outside')
        assert sorted(files_under(src)) == before


@case(('finetuning', 'evaluation', 'predict'), 'a text file as -pw', 'exit 2: "<file> is not a weights file"')
def _text_weights(ctx, script):
    d = ctx.data
    weights = ctx.tmp / 'weights.pth'
    weights.write_text('these are not weights\n')
    ctx.inputs(weights, d.task)
    out = ctx.tmp / 'out'
    if script == 'predict':
        res = run(script, d.task / 'val', '-pw', weights, '-u', 'resnet18', '-o', out / 'p.csv', '-nw', 0)
    else:
        argv = base_argv(script, d, out)
        if '-pw' in argv:
            argv[argv.index('-pw') + 1] = weights
        else:
            argv += ['-pw', weights]
        res = run(script, *argv)
    expect_error(res, str(weights), 'not a weights file')
    assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)


# ====================================================================================================
# issue 13: a diagram file of the wrong shape, columns or homology dimensions
# ====================================================================================================


@case(
    ('pretraining', 'PHdict'),
    'diagram file of wrong shape/columns/dims ((3, 4) zeros; dim 7)',
    {
        'pretraining': 'exit 2: one line naming the file and its shape/dimension; no weights written',
        'PHdict': 'exit 1 (-it npy -ch): the file named as a failed input, the rest done',
    },
)
def _bad_diagram(ctx, script):
    d = ctx.data
    ph_dir = ctx.tmp / 'ph'
    shutil.copytree(d.gen_ph, ph_dir, ignore=shutil.ignore_patterns('*.json'))
    names = sorted(p.name for p in ph_dir.glob('v*.npy'))
    bad_dim = np.load(ph_dir / names[1])
    bad_dim[0, 0] = 7
    for name, array, words in ((names[0], np.zeros((3, 4)), ('(3, 4)',)), (names[1], bad_dim, ('7',))):
        fresh = ctx.tmp / f'ph_{len(words[0])}'
        shutil.copytree(ph_dir, fresh)
        np.save(fresh / name, array)
        ctx.inputs(fresh, d.gen)
        out = ctx.tmp / f'out_{len(words[0])}'
        ctx.outputs(out)
        if script == 'pretraining':
            argv = base_argv(script, d, out)
            argv[argv.index('-pd') + 1] = fresh
            expect_error(run(script, *argv), name, 'not a persistence diagram', *words)
            assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)
        else:
            res = run(script, fresh, '-o', out, '-it', 'npy', '-ch', '-n', 5, 5, 5, 5, '-nw', 1)
            assert res.rc == 1 and 'Traceback' not in res.err and name in res.err, res
            assert f'{len(names) - 1} done' in res.out, res


# ====================================================================================================
# issue 13: a label length the label type cannot honour
# ====================================================================================================


@case(
    ('PHdict', 'pretraining'),
    'label length the label type cannot split (-nc 7 histogram, 9 betti_curve)',
    'exit 2: one line naming the flag, the label type and the valid lengths; nothing written',
)
def _uneven_dim(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    for label_type, dim, valid in (('histogram', 7, '4 or 8'), ('betti_curve', 9, '8 or 10')):
        if script == 'PHdict':
            res, flag = (
                run(script, d.gen_ph, '-o', out, '--label_type', label_type, '--numof_dims', dim, '-nw', 1),
                '--numof_dims',
            )
        else:
            argv = base_argv(script, d, out)
            argv[argv.index('-nc') + 1] = dim
            res, flag = run(script, *argv, '--label_type', label_type), '-nc'
        expect_error(res, f'{flag} {dim}', label_type, valid)
        assert not glob.glob(str(out / '**' / '*.np[yz]'), recursive=True)
        assert script != 'PHdict' or not out.exists()
        assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)


# ====================================================================================================
# issue 13: file names the label and prediction files cannot hold
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'predict'),
    'image name with a newline / bytes that are not UTF-8',
    'exit 2 before any work: one line naming the file (escaped) and "rename"; nothing written',
)
def _odd_names(ctx, script):
    d = ctx.data
    for bad in ('new\nline.jpg', os.fsdecode(b'caf\xe9.jpg')):
        src = ctx.tmp / f'in{len(bad)}'
        shutil.copytree(d.gen, src, ignore=shutil.ignore_patterns('*.json'))
        shutil.copy(src / 'v00000000.jpg', os.path.join(src, bad))
        ctx.inputs(src)
        out = ctx.tmp / f'out{len(bad)}'
        if script == 'PHdict':
            res = run(script, src, '-o', out, '-it', 'jpg', '-nw', 1)
        elif script == 'predict':
            res = run(script, src, '-pw', d.finetuned, '-u', 'resnet18', '-o', out / 'p.csv', '-nw', 0)
        else:
            res = run(script, '-t', src, '-o', out, '-nc', PT_DIM, '-e', 1, *TINY)
        expect_error(res, ascii(bad)[1:-1], 'rename')
        assert not glob.glob(str(out / '**' / '*.*'), recursive=True)


# ====================================================================================================
# issue 13: labels made from other images, looked up by another name, or resumed with other settings
# ====================================================================================================


def _regenerate(folder, seed):
    """Overwrite the generated images in ``folder`` with those of another seed (what ``--overwrite`` does)."""
    expect_ok(
        run(
            'random_image',
            '-o',
            folder,
            '-n',
            16,
            '-is',
            48,
            '-pb',
            0.5,
            '-pc',
            0.5,
            '-nw',
            1,
            '--preview',
            0,
            '--seed',
            seed,
            '--overwrite',
        )
    )


@case(
    ('PHdict', 'pretraining'),
    'images replaced after PHdict ran (--overwrite, a swap, an edit)',
    {
        'PHdict': 'exit 0: the changed images are named and recomputed; diagrams and labels equal a fresh run',
        'pretraining': 'exit 2 (-pd and -pd -pc): the count and first names of the changed images, how to redo',
    },
)
def _stale_labels(ctx, script):
    d = ctx.data
    imgs, ph_dir, fresh = ctx.tmp / 'imgs', ctx.tmp / 'ph', ctx.tmp / 'fresh'
    shutil.copytree(d.gen, imgs)
    ctx.outputs(ph_dir, fresh)
    argv = ['-it', 'jpg', '-nw', 1, '--label_type', 'histogram', '--numof_dims', PT_DIM]
    expect_ok(run('PHdict', imgs, '-o', ph_dir, *argv))
    _regenerate(imgs, 7)  # --overwrite with another seed
    a, b = imgs / 'v00000001.jpg', imgs / 'v00000002.jpg'  # a swap
    tmp = imgs / 'swap'
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    with Image.open(imgs / 'v00000003.jpg') as im:  # an edit
        arr = np.asarray(im).copy()
    arr[:8] = 255 - arr[:8]
    Image.fromarray(arr).save(imgs / 'v00000003.jpg')
    ctx.inputs(imgs)
    if script == 'PHdict':
        res = expect_ok(run('PHdict', imgs, '-o', ph_dir, *argv))
        assert 'recomputing' in res.err and 'v00000001.jpg' in res.err, res
        expect_ok(run('PHdict', imgs, '-o', fresh, *argv))
        for name in ('v00000001.npy', 'v00000002.npy', 'v00000003.npy', 'labels_histogram.npy'):
            assert np.array_equal(np.load(ph_dir / name), np.load(fresh / name)), name
        assert (ph_dir / 'labels_histogram.txt').read_text() == (fresh / 'labels_histogram.txt').read_text()
        return
    base = ['-t', imgs, '-pd', ph_dir, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    for extra in ([], ['-pc', '--label_type', 'histogram']):
        out = ctx.tmp / f'out{len(extra)}'
        expect_error(run(script, *base, '-o', out, *extra), 'changed', '16 of 16', 'v00000000.jpg', 'PHdict.py')
        assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    ('evaluation', 'predict'),
    'pretraining (PH regression) weights used as a classifier',
    'exit 2: one line naming the weights and "pretraining" (told by the checkpoint or the run\'s args.json); '
    'nothing written',
)
def _regression_as_classifier(ctx, script):
    d = ctx.data
    run_dir = d.pt_run
    ctx.inputs(d.task, run_dir)
    out = ctx.tmp / 'out'
    for weights in (os.path.join(run_dir, 'resnet18_epoch1.pth'), os.path.join(run_dir, 'checkpoint.pth')):
        if script == 'predict':
            argv = [d.task / 'val', '-pw', weights, '-o', out / 'pred.csv', '-nw', 0]
        else:
            argv = ['--evaluate', '-val', d.task / 'val', '-pw', weights, '-o', out, '-nc', 2, '-b', 8, *TINY]
        expect_error(run(script, *argv), weights, 'pretraining', 'not a classifier')
        assert not out.exists()


@case(
    ('PHdict', 'predict'),
    'float TIFF in [0, 1] and a 12-bit scan in a 16-bit PNG',
    'ok: scaled by their own range (a note names the first and says so): diagrams and predictions equal those '
    'of the same picture in 8 bits',
)
def _high_depth(ctx, script):
    rng = np.random.default_rng(21)
    folder = ctx.tmp / 'deep'
    folder.mkdir()
    ref = smooth_noise(rng, 40, 40)  # 0 .. 255
    Image.fromarray(ref).save(folder / 'ref.png')
    Image.fromarray(ref.astype(np.uint16) * 16).save(folder / 'twelve.png')  # 0 .. 4080 in a 16-bit PNG
    Image.fromarray(ref.astype(np.float32) / 255).save(folder / 'float.tif')  # mode F, 0 .. 1
    with Image.open(folder / 'twelve.png') as a, Image.open(folder / 'float.tif') as b:
        assert (a.mode, b.mode) == ('I;16', 'F')
    ctx.inputs(folder)
    if script == 'PHdict':
        dgm = {}
        for it in ('png', 'tif'):
            out = ctx.tmp / f'ph_{it}'
            ctx.outputs(out)
            res = expect_ok(run(script, folder, '-o', out, '-it', it, '-nw', 1))
            assert 'scaled by its own range' in res.err, res
            dgm.update({p.stem: np.load(p) for p in out.glob('*.npy')})
        assert set(dgm) >= {'ref', 'twelve', 'float'}, sorted(dgm)
        np.testing.assert_array_equal(dgm['twelve'], dgm['ref'])
        np.testing.assert_array_equal(dgm['float'], dgm['ref'])
        return
    out = ctx.tmp / 'pred.csv'
    argv = [folder, '-pw', ctx.data.finetuned, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32, '-nw', 0]
    res = expect_ok(run(script, *argv, '-o', out))
    assert 'scaled by its own range' in res.err, res
    with open(out, newline='') as f:
        rows = {r['path']: (r['top1'], r['top1_prob']) for r in csv.DictReader(f)}
    assert rows['twelve.png'] == rows['ref.png'] and rows['float.tif'] == rows['ref.png'], rows


@case(
    SCRIPTS,
    'inf / nan as the value of a float flag',
    'exit 2: names the flag and "not a finite number"; nothing created (no Infinity in an args.json)',
)
def _non_finite_float(ctx, script):
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    flag = {
        'random_image': '-pb',
        'PHdict': '--max_life',
        'pretraining': '--label_norm_floor',
        'finetuning': '--lr_fine',
        'evaluation': '--momentum',
        'downloader': '--validation_ratio',
    }[script]
    for value in ('inf', '-inf', 'nan', 'Infinity'):
        res = run(script, *base_argv(script, ctx.data, out), f'{flag}={value}')  # '=': -inf is no option
        assert res.rc == 2 and 'Traceback' not in res.err, res
        assert flag in res.err and 'not a finite number' in res.err, res
    assert not out.exists()


@case(
    ('pretraining', 'finetuning'),
    'a training set of one image; a batch of one (-b 1, or one survivor of undecodable images)',
    'exit 2 before any run folder: one line naming the lone image, or -b 1; a batch left with one image after '
    'skipped ones is dropped with a warning (exit 0), never a BatchNorm traceback',
)
def _batch_of_one(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'pretraining':
        one = ctx.tmp / 'one'
        one.mkdir()
        shutil.copy(sorted(d.gen.glob('*.jpg'))[0], one / 'only.jpg')
        ctx.inputs(one, d.gen)
        common = ['-o', out, '-nc', PT_DIM, '-e', 1, '-ph', 'post', *TINY]
        expect_error(run(script, '-t', one, '-b', 8, *common), 'holds 1 image', 'only.jpg')
        expect_error(run(script, '-t', d.gen, '-b', 1, *common), '-b 1', 'BatchNorm')
        assert not out.exists() or not os.listdir(out)
        return
    rng = np.random.default_rng(4)
    train = ctx.tmp / 'task' / 'train'
    for cls, names in (('bright', ('0.png', '1.png')), ('dark', ('0.png',))):
        (train / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(train / cls / name)
    (train / 'dark' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    ctx.inputs(ctx.tmp / 'task', d.task)
    argv = ['-t', train, '-val', d.task / 'val', '-o', out, '-nc', 2, '-e', 1, *TINY]
    expect_error(run(script, *argv, '-b', 1), '-b 1', 'BatchNorm')
    assert not out.exists() or not os.listdir(out)
    res = expect_ok(run(script, *argv, '-b', 2))  # 4 files, 2 per batch: the broken one leaves one survivor
    assert 'batch of one image was dropped' in res.err and 'broken.png' in res.err, res
    (record,) = read_log(only_run_dir(out))
    assert record['skipped_bad'] == 1 and record['images'] == 2, record


# ---- issue 26: run-time faults ----


@case(
    ('pretraining', 'finetuning'),
    'timm ViT: --crop_size smaller than, or not a multiple of, its patches',
    'exit 2 before any folder or data: one line naming --crop_size, the 16-pixel patches and a crop that fits',
)
def _vit_patch_grid(ctx, script):
    pytest.importorskip('timm')
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    argv = base_argv(script, ctx.data, out)
    argv[argv.index('-u') + 1] = 'timm:vit_tiny_patch16_224'
    for crop, words in (
        (8, ('smaller than the 16x16-pixel patches', '--crop_size 16')),  # was a RuntimeError about the kernel size
        (30, ('not a multiple of the 16-pixel patches', 'only 16x16', '--crop_size 32')),  # was a silent 16x16 crop
    ):
        argv[argv.index('--crop_size') + 1] = crop
        expect_error(run(script, *argv), f'--crop_size {crop}', 'timm:vit_tiny_patch16_224', *words)
    assert not out.exists()


@case(
    ('pretraining', 'finetuning', 'evaluation'),
    'a --device torch cannot open (tpu, meta, cuda:7); -ws 2 -p nccl without GPUs',
    'exit 2 before any folder: one line naming --device (or -p nccl) and what to use instead',
)
def _unusable_device(ctx, script):
    import torch

    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    argv = base_argv(script, ctx.data, out)
    faults = [(['--device', 'tpu'], ('--device tpu', 'no device of that name', 'use cpu'))]
    faults.append((['--device', 'meta'], ('--device meta', 'use cpu')))
    if torch.cuda.device_count() < 8:
        faults.append(
            (
                ['--device', 'cuda:7'],
                ('--device cuda:7', 'use --device cpu' if not torch.cuda.is_available() else 'visible'),
            )
        )
    if not torch.cuda.is_available() and script != 'evaluation':  # evaluation runs in one process: -ws is moot
        faults.append((['-ws', 2, '-p', 'nccl'], ('-p nccl', 'CUDA GPUs only', '-p gloo')))
    for extra, words in faults:
        expect_error(run(script, *argv, *extra), *words)
        assert not out.exists(), extra


@case(
    ('pretraining', 'finetuning'),
    '--tensorboard on --resume of a run whose tensorboard/ cannot be written (a file; a read-only mount)',
    'exit 2 before training: one line naming --tensorboard and the folder; the run folder unchanged',
)
def _tensorboard_unwritable(ctx, script):
    pytest.importorskip('tensorboard')
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    ctx.inputs(*base_inputs(script, ctx.data))
    argv = base_argv(script, ctx.data, out)
    expect_ok(run(script, *argv, '--tensorboard'))
    run_dir = only_run_dir(out)
    board = os.path.join(run_dir, 'tensorboard')
    shutil.rmtree(board)
    with open(board, 'w') as f:  # unwritable for anyone, root included
        f.write('not a folder\n')
    before = tree_digests(run_dir)
    resume = [*argv, '-e', 2, '--resume', run_dir, '--tensorboard']
    expect_error(run(script, *resume), '--tensorboard', board, 'not a folder', 'drop --tensorboard')
    assert tree_digests(run_dir) == before
    os.remove(board)
    if ctx.mount_tmpfs(board, '64k', ro=True):
        reason = 'Read-only file system'
    elif os.geteuid() != 0:
        os.mkdir(board)
        os.chmod(board, 0o500)
        ctx._cleanup.append(lambda: os.chmod(board, 0o700))
        reason = 'Permission denied'
    else:
        return  # neither a read-only mount nor permission bits can be had here: the file above covers it
    before = tree_digests(run_dir)
    expect_error(run(script, *resume), '--tensorboard', board, reason)
    assert tree_digests(run_dir) == before and os.listdir(board) == []
