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
    python bench/transfer.py --preset cpu             # fine-tuning and probes, 3 pretraining seeds per init
    python bench/transfer.py --preset screen --inits scratch ph random shuffled genparams   # probe one recipe
    python bench/transfer.py --preset gpu --device cuda   # on the GPU machine: results in $OUT/transfer (or --out)
    python bench/transfer.py --preset cpu --label_norm standard --seeds 3 --labels 10 50   # a lever, screened

Runs are cached in ``--work`` by the hash of their command (an unchanged run is reused, so screening one
lever re-runs only what it changes); ``--fresh`` ignores the cache.

Pretraining seeds (``--pre_seeds P``): each initialisation is pretrained P times (pretraining.py --seed p;
the random targets and the shuffled labels of seed p are drawn with seed p too).  Fine-tuning seed s starts
from pretraining seed s mod P and its margins' standard errors are taken over the P pretraining seeds, so
they include the pretraining's own variation (with P = 1 they cover subset, test split and fine-tuning only).

``--probe``: frozen-feature probes (bench/probe.py).  Each network (the untrained one with torch seed p as the
baseline of ``scratch``, and every pretraining seed of every init) is run once over the whole labelled pool;
the pooled outputs of its last two stages (ResNets: layer3 and layer4, global-average pooled, concatenated)
feed a logistic regression and a kNN (k = 10, cosine) fitted on ``--subsets`` J labelled subsets per
pretraining seed and level (seconds each), scored on the subset's own held-out test split.  Margins are paired
(same subsets for every init) and their s.e. is sd_p(d_p) / sqrt(P), d_p the mean difference over the J
subsets of pretraining seed p (printed with every table).

