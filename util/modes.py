"""Learning modes (``--learning_mode/-lm``), shared by pretraining.py and finetuning.py.

Both scripts parse the same flags and call :func:`main`; they differ only in their default mode
(``pretraining`` / ``finetuning``).  The modes:

* ``pretraining``   regress PH label vectors of images (folder -t, or generated on the fly) with MSE; with
  ``--label_type class``, classify the class folders of -t by cross-entropy instead (the control experiment).
* ``finetuning``    classify the class folders of -t (validation -val) starting from -pw.
* ``combined``      pretraining, then fine-tuning in one run: the PH task on -t2/-v2 (``--ph_train/--ph_val``;
  generated on the fly when -t2 is absent) for ``--epochs_pre`` epochs, then the classes of -t/-val for -e
  epochs, starting from the first phase's weights with the head replaced.  Phase folders ``pretraining/``
  and ``finetuning/`` inside one run folder.
* ``simultaneous``  one labelled folder -t, two heads: cross-entropy on the classes plus ``--ph_weight`` x MSE
  on PH labels computed from the same images.
* ``alternating``   batches alternate between the labelled folder -t (cross-entropy) and PH-labelled images
  (-t2, or generated on the fly; MSE x ``--ph_weight``), one optimiser step each.
* ``evaluation``    no training: evaluate the fine-tuned weights -pw on -val (= finetuning.py --evaluate).

Every log record and checkpoint holds ``mode`` and ``phase``; ``args.json`` holds ``learning_mode``.
Classifiers (modes other than pretraining) write ``ft_{usenet}_epoch{E}.pth`` (a plain state dict of the
classifier alone, which torchvision's constructor with ``num_classes=K`` loads) and ``classes.json`` next to it.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import models
from util import fileio
from util import training as T
from util.errors import UserError

MODES = ('pretraining', 'finetuning', 'combined', 'simultaneous', 'alternating', 'evaluation')
PHASES = ('pretraining', 'finetuning')          # the sub-folders of a combined run
DEFAULT_NUM_CLASSES = 100                        # -nc's default: when left there, the class count is read

MODE_HELP = """How the tasks and datasets are used (default: %(default)s):
pretraining: PH regression on -t (or on the fly); finetuning: classes of -t/-val from -pw;
combined: pretraining on -t2/-v2 (on the fly without -t2) for --epochs_pre epochs, then fine-tuning on -t/-val
for -e epochs from those weights (sub-folders pretraining/ and finetuning/ of one run folder);
simultaneous: classes of -t with a second, PH head on the same images (loss CE + --ph_weight x MSE);
alternating: batches alternate between classes of -t (CE) and PH labels of -t2 or generated images (MSE);
evaluation: evaluate -pw on -val (= --evaluate). In combined, -pw initialises the pretraining phase and
--freeze_encoder applies to the fine-tuning phase only"""


# ----------------------------------------------------------------------------------------------- flags
def add_mode_args(parser, default_mode):
    """The mode flags, the PH label flags and the generator flags (both scripts take all of them)."""
    from util.ph import FILTRATIONS
    from util.vectorise import LABEL_TYPES, add_label_args
    g = parser.add_argument_group('learning mode')
    g.add_argument('--learning_mode', '-lm', choices=MODES, default=default_mode, help=MODE_HELP)
    g.add_argument('--evaluate', action='store_true', help='the same as -lm evaluation: no training; evaluate '
                   'the weights given by -pw (or --resume) on -val and write the metrics, per-class accuracy '
                   'and confusion matrix')
    g.add_argument('--ph_train', '-t2', default=None, help='combined/alternating: folder of images for the PH '
                   'task (-pd/-pc apply to it; default: images generated on the fly)')
    g.add_argument('--ph_val', '-v2', default=None, help='combined/alternating: validation images for the PH '
                   'task (default: generated, see -nv)')
    g.add_argument('--epochs_pre', default=None, type=int, help='combined: epochs of the pretraining phase '
                   '(default: -e)')
    g.add_argument('--ph_dims', '-nd', default=200, type=int, help='combined/simultaneous/alternating: '
                   'dimension of the PH label vector, while -nc is the number of classes (in pretraining '
                   'mode -nc is the label dimension) (default: %(default)s)')
    g.add_argument('--ph_weight', default=1.0, type=float, help='simultaneous/alternating: weight of the PH '
                   'regression loss (MSE) against the cross-entropy (default: %(default)s)')

    g = parser.add_argument_group('persistent homology labels')
    g.add_argument('--persistence', '-ph', choices=('pre', 'post'), default='pre',
                   help='pre: label the whole image before augmentation (fixed per image); post: label the '
                   'spatially augmented crop, i.e. what the network sees (default: %(default)s)')
    g.add_argument('--precomputed', '-pc', action='store_true',
                   help='read labels from the consolidated matrix that PHdict.py --label_type wrote in -pd')
    g.add_argument('--filtration', default='signed_distance', choices=FILTRATIONS,
                   help='filtration when PH is computed here (default: %(default)s, as PHdict.py)')
    g.add_argument('--gradient', '-g', action='store_true', help='when PH is computed here: PH of the Canny '
                   'edge map of the denoised image instead of its Otsu binarisation (as PHdict.py --gradient)')
    add_label_args(g, max_life='-ml')
    for action in g._group_actions:   # pretraining can also use class folders: the control experiment
        if action.dest == 'label_type':
            action.choices = tuple(LABEL_TYPES) + ('class',)
            action.help += ("; 'class' (pretraining/combined only): the class folders of the pretraining "
                            "images as labels, cross-entropy instead of PH regression")

    g = parser.add_argument_group('on-the-fly image generation (when no image folder is given for the PH task)')
    g.add_argument('--alpha_range', '-ar', default=[0.01, 1.0], type=float, nargs=2, help='range of alpha '
                   '(default: %(default)s)')
    g.add_argument('--beta_range', '-br', default=[0.5, 2.0], type=float, nargs=2, help='range of beta '
                   '(default: %(default)s)')
    g.add_argument('--n_samples', '-n', default=50000, type=int, help='images per epoch (default: %(default)s)')
    g.add_argument('--prob_binary', '-pb', default=1.0, type=float, help='probability that a channel is '
                   'binarised (default: %(default)s)')
    g.add_argument('--prob_colour', default=0.5, type=float, help='probability that an image has three '
                   'channels (default: %(default)s)')
    g.add_argument('--n_samples_val', '-nv', default=-1, type=int, help='generated validation images, from a '
                   'disjoint random stream (default: min(1000, n/10); 0 = none)')
    g.add_argument('--cache_dir', default=None, help='keep generated images and diagrams here and reuse the '
                   'same images every epoch (nothing there is ever deleted)')
    return parser


def check_mode_args(args):
    """Validate the mode flags (after :func:`util.training.check_common_args`); sets ``args.learning_mode``
    to 'evaluation' for --evaluate and ``args.epochs_pre`` to -e when not given."""
    mode = args.learning_mode
    if args.evaluate:
        if mode not in ('pretraining', 'finetuning', 'evaluation'):
            raise UserError(f"--evaluate contradicts -lm {mode}; give one of them")
        args.learning_mode = mode = 'evaluation'
    if args.epochs_pre is None:
        args.epochs_pre = args.epochs
    if args.epochs_pre < 1:
        raise UserError(f"--epochs_pre must be at least 1 (got {args.epochs_pre})")
    if args.ph_dims < 1:
        raise UserError(f"--ph_dims must be at least 1 (got {args.ph_dims})")
    if not args.ph_weight >= 0:
        raise UserError(f"--ph_weight must be >= 0 (got {args.ph_weight})")
    if args.label_type == 'class' and mode in ('simultaneous', 'alternating'):
        raise UserError(f"--label_type class has no PH task; -lm {mode} needs a PH label type "
                        f"(histogram, persistence_image, betti_curve or landscape)")
    if args.freeze_encoder and mode in ('simultaneous', 'alternating'):
        raise UserError(f"--freeze_encoder would leave the PH task of -lm {mode} without effect on the "
                        f"classifier; drop it")
    if mode == 'simultaneous' and (args.precomputed or args.path2PHdir):
        raise UserError("-lm simultaneous computes the PH labels of the labelled images in the loader; drop -pd/-pc")
    if mode in ('combined', 'alternating') and args.path2PHdir and not args.ph_train:
        raise UserError(f"-lm {mode}: -pd/-pc hold the PH of the images given by -t2 (--ph_train); give -t2, or "
                        f"drop -pd/-pc to generate images on the fly")
    return args


# ------------------------------------------------------------------------------------------------ entry
def main(args):
    """Run the mode ``args.learning_mode`` (spawning ``-ws`` processes when asked); returns 0."""
    T.check_common_args(args)
    check_mode_args(args)
    if args.world_size > 1 and 'RANK' not in os.environ and args.learning_mode != 'evaluation':
        return T.spawn_or_run(_main, args)
    return _main(args)


def _main(args):
    T.init_distributed(args)
    args.phase = args.learning_mode
    RUNNERS[args.learning_mode](args)
    T.cleanup_distributed(args)
    return 0


def _tags(args, phase):
    return {'mode': args.learning_mode, 'phase': phase}


def phase_args(args, phase, **changes):
    """A copy of ``args`` for one phase (``args.phase`` set), with ``changes`` applied."""
    new = argparse.Namespace(**vars(args))
    new.phase = phase
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def setup_dir(args, kind, run_dir=None):
    """(run_dir, checkpoint or None): :func:`util.training.setup_run`, or the given folder (created) when
    ``run_dir`` is set and this is not a resume. Refuses to resume a checkpoint of another mode."""
    if run_dir is None or args.resume:
        run_dir, checkpoint = T.setup_run(args, kind)
        if checkpoint is not None and checkpoint.get('mode') not in (None, args.learning_mode):
            raise UserError(f"--resume {args.resume}: that run used -lm {checkpoint['mode']}, not -lm "
                            f"{args.learning_mode}")
        return run_dir, checkpoint
    if T.is_main(args):
        fileio.ensure_dir(run_dir, 'run folder')
    args.run_dir = run_dir
    if T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'args.json'), T.args_to_dict(args))
    return run_dir, None


# ------------------------------------------------------------------------------------------- data sets
def build_pretraining_sets(args):
    """(train dataset, val dataset or None) of PH labels for the data mode the flags select (see
    pretraining.py): -t with -pd (diagrams) / -pd -pc (label matrix) / nothing (computed), or generated."""
    from util.datasets import ComputedLabels, GeneratedPH, pretrain_transforms, pretrain_val_transforms
    from util.vectorise import vectoriser_from_args
    vectoriser = vectoriser_from_args(args, args.numof_classes, None if args.precomputed else '-nc')
    computed = ComputedLabels(vectoriser, args.filtration, getattr(args, 'gradient', False))
    spatial, to_tensor = pretrain_transforms(args)
    val_spatial, val_to_tensor = pretrain_val_transforms(args)

    if args.train is None:
        from util.random_image import GeneratorConfig
        cfg = GeneratorConfig(img_size=args.img_size, alpha_range=tuple(args.alpha_range),
                              beta_range=tuple(args.beta_range), prob_binary=args.prob_binary,
                              prob_colour=args.prob_colour)
        cfg.validate()
        if args.n_samples < 1:
            raise UserError("--n_samples must be at least 1")
        train = GeneratedPH(cfg, args.seed, args.n_samples, computed, spatial, to_tensor, args.persistence,
                            stream=0, cache_dir=args.cache_dir)
        n_val = min(1000, max(1, args.n_samples // 10)) if args.n_samples_val < 0 else args.n_samples_val
        val = None
        if n_val > 0 and args.val is None:
            val_cache = os.path.join(args.cache_dir, 'val') if args.cache_dir else None
            val = GeneratedPH(cfg, args.seed, n_val, computed, val_spatial, val_to_tensor, 'pre', stream=1,
                              cache_dir=val_cache, fresh_each_epoch=False)
        elif args.val is not None:
            val = _folder_set(args.val, '-val', computed, val_spatial, val_to_tensor, 'pre', args, vectoriser)
        return train, val

    if args.precomputed and not args.path2PHdir:
        raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
    if args.path2PHdir and args.persistence == 'post':
        raise UserError("-pd holds PH of whole images, which cannot describe augmented crops: use -ph pre, or "
                        "drop -pd to compute PH of each crop")
    train = _folder_set(args.train, '-t', computed, spatial, to_tensor, args.persistence, args, vectoriser)
    val = None
    if args.val is not None:
        val = _folder_set(args.val, '-val', computed, val_spatial, val_to_tensor, 'pre', args, vectoriser,
                          fallback_to_computed=True)
    return train, val


def _folder_set(root, flag, computed, spatial, to_tensor, persistence, args, vectoriser, fallback_to_computed=False):
    from util.datasets import DiagramDirLabels, FolderPH, MatrixLabels, find_label_matrix, load_label_matrix
    fileio.require_dir(root, 'image folder', flag)
    rel = fileio.list_images(root)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {root!r} (given by {flag})")
    labels = computed
    try:
        if args.path2PHdir:
            fileio.require_dir(args.path2PHdir, 'PH folder', '-pd')
            if args.precomputed:
                found = find_label_matrix(args.path2PHdir, args.label_type)
                if found is None:
                    raise UserError(f"no labels_{args.label_type}.npy/.txt in {args.path2PHdir!r}; run PHdict.py "
                                    f"{root} -o {args.path2PHdir} --label_type {args.label_type} "
                                    f"--numof_dims {args.numof_classes}")
                matrix, names = load_label_matrix(*found, expected_dim=args.numof_classes)
                labels = MatrixLabels(matrix, names, rel, found[0])
            else:
                labels = DiagramDirLabels(args.path2PHdir, rel, vectoriser)
    except UserError:
        if not fallback_to_computed:
            raise
        labels = computed
    return FolderPH(root, rel, labels, spatial, to_tensor, persistence, computed=computed,
                    bad_images=args.bad_images)


def resolve_val(args, required=True):
    """The validation folder: -val, else the -t path with 'train' replaced by 'val' (else 'test')."""
    if args.val:
        return args.val
    if args.train:
        head, tail = os.path.split(os.path.normpath(args.train))
        if 'train' in tail:
            for name in ('val', 'test'):
                candidate = os.path.join(head, tail.replace('train', name))
                if os.path.isdir(candidate):
                    return candidate
    if not required:
        return None
    raise UserError("no validation folder: give -val DIR (looked for the -t path with 'train' replaced by "
                    "'val' or 'test')")


def check_class_layout(root, flag):
    """Raise :class:`UserError` unless ``root`` is a folder with class sub-folders."""
    fileio.require_dir(root, 'image folder', flag)
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(f"{root!r} (given by {flag}) has no class sub-folders; -lm finetuning, combined, "
                        f"simultaneous and alternating and --label_type class need -t/-val in the layout "
                        f"<folder>/<class>/<image> (PH-only images go to -t2 in combined/alternating)")


def _class_folder(root, transform, bad_images, flag):
    from util.datasets import SafeImageFolder
    check_class_layout(root, flag)
    return SafeImageFolder(root, transform, bad_images)


def match_classes(args, train_set, val_set, val_root, strict=False):
    """Check that train and val have the same classes and that -nc fits (left at its default, it is set to the
    number of classes found); returns the class names."""
    if train_set is not None and val_set is not None and val_set.classes != train_set.classes:
        extra = sorted(set(val_set.classes) - set(train_set.classes))
        missing = sorted(set(train_set.classes) - set(val_set.classes))
        raise UserError(f"the classes of {val_root!r} differ from those of {args.train!r}: "
                        f"only in val: {extra[:5]}, only in train: {missing[:5]}")
    classes = (val_set if val_set is not None else train_set).classes
    if args.numof_classes != len(classes):
        if args.numof_classes != DEFAULT_NUM_CLASSES or strict:
            raise UserError(f"-nc {args.numof_classes} but {val_root or args.train!r} has {len(classes)} classes")
        if T.is_main(args):
            print(f"note: {len(classes)} classes found; using -nc {len(classes)}", flush=True)
        args.numof_classes = len(classes)
    return classes


def build_sets(args, need_train):
    """(train ImageFolder or None, val ImageFolder, class names) for fine-tuning / evaluation."""
    from util.datasets import finetune_transforms
    train_set = None
    if need_train:
        if not args.train:
            raise UserError("give the training folder with -t DIR (class sub-folders of images)")
        train_set = _class_folder(args.train, finetune_transforms(args, True), args.bad_images, '-t')
    val_root = resolve_val(args)
    val_set = _class_folder(val_root, finetune_transforms(args, False), 'skip', '-val')
    classes = match_classes(args, train_set, val_set, val_root, strict=args.learning_mode == 'evaluation')
    return train_set, val_set, classes


def build_class_pretraining_sets(args):
    """``--label_type class``: (train, val or None, classes) from the class folders of -t / -val, with the
    pretraining augmentation."""
    from torchvision import transforms
    from util.datasets import pretrain_transforms, pretrain_val_transforms
    if not args.train:
        raise UserError("--label_type class pretrains on labelled images: give their class folders with -t DIR")
    if args.path2PHdir or args.precomputed:
        raise UserError("-pd/-pc hold PH labels; --label_type class uses the class folders of -t instead")
    spatial, to_tensor = pretrain_transforms(args)
    val_spatial, val_to_tensor = pretrain_val_transforms(args)
    train = _class_folder(args.train, transforms.Compose([spatial, to_tensor]), args.bad_images, '-t')
    val_root = resolve_val(args, required=False)
    val = None
    if val_root is not None:
        val = _class_folder(val_root, transforms.Compose([val_spatial, val_to_tensor]), 'skip', '-val')
    return train, val, match_classes(args, train, val, val_root)


# --------------------------------------------------------------------------------------------- models
def build_finetune_model(args, init_state=None, quiet=False):
    """The model with a fresh head of -nc outputs, initialised from ``init_state`` (a state dict, e.g. the
    pretraining phase's model), else from -pw (ours / imagenet), else at random."""
    pw = args.path2weight
    if init_state is not None:
        model = models.build_model(args.usenet, args.numof_classes)
        report = models.load_pretrained(model, init_state, arch=args.usenet, verbose=False)
        if T.is_main(args):
            print(f"initialised from the pretraining phase: {report['loaded']} tensors loaded, head "
                  f"{'re-initialised' if report['head_reinitialised'] else 'kept'}", flush=True)
        return model
    if pw == 'imagenet':
        model = models.build_model(args.usenet, args.numof_classes, weights='imagenet')
        print(f"initialised from torchvision's ImageNet weights for {args.usenet}", flush=True)
        return model
    model = models.build_model(args.usenet, args.numof_classes)
    if not pw:
        if not quiet:
            print("WARNING: no -pw given: training from scratch (random initialisation)", file=sys.stderr,
                  flush=True)
        return model
    if not os.path.isfile(pw):
        raise UserError(f"-pw {pw!r}: no such weights file")
    stored = models.infer_num_classes(pw, args.usenet)
    if args.numof_pretrained_classes is not None and args.numof_pretrained_classes != stored:
        raise UserError(f"-npc {args.numof_pretrained_classes} but {pw} has a head of {stored} outputs; "
                        f"drop -npc (it is read from the file)")
    args.numof_pretrained_classes = stored
    report = models.load_pretrained(model, pw, arch=args.usenet, verbose=T.is_main(args))
    print(f"initialised from {pw}: {report['loaded']} tensors loaded, head "
          f"{'re-initialised' if report['head_reinitialised'] else 'kept'}", flush=True)
    return model


def _pretraining_model(args):
    model = models.build_model(args.usenet, args.numof_classes,
                               weights='imagenet' if args.path2weight == 'imagenet' else None)
    if args.path2weight and args.path2weight != 'imagenet':
        models.load_pretrained(model, args.path2weight, arch=args.usenet, verbose=T.is_main(args))
    return model


class TwoHeads(nn.Module):
    """A torchvision classifier ``net`` (its own head gives the class scores) plus a PH head: a Linear layer
    ``in_features -> ph_dims`` fed with the features the classifier's head receives (captured by a forward
    pre-hook, so any architecture works; feature maps, as squeezenet's conv head takes, are average-pooled).

    ``forward(x [B, 3, H, W]) -> (class scores [B, K], PH prediction [B, ph_dims])``.  ``net`` alone is the
    classifier the weights files hold.
    """

    def __init__(self, net, ph_dims):
        super().__init__()
        self.net = net
        _, _, head = models.get_head(net)
        self.ph_head = nn.Linear(models.head_in_features(net), ph_dims)
        self._features = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module, inputs):
        self._features = inputs[0]

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, tuple):   # inception/googlenet auxiliary outputs in train mode
            out = out[0]
        features, self._features = self._features, None
        if features.dim() > 2:
            features = F.adaptive_avg_pool2d(features, 1)
        return out, self.ph_head(torch.flatten(features, 1))


