"""Write scikit-learn's handwritten digits (1797 real 8x8 scans, shipped inside the package: no download)
as an image folder ``<output>/{train,val}/<digit>/*.png`` for finetuning.py.

``--labels_per_class K`` keeps K training images per class (the low-label regime where pretraining shows);
the validation split is fixed by ``--val_fraction`` and ``--seed`` and never depends on K, so runs with
different K are evaluated on the same images.
"""
import os
import sys

if __name__ == "__main__":  # run as `python util/export_digits.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from util import fileio
from util.errors import UserError, run_cli
from util.strict_args import StrictArgumentParser


def get_args_parser():
    p = StrictArgumentParser(allow_abbrev=False, description="Export scikit-learn's handwritten digits as an image folder.")
    p.add_argument('--output', '-o', default='data/digits', help='output folder (default: %(default)s)')
    p.add_argument('--labels_per_class', '-k', default=0, type=int,
                   help='training images per class; 0 = all that are not in the validation split (default)')
    p.add_argument('--val_fraction', default=0.3, type=float, help='share of each class held out for validation '
                   '(default: %(default)s)')
    p.add_argument('--size', default=32, type=int, help='side of the written images in pixels, upscaled from '
                   '8x8 without smoothing (default: %(default)s)')
    p.add_argument('--seed', default=0, type=int, help='seed of the split and of the K-subset (default: %(default)s)')
    return p


def load_digit_images(size=32):
    """The 1797 digits as uint8 [N, S, S] greyscale (8x8 scans upscaled by pixel repetition to S = 8 *
    (size // 8)) and their int64 targets [N]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("scikit-learn is needed for the digits dataset: pip install scikit-learn") from None
    digits = load_digits()
    images = np.rint(digits.images / 16.0 * 255.0).astype(np.uint8)  # the scans hold values 0..16
    scale = max(1, size // 8)
    return np.kron(images, np.ones((1, scale, scale), np.uint8)), digits.target.astype(np.int64)


def split_indices(targets, val_fraction, labels_per_class, seed):
    """(train indices, val indices): a per-class split fixed by ``seed``; train keeps K per class if K > 0."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        rest = idx[n_val:]
        if labels_per_class > 0:
            if labels_per_class > len(rest):
                raise UserError(f"--labels_per_class {labels_per_class}: class {c} has only {len(rest)} training images")
            rest = rest[:labels_per_class]
        train.extend(rest)
    return np.sort(train), np.sort(val)


def main(args):
    if not 0 < args.val_fraction < 1:
        raise UserError("--val_fraction must be between 0 and 1")
    settings = {'labels_per_class': args.labels_per_class, 'val_fraction': args.val_fraction, 'size': args.size,
                'seed': args.seed}
    meta = os.path.join(args.output, 'export.json')
    if os.path.exists(meta):
        import json
        with open(meta, encoding='utf-8') as f:
            if json.load(f) != settings:
                raise UserError(f"{args.output!r} holds an export made with other settings ({meta}); choose another -o")
    elif os.path.isdir(os.path.join(args.output, 'train')):
        raise UserError(f"{args.output!r} already holds a train/ folder not written by this script; choose another -o")
    fileio.ensure_dir(args.output)
    images, targets = load_digit_images(args.size)
    train, val = split_indices(targets, args.val_fraction, args.labels_per_class, args.seed)
    for split, indices in (('train', train), ('val', val)):
        for i in indices:
            folder = os.path.join(args.output, split, str(targets[i]))
            os.makedirs(folder, exist_ok=True)
            fileio.save_image(os.path.join(folder, f'{i:04d}.png'), images[i])
    fileio.write_json(meta, settings)
    print(f"wrote {len(train)} training and {len(val)} validation digits to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
