"""Command-line parsing that never guesses: no abbreviations, and the original's flags never misread.

``argparse`` with ``allow_abbrev=False`` still expands a single-dash prefix of a longer single-dash option
(``-m 0.8`` becomes ``-ml 0.8``, ``-s 0`` becomes ``-si 0``, ``-c X`` becomes ``-cp X``).
:class:`StrictArgumentParser` accepts an option only as it is spelt (a one-letter option may still carry its
value glued on, ``-e5``), and :func:`refuse_flags` registers the flags of the original scripts that we do not
have, each answered with one line naming what to use here (exit status 2).
"""
import argparse
import sys


class StrictArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without any abbreviation, of ``--long`` or of ``-multi`` letter options.

    ``refuse``: {option string: hint} of flags to answer with one line (see :func:`refuse_flags`).
    """

    def __init__(self, *args, refuse=None, **kwargs):
        kwargs.setdefault('allow_abbrev', False)
        super().__init__(*args, **kwargs)
        self._refuse = dict(refuse or {})

    def parse_known_args(self, args=None, namespace=None):
        if self._refuse:   # added at parse time, so that they never clash with an option added later
            refuse_flags(self, self._refuse)
            self._refuse = {}
        return super().parse_known_args(args, namespace)

    def _get_option_tuples(self, option_string):
        # argparse calls this only for strings that are not an option as spelt; keep only a one-letter option
        # with its value glued on (``-e5``), never a prefix of a longer option (``-m`` for ``-ml``).
        return [t for t in super()._get_option_tuples(option_string)
                if t[1] is not None and len(t[1]) == 2 and option_string.startswith(t[1])
                and not option_string.startswith('--')]


class _Refuse(argparse.Action):
    def __init__(self, option_strings, dest, hint=None, **kwargs):
        kwargs.update(nargs='?', help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"error: {option_string} (a flag of the original scripts) is not an option of {parser.prog}: "
              f"{self.hint}", file=sys.stderr, flush=True)
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
TRAINING_FLAGS = {
    '-s': "use --seed", '-m': "use --momentum",
    '-c': "use --cache_dir (it keeps generated images; PH of a folder is precomputed by PHdict.py, -pd)",
    '--cachedir': "use --cache_dir (it keeps generated images; PH of a folder is precomputed by PHdict.py, -pd)",
    '-pat': "PH is always computed before augmentation here; there is no equivalent",
    '--persistence_after_transform': "PH is always computed before augmentation here; there is no equivalent",
    '-j': "use -nw/--num_workers", '-is': "use --img_size", '-cs': "use --crop_size",
    '-is2': "one --img_size serves both tasks here", '--img_size_pt': "one --img_size serves both tasks here",
    '-lt': "use --label_type", '--label_type_pt': "use --label_type",
    '-f': "use --filtration", '-dt': "use --filtration", '--distance_transform': "use --filtration",
    '-bd': "use --bandwidth", '-maxb': "use --max_birth", '-minb': "use --min_birth",
    '-ps': "use --sigma", '--persImg_sigma': "use --sigma", '-pp': PP_HINT, '--persImg_power': PP_HINT,
    '-pn': "use --power (the lifetime weight exponent of persistence images)",
    '--persImg_weight': "use --power (the lifetime weight exponent of persistence images)",
    '-sf': "each run gets its own dated folder under -o; choose -o instead of a suffix",
    '--suffix': "each run gets its own dated folder under -o; choose -o instead of a suffix",
    '-ra': "use --aug_plus", '--aug-plus': "use --aug_plus",
    '--save_interval': "use -si/--save-interval", '--log_interval': "use --log-interval",
    '--start_epoch': "use --start-epoch",
    '-lrd': "the learning-rate schedule is chosen by --optimizer (e.g. sgd_cos) here",
    '--lr_drop': "the learning-rate schedule is chosen by --optimizer (e.g. sgd_cos) here",
    '-nc2': "use -nd/--ph_dims", '--numof_classes2': "use -nd/--ph_dims", '--numof_classes_pt': "use -nd/--ph_dims",
    '--numof_dims_pt': "use -nd/--ph_dims",
    '--train_pt': "use -t2/--ph_train", '--train2': "use -t2/--ph_train",
    '--val_pt': "use -v2/--ph_val", '--val2': "use -v2/--ph_val", '-val2': "use -v2/--ph_val",
    '--dist-url': "launch several processes with torchrun instead (it sets the rendezvous)",
    '--dist-backend': "use -p/--pidf", '-gr': "there is no greyscale option; convert the images first",
    '--greyscale': "there is no greyscale option; convert the images first",
    '--num_bins': "the histogram bins follow -nc/--numof_classes here (PHdict.py -n sets them for -ch)",
}

PHDICT_FLAGS = {
    '-t': "use --label_type", '--type': "use --label_type", '-lt': "use --label_type",
    '--label_type_pt': "use --label_type",
    '-f': "use --filtration", '-dt': "use --filtration", '--distance_transform': "use --filtration",
    '-is': "diagrams are computed at each image's own size here; resize the images first",
    '--img_size': "diagrams are computed at each image's own size here; resize the images first",
    '-maxb': "use -mb/--max_birth", '-minb': "use --min_birth", '-bd': "use -b/--bandwidth",
    '-ps': "use -s/--sigma", '--persImg_sigma': "use -s/--sigma",
    '-pp': PP_HINT, '--persImg_power': PP_HINT,
    '-pn': "use --power (the lifetime weight exponent of persistence images)",
    '--persImg_weight': "use --power (the lifetime weight exponent of persistence images)",
    '-sf': "use --plot N (plots of the first N inputs)", '--save_fig': "use --plot N (plots of the first N inputs)",
    '-j': "use -nw/--num_workers",
}

PREDICT_FLAGS = {
    '-t': "give the image folder as the first argument", '-val': "give the image folder as the first argument",
    '-is': "use --img_size", '-cs': "use --crop_size", '-j': "use -nw/--num_workers",
    '-nc': "the number of classes is read from the weights", '-s': "prediction is deterministic; no seed",
}
