"""Command-line parsing that never guesses: no abbreviations, and the original's flags never misread.

``argparse`` with ``allow_abbrev=False`` still expands a single-dash prefix of a longer single-dash option
(``-m 0.8`` becomes ``-ml 0.8``, ``-s 0`` becomes ``-si 0``, ``-c X`` becomes ``-cp X``).
:class:`StrictArgumentParser` accepts an option only as it is spelt (a one-letter option may still carry its
value glued on, ``-e5``), and :func:`refuse_flags` registers the flags of the original scripts that we do not
have, each answered with one line naming what to use here (exit status 2).
"""

import argparse
import math
import sys


def finite_float(text):
    """``type=float`` of a :class:`StrictArgumentParser`: a number, never ``inf`` or ``nan`` (no flag of ours
    means anything by them: ``--label_norm_floor inf`` would zero every target and write ``Infinity``, which is
    not JSON, into args.json)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class StrictArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without any abbreviation, of ``--long`` or of ``-multi`` letter options, whose
    ``type=float`` options refuse ``inf`` and ``nan`` (:func:`finite_float`).

    ``refuse``: {option string: hint} of flags to answer with one line (see :func:`refuse_flags`).
    """

    def __init__(self, *args, refuse=None, **kwargs):
        kwargs.setdefault('allow_abbrev', False)
        super().__init__(*args, **kwargs)
        self.register('type', float, finite_float)  # the argument groups share the parser's registry
        self._refuse = dict(refuse or {})

    def parse_known_args(self, args=None, namespace=None):
        if self._refuse:  # added at parse time, so that they never clash with an option added later
            refuse_flags(self, self._refuse)
            self._refuse = {}
        return super().parse_known_args(args, namespace)

    def _get_option_tuples(self, option_string):
        # argparse calls this only for strings that are not an option as spelt; keep only a one-letter option
        # with its value glued on (``-e5``), never a prefix of a longer option (``-m`` for ``-ml``).
        return [
            t
            for t in super()._get_option_tuples(option_string)
            if t[1] is not None
            and len(t[1]) == 2
            and option_string.startswith(t[1])
            and not option_string.startswith('--')
        ]


class _Refuse(argparse.Action):
    def __init__(self, option_strings, dest, hint=None, **kwargs):
        kwargs.update(nargs='?', help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"error: {option_string} (a flag of the original scripts) is not an option of {parser.prog}: {self.hint}",
            file=sys.stderr,
            flush=True,
        )
        parser.exit(2)


def refuse_flags(parser, table):
    """Add each option of ``table`` ({option string: hint}) that ``parser`` lacks as a refusal.

    The option is hidden from ``-h``; given on the command line (with or without a value) it ends the run
    with ``error: <flag> (a flag of the original scripts) is not an option of <prog>: <hint>`` and exit status 2.
    """
    have = parser._option_string_actions
    for flag, hint in table.items():
        if flag not in have:
            parser.add_argument(flag, action=_Refuse, hint=hint)
    return parser


PP_HINT = "persistence images are not raised to a power afterwards here; there is no equivalent"

# The original's flags (its first and later versions) that our training scripts do not have, and ours.
# (Those we take under the original's name are aliases in util/cli/compat.py; docs/compat.md is the table.)
TRAINING_FLAGS = {
    '-dt': "use --filtration",
    '--distance_transform': "use --filtration",
    '-is2': "one --img_size serves both tasks here",
    '--img_size_pt': "one --img_size serves both tasks here",
    '-pp': PP_HINT,
    '--persImg_power': PP_HINT,
    '-sf': "each run gets its own dated folder under -o; choose -o instead of a suffix",
    '--suffix': "each run gets its own dated folder under -o; choose -o instead of a suffix",
    '-lrf': "it meant --lr_pre in the original's first version and --lr_fine in its later ones; give --lr_pre or "
    "--lr_fine",
    '-lrp': "it meant --lr_fine in the original's first version and --lr_pre in its later ones; give --lr_fine or "
    "--lr_pre",
    '-lrd': "the learning-rate schedule is chosen by --optimizer (e.g. sgd_cos) here",
    '--lr_drop': "the learning-rate schedule is chosen by --optimizer (e.g. sgd_cos) here",
    '-nc2': "use -nd/--ph_dims",
    '--numof_classes2': "use -nd/--ph_dims",
    '--numof_classes_pt': "use -nd/--ph_dims",
    '--train2': "use -t2/--ph_train",
    '--val2': "use -v2/--ph_val",
    '-val2': "use -v2/--ph_val",
    '--dist-url': "launch several processes with torchrun instead (it sets the rendezvous), or use -ws N",
    '-gr': "there is no greyscale option; convert the images first",
    '--greyscale': "there is no greyscale option; convert the images first",
    '--num_bins': "the histogram bins follow -nc/--numof_classes here (PHdict.py -n sets them for -ch)",
}

