"""Command-line flags of pretraining.py and finetuning.py, and the checks argparse cannot make."""

import argparse
import functools
import os
import sys

from models import timm_backend
from util.cli import compat, label_flags
from util.cli.build import epochs_pre, learning_mode, run_config
from util.cli.strict_args import TRAINING_FLAGS, StrictArgumentParser
from util.config import (
    DEFAULT_NUM_OUTPUTS,
    AugmentConfig,
    ContrastiveConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from util.errors import UserError
from util.io import fileio
from util.train import distributed, modes, tensorboard_log
from util.train.engine import OPTIMIZERS

# Every default below is a field default of util.config's dataclasses (the images generated on the fly:
# DataConfig's generator).
ON_THE_FLY = DataConfig().generator


def add_common_args(parser):
    """The flag set shared by pretraining.py and finetuning.py (the original's names, short names, defaults)."""
    g = parser.add_argument_group('data and files')
    g.add_argument(
        '--train',
        '-t',
        default=DataConfig.train,
        help='folder of training images, searched recursively (pretraining without it generates images on the fly)',
    )
    g.add_argument('--val', '-val', default=DataConfig.val, help='folder of validation images')
    g.add_argument(
        '--path2PHdir',
        '-pd',
        default=DataConfig.ph_dir,
        help='folder written by PHdict.py: raw diagrams '
        '(<relative path>.npy) or, with -pc, a consolidated label matrix',
    )
    g.add_argument(
        '--path2weight',
        '-pw',
        default=ModelConfig.path2weight,
        help="initial weights: a .pth or checkpoint file of "
        "ours, 'imagenet' for torchvision's default weights, or nothing (random initialisation)",
    )
    g.add_argument(
        '--output',
        '-o',
        default=RunConfig.output,
        help='a new dated run folder is made under this one (default: %(default)s)',
    )
    g.add_argument(
        '--resume',
        default=RunConfig.resume,
        help='checkpoint.pth (or its run folder) to continue from; the run continues in that folder',
    )
    g.add_argument(
        '--tensorboard',
        action='store_true',
        help='also write the per-epoch figures of log.jsonl (losses, accuracies, R2, learning rate, images/s, '
        'data-wait share) and the first layer\'s filters to <run folder>/tensorboard/ for TensorBoard '
        '(optional package: pip install tensorboard) (default: off)',
    )
    g.add_argument(
        '--bad_images',
        choices=('skip', 'fail'),
        default=DataConfig.bad_images,
        help='what to do with an image that cannot be decoded during training: skip it (warned and '
        'counted in the log) or stop (default: %(default)s)',
    )
    fileio.add_max_pixels_arg(g)

    g = parser.add_argument_group('parallelism and devices')
    g.add_argument(
        '--pidf',
        '-p',
        default=TrainConfig.backend,
        help="distributed backend ('nccl' or 'gloo'); default: nccl on "
        "CUDA, gloo on CPU. Distributed training starts under torchrun, or with -ws N > 1",
    )
    g.add_argument(
        '--world_size',
        '-ws',
        default=TrainConfig.world_size,
        type=int,
        help='number of processes to start on this machine when not launched by torchrun (default: %(default)s)',
    )
    g.add_argument('--device', default=TrainConfig.device, help="'cuda', 'cpu', ... (default: cuda when available)")
    g.add_argument(
        '--amp',
        default=TrainConfig.amp,
        action=argparse.BooleanOptionalAction,
        help='bfloat16 autocast (default: on with CUDA, off on CPU)',
    )
    g.add_argument(
        '--channels_last',
        default=TrainConfig.channels_last,
        action=argparse.BooleanOptionalAction,
        help='channels-last memory format (default: on with CUDA)',
    )
    g.add_argument(
        '--num_workers',
        '-nw',
        default=TrainConfig.num_workers,
        type=int,
        help='data loader processes per training process (default: the usable cores divided by the training '
        'processes of this machine, minus two; 14 on 16 cores with one GPU)',
    )
    g.add_argument(
        '--seed',
        default=TrainConfig.seed,
        type=int,
        help='random seed; every worker and rank derives its own (default: %(default)s)',
    )

    g = parser.add_argument_group('network')
    g.add_argument(
        '--usenet',
        '-u',
        default=ModelConfig.usenet,
        help='any torchvision classification model, or timm:NAME for a timm model (optional package: '
        'pip install -r requirements-extra.txt; a ViT is built for --crop_size images) (default: %(default)s)',
    )
    g.add_argument(
        '--epochs', '-e', default=TrainConfig.epochs, type=int, help='number of epochs (default: %(default)s)'
    )
    g.add_argument(
        '--numof_pretrained_classes',
        '-npc',
        default=ModelConfig.numof_pretrained_classes,
        type=int,
        help='output size of the pretrained weights given by -pw (the original assumed 200; now '
        'read from the file when omitted)',
    )
    g.add_argument(
        '--numof_classes',
        '-nc',
        default=ModelConfig.numof_classes,
        type=int,
        help='output size: the number of classes '
        'when training on class folders (default: the number of class folders found; a different '
        f'-nc is refused), the label dimension when pretraining on PH labels (default: '
        f'{DEFAULT_NUM_OUTPUTS})',
    )
    g.add_argument(
        '--numof_fclayer',
        default=ModelConfig.numof_fclayer,
        type=int,
        help='accepted for compatibility; heads are '
        "replaced generically, keeping each architecture's own hidden widths",
    )
    g.add_argument(
        '--freeze_encoder',
        '-fe',
        action='store_true',
        default=TrainConfig.freeze_encoder,
        help='train only the new head (linear probe)',
    )

    g = parser.add_argument_group('optimisation')
    # The original's -lrf/-lrp meant --lr_pre/--lr_fine in its first version and the reverse later: both are
    # refused by name (util/strict_args.TRAINING_FLAGS); the long names mean what they say.
    g.add_argument(
        '--lr_pre', default=RunConfig.lr_pre, type=float, help='learning rate for pretraining (default: %(default)s)'
    )
    g.add_argument(
        '--lr_fine', default=RunConfig.lr_fine, type=float, help='learning rate for fine-tuning (default: %(default)s)'
    )
    g.add_argument('--momentum', default=TrainConfig.momentum, type=float, help='SGD momentum (default: %(default)s)')
    g.add_argument(
        '--weight_decay',
        '-wd',
        default=TrainConfig.weight_decay,
        type=float,
        help='weight decay (default: %(default)s)',
    )
    g.add_argument(
        '--optimizer',
        '-op',
        default=TrainConfig.optimizer,
        choices=OPTIMIZERS,
        help='optimiser; a _cos suffix '
        'anneals the rate by a cosine over all epochs, otherwise it drops x0.1 at 1/3 and 2/3 of '
        'the epochs (default: %(default)s)',
    )
    g.add_argument(
        '--start-epoch',
        dest='start_epoch',
        default=TrainConfig.start_epoch,
        type=int,
        help='first epoch number (default: %(default)s; --resume sets it)',
    )
    g.add_argument(
        '--batch_size',
        '-b',
        default=TrainConfig.batch_size,
        type=int,
        help='batch size per process (default: %(default)s)',
    )
    g.add_argument(
        '--img_size',
        default=AugmentConfig.img_size,
        type=int,
        help='images are resized to this first (default: %(default)s)',
    )
    g.add_argument(
        '--crop_size', default=AugmentConfig.crop_size, type=int, help='then cropped to this (default: %(default)s)'
    )
    g.add_argument(
        '--save-interval',
        '-si',
        dest='save_interval',
        default=TrainConfig.save_interval,
        type=int,
        help='write the weights file every N epochs; the last epoch is always written (default: %(default)s)',
    )
    g.add_argument(
        '--log-interval',
        dest='log_interval',
        default=TrainConfig.log_interval,
        type=int,
        help='refresh the progress bar figures every N iterations (default: %(default)s)',
    )
    g.add_argument(
        '--output_training_images',
        '-oti',
        default=RunConfig.output_training_images,
        type=int,
        help='save a picture of the first N training samples as the network sees them',
    )
    g.add_argument(
        '--stop_after',
        default=TrainConfig.stop_after,
        type=int,
        help='stop after N epochs in this invocation (for '
        'time-limited cluster jobs); continue later with --resume (default: run to --epochs)',
    )

    g = parser.add_argument_group(
        'augmentation of training images',
        'Spatial steps (affine, rescale, rotation, crop, flip) come before a "-ph post" label is computed,\n'
        'so that label describes what the network sees; the photometric steps of --aug_plus (colour jitter,\n'
        'greyscale, blur) always come after the label is computed, so they never change a PH label.\n'
        'With "-ph pre" the label is that of the whole image, untouched by any augmentation.\n'
        'Validation images are only resized and cropped.',
    )
    g.add_argument(
        '--aug_plus',
        action='store_true',
        default=AugmentConfig.aug_plus,
        help='MoCo v2 augmentation: RandomResizedCrop(crop, '
        'scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2, '
        'GaussianBlur (sigma 0.1-2) p=0.5, horizontal flip (default: off)',
    )
    g.add_argument(
        '--random_scale',
        '-rs',
        default=AugmentConfig.random_scale,
        type=float,
        help='rescale each image by a random factor in [1-S, 1+S] before cropping (default: %(default)s = off)',
    )
    g.add_argument(
        '--random_rotation',
        '-rr',
        default=AugmentConfig.random_rotation,
        type=float,
        help='rotate by a random angle in [-DEG, DEG] degrees before cropping (default: %(default)s = off)',
    )
    g.add_argument(
        '--crop_padding',
        '-cp',
        default=AugmentConfig.crop_padding,
        type=int,
        help='pad the image by P pixels (zeros) before the random crop (default: %(default)s)',
    )
    g.add_argument(
        '--affine',
        '-aff',
        action='store_true',
        default=AugmentConfig.affine,
        help='random affine augmentation (rotation, scale, shear) before cropping (default: off)',
    )
    g.add_argument(
        '--hflip',
        default=AugmentConfig.hflip,
        action=argparse.BooleanOptionalAction,
        help='random horizontal flips of training images (default: on when fine-tuning, off when '
        'pretraining unless --aug_plus; a flip never changes a PH label; --no-hflip for digits, text)',
    )
    add_warp_args(g)
    return parser


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


MODE_HELP = """How the tasks and datasets are used (default: %(default)s):
pretraining: PH regression on -t (or on the fly); finetuning: classes of -t/-val from -pw;
combined: pretraining on -t2/-v2 (on the fly without -t2) for --epochs_pre epochs, then fine-tuning on -t/-val
for -e epochs from those weights (sub-folders pretraining/ and finetuning/ of one run folder);
simultaneous: classes of -t with a second, PH head on the same images (loss CE + --ph_weight x MSE);
alternating: batches alternate between classes of -t (CE) and PH labels of -t2 or generated images (MSE);
evaluation: evaluate -pw on -val (= --evaluate);
contrastive: two augmented views of each PH pretraining image, NT-Xent + --ph_weight x MSE (0: contrastive alone).
In combined, -pw initialises the pretraining phase and
--freeze_encoder applies to the fine-tuning phase only"""


def add_mode_args(parser, default_mode):
    """The mode flags, the PH label flags and the generator flags (both scripts take all of them)."""
    from util.cli.label_flags import add_label_args
    from util.cli.ph_flags import add_ph_args
    from util.ph.vectorise import LABEL_TYPES

    g = parser.add_argument_group('learning mode')
    g.add_argument('--learning_mode', '-lm', choices=modes.MODES, default=default_mode, help=MODE_HELP)
    g.add_argument(
        '--evaluate',
        action='store_true',
        default=RunConfig.evaluate,
        help='the same as -lm evaluation: no training; evaluate '
        'the weights given by -pw (or --resume) on -val and write the metrics, per-class accuracy '
        'and confusion matrix',
    )
    g.add_argument(
        '--ph_train',
        '-t2',
        default=RunConfig.ph_train,
        help='combined/alternating: folder of images for the PH '
        'task (-pd/-pc apply to it; default: images generated on the fly)',
    )
    g.add_argument(
        '--ph_val',
        '-v2',
        default=RunConfig.ph_val,
        help='combined/alternating: validation images for the PH task (default: generated, see -nv)',
    )
    g.add_argument(
        '--epochs_pre',
        default=RunConfig.epochs_pre,
        type=int,
        help='combined: epochs of the pretraining phase (default: -e)',
    )
    g.add_argument(
        '--ph_dims',
        '-nd',
        default=RunConfig.ph_dims,
        type=int,
        help='combined/simultaneous/alternating: '
        'dimension of the PH label vector, while -nc is the number of classes (in pretraining '
        'mode -nc is the label dimension) (default: %(default)s)',
    )
    g.add_argument(
        '--ph_weight',
        default=TrainConfig.ph_weight,
        type=float,
        help='simultaneous/alternating/contrastive: weight of the PH '
        'regression loss (MSE) against the cross-entropy or NT-Xent (default: %(default)s)',
    )

    g = parser.add_argument_group('persistent homology labels')
    g.add_argument(
        '--persistence',
        '-ph',
        choices=('pre', 'post'),
        default=DataConfig.persistence,
        help='pre: label the whole image before augmentation (fixed per image); post: label the '
        'spatially augmented crop, i.e. what the network sees (default: %(default)s)',
    )
    g.add_argument(
        '--precomputed',
        '-pc',
        action='store_true',
        default=DataConfig.precomputed,
        help='read labels from the consolidated matrix that PHdict.py --label_type wrote in -pd',
    )
    add_ph_args(
        g,
        {
            'filtration': 'filtration when PH is computed here (default: %(default)s, as PHdict.py); several: '
            'their labels side by side, as PHdict.py --filtration A B joins its label matrices (-nc is their '
            'total length; images of a folder only: -t DIR, or -pd PHDIR -pc)',
            'size_normalise': 'when PH is computed here: filtration values times 256/SIZE (SIZE = the image\'s '
            'larger side), as PHdict.py --size_normalise; -pd\'s labels must have been made the same way '
            '(default: off)',
            'gradient': 'when PH is computed here: PH of the Canny '
            'edge map of the denoised image instead of its Otsu binarisation (as PHdict.py --gradient)',
            'ph_engine': 'PH engine when PH is computed here (-ph post, on the fly, -t without -pd, the '
            'two-task modes): unionfind (exact, fast, 2-D), cripser, or auto = unionfind for 2-D images; '
            'both give the same pairs, hence the same labels (default: %(default)s, as PHdict.py)',
        },
    )
    add_label_args(g, max_life='-ml')
    for action in g._group_actions:  # pretraining can also use class folders: the control experiment
        if action.dest == 'label_type':
            action.choices = tuple(LABEL_TYPES) + ('class',)
            action.help += (
                "; 'class' (pretraining/combined only): the class folders of the pretraining "
                "images as labels, cross-entropy instead of PH regression"
            )
    label_flags.allow_random_choice(g)
    label_flags.allow_ph_class_choice(
        g,
        "the classes PHdict.py --label_type ph_class fitted (-pd PHDIR -pc; -nc its --ph_classes), trained "
        "with cross-entropy; -val images are assigned in the loader as PHdict.py assigned the training images",
    )
    label_flags.add_norm_args(g)

    g = parser.add_argument_group('on-the-fly image generation (when no image folder is given for the PH task)')
    g.add_argument(
        '--alpha_range',
        '-ar',
        default=list(ON_THE_FLY.alpha_range),
        type=float,
        nargs=2,
        help='range of alpha (default: %(default)s)',
    )
    g.add_argument(
        '--beta_range',
        '-br',
        default=list(ON_THE_FLY.beta_range),
        type=float,
        nargs=2,
        help='range of beta (default: %(default)s)',
    )
    g.add_argument(
        '--spectrum',
        default=ON_THE_FLY.spectrum,
        metavar='{original,isotropic}',
        help="the generator's spectrum, as util/random_image.py --spectrum: 'original' (the original's formula, "
        "anisotropic) or 'isotropic' (centred frequencies, power depending on |k| only) (default: %(default)s)",
    )
    g.add_argument(
        '--n_samples', '-n', default=DataConfig.n_samples, type=int, help='images per epoch (default: %(default)s)'
    )
    g.add_argument(
        '--prob_binary',
        '-pb',
        default=ON_THE_FLY.prob_binary,
        type=float,
        help='probability that a channel is binarised (default: %(default)s)',
    )
    g.add_argument(
        '--prob_colour',
        default=ON_THE_FLY.prob_colour,
        type=float,
        help='probability that an image has three channels (default: %(default)s)',
    )
    g.add_argument(
        '--n_samples_val',
        '-nv',
        default=DataConfig.n_samples_val,
        type=int,
        help='generated validation images, from a disjoint random stream (default: min(1000, n/10); 0 = none)',
    )
    g.add_argument(
        '--cache_dir',
        default=DataConfig.cache_dir,
        help='keep generated images and diagrams here and reuse the '
        'same images every epoch (nothing there is ever deleted)',
    )

    # ---- issue 28: -lm contrastive ----
    g = parser.add_argument_group(
        '-lm contrastive', 'two augmented views of each image, NT-Xent + --ph_weight x MSE of the PH labels'
    )
    g.add_argument(
        '--temperature',
        default=ContrastiveConfig.temperature,
        type=float,
        help='contrastive: temperature of the NT-Xent loss (default: %(default)s)',
    )
    g.add_argument(
        '--proj_dim',
        default=ContrastiveConfig.proj_dim,
        type=int,
        help='contrastive: output size of the projection head on the pooled features (default: %(default)s)',
    )
    return parser


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


# ---- issue 28: heavier augmentation (util.train.transforms.WarpCrop) ----
def add_warp_args(g):
    """--warp_scale / --warp_rotation / --warp_shear, in the augmentation group ``g``."""
    g.add_argument(
        '--warp_scale',
        default=AugmentConfig.warp_scale,
        type=float,
        nargs=2,
        metavar=('LO', 'HI'),
        help='random-resized crop of LO-HI of the image\'s area (0 < LO <= HI <= 1), with --warp_rotation and '
        '--warp_shear in the same warp, in place of the resize/crop steps above. No fill: the warped crop lies wholly '
        'inside the image (a draw that does not fit is redrawn, then shrunk), so a -ph post label sees no invented '
        'corners or borders (default: off)',
    )
    g.add_argument(
        '--warp_rotation',
        default=AugmentConfig.warp_rotation,
        type=float,
        metavar='DEG',
        help='with --warp_scale: rotate the crop by a random angle in [-DEG, DEG] (0-180) (default: %(default)s)',
    )
    g.add_argument(
        '--warp_shear',
        default=AugmentConfig.warp_shear,
        type=float,
        metavar='DEG',
        help='with --warp_scale: shear the crop by a random angle in [-DEG, DEG] (0-45) (default: %(default)s)',
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


def get_args_parser(default_mode, description='', epilog=None):
    """The parser of pretraining.py / finetuning.py: every flag group, ``-lm`` defaulting to ``default_mode``."""
    parser = StrictArgumentParser(
        description=description,
        epilog=epilog,
        allow_abbrev=False,
        refuse=TRAINING_FLAGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(parser)
    add_mode_args(parser, default_mode=default_mode)
    compat.training_compat(parser)  # the original's later names and value shapes (docs/compat.md)
    return parser


def launch(args, run):
    """Run the mode of ``run`` (the configuration built from the checked ``args``), spawning ``-ws`` processes
    when asked."""
    job = functools.partial(modes.run, run)
    if run.train.world_size > 1 and 'RANK' not in os.environ and run.learning_mode != 'evaluation':
        return distributed.spawn_or_run(job, run.train.world_size, run.train)
    return job()


def main(args):
    """Check the flags, build the run configuration once, then run its mode."""
    compat.resolve_special_values(args)
    check_common_args(args)
    check_mode_args(args)
    run = run_config(args)
    modes.check_run(run)  # the device, -p nccl, a ViT's patches against --crop_size: before any process or folder
    return launch(args, run)


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