Controls (``--inits``): ``random`` is the product's ``--label_type random`` (``PHdict.py --label_type random
--seed p`` writes its matrix, ``pretraining.py -pd DIR -pc --label_type random`` reads it: a fixed N(0,1)
vector per image, from the seed and the image's name only); ``shuffled`` is the PH label matrix with its rows
permuted across images (same marginals, no image-label link; a copy with its own ``shuffled`` record, read
with the PH pretraining's own flags); ``genparams`` regresses the generator's own draws per image (colour; per
channel alpha, beta and its binarisation; z-scored): the texture-statistic null.  The two matrix controls are
standardised by construction and get no ``--label_norm``; ``--label_norm standard`` is passed to the PH and
shuffled pretrainings (pretraining.py computes the statistics, with its variance floor, and stores them).

``--r2_images N``: the pretraining's held-out R^2 on N fresh generated images (util/random_image.py --seed 1,
the same settings; their PH labels from the same PHdict.py flags), in the space the network was trained in,
overall and beyond the first principal component of its training labels.
"""

import argparse
import contextlib
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
from util.ph.vectorise import LABEL_FLAGS

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INITS = ('scratch', 'ph', 'random', 'shuffled', 'genparams')
DEFAULT_INITS = ('scratch', 'ph', 'random')
INIT_NAMES = {
    'scratch': 'scratch',
    'ph': 'PH labels',
    'random': 'random targets',
    'shuffled': 'shuffled PH labels',
    'genparams': 'generator params',
}
PROBE_NAMES = dict(INIT_NAMES, scratch='untrained network')
# margins reported (a - b), when both are run
MARGINS = (
    ('ph', 'scratch'),
    ('ph', 'random'),
    ('ph', 'shuffled'),
    ('ph', 'genparams'),
    ('random', 'scratch'),
)

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
        pre_seeds=1,
        subsets=2,
        r2_images=0,
        probe=False,
        finetune=True,
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
        pre_seeds=3,
        subsets=5,
        r2_images=500,
        probe=True,
        finetune=True,
    ),
    # one label recipe probed (no fine-tuning) with 3 pretraining seeds x 5 subsets, <= 15 min on 2 cores
    # once the recipe-independent controls (random targets, generator params) are cached: see screen_estimate
    'screen': dict(
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
        labels=['10', '50'],
        seeds=3,
        dims=200,
        val_fraction=0.3,
        max_test=0,
        jobs=2,
        pre_seeds=3,
        subsets=5,
        r2_images=500,
        probe=True,
        finetune=False,
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
        pre_seeds=3,
        subsets=10,
        r2_images=1000,
        probe=True,
        finetune=True,
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
    p.add_argument(
        '--inits',
        nargs='+',
        choices=INITS,
        default=list(DEFAULT_INITS),
        help="initialisations: scratch (the untrained network in the probe), ph (PH labels), random (random "
        "targets), shuffled (the PH label matrix with its rows permuted across images), genparams (regression "
        "of the generator's own parameters) (default: %(default)s)",
    )
    p.add_argument(
        '--probe',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='frozen-feature probes (logistic regression, kNN) on pooled features of the last two stages '
        '(preset: on for cpu/screen/gpu)',
    )
    p.add_argument(
        '--finetune',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='fine-tuning runs (preset: off for screen)',
    )
    p.add_argument('--pre_seeds', type=int, default=None, help='pretraining seeds per initialisation (preset: 3)')
    p.add_argument('--subsets', type=int, default=None, help='probe: labelled subsets per pretraining seed')
    p.add_argument(
        '--r2_images',
        type=int,
        default=None,
        help="fresh generated images for the pretraining's held-out R^2 (0: skip)",
    )
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
        '--ph_extra',
        default='',
        help="extra flags for PHdict.py (one string, split on spaces), e.g. '--sigma 1 --max_life 8'; its label "
        "flags (ranges, sigma, filtration, ...; 'auto' as PHdict.py fitted it) reach the PH pretrainings too",
    )
    g.add_argument(
        '--label_norm',
        choices=('none', 'standard'),
        default='none',
        help="pretraining.py --label_norm for the PH and shuffled pretrainings: 'standard' z-scores each label "
        "component (floored std; the random targets and generator parameters are standardised already) "
        "(default: none)",
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
        'ph_extra',
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
    for key in ('pre_seeds', 'subsets'):
        if cfg[key] < 1:
            raise UserError(f"--{key} must be at least 1")
    if cfg['r2_images'] < 0:
        raise UserError("--r2_images must be >= 0")
    if not (cfg['probe'] or cfg['finetune']):
        raise UserError("nothing to do: give --probe or --finetune")
    if 'shuffled' in cfg['inits'] and (cfg['on_the_fly'] or cfg['ph'] == 'post'):
        raise UserError("--inits shuffled permutes a label matrix: it needs -ph pre without --on_the_fly")
    if cfg['label_type'] == 'class':
        raise UserError("--label_type class is the labelled control, not a PH label; choose a PH label type")
    cfg['ph_label_flags'] = ph_label_flags(cfg)  # refused here, before any image is made, if they cannot be used
    return cfg


# PHdict.py's flags that say what the labels are (besides --label_type and --numof_dims, set from --label_type and
# --dims): the PH pretrainings get those of --ph_extra too, since pretraining.py reads -pd labels only with the
# flags they were made with, and computes labels with its own under -ph post / --on_the_fly
LABEL_DESTS = tuple(n for n in LABEL_FLAGS if n != 'label_type') + (
    'filtration',
    'gradient',
    'size_normalise',
    'ph_engine',
)


def _parse_ph_extra(cfg, extra):
    """PHdict.py's parsed flags for ``--label_type T --numof_dims D`` followed by ``extra``; a flag PHdict.py
    does not take is refused here, before any image is made."""
    import PHdict

    parser = PHdict.get_args_parser()

    def refuse(message):
        raise UserError(f"--ph_extra {cfg['ph_extra']!r}: {message} (the flags of PHdict.py; see PHdict.py -h)")

    parser.error = refuse
    return parser.parse_args(
        ['IMAGES', '-o', 'PH', '--label_type', cfg['label_type'], '--numof_dims', str(cfg['dims'])] + extra
    )


def _as_argv(dest, value):
    if value is True:
        return [f'--{dest}']
    return [f'--{dest}'] + [
        repr(v) if isinstance(v, float) else str(v) for v in (value if isinstance(value, list) else [value])
    ]


def ph_label_flags(cfg):
    """The label flags of ``--ph_extra``, as pretraining.py takes them: long names (PHdict.py's ``-b`` is the
    bandwidth, pretraining.py's the batch size), only those that differ from PHdict.py's defaults.  Refuses a
    --ph_extra that PHdict.py would refuse, one that sets what --label_type, --dims or the work folder set, and
    a label flag that pretraining.py cannot take where it computes the labels itself (-ph post, --on_the_fly);
    with -pd -pc it reads the matrix as PHdict.py wrote it."""
    extra = cfg['ph_extra'].split()
    if not extra:
        return []
    ns, base = _parse_ph_extra(cfg, extra), _parse_ph_extra(cfg, [])
    for dest, ours in (('label_type', '--label_type'), ('numof_dims', '--dims'), ('output', '--work')):
        if getattr(ns, dest) != getattr(base, dest):
            raise UserError(f"--ph_extra {cfg['ph_extra']!r}: sets --{dest}, which bench/transfer.py sets: use {ours}")
    given = [d for d in LABEL_DESTS if getattr(ns, d, None) != getattr(base, d, None)]
    if not given:
        return []
    from util.cli import flags as training_flags

    parser = training_flags.get_args_parser('pretraining')

    def cannot(message):
        raise UserError(message)

    parser.error = cannot
    flags = []
    for d in given:
        argv = _as_argv(d, getattr(ns, d))
        try:
            _, rest = parser.parse_known_args(argv)
        except (UserError, SystemExit):
            rest = argv
        if not rest:
            flags += argv
        elif cfg['ph'] == 'post' or cfg['on_the_fly']:
            raise UserError(
                f"--ph_extra: pretraining.py cannot take {' '.join(argv)}, and with "
                f"{'-ph post' if cfg['ph'] == 'post' else '--on_the_fly'} it computes the PH labels itself: "
                "leave the flag out or use -ph pre (the labels PHdict.py writes)"
            )
    return flags


def _resolved_label_flags(flags, ph_dir, label_type):
    """``flags`` with each ``auto`` value replaced by the value PHdict.py fitted (the labels' record in ``ph_dir``),
    so that pretraining.py is given the numbers its -pd labels were made with."""
    from util.ph.labels import find_label_matrix, read_json

    if 'auto' not in flags:
        return list(flags)
    found = find_label_matrix(ph_dir, label_type)
    params = ((found and read_json(os.path.splitext(found[0])[0] + '.json')) or {}).get('params') or {}
    out, i = [], 0
    while i < len(flags):
        j = i + 1
        while j < len(flags) and not flags[j].startswith('--'):
            j += 1
        dest, values = flags[i][2:], flags[i + 1 : j]
        out += _as_argv(dest, params[dest]) if 'auto' in values and dest in params else flags[i:j]
        i = j
    return out


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
        """Run ``script argv``; its ``-o`` folder's lock (``<folder>.lock``) is held meanwhile, so that another
        bench/transfer.py sharing --work waits rather than writing into the same folder at the same time."""
        argv = [str(a) for a in argv]
        if '-o' not in argv:
            return self._run(script, argv, what)
        with run_lock(argv[argv.index('-o') + 1].rstrip(os.sep) + '.lock', what, self.log):
            return self._run(script, argv, what)

    def _run(self, script, argv, what):
        cmd = [sys.executable, os.path.join(_ROOT, script)] + [str(a) for a in argv]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = '\n'.join(proc.stdout.strip().splitlines()[-15:])
            raise UserError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n{tail}")
        return time.time() - t0

    def training_run(self, script, argv, key, what, done_file):
        """Run a training script with ``-o <work>/runs/<key>``; returns (run folder, seconds or None if cached).

        A run that finished (``done_file`` present) is reused unless --fresh.  The run key's lock file
        (``<work>/runs/<key>.lock``, an fcntl lock) is held while a run is checked for and made: a second
        bench/transfer.py sharing ``--work`` waits for the first's run of the same key and then reuses it.  Under
        the lock an unfinished run folder is an earlier, killed call's (the lock dies with its process) and is
        removed; a finished one is never removed (--fresh makes a new run folder beside it)."""
        base = os.path.join(self.work, 'runs', key)
        with run_lock(base + '.lock', what, self.log):
            found = _finished_run(base, done_file)
            if found and not self.fresh:
                return found, None
            before = set(os.listdir(base)) if os.path.isdir(base) else set()
            for d in before:
                if not os.path.isfile(os.path.join(base, d, done_file)):
                    shutil.rmtree(os.path.join(base, d), ignore_errors=True)
            secs = self._run(script, argv + ['-o', base], what)
            made = [d for d in os.listdir(base) if d not in before and os.path.isfile(os.path.join(base, d, done_file))]
            if len(made) != 1:
                raise UserError(f"{what}: no {done_file} in a new run folder under {base} after the run")
            return os.path.join(base, made[0]), secs


@contextlib.contextmanager
def run_lock(path, what, log):
    """Hold an exclusive fcntl lock on ``path`` (created if missing) for the block; say so when another process
    holds it and wait for it."""
    import fcntl

    fileio.ensure_dir(os.path.dirname(path))
    with open(path, 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{what}: another bench/transfer.py run is making it; waiting for it (lock {path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finished_run(base, done_file):
    """The newest run folder under ``base`` holding ``done_file``, or None."""
    if not os.path.isdir(base):
        return None
    done = [os.path.join(base, d, done_file) for d in os.listdir(base)]
    done = [x for x in done if os.path.isfile(x)]
    return os.path.dirname(max(done, key=os.path.getmtime)) if done else None


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
    """An ImageFolder train/val pair for (seed, k labels per class); k = 0 means all. Returns its folder (made
    under the work folder's data lock: another bench/transfer.py sharing --work never removes one being made)."""
    with run_lock(os.path.join(runner.work, 'data.lock'), f'the split of seed {seed}, {k} labels', runner.log):
        return _make_split(runner, cfg, seed, k)


def _make_split(runner, cfg, seed, k):
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


def _gen_flags(cfg, n, seed):
    gen = ['-n', n, '-is', cfg['gen_size'], '-pb', 0.5, '-pc', 0.5, '--seed', seed, '--format', 'png']
    return gen + ['-nw', _nw(cfg, 2)]


def _ph_flags(cfg):
    return ['--label_type', cfg['label_type'], '--numof_dims', cfg['dims']] + cfg['ph_extra'].split()


def _ph_key(images, cfg):
    key = [images, cfg['label_type'], cfg['dims']]
    return _hash(key + [cfg['ph_extra']] if cfg['ph_extra'] else key)


def prepare_pretraining(runner, cfg, log):
    """Generate images, compute PH labels and the controls' targets; returns ({init: [pretraining argv of
    pretraining seed p for p < pre_seeds]}, files).  Pretraining seed p is pretraining.py --seed p; the random
    targets of seed p are PHdict.py --label_type random --seed p; the shuffled labels of seed p are the PH matrix
    permuted by seed p (bench.probe.shuffled_copy); the images and PH labels are shared."""
    gen = _gen_flags(cfg, cfg['n_images'], 0)
    images = os.path.join(runner.work, 'images', _hash(gen))
    runner.run('util/random_image.py', ['-o', images] + gen, 'random_image.py')
    lt, dims = cfg['label_type'], cfg['dims']
    ph_dir = os.path.join(runner.work, 'ph', _ph_key(images, cfg))
    runner.run('PHdict.py', [images, '-o', ph_dir, '-it', 'png', '-nw', _nw(cfg, 2)] + _ph_flags(cfg), 'PHdict.py')
    seeds = list(range(cfg['pre_seeds']))
    inits = cfg['inits']

    def rand_dir(p):
        # the random-target control: PHdict.py --label_type random (a fixed N(0,1) vector per image, seed p as
        # the pretraining's --seed), read by pretraining.py -pd -pc --label_type random
        return os.path.join(runner.work, 'random_labels', _hash([images, dims, f'seed{p}']))

    if 'random' in inits:
        for p in seeds:
            runner.run(
                'PHdict.py',
                [images, '-o', rand_dir(p), '-it', 'png', '--label_type', 'random', '--numof_dims', dims, '--seed', p],
                'PHdict.py --label_type random',
            )

    def sizes(p):
        return [
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
            p,
        ] + _dev(cfg)

    norm = ['--label_norm', 'standard'] if cfg['label_norm'] == 'standard' else []
    extra = cfg['pre_extra'].split()

    # the label flags of --ph_extra reach the PH pretrainings too (their `auto` values as PHdict.py fitted them)
    label_flags = _resolved_label_flags(cfg['ph_label_flags'], ph_dir, lt)

    def ph_argv(p, labels_dir):
        common = ['-u', cfg['arch'], '-nc', dims, '--label_type', lt] + sizes(p) + norm + label_flags
        if cfg['on_the_fly']:
            return common + [
                '-n',
                cfg['n_images'],
                '-pb',
                0.5,
                '--prob_colour',
                0.5,
                '-nv',
                0,
                '-nw',
                _nw(cfg, 2, loader=True),
                '-ph',
                cfg['ph'],
            ]
        if cfg['ph'] == 'post':
            return common + ['-t', images, '-ph', 'post', '-nw', _nw(cfg, 2, loader=True)]
        return common + ['-t', images, '-pd', labels_dir, '-pc', '-nw', _nw(cfg, 1, loader=True)]

    def matrix_argv(p, d, labels_dir):
        # the controls' targets are standardised by construction (N(0,1) random targets, z-scored generator
        # parameters): no --label_norm, so one control pretraining serves recipes with and without it
        return ['-u', cfg['arch'], '-nc', d, '--label_type', 'random'] + sizes(p) + ['-t', images, '-pd', labels_dir]

    argv = {'ph': [ph_argv(p, ph_dir) + extra for p in seeds]}
    files = {'images': images, 'ph_dir': ph_dir, 'ph_labels_used': ph_dir, 'random_dir': rand_dir(0)}
    if 'random' in inits:
        argv['random'] = [
            matrix_argv(p, dims, rand_dir(p)) + ['-pc', '-nw', _nw(cfg, 1, loader=True)] + extra for p in seeds
        ]
        files['random_dirs'] = [rand_dir(p) for p in seeds]
    if 'shuffled' in inits:
        from bench import probe

        shuf = []
        for p in seeds:
            d = os.path.join(runner.work, 'shuffled', _hash([ph_dir, lt, p]))
            if not os.path.isfile(os.path.join(d, f'labels_{lt}.json')):
                probe.shuffled_copy(ph_dir, lt, d, p)
            shuf.append(d)
        argv['shuffled'] = [ph_argv(p, d) + extra for p, d in zip(seeds, shuf)]
        files['shuffled_dirs'] = shuf
    if 'genparams' in inits:
        from bench import probe

        gp = os.path.join(runner.work, 'genparams', _hash([images, 'v1']))
        if not os.path.isfile(os.path.join(gp, 'labels_random.json')):
            probe.write_genparams(images, gp)
        gdim = len(probe.GENPARAM_NAMES)
        argv['genparams'] = [matrix_argv(p, gdim, gp) + ['-pc', '-nw', _nw(cfg, 1, loader=True)] + extra for p in seeds]
        files['genparams_dir'] = gp
    return argv, files


def pretrain(runner, cfg, argv_by_init, log):
    """{init: [record of pretraining seed p]} for the initialisations asked for."""
    name = f"{cfg['arch'].replace(':', '-')}_epoch{cfg['pre_epochs']}.pth"  # timm:NAME -> timm-NAME (models.file_stem)

    def one(item):
        init, p = item
        argv = argv_by_init[init][p]
        run_dir, secs = runner.training_run(
            'pretraining.py', argv, f"pre_{init}_{_hash(argv)}", f'pretraining ({init}, seed {p})', name
        )
        log(
            f"pretrained ({INIT_NAMES[init]}, seed {p}) -> {run_dir}"
            + (' (cached)' if secs is None else f' ({secs:.0f} s)')
        )
        return {'weights': os.path.join(run_dir, name), 'run_dir': run_dir, 'seconds': secs, 'argv': argv, 'seed': p}

    todo = [(i, p) for i in INITS if i in argv_by_init and i in cfg['inits'] for p in range(cfg['pre_seeds'])]
    done = dict(zip(todo, parallel(one, todo, cfg['jobs'])))
    return {i: [done[(i, p)] for p in range(cfg['pre_seeds'])] for i in INITS if (i, 0) in done}


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
FT_SE_FORMULA = (
    'one pretraining per init: s.e. = sd(d_s) / sqrt(n) over fine-tuning seeds s (paired differences d_s; the '
    'pretraining\'s own seed variation is not included)'
)
FT_SE_CLUSTERED = (
    's.e. = sd_p(d_p) / sqrt(P): fine-tuning seed s uses pretraining seed p = s mod P; d_p = mean paired difference '
    'over the fine-tuning seeds of pretraining seed p (the pretraining seed is the unit)'
)


def summarise(runs, labels, inits, seeds, pre_seeds=1):
    """{k: {'inits': {init: {mean, std, n, values}}, 'margins': {name: {mean, se, n, diffs}}}} from the runs.

    With ``pre_seeds`` P > 1 fine-tuning seed s starts from pretraining seed s mod P, and each margin's s.e. is
    taken over the P pretraining seeds (:data:`FT_SE_CLUSTERED`; equal to the plain formula when P = seeds)."""
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
        for a, b in MARGINS:
            if a in inits and b in inits:
                paired = [s for s in seeds if (a, s) in by and (b, s) in by]
                d = [by[(a, s)] - by[(b, s)] for s in paired]
                units = d
                if pre_seeds > 1:
                    units = [
                        float(np.mean([x for s, x in zip(paired, d) if s % pre_seeds == p]))
                        for p in range(pre_seeds)
                        if any(s % pre_seeds == p for s in paired)
                    ]
                se = float(np.std(units, ddof=1) / math.sqrt(len(units))) if len(units) > 1 else float('nan')
                m = float(np.mean(units))
                cell['margins'][f'{a}-{b}'] = {
                    'mean': m,
                    'se': se,
                    'n': len(d),
                    'diffs': d,
                    'unit_diffs': units,
                    'beyond_2se': bool(len(units) > 1 and m > 2 * se),
                }
        table[k] = cell
    return table


ONE_SEED = 'one seed: no s.e.'


def _mean_sd(mean, sd, n):
    """A table cell 'mean ± sd', or 'mean (one seed: no s.e.)' where one seed (the unit) gives no spread."""
    return f"{mean:.1f} ± {sd:.1f}" if n > 1 else f"{mean:.1f} ({ONE_SEED})"


def _margin(mean, se, star=''):
    """A margin cell '+m (s.e. x)', or '+m (one seed: no s.e.)' where its standard error is undefined."""
    return f"{mean:+.1f} (s.e. {se:.1f}){star}" if math.isfinite(se) else f"{mean:+.1f} ({ONE_SEED})"


def format_table(table, labels, inits):
    head = '| init | ' + ' | '.join(f'{k} labels/class' for k in labels) + ' |'
    lines = [head, '|---|' + '---|' * len(labels)]
    for init in inits:
        lines.append(
            f'| {INIT_NAMES[init]} | '
            + ' | '.join(
                _mean_sd(table[k]['inits'][init]['mean'], table[k]['inits'][init]['std'], table[k]['inits'][init]['n'])
                for k in labels
            )
            + ' |'
        )
    names = {f'{a}-{b}': f'{INIT_NAMES[a]} − {INIT_NAMES[b]}, paired' for a, b in MARGINS}
    names.update({'ph-scratch': 'PH − scratch, paired', 'ph-random': 'PH − random targets, paired'})
    names['random-scratch'] = 'random − scratch, paired'
    for m, title in names.items():
        if all(m in table[k]['margins'] for k in labels):
            cells = []
            for k in labels:
                c = table[k]['margins'][m]
                star = ' ✓' if c['beyond_2se'] else ''
                cells.append(_margin(c['mean'], c['se'], star))
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


# ------------------------------------------------------------------------------------------ the probe
def _eval_tensor(pils, size, resize_to_square=False):
    """Normalised float tensor [N, 3, S, S]: fine-tuning's evaluation transform (Resize + CenterCrop), or
    pretraining's (Resize to S x S) with ``resize_to_square``."""
    import torch
    import torchvision.transforms as T

    from util.train.datasets import NORMALIZE

    if resize_to_square:
        tf = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(), NORMALIZE])
    else:
        tf = T.Compose(
            [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size), T.ToTensor(), NORMALIZE]
        )
    return torch.stack([tf(im) for im in pils])