PHDICT_FLAGS = {
    '-t': "use --label_type",
    '--type': "use --label_type",
    '-dt': "use --filtration",
    '--distance_transform': "use --filtration",
    '-is': "diagrams are computed at each image's own size here; resize the images first",
    '--img_size': "diagrams are computed at each image's own size here; resize the images first",
    '-pp': PP_HINT,
    '--persImg_power': PP_HINT,
    '-sf': "use --plot N (plots of the first N inputs)",
    '--save_fig': "use --plot N (plots of the first N inputs)",
    '-aff': "PHdict.py computes the PH of the images as they are; use -aff of the training scripts",
    '--affine': "PHdict.py computes the PH of the images as they are; use -aff of the training scripts",
    '-pat': "PHdict.py computes the PH of whole images; PH after augmentation is -ph post of the training scripts",
    '--persistence_after_transform': "PHdict.py computes the PH of whole images; PH after augmentation is "
    "-ph post of the training scripts",
}

# Every option string of the original's later arguments.py in its mode "all" (the parser that its
# predict.py and visMap.py used too).
ORIGINAL_TRAINING_OPTIONS = (
    '--output',
    '-o',
    '--img_size',
    '-is',
    '--num_workers',
    '-j',
    '--train',
    '-t',
    '--val',
    '-val',
    '--train_pt',
    '-t2',
    '--val_pt',
    '-v2',
    '--path2PHdir',
    '-pd',
    '--path2weight',
    '-pw',
    '--cachedir',
    '-c',
    '--suffix',
    '-sf',
    '--resume',
    '--alpha_range',
    '-ar',
    '--beta_range',
    '-br',
    '--n_samples',
    '-n',
    '--n_samples_val',
    '-nv',
    '--prob_binary',
    '-pb',
    '--prob_colour',
    '-pc',
    '--max_life',
    '-ml',
    '--max_birth',
    '-maxb',
    '--min_birth',
    '-minb',
    '--affine',
    '-aff',
    '--bandwidth',
    '-bd',
    '--persImg_sigma',
    '-ps',
    '--persImg_power',
    '-pp',
    '--persImg_weight',
    '-pn',
    '--num_landscapes',
    '--label_type_pt',
    '-lt',
    '--persistence_after_transform',
    '-pat',
    '--filtration',
    '-f',
    '--gradient',
    '-g',
    '--usenet',
    '-u',
    '--numof_dims_pt',
    '-nd',
    '--lr_fine',
    '-lrf',
    '--lr_pre',
    '-lrp',
    '--lr_drop',
    '-lrd',
    '--momentum',
    '-m',
    '--weight_decay',
    '-wd',
    '--optimizer',
    '-op',
    '--freeze_encoder',
    '-fe',
    '--learning_mode',
    '-lm',
    '--dist-url',
    '--dist-backend',
    '-p',
    '--world_size',
    '-ws',
    '--epochs',
    '-e',
    '--start_epoch',
    '--batch_size',
    '-b',
    '--img_size_pt',
    '-is2',
    '--crop_size',
    '-cs',
    '--crop_padding',
    '-cp',
    '--random_scale',
    '-rs',
    '--random_rotation',
    '-rr',
    '--aug-plus',
    '-ra',
    '--save_interval',
    '--log_interval',
    '--seed',
    '-s',
    '--output_training_images',
    '-oti',
)


def not_used_by(script, table=None):
    """{option: hint} refusing every original training option for ``script`` (predict.py, visMap.py), which
    used the original's whole training parser; ``table`` entries (more specific hints) take precedence."""
    hint = f"a training flag of the original; {script} does not use it (see {script} -h)"
    return dict({flag: hint for flag in ORIGINAL_TRAINING_OPTIONS}, **(table or {}))


PREDICT_FLAGS = not_used_by(
    'predict.py',
    {
        '-t': "give the image folder as the first argument (or -val DIR)",
        '--train': "give the image folder as the first argument (or -val DIR)",
        '-nc': "the number of classes is read from the weights",
        '-s': "prediction is deterministic; no seed",
        '--seed': "prediction is deterministic; no seed",
    },
)

VISMAP_FLAGS = not_used_by('visMap.py')
