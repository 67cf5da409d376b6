"""Label flags shared by PHdict.py and the training scripts that vectorise.add_label_args does not add:
'random' as a --label_type, and --label_norm (numpy only: PHdict.py imports this)."""

from util.config import NormConfig
from util.train.sources import RANDOM


def allow_random_choice(group):
    """Add 'random' to the choices of the ``--label_type`` flag of an argparse group."""
    for action in group._group_actions:
        if action.dest == 'label_type':
            action.choices = tuple(action.choices) + (RANDOM,)
            action.help += (
                "; 'random': the random-target control, a fixed N(0,1) vector per image from "
                "--seed and the image's identity, not its content (see util/train/sources.py)"
            )


def add_norm_args(group):
    """--label_norm, --label_norm_components and --label_norm_floor (defaults: :class:`util.config.NormConfig`)."""
    group.add_argument(
        '--label_norm',
        choices=('none', 'standard', 'whiten'),
        default=NormConfig.mode,
        help='standard: z-score each label component by the mean and std of the training labels '
        '(std floored at --label_norm_floor x their RMS), computed once and stored in the run; '
        'whiten: PCA-whiten the top --label_norm_components directions of the labels (the rest dropped), '
        'so the first component no longer dominates the loss (default: %(default)s)',
    )
    group.add_argument(
        '--label_norm_components',
        type=int,
        default=NormConfig.components,
        metavar='K',
        help='--label_norm whiten: the number K of principal directions kept (default: %(default)s)',
    )
    group.add_argument(
        '--label_norm_floor',
        type=float,
        default=NormConfig.floor,
        help='variance floor of --label_norm standard, relative to the RMS of the components\' '
        'std (default: %(default)s)',
    )
