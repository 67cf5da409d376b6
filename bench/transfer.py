#!/usr/bin/env python
"""Does PH pretraining transfer?  One command, through the product's own scripts with their defaults:

    util/random_image.py -> PHdict.py --label_type T -> pretraining.py -t IMAGES -pd PH -pc   (PH labels)
                                                     -> pretraining.py -t IMAGES -pd RAND -pc (random targets)
    finetuning.py -pw <each pretrained weight>, and finetuning.py without -pw (scratch)  -> metrics.json

on scikit-learn's digits (exported per seed by scripts/export_digits.py: each seed its own labelled subset of K
labels per class and its own held-out test split) or on any ImageFolder given by ``--data``, at several
labels-per-class levels (default 10, 50 and all) over several seeds (default 5).  Prints a table (mean +- std
of the final top-1 of each initialisation, and the margins of PH over scratch and over random targets, paired
by seed, with their standard error), and writes JSON, the table (Markdown) and a PNG plot under
``bench/results/`` (``--out``).  Every cell is a real fine-tuning run: the JSON records each run's folder, its
``metrics.json`` and the exact command.

    python bench/transfer.py --preset tiny            # seconds: checks that everything runs (numbers meaningless)
    python bench/transfer.py --preset cpu             # <= 30 min on 2 cores
    python bench/transfer.py --preset gpu --device cuda   # on the GPU machine: results in $OUT/transfer (or --out)
    python bench/transfer.py --preset cpu --label_norm standard --seeds 3 --labels 10 50   # a lever, screened

Runs are cached in ``--work`` by the hash of their command (an unchanged run is reused, so screening one
lever re-runs only what it changes); ``--fresh`` ignores the cache.  One pretraining per initialisation is
shared by all seeds (the seeds vary the labelled subset, the test split and the fine-tuning), so the margins'
standard errors do not include the pretraining's own seed variation.

The random-target control is the product's ``--label_type random`` (``PHdict.py --label_type random``
writes its matrix, ``pretraining.py -pd DIR -pc --label_type random`` reads it: a fixed N(0,1) vector per
image, from the seed and the image's name only); ``--label_norm standard`` is passed to both pretrainings
(pretraining.py computes the statistics from the label matrix, with its variance floor, and stores them).
"""

import argparse
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io import fileio

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INITS = ('scratch', 'ph', 'random')
INIT_NAMES = {'scratch': 'scratch', 'ph': 'PH labels', 'random': 'random targets'}

# Sizes per preset.  ft_samples: each fine-tuning run sees about this many training images (epochs =
# ft_samples / training images, clipped to [ft_min_epochs, ft_max_epochs]), so small subsets get more epochs.
PRESETS = {
    'tiny': dict(
        n_images=48,
        gen_size=24,
        pre_img=24,
        pre_crop=20,
        pre_epochs=1,
        pre_batch=16,
        lr_pre=0.05,
        arch='resnet18',
        ft_img=16,
        ft_batch=32,
        lr_fine=0.02,
        ft_samples=64,
        ft_min_epochs=1,
        ft_max_epochs=1,
        labels=['3'],
        seeds=2,
        dims=40,
        val_fraction=0.1,
        max_test=60,
        jobs=2,
    ),
    'cpu': dict(
        n_images=4000,
        gen_size=48,
        pre_img=48,
        pre_crop=40,
        pre_epochs=8,
        pre_batch=64,
        lr_pre=0.05,
        arch='resnet18',
        ft_img=32,
        ft_batch=32,
        lr_fine=0.02,
        ft_samples=3000,
        ft_min_epochs=8,
        ft_max_epochs=30,
        labels=['10', '50', 'all'],
        seeds=5,
        dims=200,
        val_fraction=0.3,
        max_test=0,
        jobs=2,
    ),
    # One device command of <= 10 minutes on an H200 with 16 cores (never measured; estimated from the CPU runs and
    # the bench/gpu_bench.py design figures): images + PH labels of 20000 images of 128 px with every core ~0.5
    # min, two pretrainings (ResNet-18, 112 px crops, 12 epochs = 240k images each, the loader-bound rate of
    # ~5000 img/s) run side by side ~1.5 min, 27 fine-tunings (3 levels x 3 seeds x 3 inits, each mostly
    # start-up: ~10 s) 4 at a time ~1.5 min; about 4 minutes in all, twice that still fits.
    'gpu': dict(
        n_images=20000,
        gen_size=128,
        pre_img=128,
        pre_crop=112,
        pre_epochs=12,
        pre_batch=256,
        lr_pre=0.1,
        arch='resnet18',
        ft_img=64,
        ft_batch=64,
        lr_fine=0.02,
        ft_samples=6000,
        ft_min_epochs=10,
        ft_max_epochs=40,
        labels=['10', '50', 'all'],
        seeds=3,
        dims=200,
        val_fraction=0.3,
        max_test=0,
        jobs=4,
        workers='cores',
    ),
}


