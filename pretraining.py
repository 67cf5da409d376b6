"""Pretrain a torchvision CNN to regress the persistent-homology label vector of its input images.

Data modes (chosen by the flags):
  -t DIR -pd PHDIR        images with raw diagrams written by PHdict.py, vectorised at load time
  -t DIR -pd PHDIR -pc    images with a consolidated label matrix (PHdict.py --label_type), nothing computed
  -t DIR                  images; persistent homology computed in the data loader
  (no -t)                 images generated on the fly (fresh every epoch; --cache_dir keeps and reuses them)
"""
import argparse
import os
import sys

from torch import nn

import models
from util import fileio
from util.errors import UserError, run_cli
from util import training as T

EXAMPLES = """examples:
  python pretraining.py -o weights --numof_classes=200 -ph pre -t random -pd PH_random -u resnet50
  python pretraining.py -u resnet18 -nc 200 -n 20000 -e 30 --img_size 128 --crop_size 112   # no dataset at all
  torchrun --nproc_per_node 4 pretraining.py -t random -pd PH_random -pc --label_type persistence_image -nc 200

Outputs go to a new dated folder under -o: args.json, log.jsonl (one line per epoch), checkpoint.pth (for
--resume) and {usenet}_epoch{E}.pth, a plain state_dict that torchvision.models.<usenet>(num_classes=D) loads.
"""


def get_args_parser():
    from util.ph import FILTRATIONS
    from util.vectorise import add_label_args
    parser = argparse.ArgumentParser(description='Pretrain a CNN on persistent-homology labels (no real images or '
                                     'human labels needed).', epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    T.add_common_args(parser)
    g = parser.add_argument_group('persistent homology labels')
    g.add_argument('--persistence', '-ph', choices=('pre', 'post'), default='pre',
                   help='pre: label the whole image before augmentation (fixed per image); post: label the '
                   'augmented crop, i.e. what the network sees (default: %(default)s)')
    g.add_argument('--precomputed', '-pc', action='store_true',
                   help='read labels from the consolidated matrix that PHdict.py --label_type wrote in -pd')
    g.add_argument('--filtration', default='signed_distance', choices=FILTRATIONS,
                   help='filtration when PH is computed here (default: %(default)s, as PHdict.py)')
    add_label_args(g, max_life='-ml')
    g = parser.add_argument_group('on-the-fly image generation (when -t is not given)')
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
    g.add_argument('--affine', '-aff', action='store_true', help='random affine augmentation (rotation, scale, '
                   'shear)')
    return parser


def build_pretraining_sets(args):
    """(train dataset, val dataset or None) for the data mode the flags select."""
    from util.datasets import ComputedLabels, GeneratedPH, pretrain_transforms, pretrain_val_transforms
    from util.vectorise import vectoriser_from_args
    vectoriser = vectoriser_from_args(args, args.numof_classes)
    computed = ComputedLabels(vectoriser, args.filtration)
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
    from util.datasets import (DiagramDirLabels, FolderPH, MatrixLabels, find_label_matrix, load_label_matrix)
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


def main(args):
    T.check_common_args(args)
    if args.world_size > 1 and 'RANK' not in os.environ:
        return T.spawn_or_run(_main, args)
    return _main(args)


def _main(args):
    T.init_distributed(args)
    train_set, val_set = build_pretraining_sets(args)
    if T.is_main(args):
        mode = 'generated on the fly' if args.train is None else f'from {args.train}'
        print(f"{len(train_set)} training images {mode}; labels: {args.label_type}, dimension {train_set.dim}"
              + (f"; {len(val_set)} validation images" if val_set is not None else ''), flush=True)

    model = models.build_model(args.usenet, args.numof_classes,
                               weights='imagenet' if args.path2weight == 'imagenet' else None)
    if args.path2weight and args.path2weight != 'imagenet':
        models.load_pretrained(model, args.path2weight, arch=args.usenet, verbose=T.is_main(args))
    run_dir, checkpoint = T.setup_run(args, 'pretraining')
    model = T.prepare_model(model, args)
    criterion = nn.MSELoss()

    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'))

    evaluate = None
    if val_set is not None:
        def evaluate(bare_model, epoch):
            loader = T.make_loader(val_set, args, epoch, shuffle=False, train=False)
            return T.evaluate_regression(bare_model, loader, criterion, args)

    weights_name = f'{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, criterion, train_set, args, lr=args.lr_pre, task='regression',
                    weights_name=weights_name, evaluate=evaluate, checkpoint=checkpoint)
    if T.is_main(args):
        _pictures(model, run_dir)
        print(T.final_message(args, records, weights_name), flush=True)
    T.cleanup_distributed(args)
    return 0


def _pictures(model, run_dir):
    """Loss curves and first-layer filters; a plotting failure never fails the run."""
    try:
        from util.plotting import curves_from_log, filter_grid
        curves_from_log(os.path.join(run_dir, T.LOG_NAME), os.path.join(run_dir, 'curves.png'))
        filter_grid(T.unwrap(model), os.path.join(run_dir, 'filters.png'))
    except Exception as e:  # pictures are a convenience
        print(f"warning: could not draw pictures: {e}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
