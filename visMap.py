"""Draw the first-layer convolution filters of a weights file as a PNG grid.

    python visMap.py -pw result/XX/resnet50_epoch90.pth -o conv1_filters.png
    python visMap.py -pw imagenet -u resnet18

``-pw`` takes any weights we read: our weights files and checkpoints, plain torchvision state dicts, MoCo
checkpoints (the query encoder), or ``imagenet`` (torchvision's weights of ``-u``, default resnet50).
``-u`` is optional for a file: the architecture it tells (its recorded arguments or its tensor shapes) is
printed; given, the file must fit it.  A folder given to -pw stands for its newest .pth file.

``-o`` is never the weights, never a file visMap.py did not write (its PNGs say so in their metadata), and an
earlier filter grid of its own is replaced only with ``--overwrite``.
"""

import argparse
import os
import sys

from util.cli.strict_args import VISMAP_FLAGS, StrictArgumentParser
from util.errors import UserError, run_cli


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        refuse=VISMAP_FLAGS,
        description=__doc__.split('\n\n')[0],
        epilog='examples:\n  python visMap.py -pw weights/XX/resnet50_epoch90.pth\n'
        '  python visMap.py -pw imagenet -u resnet18 -o imagenet_conv1.png\n',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        '--path2weight',
        '-pw',
        required=True,
        help="weights file, checkpoint, MoCo checkpoint, a folder (its newest .pth), or 'imagenet'",
    )
    p.add_argument(
        '--usenet',
        '-u',
        default=None,
        help="architecture, torchvision's or timm:NAME (default: what the file tells; resnet50 for imagenet)",
    )
    p.add_argument('--output', '-o', default='conv1_filters.png', help='PNG file to write (default: %(default)s)')
    p.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an existing -o that is an earlier filter grid of visMap.py (never the weights or any '
        'other file) (default: off)',
    )
    p.add_argument(
        '--max_filters',
        default=64,
        type=int,
        help='draw at most this many filters, the first ones (default: %(default)s)',
    )
    return p


MADE_BY = 'visMap.py'  # the PNG text entry 'Software' of the filter grids it writes


def written_by_us(path):
    """Whether ``path`` is a PNG whose metadata says visMap.py wrote it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == 'PNG' and im.info.get('Software') == MADE_BY
    except (OSError, ValueError, SyntaxError):
        return False


def check_output(args):
    """Refuse an -o that is a folder, the weights, a file visMap.py did not write, or (without --overwrite) an
    earlier filter grid."""
    out = args.output
    if os.path.isdir(out):
        raise UserError(f"-o {out!r} is a folder; give the PNG file to write")
    if not os.path.lexists(out):
        return
    if os.path.exists(args.path2weight) and os.path.realpath(out) == os.path.realpath(args.path2weight):
        raise UserError(f"-o {out!r} is the -pw weights file; choose another output file (a .png)")
    if not written_by_us(out):
        raise UserError(
            f"-o {out!r} exists and is not a filter grid written by visMap.py; choose another output file "
            "(visMap.py never replaces a file it did not write)"
        )
    if not args.overwrite:
        raise UserError(f"-o {out!r} holds an earlier filter grid; give --overwrite to replace it, or another -o")


def main(args):
    from util.cli.compat import newest_weights

    if args.max_filters < 1:
        raise UserError(f"--max_filters must be at least 1 (got {args.max_filters})")
    if os.path.isdir(args.path2weight):
        folder, args.path2weight = args.path2weight, newest_weights(args.path2weight)
        print(f"-pw {folder}: using its newest weights file {args.path2weight}", file=sys.stderr, flush=True)
    check_output(args)
    from models.filters import first_conv_filters
    from util.plot.plotting import filter_grid

    weight, info = first_conv_filters(args.path2weight, args.usenet)
    arch = f"{info['arch']} ({info['how']})" if info['arch'] else 'an architecture it does not tell'
    print(f"{info['source']}: {arch}; layer {info['layer']}, filters {tuple(weight.shape)}", flush=True)
    filter_grid(weight, args.output, max_filters=args.max_filters, metadata={'Software': MADE_BY})
    print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == '__main__':
    run_cli(main, get_args_parser().parse_args())
