#!/usr/bin/env python
"""Export scikit-learn's handwritten digits as an image folder for finetuning.py (see util/io/digits.py).

python scripts/export_digits.py -o data/digits --labels_per_class 10
"""

from util.cli.strict_args import StrictArgumentParser
from util.errors import run_cli
from util.io.digits import export_digits


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False, description="Export scikit-learn's handwritten digits as an image folder."
    )
    p.add_argument('--output', '-o', default='data/digits', help='output folder (default: %(default)s)')
    p.add_argument(
        '--labels_per_class',
        '-k',
        default=0,
        type=int,
        help='training images per class; 0 = all that are not in the validation split (default)',
    )
    p.add_argument(
        '--val_fraction',
        default=0.3,
        type=float,
        help='share of each class held out for validation (default: %(default)s)',
    )
    p.add_argument(
        '--size',
        default=32,
        type=int,
        help='side of the written images in pixels, upscaled from 8x8 without smoothing (default: %(default)s)',
    )
    p.add_argument('--seed', default=0, type=int, help='seed of the split and of the K-subset (default: %(default)s)')
    return p


def main(args):
    n_train, n_val = export_digits(args.output, args.labels_per_class, args.val_fraction, args.size, args.seed)
    print(f"wrote {n_train} training and {n_val} validation digits to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
