#!/usr/bin/env python
"""One-page summary of a quickstart output folder (the page itself: util/plot/summary.py).

python scripts/summary.py OUT -o OUT/summary.png
"""

from util.cli.strict_args import StrictArgumentParser
from util.errors import run_cli
from util.plot.summary import write_summary


def get_args_parser():
    p = StrictArgumentParser(allow_abbrev=False, description='Summarise a pipeline output folder on one PNG page.')
    p.add_argument('root', help='the folder scripts/quickstart.sh wrote (OUT)')
    p.add_argument('--output', '-o', default=None, help='PNG to write (default: ROOT/summary.png)')
    return p


def main(args):
    out, numbers = write_summary(args.root, args.output)
    for key in ('finetune_pretrained', 'finetune_scratch'):
        if numbers.get(key):
            print(f"{key}: val top-1 {numbers[key].get('val_acc1', float('nan')):.2f}%")
    print(f"summary: {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