def probe_pool(cfg):
    """(images tensor [N,3,S,S], targets [N], fixed test indices or None, description) of the labelled pool:
    all 1797 digits, or every image of --data (its val/ as the fixed test split when it has train/ and val/)."""
    from PIL import Image

    if cfg['data'] is None:
        from util.io.digits import load_digit_images

        imgs, targets = load_digit_images(32)
        pils = [Image.fromarray(x).convert('RGB') for x in imgs]
        return _eval_tensor(pils, cfg['ft_img']), targets, None, 'digits (1797 images)'
    data = os.path.abspath(cfg['data'])
    has_split = os.path.isdir(os.path.join(data, 'train')) and os.path.isdir(os.path.join(data, 'val'))
    roots = [os.path.join(data, 'train'), os.path.join(data, 'val')] if has_split else [data]
    paths, targets, fixed = [], [], []
    classes = None
    for r in roots:
        files, t = _list_folder(r)
        cl = sorted(d for d in os.listdir(r) if os.path.isdir(os.path.join(r, d)))
        if classes is None:
            classes = cl
        elif cl != classes:
            raise UserError(f"--data {data}: train/ and val/ hold different classes")
        if r.endswith('val'):
            fixed = list(range(len(paths), len(paths) + len(files)))
        paths += [os.path.join(r, f) for f in files]
        targets += t.tolist()
    pils = [fileio.load_image(q, 'RGB') for q in paths]
    return (
        _eval_tensor(pils, cfg['ft_img']),
        np.asarray(targets, np.int64),
        np.asarray(fixed, np.int64) if has_split else None,
        f'{data} ({len(paths)} images)',
    )


