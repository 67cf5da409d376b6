"""Download a public image dataset and lay it out as class folders for ``finetuning.py``.

    python util/ImageDatasetsDownloader.py --dataset CIFAR100

writes ``data/CIFAR100/train/<class>/00000.png ...`` and ``data/CIFAR100/val/<class>/...`` (the official
test split), ready for ``python finetuning.py -t data/CIFAR100/train -val data/CIFAR100/val ...``.

    python util/ImageDatasetsDownloader.py --dataset pathmnist --size 64

writes MedMNIST's PathMNIST at 64 pixels to ``data/pathmnist_64/{train,val,test}/<class>/`` (its official
splits; ``data/pathmnist/`` at the default 28 pixels).

Archives are kept in ``--raw_file_path`` and checked against their published md5 before they are
opened; see :mod:`util.io.download` for the details (resume, safe unpacking, restricted unpickling,
the deterministic train/val split of the datasets that have no official one).
"""

import os

from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io.download import (
    DATASET_NAMES,
    LOCAL_ONLY,
    dataset_key,
    download_dataset,
    load_sources_file,
    setup_local_dataset,
)


def get_args_parser():
    parser = StrictArgumentParser(
        allow_abbrev=False,
        description='Download an image dataset, verify it against its published checksum and write '
        '<data_file_path>/<dataset>/{train,val}/<class>/ image folders (val = official test split; MedMNIST sets: '
        'their official train/val/test splits).',
    )
    parser.add_argument(
        '--dataset',
        '-d',
        required=True,
        choices=DATASET_NAMES + LOCAL_ONLY,
        metavar='NAME',
        help='dataset to download (required): ' + ', '.join(DATASET_NAMES) + '; animal '
        '(the original\'s non-rigid shapes) is not downloadable any more: put its unpacked '
        'non_rigid_shape_A/B class folders in --raw_file_path and it is split into '
        'train/ and val/. omniglot_small: Omniglot\'s two small background sets (8 alphabets, 242 characters '
        'as classes, 105 x 105 PNGs copied as published), split by drawer (see --validation_ratio). '
        'The *mnist names after fashionMNIST are MedMNIST\'s 2-D biomedical sets, '
        'written with their official train/val/test splits (chestmnist, multi-label, is refused)',
    )
    parser.add_argument(
        '--size',
        default=None,
        type=int,
        choices=(28, 64, 128, 224),
        help='MedMNIST image side in pixels; 64/128/224 go to <dataset>_<size>/ (default: 28)',
    )
    parser.add_argument(
        '--raw_file_path',
        default='',
        metavar='DIR',
        help='folder where the downloaded archives are kept (and unpacked); an archive you '
        'place there yourself is used if its checksum matches; '
        'default: <data_file_path>/raw/<dataset>',
    )
    parser.add_argument(
        '--data_file_path',
        '-o',
        default='data',
        metavar='DIR',
        help='output root: images go to <data_file_path>/<dataset>/{train,val}/<class>/ (default: data)',
    )
    parser.add_argument(
        '--validation_ratio',
        '-r',
        default=0.2,
        type=float,
        metavar='R',
        help='fraction of each class put in val/ for the datasets without an official test '
        'split (caltech101, caltech256, omniglot); deterministic, by file-name hash. omniglot_small is split '
        'by drawer instead, so no writer is on both sides: val/ gets the last round(20 R) of its 20 drawers '
        '(drawers 17-20 at 0.2), train/ the others (default: 0.2)',
    )
    parser.add_argument(
        '--sources',
        default=None,
        metavar='JSON',
        help='advanced: JSON file {"<dataset>": [[url or [mirror urls], filename, md5 or '
        'sha256], ...]} replacing the built-in URL/checksum table (mirrors, offline '
        'copies, tests); a checksum is still required for every file '
        '(default: built-in)',
    )
    parser.add_argument('--no_progress', action='store_true', help='do not show progress bars (default: show them)')
    return parser


def main(args):
    sources = None
    key = dataset_key(args.dataset, args.size)
    if args.sources:
        sources = load_sources_file(args.sources)
        if key not in sources:
            raise UserError(f"sources file {args.sources!r} (--sources) has no entry for {key}")
    data_dir = os.path.expanduser(args.data_file_path)
    raw_dir = os.path.expanduser(args.raw_file_path) if args.raw_file_path else os.path.join(data_dir, 'raw', key)
    if args.dataset in LOCAL_ONLY:
        result = setup_local_dataset(
            args.dataset, raw_dir, data_dir, val_ratio=args.validation_ratio, progress=not args.no_progress
        )
    else:
        result = download_dataset(
            args.dataset,
            raw_dir,
            data_dir,
            sources=sources,
            val_ratio=args.validation_ratio,
            progress=not args.no_progress,
            size=args.size,
        )
    for split in [s for s in result if s != 'path']:
        counts = result[split]
        if counts is None:
            print(f"{os.path.join(result['path'], split)}: already done")
        else:
            print(f"{os.path.join(result['path'], split)}: {sum(counts.values())} images in {len(counts)} classes")
    return 0


if __name__ == '__main__':
    run_cli(main, get_args_parser().parse_args())