class PHOutput(nn.Module):
    """The PH prediction of a :class:`TwoHeads` alone (for :func:`util.training.evaluate_regression`)."""

    def __init__(self, two_heads):
        super().__init__()
        self.two_heads = two_heads

    def forward(self, x):
        return self.two_heads(x)[1]


# --------------------------------------------------------------------------------- two-task training
def _two_task_step(model, optimizer, inputs, classes, ph_labels, args, epoch, it):
    """One optimiser step on ``CE(classes) + ph_weight * MSE(ph_labels)`` (either may be None).

    Returns (ce, mse, correct) as floats/ints (None for an absent term). Both heads always enter the loss
    (an absent one with weight 0) so that DDP sees every parameter used.
    """
    with T._autocast(args):
        out, ph = model(inputs)
    out, ph = out.float(), ph.float()
    loss = 0.0 * out.sum() + 0.0 * ph.sum()
    ce = mse = correct = None
    if classes is not None:
        ce_t = F.cross_entropy(out, classes)
        loss = loss + ce_t
        ce = ce_t.item()
        correct = (out.argmax(1) == classes).sum().item()
    if ph_labels is not None:
        mse_t = F.mse_loss(ph, ph_labels)
        loss = loss + args.ph_weight * mse_t
        mse = mse_t.item()
    T.optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_fine) or --ph_weight')
    return ce, mse, correct