def get_args_parser():
    p = StrictArgumentParser(
        description=__doc__.split('\n\n')[0],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Flags left unset take the preset\'s value (printed at the start).',
    )
    p.add_argument('--preset', choices=sorted(PRESETS), default='cpu', help='sizes (default: %(default)s)')
    p.add_argument(
        '--data',
        default=None,
        help='an ImageFolder (<class>/<image>) to use instead of digits; '
        'with train/ and val/ sub-folders, subsets come from train/ and val/ is the test set',
    )
    p.add_argument(
        '--labels',
        nargs='+',
        default=None,
        metavar='K',
        help="labels per class: integers and/or 'all' (preset: 10 50 all)",
    )
    p.add_argument('--seeds', type=int, default=None, help='number of seeds 0..N-1 (preset: 5)')
    p.add_argument('--inits', nargs='+', choices=INITS, default=list(INITS), help='initialisations to run')
    p.add_argument(
        '--name',
        default=None,
        help='name of this experiment in the result files (default: preset and the changed levers)',
    )
    p.add_argument(
        '--out',
        default=None,
        help="results folder (default: $OUT/transfer when OUT is set, as on the device machine, else bench/results)",
    )
    p.add_argument(
        '--work',
        default=os.path.join(tempfile.gettempdir(), 'topo_transfer_work'),
        help='cache of images, labels and runs (default: %(default)s)',
    )
    p.add_argument('--fresh', action='store_true', help='rerun everything (ignore cached runs)')
    p.add_argument('--jobs', type=int, default=None, help='training runs at a time (preset: 2 on the CPU presets)')
    p.add_argument('--threads', type=int, default=None, help='OMP/torch threads per run (default: 2 / --jobs)')
    p.add_argument(
        '--workers',
        type=int,
        default=None,
        help="processes for generation and PH labels, and loader workers per pretraining (preset gpu: from the "
        "usable cores: all of them for generation and labels, cores / jobs - 2 per pretraining; the CPU presets: "
        "their fixed 0-2)",
    )
    p.add_argument('--device', default=None, help="passed to the training scripts (default: theirs)")
    g = p.add_argument_group('pretraining recipe (the levers)')
    g.add_argument('--n_images', type=int, default=None, help='generated pretraining images')
    g.add_argument('--gen_size', type=int, default=None, help='side of the generated images')
    g.add_argument('--pre_img', type=int, default=None, help='pretraining --img_size')
    g.add_argument('--pre_crop', type=int, default=None, help='pretraining --crop_size')
    g.add_argument('--pre_epochs', type=int, default=None, help='pretraining epochs')
    g.add_argument('--pre_batch', type=int, default=None, help='pretraining batch size')
    g.add_argument('--lr_pre', type=float, default=None, help='pretraining learning rate')
    g.add_argument('--pre_opt', default='sgd_cos', help='pretraining -op (default: %(default)s)')
    g.add_argument('--label_type', default='histogram', help='PHdict/pretraining --label_type (default: %(default)s)')
    g.add_argument('--dims', type=int, default=None, help='label dimension (--numof_dims / -nc)')
    g.add_argument(
        '--label_norm',
        choices=('none', 'standard'),
        default='none',
        help="pretraining.py --label_norm for both pretrainings: 'standard' z-scores each label component "
        "(floored std; the random targets are N(0,1) already) (default: none)",
    )
    g.add_argument(
        '--ph',
        choices=('pre', 'post'),
        default='pre',
        help="pretraining -ph; 'post' computes the PH "
        "of each crop in the loader (no -pd); the random control stays one vector per image",
    )
    g.add_argument(
        '--on_the_fly',
        action='store_true',
        help='PH pretraining on images generated on the fly '
        '(no -t; --n_images fresh images per epoch); the random control keeps the fixed set',
    )
    g.add_argument('--pre_extra', default='', help='extra flags for pretraining.py (one string, split on spaces)')
    g = p.add_argument_group('fine-tuning recipe')
    g.add_argument('--arch', default=None, help='-u for both scripts (preset: resnet18)')
    g.add_argument('--ft_img', type=int, default=None, help='fine-tuning --img_size = --crop_size')
    g.add_argument('--ft_batch', type=int, default=None, help='fine-tuning batch size')
    g.add_argument('--lr_fine', type=float, default=None, help='fine-tuning learning rate')
    g.add_argument('--ft_opt', default='sgd_cos', help='fine-tuning -op (default: %(default)s)')
    g.add_argument('--ft_samples', type=int, default=None, help='training images each fine-tuning run sees')
    g.add_argument('--ft_min_epochs', type=int, default=None)
    g.add_argument('--ft_max_epochs', type=int, default=None)
    g.add_argument('--ft_extra', default='', help='extra flags for finetuning.py (one string)')
    g.add_argument('--val_fraction', type=float, default=None, help='share of each class held out as test set')
    g.add_argument('--max_test', type=int, default=None, help='keep at most this many test images (0 = all)')
    return p


