"""Command-line flags of pretraining.py and finetuning.py (the checks argparse cannot make: :mod:`util.cli.checks`)."""

import argparse
import functools
import os

from util.cli import compat, label_flags
from util.cli.build import run_config
from util.cli.checks import check_common_args, check_mode_args
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
from util.io import fileio
from util.train import distributed, modes
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
