"""bench/transfer.py's settings: the initialisations and their names, the margins it reports, the presets' sizes,
the label flags of ``--ph_extra`` as the PH pretrainings take them, and the screen's time estimate."""

import math
import os

from util.errors import UserError
from util.ph.vectorise import LABEL_FLAGS

# the PH regression recipe and its controls
INITS = ('scratch', 'ph', 'random', 'shuffled', 'genparams')
# -lm contrastive (issue 28, 2d), pretrained on the same images with the same budget: contrastive learning alone
# (--ph_weight 0), PH beside it (--ph_weight 1 on the PH labels) and its control on the shuffled PH labels
CONTRASTIVE_INITS = ('contrastive', 'contrastive_ph', 'contrastive_shuffled')
ALL_INITS = INITS + CONTRASTIVE_INITS
DEFAULT_INITS = ('scratch', 'ph', 'random')
INIT_NAMES = {
    'scratch': 'scratch',
    'ph': 'PH labels',
    'random': 'random targets',
    'shuffled': 'shuffled PH labels',
    'genparams': 'generator params',
    'contrastive': 'contrastive alone',
    'contrastive_ph': 'PH beside contrastive',
    'contrastive_shuffled': 'contrastive + shuffled PH',
}
PROBE_NAMES = dict(INIT_NAMES, scratch='untrained network')
# margins reported (a - b), when both are run
MARGINS = (
    ('ph', 'scratch'),
    ('ph', 'random'),
    ('ph', 'shuffled'),
    ('ph', 'genparams'),
    ('random', 'scratch'),
    ('contrastive_ph', 'contrastive'),
    ('contrastive_ph', 'contrastive_shuffled'),
    ('contrastive', 'scratch'),
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
# one label recipe probed (no fine-tuning) with 3 pretraining seeds x 5 subsets: the cpu preset's sizes at two
# levels; about 24 min on 2 free cores once the recipe-independent controls are cached (see screen_estimate)
PRESETS['screen'] = dict(PRESETS['cpu'], labels=['10', '50'], seeds=3, finetune=False)


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


# Built-in rates behind the screen estimate, used until this machine has measured its own (bench/transfer_timing.py
# keeps the durations of finished runs in --work and the estimate prefers them).  Pretraining: two cpu-preset
# pretrainings side by side (4000 images x 3 epochs at 40-px crops) took 158.7 s and 158.5 s at load 1.4-8.7
# (bench/results/transfer_screen_probe_hist.json) -> 13.2 s per 1000 image-epochs (the 4.0 s once used here gave
# "16 min from nothing" for a screen that took 56.6 min, issue 28); PHdict.py on 4000 48-px images took 37 s at
# load 8.7 (2026-12-03) -> 10 s per 1000 images (an upper bound); the probe of 15 networks x 2 levels x 5 subsets
# took 69 s at load 5-7 (bench/results/transfer_screen_probe_pi_matched.json, 'probe' -> 'seconds') -> 9.2 s per
# network per (level x 10 subsets).  A -lm contrastive pretraining runs the network on two views of each image:
# counted as CONTRASTIVE_COST pretrainings (assumed, not measured).
RATE_PRETRAIN_S_PER_K = 13.2
CONTRASTIVE_COST = 2.0
RATE_PHDICT_S_PER_K = 10.0
RATE_PROBE_S_PER_NET = 9.2
BUILT_IN_RATES = {'pretraining': RATE_PRETRAIN_S_PER_K, 'prepare': RATE_PHDICT_S_PER_K, 'probe': RATE_PROBE_S_PER_NET}


def screen_estimate(cfg, cached_inits=('random', 'genparams', 'scratch'), rates=None):
    """(minutes for one new label recipe with the controls cached, minutes from nothing), from ``rates``
    ({'pretraining': s per 1000 image-epochs at 40-px crops, 'prepare': s per 1000 images, 'probe': s per
    network per (level x 10 subsets)}; missing ones: the built-in rates above), ``jobs`` pretrainings side by
    side.  A pretraining rate measured with the same jobs already holds the runs' contention."""
    r = dict(BUILT_IN_RATES, **(rates or {}))
    recipe = [i for i in cfg['inits'] if i in ('ph', 'shuffled', 'contrastive_ph', 'contrastive_shuffled')]
    others = [i for i in cfg['inits'] if i not in recipe and i != 'scratch']
    per_pre = cfg['n_images'] * cfg['pre_epochs'] / 1000 * r['pretraining'] * cfg['pre_crop'] ** 2 / 40**2
    cost = lambda inits: sum(CONTRASTIVE_COST if i in CONTRASTIVE_INITS else 1 for i in inits)  # noqa: E731
    rounds = lambda inits: math.ceil(cost(inits) * cfg['pre_seeds'] / max(1, cfg['jobs']))  # noqa: E731
    fixed = (cfg['n_images'] + cfg['r2_images']) / 1000 * r['prepare']
    probe_s = r['probe'] * cfg['pre_seeds'] * len(cfg['inits']) * len(cfg['labels']) * cfg['subsets'] / 10
    new = rounds(recipe) * per_pre + fixed + probe_s
    # from nothing, the controls' pretrainings share the rounds with the recipe's
    return new / 60, (new + (rounds(recipe + others) - rounds(recipe)) * per_pre) / 60