def resolve(args):
    """Fill unset flags from the preset; returns a plain dict of the settings (what the JSON records)."""
    cfg = dict(PRESETS[args.preset])
    for key in list(cfg):
        v = getattr(args, key, None)
        if v is not None:
            cfg[key] = v
    if args.seeds is not None:
        cfg['seeds'] = args.seeds
    for key in (
        'pre_opt',
        'label_type',
        'label_norm',
        'ph',
        'on_the_fly',
        'pre_extra',
        'ft_opt',
        'ft_extra',
        'inits',
        'data',
        'threads',
        'device',
    ):
        cfg[key] = getattr(args, key)
    cfg['labels'] = [str(x).lower() for x in cfg['labels']]
    for k in cfg['labels']:
        if k != 'all' and not (k.isdigit() and int(k) > 0):
            raise UserError(f"--labels: {k!r} is neither a positive integer nor 'all'")
    if cfg['jobs'] < 1:
        raise UserError("--jobs must be at least 1")
    if cfg['threads'] is None:
        cfg['threads'] = max(1, 2 // cfg['jobs'])
    cfg['workers'] = args.workers if args.workers is not None else cfg.get('workers')
    if cfg['workers'] == 'cores':
        from util.train.distributed import usable_cores

        cfg['workers'] = usable_cores()
    if cfg['workers'] is not None and cfg['workers'] < 0:
        raise UserError("--workers must be >= 0")
    if cfg['seeds'] < 1:
        raise UserError("--seeds must be at least 1")
    if cfg['label_type'] == 'class':
        raise UserError("--label_type class is the labelled control, not a PH label; choose a PH label type")
    return cfg


# ------------------------------------------------------------------------------------------ subprocesses
def _hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class Runner:
    """Runs the product's scripts as subprocesses (nothing imported from them), logging every command."""

    def __init__(self, work, threads, fresh, log):
        self.work = work
        self.fresh = fresh
        self.log = log
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')

    def run(self, script, argv, what):
        cmd = [sys.executable, os.path.join(_ROOT, script)] + [str(a) for a in argv]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = '\n'.join(proc.stdout.strip().splitlines()[-15:])
            raise UserError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n{tail}")
        return time.time() - t0

    def training_run(self, script, argv, key, what, done_file):
        """Run a training script with ``-o <work>/runs/<key>``; returns (run folder, seconds or None if cached).

        A folder whose run finished (``done_file`` present) is reused unless --fresh; an unfinished one is
        removed first (it is ours, made by an earlier, killed call)."""
        base = os.path.join(self.work, 'runs', key)
        found = _finished_run(base, done_file)
        if found and not self.fresh:
            return found, None
        if os.path.isdir(base):
            shutil.rmtree(base)
        secs = self.run(script, argv + ['-o', base], what)
        found = _finished_run(base, done_file)
        if not found:
            raise UserError(f"{what}: no {done_file} under {base} after the run")
        return found, secs


def _finished_run(base, done_file):
    if not os.path.isdir(base):
        return None
    dirs = sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, done_file)))
    return os.path.join(base, dirs[-1]) if dirs else None


