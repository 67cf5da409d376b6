"""The checks argparse cannot make on the flags of pretraining.py and finetuning.py (declared in
:mod:`util.cli.flags`): each raises :class:`util.errors.UserError` naming the flag, before any folder is made."""

import os
import sys

from models import timm_backend
from util.cli.build import epochs_pre, learning_mode
from util.errors import UserError
from util.io import fileio
from util.train import tensorboard_log


def check_common_args(args):
    """Validate flags that argparse cannot; raise :class:`UserError` with the flag's name."""
    for name in ('epochs', 'batch_size', 'img_size', 'crop_size', 'numof_classes'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError("--num_workers must be >= 0")
    if args.stop_after < 0:
        raise UserError(f"--stop_after must be 0 (no stop) or a number of epochs, got {args.stop_after}")
    fileio.check_max_pixels(args.max_pixels)  # the run configuration carries it to load_image
    tensorboard_log.check_available(args.tensorboard)
    if timm_backend.is_timm(args.usenet):  # the install hint or a misspelt name before any data is read
        timm_backend.resolve(args.usenet)
    fileio.refuse_output_inside(
        args.output,
        [
            (f, getattr(args, d, None))
            for f, d in (
                ('-t', 'train'),
                ('-val', 'val'),
                ('-t2', 'ph_train'),
                ('-v2', 'ph_val'),
                ('-pd', 'path2PHdir'),
            )
        ],
    )
    if args.train and args.val and os.path.realpath(args.train) == os.path.realpath(args.val):
        print(
            f"warning: -val {args.val!r} is the training folder -t: the validation scores measure memorisation, "
            "not generalisation",
            file=sys.stderr,
            flush=True,
        )
    if args.start_epoch < 1:
        raise UserError("--start-epoch must be at least 1")
    if not 0 <= args.random_scale < 1:
        raise UserError(f"--random_scale must be in [0, 1) (a factor in [1-S, 1+S]); got {args.random_scale}")
    if not 0 <= args.random_rotation <= 180:
        raise UserError(f"--random_rotation must be in [0, 180] degrees; got {args.random_rotation}")
    if args.crop_padding < 0:
        raise UserError(f"--crop_padding must be >= 0; got {args.crop_padding}")
    check_warp_args(args)


def check_mode_args(args):
    """Validate the mode flags (after :func:`check_common_args`); the mode is 'evaluation' for --evaluate and
    --epochs_pre is -e when not given (:func:`util.cli.build.learning_mode`, :func:`util.cli.build.epochs_pre`:
    the run configuration holds them, ``args`` stays as parsed)."""
    if args.evaluate and args.learning_mode not in ('pretraining', 'finetuning', 'evaluation'):
        raise UserError(f"--evaluate contradicts -lm {args.learning_mode}; give one of them")
    mode = learning_mode(args)
    if epochs_pre(args) < 1:
        raise UserError(f"--epochs_pre must be at least 1 (got {epochs_pre(args)})")
    if args.ph_dims < 1:
        raise UserError(f"--ph_dims must be at least 1 (got {args.ph_dims})")
    if not args.ph_weight >= 0:
        raise UserError(f"--ph_weight must be >= 0 (got {args.ph_weight})")
    if args.label_type == 'class' and mode in ('simultaneous', 'alternating'):
        raise UserError(
            f"--label_type class has no PH task; -lm {mode} needs a PH label type "
            f"(histogram, persistence_image, betti_curve or landscape)"
        )
    if mode in ('simultaneous', 'alternating') and (args.label_type == 'random' or args.label_norm != 'none'):
        raise UserError(
            f"-lm {mode} computes PH labels as they are: --label_type random and --label_norm "
            f"apply to -lm pretraining and combined only"
        )
    if args.label_norm_floor < 0:
        raise UserError(f"--label_norm_floor must be >= 0 (got {args.label_norm_floor})")
    if args.freeze_encoder and mode in ('simultaneous', 'alternating'):
        raise UserError(
            f"--freeze_encoder would leave the PH task of -lm {mode} without effect on the classifier; drop it"
        )
    if mode == 'simultaneous' and (args.precomputed or args.path2PHdir):
        raise UserError("-lm simultaneous computes the PH labels of the labelled images in the loader; drop -pd/-pc")
    if mode in ('combined', 'alternating') and args.path2PHdir and not args.ph_train:
        raise UserError(
            f"-lm {mode}: -pd/-pc hold the PH of the images given by -t2 (--ph_train); give -t2, or "
            f"drop -pd/-pc to generate images on the fly"
        )
    check_contrastive_args(args)
    check_label_source(args)
    check_ph_class(args)
    return args


def _auto_flags(args):
    from util.ph.vectorise import AUTO, AUTO_PARAMS

    def is_auto(value):
        return value == AUTO or (isinstance(value, (list, tuple)) and AUTO in value)

    return [name for name in AUTO_PARAMS if is_auto(getattr(args, name, None))]


def check_ph_class(args):
    """--label_type ph_class (util.ph.ph_class): pretraining (or -lm combined's first phase) on the classes of a
    PHdict.py folder, read with -pd -pc; refused elsewhere, before any folder is made."""
    from util.ph.ph_class import PH_CLASS

    mode = args.learning_mode
    if args.label_type != PH_CLASS or mode in ('finetuning', 'evaluation'):
        return
    if mode not in ('pretraining', 'combined'):
        raise UserError(
            "--label_type ph_class trains its classes with cross-entropy in -lm pretraining and combined, "
            f"not -lm {mode}"
        )
    flag = '-t' if mode == 'pretraining' else '-t2'
    images = args.train if mode == 'pretraining' else args.ph_train
    if not (images and args.path2PHdir and args.precomputed):
        raise UserError(
            f"--label_type ph_class reads the classes PHdict.py --label_type ph_class fitted: give the images with "
            f"{flag} DIR and that folder with -pd PHDIR -pc"
        )
    if args.label_norm != 'none':
        raise UserError(f"--label_type ph_class trains classes with cross-entropy: drop --label_norm {args.label_norm}")


def check_label_source(args):
    """Refuse, before any folder is made, label flags that the source of this run's PH labels cannot honour:
    several ``--filtration`` values for generated images or a -pd of diagrams, ``--size_normalise`` with a
    filtration not in pixel units, ``auto`` ranges for labels computed in the loader from a folder (``auto`` is
    what PHdict.py fitted: it means "as fitted in -pd" with -pc)."""
    from util.ph.cubical import SIZE_FILTRATIONS

    mode = learning_mode(args)
    if args.label_type in ('class', 'random') or mode in ('finetuning', 'evaluation'):
        return
    if mode == 'contrastive' and args.ph_weight == 0:  # no PH labels
        return
    images = {'pretraining': args.train, 'simultaneous': args.train, 'contrastive': args.train}.get(mode, args.ph_train)
    several = isinstance(args.filtration, (list, tuple))
    names = list(args.filtration) if several else [args.filtration]
    diagrams = bool(images and args.path2PHdir and not args.precomputed)
    matrix = bool(images and args.path2PHdir and args.precomputed)
    if args.size_normalise and any(name not in SIZE_FILTRATIONS for name in names):
        raise UserError(
            "--size_normalise scales filtration values in pixels: it needs filtrations among "
            f"{', '.join(SIZE_FILTRATIONS)} (got --filtration {' '.join(names)})"
        )
    if several and not images:
        where = '-t DIR' if mode == 'pretraining' else '-t2 DIR'
        raise UserError(
            f"--filtration {' '.join(names)}: the labels of several filtrations are made for the images of a "
            f"folder ({where}, with -pd PHDIR -pc for PHdict.py's joined label matrix), not for generated images; "
            "give one --filtration"
        )
    if several and diagrams:
        raise UserError(
            f"--filtration {' '.join(names)} with -pd {args.path2PHdir}: PHdict.py keeps the diagrams of each "
            "filtration in PHDIR/filtration_NAME/ and their joined label matrix in PHDIR; add -pc to read that matrix"
        )
    auto = _auto_flags(args)
    if auto and images and not matrix:
        flag = ' '.join(f'--{name} auto' for name in auto)
        made = f"the diagrams in -pd {args.path2PHdir}" if diagrams else 'labels computed in the loader'
        raise UserError(
            f"{flag}: 'auto' means the values PHdict.py fitted and recorded with its label matrix, which {made} "
            f"do not have; run PHdict.py on {images} with --label_type {args.label_type} {flag} and train with "
            "-pd PHDIR -pc, or give the values"
        )


def check_warp_args(args):
    """Refuse bad --warp_* values and the steps that would fill the warped crop's borders."""
    scale = args.warp_scale
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise UserError(f"--warp_scale LO HI needs 0 < LO <= HI <= 1 (fractions of the image's area); got {scale}")
    if not 0 <= args.warp_rotation <= 180:
        raise UserError(f"--warp_rotation must be in [0, 180] degrees; got {args.warp_rotation}")
    if not 0 <= args.warp_shear <= 45:
        raise UserError(f"--warp_shear must be in [0, 45] degrees; got {args.warp_shear}")
    if scale is None and (args.warp_rotation or args.warp_shear):
        raise UserError("--warp_rotation and --warp_shear act in the warped crop: give --warp_scale LO HI too")
    filling = [
        f
        for f, on in (
            ('--random_rotation', args.random_rotation),
            ('--affine', args.affine),
            ('--crop_padding', args.crop_padding),
        )
        if on
    ]
    if scale is not None and filling:
        raise UserError(
            f"--warp_scale with {' '.join(filling)}: those fill borders with black, which the warp avoids; "
            "use --warp_rotation / --warp_shear instead"
        )


# ---- issue 28: -lm contrastive ----
def check_contrastive_args(args):
    """-lm contrastive's flags (util/train/contrastive.py): a positive --temperature and --proj_dim; no flag that
    the mode cannot honour (class labels, -ph post, a frozen encoder) and, with --ph_weight 0 (no PH labels), none
    that only PH labels use."""
    if not (0 < args.temperature < float('inf')):
        raise UserError(f"--temperature must be a positive number (got {args.temperature})")
    if args.proj_dim < 1:
        raise UserError(f"--proj_dim must be at least 1 (got {args.proj_dim})")
    if args.learning_mode != 'contrastive':
        return
    if args.label_type == 'class':
        raise UserError(
            "--label_type class has no PH labels: -lm contrastive trains with PH labels (--ph_weight > 0) or "
            "without any (--ph_weight 0)"
        )
    if args.persistence == 'post':
        raise UserError("-lm contrastive gives both views of an image the PH label of the whole image: use -ph pre")
    if args.freeze_encoder:
        raise UserError("--freeze_encoder would leave the backbone of -lm contrastive untrained; drop it")
    if args.ph_weight > 0:
        return
    unused = [
        ('-pd', bool(args.path2PHdir)),
        ('-pc', args.precomputed),
        (f'--label_type {args.label_type}', args.label_type == 'random'),
        (f'--label_norm {args.label_norm}', args.label_norm != 'none'),
        ('--cache_dir', bool(args.cache_dir)),
        ('-val', bool(args.val)),
    ]
    given = [flag for flag, on in unused if on]
    if given:
        raise UserError(
            f"--ph_weight 0 trains -lm contrastive without PH labels, so {' '.join(given)} would do nothing; "
            "drop it, or give --ph_weight > 0"
        )
