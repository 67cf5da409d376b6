"""Label flags shared by PHdict.py and the training scripts: the label parameters of
:data:`util.ph.vectorise.LABEL_FLAGS` (:func:`add_label_args`), 'random' as a --label_type, --label_norm, and the
vectoriser of parsed flags (numpy only: PHdict.py imports this)."""

from __future__ import annotations

import argparse

from util.config import NormConfig
from util.ph.random_targets import RANDOM
from util.ph.vectorise import LABEL_FLAGS, Vectoriser, vectoriser_from_params


def allow_random_choice(group):
    """Add 'random' to the choices of the ``--label_type`` flag of an argparse group."""
    for action in group._group_actions:
        if action.dest == 'label_type':
            action.choices = tuple(action.choices) + (RANDOM,)
            action.help += (
                "; 'random': the random-target control, a fixed N(0,1) vector per image from "
                "--seed and the image's identity, not its content (see util/train/sources.py)"
            )


def allow_ph_class_choice(group, how: str) -> None:
    """Add 'ph_class' (:mod:`util.ph.ph_class`) to the choices of the ``--label_type`` flag of an argparse group;
    ``how``: what it means for the script (its help's tail)."""
    from util.ph.ph_class import PH_CLASS

    for action in group._group_actions:
        if action.dest == 'label_type':
            action.choices = tuple(action.choices) + (PH_CLASS,)
            action.help += f"; '{PH_CLASS}': {how}"


def add_norm_args(group, helps: dict | None = None) -> None:
    """--label_norm, --label_norm_components and --label_norm_floor (defaults: :class:`util.config.NormConfig`);
    ``helps``: {flag name: help text} where a script words them its own way (PHdict.py writes the statistics, the
    training scripts apply them)."""
    helps = {**NORM_HELP, **(helps or {})}
    group.add_argument(
        '--label_norm',
        choices=('none', 'standard', 'whiten'),
        default=NormConfig.mode,
        help=helps['label_norm'],
    )
    group.add_argument(
        '--label_norm_components',
        type=int,
        default=NormConfig.components,
        metavar='K',
        help=helps['label_norm_components'],
    )
    group.add_argument('--label_norm_floor', type=float, default=NormConfig.floor, help=helps['label_norm_floor'])


NORM_HELP = {
    'label_norm': 'standard: z-score each label component by the mean and std of the training labels '
    '(std floored at --label_norm_floor x their RMS), computed once and stored in the run; '
    'whiten: PCA-whiten the top --label_norm_components directions of the labels (the rest dropped), '
    'so the first component no longer dominates the loss (default: %(default)s)',
    'label_norm_components': '--label_norm whiten: the number K of principal directions kept (default: %(default)s)',
    'label_norm_floor': 'variance floor of --label_norm standard, relative to the RMS of the components\' '
    'std (default: %(default)s)',
}


def add_label_args(parser: argparse.ArgumentParser, **short: str) -> argparse.ArgumentParser:
    """Add the label flags (``--label_type``, ``--max_life``, ``--max_birth``, ``--min_birth``, ``--bandwidth``,
    ``--sigma``, ``--power``, ``--num_landscapes``) to an argparse parser (or argument group).

    Only long options are added unless the caller names short aliases, e.g.
    ``add_label_args(p, max_life='-ml', bandwidth='-b')``.  Returns ``parser``.
    """
    unknown = set(short) - set(LABEL_FLAGS)
    if unknown:
        raise TypeError(f"add_label_args: no label flag named {sorted(unknown)}; known: {list(LABEL_FLAGS)}")
    for name, spec in LABEL_FLAGS.items():
        names = [f'--{name}'] + ([short[name]] if name in short else [])
        parser.add_argument(*names, dest=name, **spec)
    return parser


def vectoriser_from_args(args: argparse.Namespace, dim: int, flag: str | None = None) -> Vectoriser:
    """For scripts: :func:`vectoriser_from_params` of the label flags their parser read into ``args``."""
    return vectoriser_from_params(vars(args), dim, flag)