def _batches(loader, args):
    """(inputs, targets, dropped) of a loader, moved to the device (inputs None for an all-bad batch)."""
    for inputs, targets, dropped in loader:
        if inputs is None:
            yield None, None, dropped
            continue
        inputs = T._to_device(inputs, args)
        if isinstance(targets, (list, tuple)):
            targets = [t.to(args.device, non_blocking=True) for t in targets]
        else:
            targets = targets.to(args.device, non_blocking=True)
        yield inputs, targets, dropped


def _epoch_metrics(sums, args, start, ph_key='train_ph_loss'):
    ce_sum, correct, n, mse_sum, n_ph, skipped = T.all_reduce_sum(sums, args, device=args.device)
    metrics = {'train_acc1': 100.0 * correct / max(n, 1), 'images': int(n), 'skipped_bad': int(skipped),
               ph_key: mse_sum / max(n_ph, 1), 'seconds': time.time() - start}
    return metrics, ce_sum / max(n, 1)


def train_simultaneous_epoch(model, loader, optimizer, epoch, args):
    """One pass over a :class:`util.datasets.LabelledPH` loader; both losses on every batch.

    Returns {'train_loss' (CE + ph_weight x MSE), 'train_ce', 'train_ph_loss', 'train_acc1', 'images', ...}.
    """
    model.train()
    sums = [0.0] * 6   # ce*n, correct, n, mse*n, n (ph), skipped
    start = time.time()
    bar = tqdm(_batches(loader, args), total=len(loader), desc=f'simultaneous epoch {epoch}',
               disable=not T.is_main(args), leave=False, file=sys.stderr, dynamic_ncols=True)
    for it, (inputs, targets, dropped) in enumerate(bar):
        sums[5] += dropped
        if inputs is None:
            continue
        ce, mse, correct = _two_task_step(model, optimizer, inputs, targets[0], targets[1].float(), args, epoch, it)
        n = inputs.shape[0]
        sums[0] += ce * n
        sums[1] += correct
        sums[2] += n
        sums[3] += mse * n
        sums[4] += n
        if T.is_main(args) and it % max(1, args.log_interval) == 0:
            bar.set_postfix(ce=f'{ce:.4g}', ph=f'{mse:.4g}')
    bar.close()
    metrics, ce_mean = _epoch_metrics(sums, args, start)
    metrics['train_ce'] = ce_mean
    metrics['train_loss'] = ce_mean + args.ph_weight * metrics['train_ph_loss']
    return metrics


