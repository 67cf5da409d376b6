"""The original scripts' later command line: its names for our flags, its value shapes and special values.

Every flag of the original's later ``arguments.py`` (and of its generator, PHdict, predict, visMap and
downloader scripts) is either accepted here with the original's meaning or refused by
:mod:`util.cli.strict_args` with one line naming ours; util/cli/original_flags.py is the table (docs/compat.md
explains it).  This module holds:

* :func:`add_aliases` -- the original's option strings for flags we have under another name (``-s`` for
  ``--seed``, ``--start_epoch`` for ``--start-epoch`` ...), added to the very same argparse action;
* :func:`allow_two_values` -- ``--max_life/--max_birth/--min_birth`` take one value or two (H0 then H1) as
  in the original (``--max_life 80 60``);
* :class:`LabelTypeAction` -- the original's label type names (``persistence_histogram``...) for ours;
* :class:`PrecomputedOrColour` -- the training scripts' ``-pc``: alone it is ``--precomputed`` (the seed
  README's meaning), with a number it is ``--prob_colour`` (the original's later ``main.py``);
* :func:`resolve_special_values` -- ``-pd on_the_fly``, ``-t2/-v2 generate``, ``-pw FOLDER`` (its newest
  ``.pth``) and, with ``-pd`` omitted, the original's automatic ``PH{grad}_{filtration}_{dir}`` folder.

No torch here.
"""

import argparse
import json
import math
import os
import sys

from util.cli import original_flags
from util.cli.original_flags import accepted
from util.errors import UserError