# ------------------------------------------------------------------------------------------ data sets
def _link_or_copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _list_folder(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) < 2:  # one class: every prediction right, a top-1 of 100%
        raise UserError(
            f"--data {root!r} has {len(classes)} class sub-folder(s) {classes}: a transfer task needs at least 2 "
            "classes (<class>/<image>)"
        )
    files, targets = [], []
    for ci, c in enumerate(classes):
        for rel in fileio.list_images(os.path.join(root, c)):
            files.append(os.path.join(c, rel))
            targets.append(ci)
    return files, np.asarray(targets, dtype=np.int64)


def _cap_test(folder, max_test, seed):
    """Keep a class-stratified random ``max_test`` of the test images (tiny preset only)."""
    files, targets = _list_folder(folder)
    if max_test <= 0 or len(files) <= max_test:
        return
    rng = np.random.default_rng([seed, 7])
    keep = set()
    per = max(1, max_test // len(np.unique(targets)))
    for c in np.unique(targets):
        keep.update(rng.permutation(np.flatnonzero(targets == c))[:per].tolist())
    for i, rel in enumerate(files):
        if i not in keep:
            os.remove(os.path.join(folder, rel))


@functools.lru_cache(maxsize=None)
def _content_key(data):
    """A hash of every image below ``data`` (relative path, size and BLAKE2b digest: util.io.provenance), so
    that the splits cached in the work folder follow the folder's content, not its path."""
    from util.io.provenance import fingerprint_below

    return _hash([[rel, (fingerprint_below(data, rel) or {}).get('hash')] for rel in fileio.list_images(data)])


def make_split(runner, cfg, seed, k):
    """An ImageFolder train/val pair for (seed, k labels per class); k = 0 means all. Returns its folder."""
    kk = 0 if k == 'all' else int(k)
    if cfg['data'] is None:
        key = _hash(['digits', seed, kk, cfg['val_fraction'], cfg['max_test']])
        out = os.path.join(runner.work, 'data', f'digits_s{seed}_k{k}_{key}')
        if not os.path.isfile(os.path.join(out, 'export.json')):
            if os.path.isdir(out):
                shutil.rmtree(out)
            # what scripts/export_digits.py does, in this process (saves a Python start per split)
            from util.io.digits import export_digits

            export_digits(out, labels_per_class=kk, val_fraction=cfg['val_fraction'], size=32, seed=seed)
            _cap_test(os.path.join(out, 'val'), cfg['max_test'], seed)
        return out
    data = os.path.abspath(cfg['data'])
    key = _hash([_content_key(data), seed, kk, cfg['val_fraction'], cfg['max_test']])  # the content, not the path
    out = os.path.join(runner.work, 'data', f'{os.path.basename(data)}_s{seed}_k{k}_{key}')
    done = os.path.join(out, 'split.json')
    if os.path.isfile(done):
        return out
    if os.path.isdir(out):
        shutil.rmtree(out)
    has_split = os.path.isdir(os.path.join(data, 'train')) and os.path.isdir(os.path.join(data, 'val'))
    pool_root = os.path.join(data, 'train') if has_split else data
    files, targets = _list_folder(pool_root)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        if not has_split:
            n_test = int(round(len(idx) * cfg['val_fraction']))
            if n_test < 1 or n_test >= len(idx):
                raise UserError(
                    f"--data: class {os.path.dirname(files[idx[0]])!r} of {pool_root} has {len(idx)} image(s): "
                    f"--val_fraction {cfg['val_fraction']} holds out {n_test} for testing, leaving "
                    f"{len(idx) - n_test} to train; give each class enough images for both (or train/ and val/)"
                )
            test.extend(idx[:n_test])
            idx = idx[n_test:]
        if kk:
            if kk > len(idx):
                raise UserError(f"--labels {kk}: a class of {pool_root} has only {len(idx)} training images")
            idx = idx[:kk]
        train.extend(idx)
    for i in train:
        _link_or_copy(os.path.join(pool_root, files[i]), os.path.join(out, 'train', files[i]))
    if has_split:
        vfiles, _ = _list_folder(os.path.join(data, 'val'))
        for rel in vfiles:
            _link_or_copy(os.path.join(data, 'val', rel), os.path.join(out, 'val', rel))
    else:
        for i in test:
            _link_or_copy(os.path.join(pool_root, files[i]), os.path.join(out, 'val', files[i]))
    _cap_test(os.path.join(out, 'val'), cfg['max_test'], seed)
    fileio.write_json(done, {'data': data, 'seed': seed, 'labels_per_class': kk, 'train': len(train)})
    return out


# ------------------------------------------------------------------------------------------ the pipeline
def _nw(cfg, fixed, loader=False):
    """-nw of a subprocess: the preset's ``fixed`` number, or from ``cfg['workers']`` (a loader's per pretraining
    run: the cores shared by the runs at a time, minus two for the training process and its pinning thread)."""
    if cfg.get('workers') is None:
        return fixed
    if loader:
        return max(0, cfg['workers'] // max(1, min(cfg['jobs'], 2)) - 2)
    return max(1, cfg['workers'])


def _dev(cfg):
    return ['--device', cfg['device']] if cfg['device'] else []


def prepare_pretraining(runner, cfg, log):
    """Generate images, compute PH labels and the random targets; returns {init: pretraining argv}, files."""
    gen = [
        '-n',
        cfg['n_images'],
        '-is',
        cfg['gen_size'],
        '-pb',
        0.5,
        '-pc',
        0.5,
        '--seed',
        0,
        '--format',
        'png',
        '-nw',
        _nw(cfg, 2),
    ]
    images = os.path.join(runner.work, 'images', _hash(gen))
    runner.run('util/random_image.py', ['-o', images] + gen, 'random_image.py')
    lt, dims = cfg['label_type'], cfg['dims']
    ph_dir = os.path.join(runner.work, 'ph', _hash([images, lt, dims]))
    runner.run(
        'PHdict.py',
        [images, '-o', ph_dir, '-it', 'png', '-nw', _nw(cfg, 2), '--label_type', lt, '--numof_dims', dims],
        'PHdict.py',
    )
    # the random-target control: PHdict.py --label_type random (a fixed N(0,1) vector per image, seed 0 as
    # the pretraining's --seed), read by pretraining.py -pd -pc --label_type random
    rand_dir = os.path.join(runner.work, 'random_labels', _hash([images, dims, 'seed0']))
    runner.run(
        'PHdict.py',
        [images, '-o', rand_dir, '-it', 'png', '--label_type', 'random', '--numof_dims', dims, '--seed', 0],
        'PHdict.py --label_type random',
    )
    sizes = [
        '--img_size',
        cfg['pre_img'],
        '--crop_size',
        cfg['pre_crop'],
        '-e',
        cfg['pre_epochs'],
        '-b',
        cfg['pre_batch'],
        '--lr_pre',
        cfg['lr_pre'],
        '-op',
        cfg['pre_opt'],
        '--seed',
        0,
    ] + _dev(cfg)
    norm = ['--label_norm', 'standard'] if cfg['label_norm'] == 'standard' else []
    common = ['-u', cfg['arch'], '-nc', dims, '--label_type', lt] + sizes + norm
    extra = cfg['pre_extra'].split()
    if cfg['on_the_fly']:
        nw = _nw(cfg, 2, loader=True)
        ph = common + ['-n', cfg['n_images'], '-pb', 0.5, '--prob_colour', 0.5, '-nv', 0, '-nw', nw, '-ph', cfg['ph']]
    elif cfg['ph'] == 'post':
        ph = common + ['-t', images, '-ph', 'post', '-nw', _nw(cfg, 2, loader=True)]
    else:
        ph = common + ['-t', images, '-pd', ph_dir, '-pc', '-nw', _nw(cfg, 1, loader=True)]
    rnd = (
        ['-u', cfg['arch'], '-nc', dims, '--label_type', 'random']
        + sizes
        + norm
        + ['-t', images, '-pd', rand_dir, '-pc', '-nw', _nw(cfg, 1, loader=True)]
    )
    return {'ph': ph + extra, 'random': rnd + extra}, {
        'images': images,
        'ph_dir': ph_dir,
        'ph_labels_used': ph_dir,
        'random_dir': rand_dir,
    }


def pretrain(runner, cfg, argv_by_init, log):
    name = f"{cfg['arch'].replace(':', '-')}_epoch{cfg['pre_epochs']}.pth"  # timm:NAME -> timm-NAME (models.file_stem)

    def one(init):
        argv = argv_by_init[init]
        run_dir, secs = runner.training_run(
            'pretraining.py', argv, f"pre_{init}_{_hash(argv)}", f'pretraining ({init})', name
        )
        log(f"pretrained ({INIT_NAMES[init]}) -> {run_dir}" + (' (cached)' if secs is None else f' ({secs:.0f} s)'))
        return {'weights': os.path.join(run_dir, name), 'run_dir': run_dir, 'seconds': secs, 'argv': argv}

    todo = [i for i in argv_by_init if i in cfg['inits']]
    return dict(zip(todo, parallel(one, todo, cfg['jobs'])))


def parallel(fn, items, jobs):
    """[fn(x) for x in items], ``jobs`` at a time (threads that each wait on a subprocess)."""
    if jobs <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(fn, items))


def ft_epochs(cfg, n_train):
    return int(min(cfg['ft_max_epochs'], max(cfg['ft_min_epochs'], math.ceil(cfg['ft_samples'] / max(1, n_train)))))


def finetune(runner, cfg, split, seed, init, pre, log):
    train = os.path.join(split, 'train')
    n_train = len(fileio.list_images(train))
    epochs = ft_epochs(cfg, n_train)
    argv = (
        [
            '-t',
            train,
            '-val',
            os.path.join(split, 'val'),
            '-u',
            cfg['arch'],
            '-e',
            epochs,
            '--img_size',
            cfg['ft_img'],
            '--crop_size',
            cfg['ft_img'],
            '-b',
            cfg['ft_batch'],
            '-nw',
            0,
            '--lr_fine',
            cfg['lr_fine'],
            '-op',
            cfg['ft_opt'],
            '--seed',
            seed,
        ]
        + _dev(cfg)
        + cfg['ft_extra'].split()
    )
    if init != 'scratch':
        argv += ['-pw', pre[init]['weights']]
    key = f"ft_{init}_{_hash(argv)}"
    run_dir, secs = runner.training_run(
        'finetuning.py', argv, key, f'fine-tuning ({init}, seed {seed})', 'metrics.json'
    )
    metrics_file = os.path.join(run_dir, 'metrics.json')
    with open(metrics_file, encoding='utf-8') as f:
        metrics = json.load(f)
    return {
        'init': init,
        'seed': seed,
        'top1': float(metrics['val_acc1']),
        'val_images': metrics['val_images'],
        'train_images': n_train,
        'epochs': epochs,
        'run_dir': run_dir,
        'metrics_file': metrics_file,
        'seconds': secs,
        'cached': secs is None,
        'argv': argv,
    }


# ------------------------------------------------------------------------------------------ statistics
def summarise(runs, labels, inits, seeds):
    """{k: {'inits': {init: {mean, std, n, values}}, 'margins': {name: {mean, se, n, diffs}}}} from the runs."""
    table = {}
    for k in labels:
        by = {(r['init'], r['seed']): r['top1'] for r in runs if r['labels'] == k}
        cell = {'inits': {}, 'margins': {}}
        for init in inits:
            vals = [by[(init, s)] for s in seeds if (init, s) in by]
            cell['inits'][init] = {
                'mean': float(np.mean(vals)),
                'std': float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                'n': len(vals),
                'values': vals,
            }
        for a, b in (('ph', 'scratch'), ('ph', 'random'), ('random', 'scratch')):
            if a in inits and b in inits:
                d = [by[(a, s)] - by[(b, s)] for s in seeds if (a, s) in by and (b, s) in by]
                se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float('nan')
                m = float(np.mean(d))
                cell['margins'][f'{a}-{b}'] = {
                    'mean': m,
                    'se': se,
                    'n': len(d),
                    'diffs': d,
                    'beyond_2se': bool(len(d) > 1 and m > 2 * se),
                }
        table[k] = cell
    return table


def format_table(table, labels, inits):
    head = '| init | ' + ' | '.join(f'{k} labels/class' for k in labels) + ' |'
    lines = [head, '|---|' + '---|' * len(labels)]
    for init in inits:
        lines.append(
            f'| {INIT_NAMES[init]} | '
            + ' | '.join(
                f"{table[k]['inits'][init]['mean']:.1f} ± {table[k]['inits'][init]['std']:.1f}" for k in labels
            )
            + ' |'
        )
    names = {
        'ph-scratch': 'PH − scratch, paired',
        'ph-random': 'PH − random targets, paired',
        'random-scratch': 'random − scratch, paired',
    }
    for m, title in names.items():
        if all(m in table[k]['margins'] for k in labels):
            cells = []
            for k in labels:
                c = table[k]['margins'][m]
                star = ' ✓' if c['beyond_2se'] else ''
                cells.append(f"{c['mean']:+.1f} (s.e. {c['se']:.1f}){star}")
            lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(table, labels, inits, path, title):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(labels)))
    for j, init in enumerate(inits):
        m = [table[k]['inits'][init]['mean'] for k in labels]
        s = [table[k]['inits'][init]['std'] for k in labels]
        ax.errorbar([x + 0.05 * (j - 1) for x in xs], m, yerr=s, marker='o', capsize=4, label=INIT_NAMES[init])
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set_xlabel('labels per class')
    ax.set_ylabel('top-1 on held-out test (%)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with fileio.atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def _default_name(args, cfg):
    base = PRESETS[args.preset]
    changed = []
    for key, value in sorted(vars(args).items()):
        if key in (
            'preset',
            'name',
            'out',
            'work',
            'fresh',
            'threads',
            'labels',
            'seeds',
            'inits',
            'device',
            'workers',
        ):
            continue
        default = get_args_parser().get_default(key)
        if value is not None and value != default and value != base.get(key):
            changed.append(f"{key}={value}".replace(' ', '_').replace('/', '_'))
    return '_'.join([args.preset] + changed)[:120]


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(args):
    cfg = resolve(args)
    name = args.name or _default_name(args, cfg)
    work = os.path.abspath(args.work)
    fileio.ensure_dir(work)
    if args.out is None:
        default_out = os.path.join(os.environ['OUT'], 'transfer') if os.environ.get('OUT') else None
        args.out = default_out or os.path.join(_ROOT, 'bench', 'results')
    fileio.ensure_dir(args.out)
    t0 = time.time()
    load_before = _load()

    def log(msg):
        print(msg, flush=True)

    log(f"transfer evaluation '{name}': " + json.dumps(cfg, sort_keys=True))
    runner = Runner(work, cfg['threads'], args.fresh, log)
    seeds = list(range(cfg['seeds']))
    inits = [i for i in INITS if i in cfg['inits']]
    files = {}
    pre = {}
    tasks = [  # the splits first: a --data the task cannot use is refused before any pretraining
        (k, seed, make_split(runner, cfg, seed, k), init) for k in cfg['labels'] for seed in seeds for init in inits
    ]
    if any(i != 'scratch' for i in inits):
        argv_by_init, files = prepare_pretraining(runner, cfg, log)
        pre = pretrain(runner, cfg, argv_by_init, log)

    def one(task):
        k, seed, split, init = task
        r = dict(labels=k, **finetune(runner, cfg, split, seed, init, pre, log))
        log(
            f"k={k:>4} seed={seed} {INIT_NAMES[init]:>14}: top-1 {r['top1']:.2f}  "
            f"({r['train_images']} train, {r['epochs']} epochs{', cached' if r['cached'] else ''})"
        )
        return r

    runs = parallel(one, tasks, cfg['jobs'])
    table = summarise(runs, cfg['labels'], inits, seeds)
    text = format_table(table, cfg['labels'], inits)
    wall = time.time() - t0
    header = (
        f"{name}: {len(seeds)} seeds, top-1 (%) on held-out test, mean ± std; margins paired by seed "
        f"(✓: mean > 2 s.e.); wall {wall / 60:.1f} min, load {load_before} -> {_load()}"
    )
    print('\n' + header + '\n' + text, flush=True)
    stem = os.path.join(args.out, f'transfer_{name}')
    result = {
        'name': name,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'settings': cfg,
        'seeds': seeds,
        'wall_seconds': wall,
        'load_before': load_before,
        'load_after': _load(),
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()},
        'files': files,
        'pretraining': pre,
        'table': table,
        'runs': runs,
    }
    fileio.write_json(stem + '.json', result)
    fileio.write_text(stem + '.md', header + '\n\n' + text + '\n')
    plot(table, cfg['labels'], inits, stem + '.png', header[:110])
    print(f"wrote {stem}.json, .md, .png", flush=True)
    return 0


if __name__ == '__main__':
    run_cli(main, get_args_parser().parse_args())
