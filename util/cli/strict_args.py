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

from util.cli import original_flags
from util.cli.original_flags import option_strings, refused


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


# The original's flags (its first and later versions) that our scripts do not have, and ours
# (util/cli/original_flags.py is the table; those we take under the original's name are aliases added by
# util/cli/compat.py).
TRAINING_FLAGS = refused(original_flags.TRAINING)
PHDICT_FLAGS = refused(original_flags.PHDICT)

# Every option string of the original's later arguments.py in its mode "all" (the parser that its
# predict.py and visMap.py used too).
ORIGINAL_TRAINING_OPTIONS = option_strings(original_flags.LATER_TRAINING)


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