# The original's label type names -> ours.  'raw' and 'grid' have no counterpart (see RAW_GRID_REASON).
ORIGINAL_LABEL_TYPES = {
    'persistence_histogram': 'histogram',
    'persistence_image': 'persistence_image',
    'persistence_betticurve': 'betti_curve',
    'persistence_landscape': 'landscape',
    'class': 'class',
}
RAW_GRID_REASON = {
    'raw': "the original's target was the diagram itself, a variable number of (birth, death) pairs in no "
    "fixed order, which cannot be batched or regressed as it is; the fixed-length summaries of a "
    "diagram here are histogram, persistence_image, betti_curve and landscape",
    'grid': "the original lists 'grid' among its choices but never computes it (its loader stops with "
    "'Unknown label type'); there is nothing to reproduce",
}


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _fail(parser, msg):
    """One line on stderr and exit status 2 (as argparse's errors, without the usage block)."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    parser.exit(2)


def missing_aliases(parser, table):
    """{option string: dest} of the original's flags in ``table`` (util/cli/original_flags.py) taken with their
    meaning that ``parser`` does not have yet; one it has must be the field the table names."""
    have = parser._option_string_actions
    for flag, dest in accepted(table).items():
        if flag in have and have[flag].dest != dest:
            raise ValueError(f"{flag} is --{have[flag].dest} here but the original's {dest}")
    return {flag: dest for flag, dest in accepted(table).items() if flag not in have}


def add_aliases(parser, aliases):
    """Give existing actions further option strings: ``aliases`` is {option string: dest}.

    The alias is the same action (same field, same type, same default), so ``-s 3`` and ``--seed 3`` are
    indistinguishable.  An alias that is already an option of ``parser`` is an error (no silent shadowing).
    """
    by_dest = {}
    for action in parser._actions:
        if action.option_strings:
            by_dest.setdefault(action.dest, action)
    for flag, dest in aliases.items():
        if flag in parser._option_string_actions:
            raise ValueError(f"{flag} is already an option of {parser.prog}")
        action = by_dest.get(dest)
        if action is None:
            raise ValueError(f"{parser.prog} has no option with dest {dest!r} for alias {flag}")
        action.option_strings.append(flag)
        parser._option_string_actions[flag] = action
    return parser


class _OneOrTwo(argparse.Action):
    """One value, or two (H0 then H1, the original's shape); two equal values are one, two different ones are
    stored as the list [H0, H1] (the vectorisers take per-dimension ranges)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            _fail(parser, f"{option_string} takes one value, or two (H0 then H1); got {len(values)}")
        setattr(namespace, self.dest, values[0] if len(values) == 1 or values[0] == values[1] else list(values))


def allow_two_values(parser, dests=('max_life', 'max_birth', 'min_birth')):
    """Let the options of ``dests`` take one or two values (see :class:`_OneOrTwo`)."""
    for action in parser._actions:
        if action.dest in dests and action.option_strings:
            action.nargs = '+'
            action.metavar = ('V', 'V_H1')
            action.__class__ = _OneOrTwo
    return parser


def translate_label_type(value, choices):
    """Our label type for ``value`` (ours or the original's name); raise ``ValueError`` with the reason."""
    if value in choices:
        return value
    if value in RAW_GRID_REASON:
        raise ValueError(f"label type {value!r} is not supported: {RAW_GRID_REASON[value]}")
    ours = ORIGINAL_LABEL_TYPES.get(value)
    if ours is not None and ours in choices:
        return ours
    known = list(choices) + [k for k, v in ORIGINAL_LABEL_TYPES.items() if v in choices and k not in choices]
    raise ValueError(f"invalid label type {value!r} (choose from {', '.join(known)})")


class LabelTypeAction(argparse.Action):
    """Store our label type name for ours or the original's (``persistence_histogram`` -> ``histogram``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, translate_label_type(values, self.ours))
        except ValueError as e:
            _fail(parser, f"{option_string}: {e}")


def accept_original_label_types(parser, dest='label_type'):
    """Make the ``dest`` option take the original's label type names too (``-lt persistence_image``)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings and action.choices:
            action.ours = tuple(action.choices)
            action.choices = None
            action.metavar = '{' + ','.join(action.ours) + '}'
            action.__class__ = LabelTypeAction
    return parser


class PrecomputedOrColour(argparse.Action):
    """``-pc`` alone: ``--precomputed`` (seed README); ``-pc P`` with a number: ``--prob_colour P``
    (the original's later main.py).  Anything else is refused naming both readings."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.update(nargs='?', default=argparse.SUPPRESS, metavar='P')
        super().__init__(option_strings, dest='precomputed', **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            namespace.precomputed = True
            return
        try:
            p = float(values)
            if not math.isfinite(p):
                raise ValueError(values)
        except ValueError:
            _fail(
                parser,
                f"-pc {values!r}: -pc alone means --precomputed, -pc with a number means "
                f"--prob_colour; {values!r} is neither",
            )
        namespace.prob_colour = p


def split_pc(parser):
    """Make the training scripts' ``-pc`` a :class:`PrecomputedOrColour` (``--precomputed`` keeps its long
    name and stays a plain switch)."""
    action = parser._option_string_actions.get('-pc')
    if action is not None:
        action.option_strings.remove('-pc')
        del parser._option_string_actions['-pc']
    parser.add_argument(
        '-pc',
        action=PrecomputedOrColour,
        help="alone: --precomputed; with a number P: --prob_colour P (the original's later meaning)",
    )
    return parser


def training_compat(parser):
    """The original's later flags on the parser of pretraining.py / finetuning.py."""
    parser.add_argument(
        '--persistence_after_transform',
        '-pat',
        dest='persistence',
        action='store_const',
        const='post',
        default=argparse.SUPPRESS,
        help="the original's name for -ph post",
    )
    add_aliases(parser, missing_aliases(parser, original_flags.TRAINING))
    allow_two_values(parser)
    accept_original_label_types(parser)
    split_pc(parser)
    return parser


