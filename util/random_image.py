#!/usr/bin/env python
"""Write a folder of synthetic training images (the generator is :mod:`util.ph.generator`).

python util/random_image.py -pb 0.5 -pc 0.5 -o random -n 50000
"""

import argparse
import os
from dataclasses import asdict

from tqdm import tqdm

from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io.fileio import ensure_dir, write_json
from util.ph.generator import (
    ARGS_FILE,
    FORMATS,
    PREVIEW_FILE,
    TRAIN_STREAM,
    VAL_STREAM,
    GeneratorConfig,
    check_settings,
    image_name,
    make_preview,
    remove_stale_temps,
    split_folders,
    write_images,
)


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="Generate synthetic training images (FFT-filtered power-law noise, optionally binarised). "
        "Image i depends only on (--seed, split, i); re-running skips finished files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        '--output',
        '-o',
        default='random/train',
        type=str,
        help="output folder for the images (with -nv > 0, see --n_samples_val)",
    )
    p.add_argument('--prefix', '-pf', default='v', type=str, help="file name prefix: {prefix}{index:08d}.{format}")
    p.add_argument(
        '--alpha_range',
        '-ar',
        default=[0.01, 1.0],
        type=float,
        nargs=2,
        metavar=('LOW', 'HIGH'),
        help="range of alpha: frequencies run over linspace(1, e^alpha * img_size)",
    )
    p.add_argument(
        '--beta_range',
        '-br',
        default=[0.5, 2.0],
        type=float,
        nargs=2,
        metavar=('LOW', 'HIGH'),
        help="range of beta: the spectrum's amplitude decays like (frequency^2)^-beta (see --spectrum)",
    )
    p.add_argument(
        '--spectrum',
        default='original',
        metavar='{original,isotropic}',
        help="'original': the original's formula, which weights the unshifted FFT grid, so frequencies whose "
        "components have opposite signs are damped (anisotropic images, a diagonal grain); 'isotropic': centred "
        "(signed) frequencies, amplitude (1 + step |k|)^(-2 beta), so the power spectrum depends on |k| only, and "
        "any beta range is usable (e.g. -br 0.25 1.75: amplitude slopes 0.5 to 3.5)",
    )
    p.add_argument('--n_samples', '-n', default=200000, type=int, help="number of (training) images")
    p.add_argument(
        '--n_samples_val',
        '-nv',
        default=0,
        type=int,
        help="number of validation images from a disjoint random stream; when > 0, images go to "
        "OUTPUT and its sibling 'val' if OUTPUT ends in 'train', else to OUTPUT/train and OUTPUT/val",
    )
    p.add_argument(
        '--prob_binary',
        '-pb',
        default=1.0,
        type=float,
        help="probability that a channel is binarised at its Otsu threshold",
    )
    p.add_argument(
        '--prob_colour',
        '-pc',
        default=1.0,
        type=float,
        help="probability that an image is colour (3 channels) rather than greyscale",
    )
    p.add_argument('--img_size', '-is', default=256, type=int, help="image side in pixels (>= 8)")
    p.add_argument(
        '--num_workers', '-nw', default=8, type=int, help="worker processes; 0 or 1 generates in this process"
    )
    p.add_argument('--seed', default=0, type=int, help="random seed (non-negative); same seed, same images")
    p.add_argument('--format', default='jpg', choices=FORMATS, help="image file format")
    p.add_argument('--overwrite', action='store_true', help="regenerate images that already exist")
    p.add_argument(
        '--preview',
        default=64,
        type=int,
        help=f"write a contact sheet {PREVIEW_FILE} (hidden file) of the first N images next to them; 0 disables",
    )
    from util.cli.compat import add_aliases

    add_aliases(p, {'-j': 'num_workers'})  # the original's name (docs/compat.md)
    return p


def _validate_args(args):
    cfg = GeneratorConfig(
        img_size=args.img_size,
        alpha_range=tuple(args.alpha_range),
        beta_range=tuple(args.beta_range),
        prob_binary=args.prob_binary,
        prob_colour=args.prob_colour,
        spectrum=args.spectrum,
    )
    cfg.validate()
    for flag, v in (
        ('--n_samples/-n', args.n_samples),
        ('--n_samples_val/-nv', args.n_samples_val),
        ('--num_workers/-nw', args.num_workers),
        ('--seed', args.seed),
        ('--preview', args.preview),
    ):
        if v < 0:
            raise UserError(f"{flag} must be >= 0, got {v}")
    if not args.prefix or os.sep in args.prefix or (os.altsep and os.altsep in args.prefix):
        raise UserError(f"--prefix/-pf must be a non-empty file name prefix without '/', got {args.prefix!r}")
    return cfg


def main(args):
    cfg = _validate_args(args)
    splits = split_folders(args.output, args.n_samples_val)
    counts = {TRAIN_STREAM: args.n_samples, VAL_STREAM: args.n_samples_val}
    jobs, skipped, plan = [], 0, []
    for folder, stream, split in splits:
        ensure_dir(folder)
        settings = dict(
            seed=args.seed,
            stream=stream,
            split=split,
            n_images=counts[stream],
            prefix=args.prefix,
            format=args.format,
            **asdict(cfg),
        )
        check_settings(folder, settings, args.overwrite)
        remove_stale_temps(folder, args.prefix)
        write_json(os.path.join(folder, ARGS_FILE), dict(vars(args), **settings))
        existing = set() if args.overwrite else set(os.listdir(folder))
        names = [image_name(args.prefix, i, args.format) for i in range(counts[stream])]
        todo = [(folder, stream, i) for i, name in enumerate(names) if name not in existing]
        skipped += len(names) - len(todo)
        jobs += todo
        plan.append((folder, names))
    total = sum(counts[s] for _, s, _ in splits)
    with tqdm(total=total, initial=skipped, desc='images', unit='img', dynamic_ncols=True) as bar:
        written = write_images(cfg, args.seed, jobs, args.prefix, args.format, args.num_workers, bar.update)
    previews = []
    for folder, names in plan:
        if args.preview > 0 and names:
            previews.append(os.path.join(folder, PREVIEW_FILE))
            make_preview(folder, names[: args.preview], previews[-1])
    where = ' and '.join(folder for folder, _ in plan)
    print(
        f"wrote {written} images, skipped {skipped} already present, in {where}"
        + (f"; preview: {', '.join(previews)}" if previews else '')
    )
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
