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
lever re-runs only what it changes); ``--fresh`` ignores the cache.  An interrupted evaluation, run again,
resumes its unfinished pretrainings from their last checkpoint.pth (not under --fresh).  A line per finished run
says how long it took, how many are left and the expected end; the durations are kept in ``<work>/timings.json``
and the screen's estimate uses them (else built-in rates), saying which.

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

PH beside instance discrimination (``pretraining.py -lm contrastive``, the same images, sizes, epochs and seeds):
``contrastive`` is contrastive learning alone (``--ph_weight 0``: no label read, one run for every recipe),
``contrastive_ph`` adds the PH labels (``--ph_weight 1``, read as the PH pretrainings read them) and
``contrastive_shuffled`` the shuffled ones; the tables give PH beside contrastive minus each of the two.

``--r2_images N``: the pretraining's held-out R^2 on N fresh generated images (util/random_image.py --seed 1,
the same settings; their PH labels from the same PHdict.py flags), in the space the network was trained in,
overall and beyond the first principal component of its training labels.
"""

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

from bench import transfer_timing as timing
from bench.transfer_data import make_split
from bench.transfer_presets import (
    ALL_INITS,
    DEFAULT_INITS,
    INIT_NAMES,
    INITS,  # noqa: F401 (tests import it from here)
    PRESETS,
    _resolved_label_flags,  # noqa: F401 (tests import it from here)
    ph_label_flags,
    screen_estimate,
)
from bench.transfer_probes import run_probe, run_r2
from bench.transfer_report import format_probe, format_r2, format_table, plot
from bench.transfer_runner import (
    Runner,
    _nw,  # noqa: F401 (tests import it from here)
    finetune,
    parallel,
    prepare_pretraining,
    pretrain,
)
from bench.transfer_stats import FT_SE_CLUSTERED, FT_SE_FORMULA, summarise
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io import fileio

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        choices=ALL_INITS,
        default=list(DEFAULT_INITS),
        help="initialisations: scratch (the untrained network in the probe), ph (PH labels), random (random "
        "targets), shuffled (the PH label matrix with its rows permuted across images), genparams (regression "
        "of the generator's own parameters); pretraining.py -lm contrastive on the same images and budget: "
        "contrastive (--ph_weight 0, contrastive learning alone), contrastive_ph (--ph_weight 1 on the PH "
        "labels), contrastive_shuffled (--ph_weight 1 on the shuffled PH labels) (default: %(default)s)",
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
    matrix = [i for i in ('contrastive_ph', 'contrastive_shuffled') if i in cfg['inits']]
    if matrix and (cfg['on_the_fly'] or cfg['ph'] == 'post'):
        raise UserError(
            f"--inits {' '.join(matrix)}: -lm contrastive reads PHdict.py's label matrix of the images (each view "
            "gets its whole image's label): it needs -ph pre without --on_the_fly"
        )
    if cfg['label_type'] == 'class':
        raise UserError("--label_type class is the labelled control, not a PH label; choose a PH label type")
    cfg['ph_label_flags'] = ph_label_flags(cfg)  # refused here, before any image is made, if they cannot be used
    return cfg


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


def _progress(cfg, inits, tasks, rates, log):
    """The progress line's plan: every pretraining, fine-tuning and probed network of this evaluation, each
    kind's expected seconds per run from ``rates`` until one of its runs is timed (None: not known)."""
    from bench.transfer_runner import ft_epochs

    pre_inits = [i for i in inits if i != 'scratch']
    plan = {'pretraining': len(pre_inits) * cfg['pre_seeds'], 'finetuning': len(tasks), 'probe': 0}
    if cfg['probe']:
        plan['probe'] = len(inits) * cfg['pre_seeds']
    fallback = {'pretraining': None, 'finetuning': None, 'probe': rates['probe'] * timing.probe_units(cfg)}
    if pre_inits:
        units = [timing.pretraining_units(cfg, i) for i in pre_inits]
        fallback['pretraining'] = rates['pretraining'] * sum(units) / len(units)
    if tasks and 'finetuning' in rates:
        n = [len(fileio.list_images(os.path.join(split, 'train'))) for _, _, split, _ in tasks]
        units = [timing.finetuning_units(cfg, x, ft_epochs(cfg, x)) for x in n]
        fallback['finetuning'] = rates['finetuning'] * sum(units) / len(units)
    parallel_runs = {'pretraining': cfg['jobs'], 'finetuning': cfg['jobs'], 'probe': 1}
    plan = {k: v for k, v in plan.items() if v}
    return timing.Progress(plan, fallback, parallel_runs, log)


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
    records = timing.read_timings(work)
    rates, basis = timing.measured_rates(records, cfg)
    estimate = None
    if args.preset == 'screen':
        new, cold = estimate = screen_estimate(cfg, rates=rates)
        log(
            f"estimate ({cfg['jobs']} pretraining{'s' if cfg['jobs'] > 1 else ''} at a time): {new:.0f} min for "
            f"this label recipe once the controls are cached, {cold:.0f} min from nothing; based on: "
            + timing.basis_text(rates, basis)
        )
        last = [r for r in records if r.get('kind') == 'evaluation' and r.get('preset') == 'screen']
        if last and last[-1].get('estimate_min'):
            log(
                f"the last screen in this --work was estimated at {last[-1]['estimate_min'][0]:.0f} / "
                f"{last[-1]['estimate_min'][1]:.0f} min and took {last[-1]['seconds'] / 60:.1f} min"
            )
    runner = Runner(work, cfg['threads'], args.fresh, log)
    seeds = list(range(cfg['seeds']))
    inits = [i for i in ALL_INITS if i in cfg['inits']]
    files = {}
    pre_by_seed = {}
    P = cfg['pre_seeds']
    runs, table, text = [], None, ''
    tasks = []
    if cfg['finetune']:
        tasks = [  # the splits first: a --data the task cannot use is refused before any pretraining
            (k, seed, make_split(runner, cfg, seed, k), init) for k in cfg['labels'] for seed in seeds for init in inits
        ]
    runner.progress = _progress(cfg, inits, tasks, rates, log)
    if any(i != 'scratch' for i in inits):
        t_prep = time.time()
        argv_by_init, files = prepare_pretraining(runner, cfg, log)
        if files.get('made_images'):  # timed from nothing only: a cached preparation says nothing of the rate
            timing.record_timing(work, cfg, 'prepare', time.time() - t_prep, cfg['n_images'] / 1000)
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
    probe_rec = run_probe(cfg, pre_by_seed, inits, log, runner) if cfg['probe'] else None
    r2 = run_r2(runner, cfg, pre_by_seed, files, log) if cfg['r2_images'] else None
    wall = time.time() - t0
    timing.record_timing(
        work, cfg, 'evaluation', wall, 1, preset=args.preset, estimate_min=list(estimate) if estimate else None
    )
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