def _load_net(cfg, init, rec, p):
    """The network of ``init``'s pretraining seed ``p`` (scratch: an untrained one, torch seed p)."""
    import torch

    import models

    if init == 'scratch':
        torch.manual_seed(p)
        model, _ = models.load_for(cfg['arch'], None, 10)
    else:
        model, _ = models.load_for(cfg['arch'], rec['weights'])
    return model


def run_probe(cfg, pre_by_seed, inits, log):
    """Logistic regression and kNN on frozen pooled features, for every init x pretraining seed x labels level x
    subset; returns the probe record (accuracies, per-level statistics and paired margins)."""
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # one run's threads (OpenMP/BLAS threads spinning against other processes on shared cores are many times
    # slower than one thread)
    torch.set_num_threads(cfg['threads'])
    with threadpool_limits(cfg['threads']):
        return _run_probe(cfg, pre_by_seed, inits, log)


def _run_probe(cfg, pre_by_seed, inits, log):
    from bench import probe

    x, targets, fixed, desc = probe_pool(cfg)
    P, J = cfg['pre_seeds'], cfg['subsets']
    levels = cfg['labels']
    splits = {
        (k, p, j): probe.probe_split(targets, 0 if k == 'all' else int(k), p, j, cfg['val_fraction'], fixed)
        for k in levels
        for p in range(P)
        for j in range(J)
    }
    acc = {i: {k: {c: [[0.0] * J for _ in range(P)] for c in probe.CLASSIFIERS} for k in levels} for i in inits}
    t0 = time.time()
    for init in inits:
        for p in range(P):
            model = _load_net(cfg, init, None if init == 'scratch' else pre_by_seed[init][p], p)
            feats = probe.pooled_features(model, x)
            for k in levels:
                for j in range(J):
                    train, test = splits[(k, p, j)]
                    for c, v in probe.probe_accuracy(feats, targets, train, test).items():
                        acc[init][k][c][p][j] = v
            log(
                f"probe {PROBE_NAMES[init]:>18} seed {p}: "
                + '  '.join(
                    f"k={k} logreg {np.mean(acc[init][k]['logreg'][p]):.1f} knn {np.mean(acc[init][k]['knn'][p]):.1f}"
                    for k in levels
                )
            )
    table = {}
    for c in probe.CLASSIFIERS:
        table[c] = {}
        for k in levels:
            cell = {'inits': {i: probe.level_stats(acc[i][k][c]) for i in inits}, 'margins': {}}
            for a, b in MARGINS:
                if a in inits and b in inits:
                    cell['margins'][f'{a}-{b}'] = probe.paired_margin(acc[a][k][c], acc[b][k][c])
            table[c][k] = cell
    n_test = {k: int(len(splits[(k, 0, 0)][1])) for k in levels}
    return {
        'pool': desc,
        'features': 'global-average-pooled outputs of the last two stages (ResNets: layer3, layer4), concatenated',
        'classifiers': {
            'logreg': 'sklearn LogisticRegression(C=1, lbfgs) on features standardised with the subset\'s statistics',
            'knn': f'sklearn KNeighborsClassifier(k={probe.KNN_K}, cosine) on the same standardised features',
        },
        'subsets': 'unit p, subset j: per class a random test share --val_fraction and K training images, '
        'numpy default_rng([p, j, 17]); identical for every init',
        'pre_seeds': P,
        'subsets_per_seed': J,
        'test_images': n_test,
        'se_formula': probe.SE_FORMULA,
        'seconds': time.time() - t0,
        'acc': acc,
        'table': table,
    }


