"""bench/transfer.py's runs: the product's scripts as subprocesses (:class:`Runner`), their cache in the work
folder (a run keyed by the hash of its command, reused unless --fresh) and its fcntl locks (:func:`run_lock`),
and the pipeline that makes images, labels, pretrainings and fine-tunings with them."""

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

from bench.transfer_presets import ALL_INITS, INIT_NAMES, _resolved_label_flags
from bench.transfer_timing import finetuning_units, pretraining_units, record_timing
from util.errors import UserError
from util.io import fileio

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = 'checkpoint.pth'  # what pretraining.py writes after each epoch, for --resume


def _hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class Runner:
    """Runs the product's scripts as subprocesses (nothing imported from them), logging every command."""

    def __init__(self, work, threads, fresh, log, progress=None):
        self.work = work
        self.fresh = fresh
        self.log = log
        self.progress = progress  # a bench.transfer_timing.Progress, told of each finished training run
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')

    def run(self, script, argv, what):
        """Run ``script argv``; its ``-o`` folder's lock (``<folder>.lock``) is held meanwhile, so that another
        bench/transfer.py sharing --work waits rather than writing into the same folder at the same time."""
        argv = [str(a) for a in argv]
        if '-o' not in argv:
            return self._run(script, argv, what)
        with run_lock(argv[argv.index('-o') + 1].rstrip(os.sep) + '.lock', what, self.log) as lock:
            return self._run(script, argv, what, lock)

    def _run(self, script, argv, what, lock=None):
        """The subprocess inherits ``lock`` (the open lock file): the lock stays held while it runs even if this
        process is killed, so a rerun waits for an orphaned run instead of writing into its folder beside it."""
        cmd = [sys.executable, os.path.join(_ROOT, script)] + [str(a) for a in argv]
        t0 = time.time()
        fds = (lock.fileno(),) if lock is not None else ()
        proc = subprocess.run(
            cmd, cwd=_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=fds
        )
        if proc.returncode != 0:
            tail = '\n'.join(proc.stdout.strip().splitlines()[-15:])
            raise UserError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n{tail}")
        return time.time() - t0

    def training_run(self, script, argv, key, what, done_file, resumable=False):
        """Run a training script with ``-o <work>/runs/<key>``; returns (run folder, seconds or None if cached).

        A run that finished (``done_file`` present) is reused unless --fresh.  The run key's lock file
        (``<work>/runs/<key>.lock``, an fcntl lock) is held while a run is checked for and made: a second
        bench/transfer.py sharing ``--work`` waits for the first's run of the same key and then reuses it.  Under
        the lock an unfinished run folder is an earlier, killed call's (the lock dies with its process and its
        training subprocess).  ``resumable`` (pretraining.py), not --fresh, and the newest unfinished folder holds
        its ``checkpoint.pth``: the run is continued there with ``--resume`` (a resumed run repeats the
        uninterrupted one exactly on the CPU); the seconds returned are those of this call only.  Other
        unfinished folders are removed and the run starts afresh; a finished one is never removed (--fresh makes
        a new run folder beside it)."""
        base = os.path.join(self.work, 'runs', key)
        with run_lock(base + '.lock', what, self.log) as lock:
            found = _finished_run(base, done_file)
            if found and not self.fresh:
                return found, None
            before = set(os.listdir(base)) if os.path.isdir(base) else set()
            unfinished = [
                os.path.join(base, d)
                for d in before
                if os.path.isdir(os.path.join(base, d)) and not os.path.isfile(os.path.join(base, d, done_file))
            ]
            resume = None
            if resumable and not self.fresh:
                ready = [d for d in unfinished if os.path.isfile(os.path.join(d, CHECKPOINT))]
                resume = max(ready, key=lambda d: os.path.getmtime(os.path.join(d, CHECKPOINT))) if ready else None
            for d in unfinished:
                if d != resume:
                    shutil.rmtree(d, ignore_errors=True)
            if resume:
                self.log(f"{what}: resuming the interrupted run {resume} from its {CHECKPOINT}")
                secs = self._run(script, argv + ['-o', base, '--resume', resume], what, lock)
                if not os.path.isfile(os.path.join(resume, done_file)):
                    raise UserError(f"{what}: no {done_file} in {resume} after resuming it")
                return resume, secs
            secs = self._run(script, argv + ['-o', base], what, lock)
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
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finished_run(base, done_file):
    """The newest run folder under ``base`` holding ``done_file``, or None."""
    if not os.path.isdir(base):
        return None
    done = [os.path.join(base, d, done_file) for d in os.listdir(base)]
    done = [x for x in done if os.path.isfile(x)]
    return os.path.dirname(max(done, key=os.path.getmtime)) if done else None


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
    made_images = not os.path.isdir(images)
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
    files = {
        'images': images,
        'ph_dir': ph_dir,
        'ph_labels_used': ph_dir,
        'random_dir': rand_dir(0),
        'made_images': made_images,
    }
    if 'random' in inits:
        argv['random'] = [
            matrix_argv(p, dims, rand_dir(p)) + ['-pc', '-nw', _nw(cfg, 1, loader=True)] + extra for p in seeds
        ]
        files['random_dirs'] = [rand_dir(p) for p in seeds]
    if 'shuffled' in inits or 'contrastive_shuffled' in inits:
        from bench import probe

        shuf = []
        for p in seeds:
            d = os.path.join(runner.work, 'shuffled', _hash([ph_dir, lt, p]))
            if not os.path.isfile(os.path.join(d, f'labels_{lt}.json')):
                probe.shuffled_copy(ph_dir, lt, d, p)
            shuf.append(d)
        if 'shuffled' in inits:
            argv['shuffled'] = [ph_argv(p, d) + extra for p, d in zip(seeds, shuf)]
        files['shuffled_dirs'] = shuf
    # -lm contrastive on the same images, sizes, epochs and seeds: alone (--ph_weight 0: no label is read, so no
    # label flag and no --label_norm, and one run serves every label recipe), or beside the PH labels / their
    # shuffle, read as the PH pretrainings read them (-pd -pc, their label flags and --label_norm)
    if 'contrastive' in inits:
        argv['contrastive'] = [
            ['-lm', 'contrastive', '--ph_weight', 0, '-u', cfg['arch'], '-nc', dims]
            + sizes(p)
            + ['-t', images, '-nw', _nw(cfg, 1, loader=True)]
            + extra
            for p in seeds
        ]
    with_ph = ['-lm', 'contrastive', '--ph_weight', 1]
    if 'contrastive_ph' in inits:
        argv['contrastive_ph'] = [with_ph + ph_argv(p, ph_dir) + extra for p in seeds]
    if 'contrastive_shuffled' in inits:
        argv['contrastive_shuffled'] = [with_ph + ph_argv(p, d) + extra for p, d in zip(seeds, files['shuffled_dirs'])]
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
            'pretraining.py', argv, f"pre_{init}_{_hash(argv)}", f'pretraining ({init}, seed {p})', name, True
        )
        log(
            f"pretrained ({INIT_NAMES[init]}, seed {p}) -> {run_dir}"
            + (' (cached)' if secs is None else f' ({secs:.0f} s)')
        )
        _finished(runner, cfg, 'pretraining', f"{INIT_NAMES[init]}, seed {p}", secs, pretraining_units(cfg, init))
        return {'weights': os.path.join(run_dir, name), 'run_dir': run_dir, 'seconds': secs, 'argv': argv, 'seed': p}

    todo = [(i, p) for i in ALL_INITS if i in argv_by_init and i in cfg['inits'] for p in range(cfg['pre_seeds'])]
    done = dict(zip(todo, parallel(one, todo, cfg['jobs'])))
    return {i: [done[(i, p)] for p in range(cfg['pre_seeds'])] for i in ALL_INITS if (i, 0) in done}


def _finished(runner, cfg, kind, what, secs, units):
    """A training run finished: record its duration in the work folder (not a cached one's) and print its
    progress line."""
    if secs is not None:
        record_timing(runner.work, cfg, kind, secs, units)
    if runner.progress is not None:
        runner.progress.done(kind, what, secs)


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
    what = f"{INIT_NAMES[init]}, seed {seed}, {n_train} training images"
    _finished(runner, cfg, 'finetuning', what, secs, finetuning_units(cfg, n_train, epochs))
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
