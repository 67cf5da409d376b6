"""The one place where the flags of pretraining.py / finetuning.py (an argparse Namespace) become the settings
library code takes (the dataclasses of :mod:`util.config`), and where -nc "not given" is resolved."""

from util.config import DEFAULT_NUM_OUTPUTS, AugmentConfig, DataConfig, LabelConfig, TrainConfig, from_mapping
from util.errors import UserError
from util.ph.generator import GeneratorConfig
from util.train import distributed


def train_config(args):
    """The :class:`util.config.TrainConfig` of the flags."""
    return from_mapping(TrainConfig, vars(args), backend=args.pidf)


def data_config(args):
    """The :class:`util.config.DataConfig` of the flags (-t, -val, -pd, -pc, -ph, the label, augmentation and
    generator flags)."""
    flags = vars(args)
    generator = GeneratorConfig(
        img_size=args.img_size,
        alpha_range=tuple(args.alpha_range),
        beta_range=tuple(args.beta_range),
        prob_binary=args.prob_binary,
        prob_colour=args.prob_colour,
    )
    return from_mapping(
        DataConfig,
        flags,
        ph_dir=args.path2PHdir,
        label=from_mapping(LabelConfig, flags),
        augment=from_mapping(AugmentConfig, flags),
        generator=generator,
    )


def resolve_num_classes(args, classes=None, where=None):
    """Set and return ``args.numof_classes``, the one place where -nc "not given" (None) is resolved.

    With ``classes`` (the class folders found in ``where``): their number, refusing an explicit -nc that
    differs. Without (PH label vectors, or a model built by a direct call): -nc, else
    :data:`util.config.DEFAULT_NUM_OUTPUTS`.
    """
    n = args.numof_classes
    if classes is not None and n is None:
        n = len(classes)
        if distributed.is_main_process():
            print(f"note: {n} classes found; using -nc {n}", flush=True)
    elif classes is not None and n != len(classes):
        raise UserError(f"-nc {n} but {where!r} has {len(classes)} classes")
    elif n is None:
        n = DEFAULT_NUM_OUTPUTS
    args.numof_classes = n
    return n