class _Bins(argparse.Action):
    """PHdict's ``-n``: four counts (H0 life, H1 life, H0 birth, H1 birth), or one for all four."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 4):
            _fail(
                parser,
                f"{option_string} takes four counts (H0 lifetimes, H1 lifetimes, H0 births, H1 births) "
                f"or one count for all four; got {len(values)}",
            )
        setattr(namespace, self.dest, list(values) * 4 if len(values) == 1 else list(values))


def phdict_compat(parser):
    """The original's later flags on PHdict.py's parser."""
    add_aliases(parser, missing_aliases(parser, original_flags.PHDICT))
    bins = parser._option_string_actions.get('--num_bins')
    if bins is not None:
        bins.nargs = '+'
        bins.metavar = 'N'
        bins.__class__ = _Bins
    allow_two_values(parser)
    accept_original_label_types(parser)
    return parser


# ------------------------------------------------------------------------------------ special values

ON_THE_FLY = 'on_the_fly'
GENERATE = 'generate'


def newest_weights(folder):
    """The newest ``*.pth`` (by modification time, then name) directly in ``folder``."""
    found = [
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.endswith('.pth') and os.path.isfile(os.path.join(folder, f))
    ]
    if not found:
        raise UserError(f"-pw {folder!r} is a folder without any .pth file; give the weights file")
    return max(found, key=lambda f: (os.stat(f).st_mtime, f))


def ph_folder_candidates(images, gradient, filtration):
    """Where the original looked for precomputed PH of ``images``: ``PH{grad}_{filtration}_{name}`` next to
    the folder (``name`` its own name), and, for ``.../NAME/train``, next to ``NAME`` (its main.py's rule)."""
    grad = 'grad' if gradient else ''
    folder = os.path.normpath(images)
    parent, leaf = os.path.split(os.path.abspath(folder))
    found = [os.path.join(parent, f"PH{grad}_{filtration}_{leaf}")]
    up, name = os.path.split(parent)
    if name:
        found.append(os.path.join(up, f"PH{grad}_{filtration}_{name}"))
    return [c for c in dict.fromkeys(found)]


def check_ph_folder(folder, gradient, filtration):
    """Raise :class:`UserError` unless PHdict.py's settings.json in ``folder`` records these diagram
    settings (a folder made with another filtration would silently give other labels)."""
    path = os.path.join(folder, 'settings.json')
    try:
        with open(path, encoding='utf-8') as f:
            diagram = (json.load(f) or {}).get('diagram') or {}
    except (OSError, ValueError):
        raise UserError(
            f"found {folder!r} (the original's automatic -pd folder) but no readable {path} to "
            f"check its settings; give -pd {folder} to use it, or -pd on_the_fly"
        ) from None
    made = (diagram.get('filtration'), bool(diagram.get('gradient', False)))
    if made != (filtration, bool(gradient)):
        raise UserError(
            f"found {folder!r} (the original's automatic -pd folder) but its diagrams were made with "
            f"filtration {made[0]}, gradient {made[1]} and this run asks for {filtration}, gradient "
            f"{bool(gradient)}; give -pd explicitly, or -pd on_the_fly"
        )


def resolve_special_values(args, log=_log):
    """Apply the original's special flag values to a training Namespace, in place; log each decision."""
    explicit_on_the_fly = getattr(args, 'path2PHdir', '') == ON_THE_FLY
    if explicit_on_the_fly:
        args.path2PHdir = ''
        log("-pd on_the_fly: PH labels are computed from the images during training")
    explicit_generate = False
    for dest, flag in (('ph_train', '-t2'), ('ph_val', '-v2')):
        if getattr(args, dest, None) == GENERATE:
            setattr(args, dest, None)
            explicit_generate = True
            log(f"{flag} generate: PH-task images are generated on the fly")
    val = getattr(args, 'val', None)
    if val and not os.path.exists(val) and os.path.basename(os.path.normpath(val)) == 'test':
        sibling = os.path.join(os.path.dirname(os.path.normpath(val)), 'val')
        if os.path.isdir(sibling):  # the original's downloader wrote test/, ours writes val/
            args.val = sibling
            log(
                f"-val {val}: no such folder; using {sibling} (our downloader writes val/ where the "
                f"original wrote test/)"
            )
    pw = getattr(args, 'path2weight', None)
    if pw and os.path.isdir(pw):
        args.path2weight = newest_weights(pw)
        log(f"-pw {pw}: using its newest weights file {args.path2weight}")
    if (
        getattr(args, 'path2PHdir', None) == ''
        and getattr(args, 'persistence', 'pre') == 'pre'
        and not (explicit_generate or explicit_on_the_fly)
        and getattr(args, 'label_type', None) != 'class'
    ):
        mode = getattr(args, 'learning_mode', 'pretraining')
        images = {
            'pretraining': getattr(args, 'train', None),
            'combined': getattr(args, 'ph_train', None),
            'alternating': getattr(args, 'ph_train', None),
        }.get(mode)
        if images and os.path.isdir(images):
            found = [c for c in ph_folder_candidates(images, args.gradient, args.filtration) if os.path.isdir(c)]
            if len(found) > 1:
                raise UserError(
                    f"-pd omitted and two PH folders match {images!r}: {found[0]!r} and {found[1]!r};"
                    f" give -pd with the one to use, or -pd on_the_fly"
                )
            if found:
                check_ph_folder(found[0], args.gradient, args.filtration)
                args.path2PHdir = found[0]
                log(
                    f"-pd omitted: using the PH folder {found[0]} found next to the images (as the original); "
                    f"-pd on_the_fly to compute PH instead"
                )
    return args
