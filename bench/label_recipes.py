"""Label diagnostics (util/ph/diagnostics.py) of several label recipes on one folder of generated images.

Runs ``PHdict.py`` once per recipe (each into its own folder under ``--work``) and prints a markdown table of
what each labels_TYPE.json records under ``diagnostics`` -- of the raw matrix, and, for recipes with
``--label_norm``, of the labels as pretraining regresses them.  Nothing is trained: this says how much of
a label is one number, a feature count or a statistic of the generator, not whether it transfers (that is
bench/transfer.py's job).

    python util/random_image.py -o /tmp/g -n 500 -is 48 -pb 0.5 -pc 0.5 --format png
    nice -n 10 python bench/label_recipes.py /tmp/g --work /tmp/recipes
"""

import json
import os
import subprocess
import sys

from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PI = ['--label_type', 'persistence_image']
AUTO = ['--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto']
# name -> PHdict.py flags (beyond the folder, -o, -it)
RECIPES = {
    'histogram (original default)': ['--label_type', 'histogram'],
    'landscape': ['--label_type', 'landscape'],
    'persistence_image (defaults)': ['--label_type', 'persistence_image'],
    'persistence_image, issue-20 ranges': [
        '--label_type', 'persistence_image', '--sigma', '1', '--max_life', '8', '--max_birth', '12',
        '--min_birth', '-12',
    ],
    'persistence_image, auto ranges + sigma': [
        '--label_type', 'persistence_image', '--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto',
    ],
    'persistence_image, auto, --size_normalise': [
        '--label_type', 'persistence_image', '--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto',
        '--size_normalise',
    ],
    'persistence_image (defaults), --label_norm standard': PI + ['--label_norm', 'standard'],
    'persistence_image (defaults), --label_norm whiten': PI + ['--label_norm', 'whiten'],
    'split_image, auto': ['--label_type', 'split_image'] + AUTO,
    'split_image, auto, --label_norm standard': [
        '--label_type', 'split_image', '--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto',
        '--label_norm', 'standard',
    ],
    'split_image, auto, --label_norm whiten': [
        '--label_type', 'split_image', '--max_life', 'auto', '--max_birth', 'auto', '--sigma', 'auto',
        '--label_norm', 'whiten',
    ],
    '3 filtrations (signed distance + grey sub/superlevel), persistence_image auto, --label_norm standard': [
        '--label_type', 'persistence_image', '--filtration', 'signed_distance', 'none', 'none_inv',
        '--label_norm', 'standard',
    ] + AUTO,
    '3 filtrations, split_image auto, --label_norm whiten': [
        '--label_type', 'split_image', '--filtration', 'signed_distance', 'none', 'none_inv', '--label_norm', 'whiten',
    ] + AUTO,
}  # fmt: skip


def _cell(v):
    return '-' if v is None else f'{v:.2f}'


def run(folder, work, imgtype='png', workers=1, only=None):
    """{recipe: diagnostics dict} (``after_label_norm`` included where the recipe normalises)."""
    out = {}
    for i, (name, flags) in enumerate(RECIPES.items()):
        if only and not any(o in name for o in only):
            continue
        dest = os.path.join(work, f'recipe{i:02d}')
        cmd = [sys.executable, os.path.join(ROOT, 'PHdict.py'), folder, '-o', dest, '-it', imgtype, '-nw', str(workers)]
        res = subprocess.run(cmd + flags, capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError(f"PHdict.py failed for recipe {name!r}: {res.stderr.strip().splitlines()[-1:]}")
        label_type = flags[flags.index('--label_type') + 1]
        with open(os.path.join(dest, f'labels_{label_type}.json'), encoding='utf-8') as f:
            out[name] = json.load(f)['diagnostics']
        print(f"done: {name}", file=sys.stderr, flush=True)
    return out


def table(results):
    rows = [
        '| recipe | participation ratio | first component | counts R² | generator params R² |',
        '|---|---|---|---|---|',
    ]
    for name, d in results.items():
        d = d.get('after_label_norm') or d
        rows.append(
            f"| {name} | {_cell(d['participation_ratio'])} | {_cell(d['first_component_share'])} | "
            f"{_cell(d['counts_r2'])} | {_cell(d.get('generator_params_r2'))} |"
        )
    return '\n'.join(rows)


def main(args):
    results = run(args.folder, args.work, args.imgtype, args.num_workers, args.only)
    print(table(results))
    return 0


if __name__ == '__main__':
    p = StrictArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0])
    p.add_argument('folder', help='generated images (util/random_image.py), so generator_params_r2 is known')
    p.add_argument('--work', required=True, help='folder for the PHdict.py outputs, one sub-folder per recipe')
    p.add_argument('--imgtype', '-it', default='png', help='extension of the images (default: %(default)s)')
    p.add_argument('--num_workers', '-nw', type=int, default=1, help='PHdict.py workers (default: %(default)s)')
    p.add_argument('--only', nargs='+', help='run only the recipes whose name contains one of these')
    run_cli(main, p.parse_args())