def _cycle(make):
    """Endless batches: iterate ``make()`` again whenever it is exhausted."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            return


def train_alternating_epoch(model, class_loader, make_ph_loader, optimizer, epoch, args):
    """One pass over the labelled loader; after each labelled batch (CE step) one PH batch (MSE step), the
    PH loader restarted when exhausted.

    Returns {'train_loss' (CE), 'train_acc1', 'train_ph_loss' (MSE), 'images', 'ph_images', ...}.
    """
    model.train()
    sums = [0.0] * 6
    start = time.time()
    ph_batches = _cycle(lambda: _batches(make_ph_loader(), args))
    bar = tqdm(_batches(class_loader, args), total=len(class_loader), desc=f'alternating epoch {epoch}',
               disable=not T.is_main(args), leave=False, file=sys.stderr, dynamic_ncols=True)
    for it, (inputs, targets, dropped) in enumerate(bar):
        sums[5] += dropped
        if inputs is not None:
            ce, _, correct = _two_task_step(model, optimizer, inputs, targets, None, args, epoch, it)
            sums[0] += ce * inputs.shape[0]
            sums[1] += correct
            sums[2] += inputs.shape[0]
        ph_inputs, ph_targets, ph_dropped = next(ph_batches, (None, None, 0))
        sums[5] += ph_dropped
        if ph_inputs is not None:
            _, mse, _ = _two_task_step(model, optimizer, ph_inputs, None, ph_targets.float(), args, epoch, it)
            sums[3] += mse * ph_inputs.shape[0]
            sums[4] += ph_inputs.shape[0]
        if T.is_main(args) and it % max(1, args.log_interval) == 0 and inputs is not None:
            bar.set_postfix(ce=f'{ce:.4g}')
    bar.close()
    metrics, ce_mean = _epoch_metrics(sums, args, start)
    metrics['train_loss'] = ce_mean
    metrics['ph_images'] = int(T.all_reduce_sum([sums[4]], args, device=args.device)[0])
    return metrics


# ---------------------------------------------------------------------------------------------- runners
def run_pretraining(args, run_dir=None, phase='pretraining'):
    """Pretraining (PH regression, or classes with ``--label_type class``); returns (bare model, records)."""
    classes = None
    if args.label_type == 'class':
        train_set, val_set, classes = build_class_pretraining_sets(args)
        what = f"{len(train_set)} training images in {len(classes)} classes from {args.train}"
    else:
        train_set, val_set = build_pretraining_sets(args)
        source = 'generated on the fly' if args.train is None else f'from {args.train}'
        what = f"{len(train_set)} training images {source}; labels: {args.label_type}, dimension {train_set.dim}"
    if T.is_main(args):
        print(what + (f"; {len(val_set)} validation images" if val_set is not None else ''), flush=True)

    model = _pretraining_model(args)
    run_dir, checkpoint = setup_dir(args, 'pretraining', run_dir)
    model = T.prepare_model(model, args)
    task = 'classification' if classes is not None else 'regression'
    criterion = nn.CrossEntropyLoss() if classes is not None else nn.MSELoss()
    if classes is not None and T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)

    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=(lambda target: classes[target]) if classes is not None else None)

    evaluate = None
    if val_set is not None:
        def evaluate(bare_model, epoch):
            loader = T.make_loader(val_set, args, epoch, shuffle=False, train=False)
            if classes is not None:
                return T.evaluate_classification(bare_model, loader, criterion, args, len(classes))[0]
            return T.evaluate_regression(bare_model, loader, criterion, args)

    weights_name = f'{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, criterion, train_set, args, lr=args.lr_pre, task=task, weights_name=weights_name,
                    evaluate=evaluate, checkpoint=checkpoint, tags=_tags(args, phase))
    if T.is_main(args):
        _pictures(model, run_dir, filters=True)
        print(T.final_message(args, records, weights_name), flush=True)
    return T.unwrap(model), records


def run_finetuning(args, run_dir=None, phase='finetuning', init_state=None):
    """Fine-tuning on the class folders of -t/-val; returns (bare model, records)."""
    train_set, val_set, classes = build_sets(args, need_train=True)
    model = build_finetune_model(args, init_state, quiet=bool(args.resume))
    params = None
    if args.freeze_encoder:
        head_names = models.head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad = name in head_names
        params = [p for p in model.parameters() if p.requires_grad]
    run_dir, checkpoint = setup_dir(args, 'fine-tuning', run_dir)
    if T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes", flush=True)
    model = T.prepare_model(model, args)
    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target])
    criterion = nn.CrossEntropyLoss()

    def evaluate(bare_model, epoch):
        loader = T.make_loader(val_set, args, epoch, shuffle=False, train=False)
        return T.evaluate_classification(bare_model, loader, criterion, args, len(classes))[0]

    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, criterion, train_set, args, lr=args.lr_fine, task='classification',
                    weights_name=weights_name, evaluate=evaluate, checkpoint=checkpoint, params=params,
                    tags=_tags(args, phase))
    _finish_classifier(args, T.unwrap(model), val_set, classes, run_dir, records, weights_name)
    return T.unwrap(model), records


def _finish_classifier(args, classifier, val_set, classes, run_dir, records, weights_name):
    """Rank 0: the final evaluation files, the curves and the closing line."""
    if not T.is_main(args):
        return
    write_evaluation(classifier, val_set, classes, nn.CrossEntropyLoss(), args, run_dir)
    _pictures(None, run_dir, filters=False)
    print(T.final_message(args, records, weights_name), flush=True)


def run_evaluation(args):
    """Evaluate fine-tuned weights (-pw or --resume) on -val: metrics.json, per_class.csv, confusion matrix."""
    _, val_set, classes = build_sets(args, need_train=False)
    if not args.path2weight and not args.resume:
        raise UserError("--evaluate needs the fine-tuned weights: -pw FILE (or --resume checkpoint.pth)")
    model = models.build_model(args.usenet, len(classes))
    source = T.resolve_resume(args.resume) if args.resume else args.path2weight
    report = models.load_pretrained(model, source, arch=args.usenet, verbose=False)
    if report['head_reinitialised']:
        raise UserError(f"{source} has a head of {models.infer_num_classes(source, args.usenet)} outputs but "
                        f"{args.val or 'the validation folder'} has {len(classes)} classes: these are not "
                        f"fine-tuned weights for this dataset")
    args.resume = ''
    run_dir, _ = T.setup_run(args, 'evaluation')
    model = T.prepare_model(model, args)
    metrics = write_evaluation(model, val_set, classes, nn.CrossEntropyLoss(), args, run_dir)
    print(T.format_metrics(metrics), flush=True)
    return metrics


def write_evaluation(model, val_set, classes, criterion, args, run_dir):
    """metrics.json, per_class.csv, confusion_matrix.csv and .png in ``run_dir``; returns the metrics."""
    loader = T.make_loader(val_set, args, 0, shuffle=False, train=False)
    metrics, cm = T.evaluate_classification(model, loader, criterion, args, len(classes))
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.full(len(classes), np.nan), where=cm.sum(1) > 0)
    fileio.write_csv(os.path.join(run_dir, 'per_class.csv'), [['class', 'images', 'correct', 'accuracy']] + [
        [c, int(cm[i].sum()), int(cm[i, i]), f'{100 * per_class[i]:.2f}'] for i, c in enumerate(classes)])
    for c in (c for i, c in enumerate(classes) if cm[i].sum() == 0):
        print(f"warning: class {c!r} has no usable validation image (accuracy nan)", file=sys.stderr, flush=True)
    fileio.write_json(os.path.join(run_dir, 'metrics.json'), dict(metrics, mode=args.learning_mode))
    try:
        from util.plotting import confusion_matrix_csv, confusion_matrix_png
        confusion_matrix_csv(cm, classes, os.path.join(run_dir, 'confusion_matrix.csv'))
        confusion_matrix_png(cm, classes, os.path.join(run_dir, 'confusion_matrix.png'))
    except Exception as e:  # pictures are a convenience; the CSV above already holds the numbers
        print(f"warning: could not draw the confusion matrix: {e}", file=sys.stderr)
    return metrics


def _pictures(model, run_dir, filters):
    """Loss curves (and first-layer filters); a plotting failure never fails the run."""
    try:
        from util.plotting import curves_from_log, filter_grid
        curves_from_log(os.path.join(run_dir, T.LOG_NAME), os.path.join(run_dir, 'curves.png'))
        if filters:
            filter_grid(T.unwrap(model), os.path.join(run_dir, 'filters.png'))
    except Exception as e:  # pictures are a convenience
        print(f"warning: could not draw pictures: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- combined
def _combined_folders(args):
    """(top run folder, pretraining checkpoint or None, fine-tuning checkpoint or None) of a combined run:
    a fresh dated folder, or the one --resume names (the top folder, a phase folder or a checkpoint)."""
    if not args.resume:
        top = T.make_run_dir(args.output, args)
        if T.is_main(args):
            fileio.write_json(os.path.join(top, 'args.json'), T.args_to_dict(args))
        return top, None, None
    top = os.path.abspath(args.resume)
    if os.path.isfile(top):
        top = os.path.dirname(top)
    if os.path.basename(top) in PHASES:
        top = os.path.dirname(top)
    found = [os.path.join(top, p, T.CHECKPOINT_NAME) for p in PHASES]
    found = [c if os.path.isfile(c) else None for c in found]
    if not any(found):
        raise UserError(f"--resume {args.resume}: no pretraining/{T.CHECKPOINT_NAME} or finetuning/"
                        f"{T.CHECKPOINT_NAME} there; pass the folder of a -lm combined run")
    return top, found[0], found[1]


def run_combined(args):
    """Pretraining phase, then fine-tuning from its weights, in ``<run>/pretraining`` and ``<run>/finetuning``."""
    if not args.train:   # the fine-tuning data are checked before the (long) first phase starts
        raise UserError("-lm combined fine-tunes on labelled images: give their class folders with -t DIR "
                        "(the pretraining images, if any, with -t2)")
    check_class_layout(args.train, '-t')
    check_class_layout(resolve_val(args), '-val')
    top, pre_ckpt, ft_ckpt = _combined_folders(args)
    if T.is_main(args):
        print(f"combined run in {top}: pretraining for {args.epochs_pre} epochs, then fine-tuning for "
              f"{args.epochs} epochs", flush=True)
    pre = phase_args(args, 'pretraining', epochs=args.epochs_pre, train=args.ph_train, val=args.ph_val,
                     freeze_encoder=False, resume='',
                     numof_classes=DEFAULT_NUM_CLASSES if args.label_type == 'class' else args.ph_dims)
    init_state, done = None, 0
    if ft_ckpt is None:
        state = T.load_checkpoint(pre_ckpt) if pre_ckpt else None
        if state is not None and int(state['epoch']) >= args.epochs_pre:
            init_state = state['model']
            print(f"pretraining phase already complete ({pre_ckpt}); fine-tuning from it", flush=True)
        else:
            pre.resume = pre_ckpt or ''
            model, records = run_pretraining(pre, os.path.join(top, 'pretraining'), phase='pretraining')
            done = len(records)
            if not records or records[-1]['epoch'] < args.epochs_pre:
                return _stopped(args, top)
            init_state = model.state_dict()
            if args.stop_after > 0 and done >= args.stop_after:
                return _stopped(args, top)
    ft = phase_args(args, 'finetuning', resume=ft_ckpt or '', path2weight=None,
                    stop_after=args.stop_after - done if args.stop_after > 0 else 0)
    _, records = run_finetuning(ft, os.path.join(top, 'finetuning'), phase='finetuning', init_state=init_state)
    if records and records[-1]['epoch'] < args.epochs:
        return _stopped(args, top)
    return None


def _stopped(args, top):
    if T.is_main(args):
        print(f"combined run stopped early; continue with -lm combined --resume {top}", flush=True)


# ----------------------------------------------------------------------------------- simultaneous / alternating
def _two_head_model(args):
    model = build_finetune_model(args, quiet=bool(args.resume))
    return TwoHeads(model, args.ph_dims)


def _ph_eval(val_ph, criterion, args):
    def evaluate(bare_model, epoch):
        loader = T.make_loader(val_ph, args, epoch, shuffle=False, train=False)
        return T.evaluate_regression(PHOutput(bare_model), loader, criterion, args, prefix='val_ph')
    return evaluate


def _class_eval(val_set, classes, args):
    def evaluate(bare_model, epoch):
        loader = T.make_loader(val_set, args, epoch, shuffle=False, train=False)
        return T.evaluate_classification(bare_model.net, loader, nn.CrossEntropyLoss(), args, len(classes))[0]
    return evaluate


def run_simultaneous(args):
    """One labelled folder, two heads: CE on the classes + ph_weight x MSE on PH labels of the same images."""
    from torchvision import transforms
    from util.datasets import ComputedLabels, FolderPH, LabelledPH, finetune_train_parts, finetune_transforms
    from util.vectorise import vectoriser_from_args
    if not args.train:
        raise UserError("-lm simultaneous trains on labelled images: give their class folders with -t DIR")
    computed = ComputedLabels(vectoriser_from_args(args, args.ph_dims, '-nd'), args.filtration, args.gradient)
    spatial, to_tensor = finetune_train_parts(args)
    check_class_layout(args.train, '-t')
    train_set = LabelledPH(args.train, computed, spatial, to_tensor, args.persistence, args.bad_images)
    val_root = resolve_val(args)
    val_set = _class_folder(val_root, finetune_transforms(args, False), 'skip', '-val')
    classes = match_classes(args, train_set, val_set, val_root)
    val_spatial = transforms.Compose([transforms.Resize(args.img_size), transforms.CenterCrop(args.crop_size)])
    val_rel = [os.path.relpath(p, val_root).replace(os.sep, '/') for p, _ in val_set.samples]
    val_ph = FolderPH(val_root, val_rel, computed, val_spatial, transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)]), 'pre', bad_images='skip')

    model = _two_head_model(args)
    run_dir, checkpoint = setup_dir(args, 'simultaneous')
    if T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes; PH labels "
              f"{args.label_type} of dimension {args.ph_dims}, weight {args.ph_weight}", flush=True)
    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target[0]])
    model = T.prepare_model(model, args)

    def train_epoch(m, optimizer, epoch):
        loader = T.make_loader(train_set, args, epoch, shuffle=True, train=True)
        return train_simultaneous_epoch(m, loader, optimizer, epoch, args)

    class_eval, ph_eval = _class_eval(val_set, classes, args), _ph_eval(val_ph, nn.MSELoss(), args)
    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, None, None, args, lr=args.lr_fine, task='classification', weights_name=weights_name,
                    evaluate=lambda m, e: {**class_eval(m, e), **ph_eval(m, e)}, checkpoint=checkpoint,
                    train_epoch=train_epoch, tags=_tags(args, 'simultaneous'), export=lambda m: m.net)
    _finish_classifier(args, T.unwrap(model).net, val_set, classes, run_dir, records, weights_name)


def run_alternating(args):
    """Batches alternate between the labelled folder -t (CE) and PH-labelled images (-t2 or generated; MSE)."""
    train_set, val_set, classes = build_sets(args, need_train=True)
    ph_args = phase_args(args, 'alternating', train=args.ph_train, val=args.ph_val, numof_classes=args.ph_dims)
    ph_train, ph_val = build_pretraining_sets(ph_args)

    model = _two_head_model(args)
    run_dir, checkpoint = setup_dir(args, 'alternating')
    if T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        source = 'generated on the fly' if args.ph_train is None else f'from {args.ph_train}'
        print(f"{len(train_set)} labelled training / {len(val_set)} validation images, {len(classes)} classes; "
              f"{len(ph_train)} PH images {source} (labels {args.label_type}, dimension {args.ph_dims}, "
              f"weight {args.ph_weight})", flush=True)
    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target])
    model = T.prepare_model(model, args)

    def train_epoch(m, optimizer, epoch):
        if hasattr(ph_train, 'set_epoch'):
            ph_train.set_epoch(epoch - 1)
        class_loader = T.make_loader(train_set, args, epoch, shuffle=True, train=True)
        return train_alternating_epoch(m, class_loader, lambda: T.make_loader(ph_train, args, epoch),
                                       optimizer, epoch, args)

    class_eval = _class_eval(val_set, classes, args)
    ph_eval = _ph_eval(ph_val, nn.MSELoss(), args) if ph_val is not None else (lambda m, e: {})
    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, None, None, args, lr=args.lr_fine, task='classification', weights_name=weights_name,
                    evaluate=lambda m, e: {**class_eval(m, e), **ph_eval(m, e)}, checkpoint=checkpoint,
                    train_epoch=train_epoch, tags=_tags(args, 'alternating'), export=lambda m: m.net)
    _finish_classifier(args, T.unwrap(model).net, val_set, classes, run_dir, records, weights_name)


def _run_pretraining_mode(args):
    run_pretraining(args)


def _run_finetuning_mode(args):
    run_finetuning(args)


RUNNERS = {'pretraining': _run_pretraining_mode, 'finetuning': _run_finetuning_mode, 'combined': run_combined,
           'simultaneous': run_simultaneous, 'alternating': run_alternating, 'evaluation': run_evaluation}


def read_classes(path):
    """Class names from ``classes.json`` (a JSON list, as fine-tuning writes it) or a text file with one name
    per line."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read the class names {path!r}: {e.strerror}") from None
    if path.endswith('.json'):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e}); expected a list of class names") from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise UserError(f"{path} must hold a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]
