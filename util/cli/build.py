"""The one place where the flags of pretraining.py / finetuning.py (an argparse Namespace, checked by
:mod:`util.cli.checks`) become the run configuration library code takes (:class:`util.config.RunConfig`).

Also the script-level entry points that take the flags (``pretraining.build_pretraining_sets``,
``finetuning.build_finetune_model``): each builds the configuration, then calls the library.
"""

from dataclasses import fields

from util.config import (
    AugmentConfig,
    ContrastiveConfig,
    DataConfig,
    LabelConfig,
    ModelConfig,
    NormConfig,
    RunConfig,
    TrainConfig,
    resolve_num_classes,
)
from util.ph.generator import GeneratorConfig


def _fields_of(cls, given, **branches):
    """``cls`` with each field taken from the flag it names (a field's metadata ``flag`` names another flag
    than the field), then ``branches`` (the nested dataclasses)."""
    values = {}
    for f in fields(cls):
        name = f.metadata.get('flag', f.name)
        if name in given and f.name not in branches:
            values[f.name] = given[name]
    return cls(**values, **branches)


def learning_mode(args):
    """The mode the flags run: 'evaluation' for --evaluate, else -lm."""
    return 'evaluation' if getattr(args, 'evaluate', False) else args.learning_mode


def epochs_pre(args):
    """The epochs of -lm combined's pretraining phase: --epochs_pre, else -e."""
    return args.epochs if args.epochs_pre is None else args.epochs_pre


def save_interval(args):
    """Epochs between weights files: --save_interval, else (below 1) -e: the last epoch's alone."""
    return args.epochs if args.save_interval < 1 else args.save_interval


def train_config(args):
    """The :class:`util.config.TrainConfig` of the flags (a --save_interval below 1 resolved)."""
    flags = vars(args)
    if 'save_interval' in flags:
        flags = {**flags, 'save_interval': save_interval(args)}
    return _fields_of(TrainConfig, flags)


def data_config(args):
    """The :class:`util.config.DataConfig` of the flags (-t, -val, -pd, -pc, -ph, the label, augmentation,
    generator and --label_norm flags)."""
    flags = vars(args)
    generator = GeneratorConfig(
        img_size=args.img_size,
        alpha_range=tuple(args.alpha_range),
        beta_range=tuple(args.beta_range),
        prob_binary=args.prob_binary,
        prob_colour=args.prob_colour,
        spectrum=args.spectrum,
    )
    return _fields_of(
        DataConfig,
        flags,
        label=_fields_of(LabelConfig, flags),
        augment=_fields_of(AugmentConfig, flags),
        generator=generator,
        norm=_fields_of(NormConfig, flags),
    )


def run_config(args):
    """The :class:`util.config.RunConfig` of the checked flags: the mode, files and phase settings, with the
    ``train``, ``data`` and ``model`` branches; ``phase`` is the mode itself.  The values the flags leave to
    be derived (:func:`learning_mode`, :func:`epochs_pre`, :func:`save_interval`) are resolved here, and
    ``flags`` (what args.json records first) holds them so resolved."""
    given = vars(args)
    resolve = {'learning_mode': learning_mode, 'epochs_pre': epochs_pre, 'save_interval': save_interval}
    flags = {**given, **{name: value(args) for name, value in resolve.items() if name in given}}
    return _fields_of(
        RunConfig,
        flags,
        phase=flags['learning_mode'],
        train=train_config(args),
        data=data_config(args),
        model=_fields_of(ModelConfig, flags),
        contrastive=_fields_of(ContrastiveConfig, flags),
        flags=tuple(sorted(flags.items())),
    )


def build_pretraining_sets(args):
    """(train, val or None): the PH-labelled (or random-target) datasets the flags select, with --label_norm
    applied (pretraining.py's data modes; see :func:`util.train.sources.pretraining_sets`)."""
    from util.train import sources

    run = run_config(args)
    train, val, _ = sources.pretraining_sets(run, resolve_num_classes(run.model.numof_classes))
    return train, val


def build_finetune_model(args, init_state=None, quiet=False):
    """The model of the flags with a fresh head of -nc outputs (see
    :func:`util.train.model_build.build_finetune_model`).

    This script-level entry point reports the head size it read from -pw on ``args.numof_pretrained_classes``
    (as the run records it in args.json)."""
    from util.train import model_build

    model, stored = model_build.build_finetune_model(run_config(args), init_state, quiet)
    if stored is not None:
        args.numof_pretrained_classes = stored
    return model