def format_probe(rec, levels, inits):
    lines = []
    for c in ('logreg', 'knn'):
        t = rec['table'][c]
        lines.append(f"\n{'linear probe (logistic regression)' if c == 'logreg' else 'kNN probe'}, top-1 (%)\n")
        lines.append('| init | ' + ' | '.join(f'{k} labels/class' for k in levels) + ' |')
        lines.append('|---|' + '---|' * len(levels))
        for i in inits:
            lines.append(
                f'| {PROBE_NAMES[i]} | '
                + ' | '.join(
                    _mean_sd(t[k]['inits'][i]['mean'], t[k]['inits'][i]['sd_units'], t[k]['inits'][i]['n_units'])
                    for k in levels
                )
                + ' |'
            )
        for a, b in MARGINS:
            name = f'{a}-{b}'
            if all(name in t[k]['margins'] for k in levels):
                cells = []
                for k in levels:
                    m = t[k]['margins'][name]
                    cells.append(_margin(m['mean'], m['se'], ' ✓' if m['beyond_2se'] else ''))
                lines.append(f'| {PROBE_NAMES[a]} − {PROBE_NAMES[b]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def run_r2(runner, cfg, pre_by_seed, files, log):
    """Held-out R^2 of each pretraining (seed) on fresh images (util/random_image.py --seed 1, the same settings),
    in the space it was trained in (z-scored when --label_norm standard), overall and beyond the first
    principal component of its training labels.  ph and shuffled are scored against the fresh images' real PH
    labels, random against their random targets, genparams against their generator parameters."""
    import torch

    from bench import probe
    from util.ph.labels import find_label_matrix, load_label_matrix

    n = cfg['r2_images']
    inits = [i for i in ('ph', 'shuffled', 'random', 'genparams') if i in pre_by_seed]
    if not n or not inits:
        return None
    gen = _gen_flags(cfg, n, 1)
    fresh = os.path.join(runner.work, 'images_fresh', _hash(gen))
    runner.run('util/random_image.py', ['-o', fresh] + gen, 'random_image.py (fresh images)')
    names = fileio.list_images(fresh)
    lt, dims = cfg['label_type'], cfg['dims']
    targets, train_labels = {}, {}
    if 'ph' in inits or 'shuffled' in inits:
        fresh_ph = os.path.join(runner.work, 'ph_fresh', _ph_key(fresh, cfg))
        runner.run(
            'PHdict.py', [fresh, '-o', fresh_ph, '-it', 'png', '-nw', _nw(cfg, 2)] + _ph_flags(cfg), 'PHdict.py (fresh)'
        )
        m, nm = load_label_matrix(*find_label_matrix(fresh_ph, lt), expected_dim=dims)
        row = {x: r for r, x in enumerate(nm)}
        targets['ph'] = targets['shuffled'] = np.asarray(m)[[row[x] for x in names]]
        tm, _ = load_label_matrix(*find_label_matrix(files['ph_dir'], lt), expected_dim=dims)
        train_labels['ph'] = train_labels['shuffled'] = np.asarray(tm)
    if 'genparams' in inits:
        with open(os.path.join(files['genparams_dir'], 'labels_random.json'), encoding='utf-8') as f:
            g = json.load(f)['genparams']
        _, raw = probe.genparams_matrix(fresh)
        targets['genparams'], _, _ = probe.standardise_columns(raw, np.asarray(g['mean']), np.asarray(g['std']))
        gm, _ = load_label_matrix(
            *find_label_matrix(files['genparams_dir'], 'random'), expected_dim=len(probe.GENPARAM_NAMES)
        )
        train_labels['genparams'] = np.asarray(gm)
    x = _eval_tensor([fileio.load_image(os.path.join(fresh, q), 'RGB') for q in names], cfg['pre_crop'], True)
    torch.set_num_threads(cfg['threads'])
    out = {'images': fresh, 'n': len(names), 'inits': {}}
    for init in inits:
        per = []
        for p, rec in enumerate(pre_by_seed[init]):
            if init == 'random':
                from util.train import sources as label_sources

                keys = [label_sources.image_key(q) for q in names]
                y = label_sources.random_matrix(p, keys, dims)
                tl, _ = load_label_matrix(*find_label_matrix(files['random_dirs'][p], 'random'), expected_dim=dims)
                tl = np.asarray(tl)
            else:
                y, tl = targets[init], train_labels[init]
            with open(os.path.join(rec['run_dir'], 'args.json'), encoding='utf-8') as f:
                a = json.load(f)
            if a.get('label_norm') == 'standard' and a.get('label_norm_mean'):
                mean, std = np.asarray(a['label_norm_mean']), np.asarray(a['label_norm_std'])
                y, tl = (y - mean) / std, (tl - mean) / std
            pred = probe.outputs(_load_net(cfg, init, rec, p), x)
            per.append(probe.heldout_r2(pred, y, tl))
        out['inits'][init] = {
            'per_seed': per,
            'r2': float(np.mean([r['r2'] for r in per])),
            'r2_beyond_pc1': float(np.mean([r.get('r2_beyond_pc1', float('nan')) for r in per])),
        }
        log(
            f"held-out R^2 ({INIT_NAMES[init]}, {len(names)} fresh images): "
            + ', '.join(f"{r['r2']:.3f} / {r.get('r2_beyond_pc1', float('nan')):.3f}" for r in per)
            + ' (overall / beyond PC1, per seed)'
        )
    return out


def format_r2(rec):
    lines = [
        f"\nheld-out R² of the pretraining on {rec['n']} fresh images (mean over pretraining seeds)\n",
        '| pretraining target | R² overall | R² beyond PC1 | per seed (overall / beyond PC1) |',
        '|---|---|---|---|',
    ]
    for init, r in rec['inits'].items():
        per = ', '.join(f"{x['r2']:.2f} / {x.get('r2_beyond_pc1', float('nan')):.2f}" for x in r['per_seed'])
        lines.append(f"| {INIT_NAMES[init]} | {r['r2']:.3f} | {r['r2_beyond_pc1']:.3f} | {per} |")
    return '\n'.join(lines)


# Rates behind the screen estimate, measured on this project's shared 2-core VM: a cpu-preset pretraining
# (4000 images x 8 epochs at 40-px crops) took 128 s and 130 s side by side with a second one at load 1.7-2.4
# (bench/results/transfer_screen_pi.json) -> 4.0 s per 1000 image-epochs; PHdict.py on 4000 48-px images took
# 37 s at load 8.7 (2026-12-03) -> 10 s per 1000 images (an upper bound); the probe of 15 networks x 2 levels x
# 5 subsets took 69 s at load 5-7 (bench/results/transfer_screen_probe_pi_matched.json, 'probe' -> 'seconds')
# -> 9.2 s per network per (level x 10 subsets).
RATE_PRETRAIN_S_PER_K = 4.0
RATE_PHDICT_S_PER_K = 10.0
RATE_PROBE_S_PER_NET = 9.2


def screen_estimate(cfg, cached_inits=('random', 'genparams', 'scratch')):
    """(minutes for one new label recipe with the controls cached, minutes from nothing): an estimate from the
    rates above, on 2 free cores, 2 pretrainings side by side."""
    recipe = [i for i in cfg['inits'] if i in ('ph', 'shuffled')]
    others = [i for i in cfg['inits'] if i not in recipe and i != 'scratch']
    per_pre = cfg['n_images'] * cfg['pre_epochs'] / 1000 * RATE_PRETRAIN_S_PER_K * cfg['pre_crop'] ** 2 / 40**2
    rounds = lambda n: math.ceil(n * cfg['pre_seeds'] / max(1, cfg['jobs']))  # noqa: E731
    fixed = (cfg['n_images'] + cfg['r2_images']) / 1000 * RATE_PHDICT_S_PER_K
    probe_s = RATE_PROBE_S_PER_NET * cfg['pre_seeds'] * len(cfg['inits']) * len(cfg['labels']) * cfg['subsets'] / 10
    new = rounds(len(recipe)) * per_pre + fixed + probe_s
    return new / 60, (new + rounds(len(others)) * per_pre) / 60


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
            'probe',
            'finetune',
            'pre_seeds',
            'subsets',
            'r2_images',
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
    if args.preset == 'screen':
        new, cold = screen_estimate(cfg)
        log(
            f"estimate (2 free cores): {new:.0f} min for this label recipe once the controls are cached, "
            f"{cold:.0f} min from nothing"
        )
    runner = Runner(work, cfg['threads'], args.fresh, log)
    seeds = list(range(cfg['seeds']))
    inits = [i for i in INITS if i in cfg['inits']]
    files = {}
    pre_by_seed = {}
    P = cfg['pre_seeds']
    runs, table, text = [], None, ''
    tasks = []
    if cfg['finetune']:
        tasks = [  # the splits first: a --data the task cannot use is refused before any pretraining
            (k, seed, make_split(runner, cfg, seed, k), init) for k in cfg['labels'] for seed in seeds for init in inits
        ]
    if any(i != 'scratch' for i in inits):
        argv_by_init, files = prepare_pretraining(runner, cfg, log)
        pre_by_seed = pretrain(runner, cfg, argv_by_init, log)
    pre = {i: recs[0] for i, recs in pre_by_seed.items()}
    if cfg['finetune']:

        def one(task):
            k, seed, split, init = task
            # fine-tuning seed s starts from pretraining seed s mod P
            chosen = {init: pre_by_seed[init][seed % P]} if init in pre_by_seed else pre
            r = dict(labels=k, **finetune(runner, cfg, split, seed, init, chosen, log))
            if init in pre_by_seed:
                r['pre_seed'] = seed % P
            log(
                f"k={k:>4} seed={seed} {INIT_NAMES[init]:>14}: top-1 {r['top1']:.2f}  "
                f"({r['train_images']} train, {r['epochs']} epochs{', cached' if r['cached'] else ''})"
            )
            return r

        runs = parallel(one, tasks, cfg['jobs'])
        table = summarise(runs, cfg['labels'], inits, seeds, P)
        text = format_table(table, cfg['labels'], inits)
    probe_rec = run_probe(cfg, pre_by_seed, inits, log) if cfg['probe'] else None
    r2 = run_r2(runner, cfg, pre_by_seed, files, log) if cfg['r2_images'] else None
    wall = time.time() - t0
    load_after = _load()
    parts = []
    if cfg['finetune']:
        parts.append(
            f"{name}: fine-tuning, {len(seeds)} seeds ({P} pretraining seed{'s' if P > 1 else ''} per init), top-1 "
            f"(%) on held-out test, mean ± std; margins paired by seed (✓: mean > 2 s.e.; "
            f"{FT_SE_CLUSTERED if P > 1 else FT_SE_FORMULA})\n\n" + text
        )
    if probe_rec:
        parts.append(
            f"{name}: frozen-feature probes on {probe_rec['pool']}, {P} pretraining seed{'s' if P > 1 else ''} x "
            f"{cfg['subsets']} subsets; mean ± sd over pretraining seeds; margins paired (✓: mean > 2 s.e.; "
            f"{probe_rec['se_formula']})" + format_probe(probe_rec, cfg['labels'], inits)
        )
    if r2:
        parts.append(format_r2(r2))
    body = '\n\n'.join(parts)
    footer = f"wall {wall / 60:.1f} min, load {load_before} -> {load_after}"
    print('\n' + body + '\n\n' + footer, flush=True)
    stem = os.path.join(args.out, f'transfer_{name}')
    result = {
        'name': name,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'settings': cfg,
        'seeds': seeds,
        'wall_seconds': wall,
        'load_before': load_before,
        'load_after': load_after,
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()},
        'files': files,
        'pretraining': pre,
        'pretraining_by_seed': pre_by_seed,
        'table': table,
        'runs': runs,
        'probe': probe_rec,
        'heldout_r2': r2,
    }
    fileio.write_json(stem + '.json', result)
    fileio.write_text(stem + '.md', body + '\n\n' + footer + '\n')
    if cfg['finetune']:
        plot(table, cfg['labels'], inits, stem + '.png', f"{name}: fine-tuning"[:110])
    else:
        probe_table = {
            k: {
                'inits': {
                    i: {'mean': c['mean'], 'std': c['sd_units']}
                    for i, c in probe_rec['table']['logreg'][k]['inits'].items()
                }
            }
            for k in cfg['labels']
        }
        plot(probe_table, cfg['labels'], inits, stem + '.png', f"{name}: linear probe"[:110])
    print(f"wrote {stem}.json, .md, .png", flush=True)
    return 0


if __name__ == '__main__':
    run_cli(main, get_args_parser().parse_args())
