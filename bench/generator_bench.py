#!/usr/bin/env python
"""Throughput of the synthetic image generator against a plain re-implementation of the original one.

Both sides produce the same kind of images (same model, same parameters: -pb 0.5 -pc 0.5 as in the README),
use the same number of worker processes on the same cores, and JPEG-encode and write every image:

* ours: the code path of ``util/random_image.py`` (:func:`util.random_image.write_images`: generate,
  encode, atomic write);
* original: :func:`bench.reference.original_image`, the original algorithm as published — per image and channel a
  float64 complex ``fft2`` / ``ifft2`` (scipy.fft, which the original imports; ``--original_fft numpy``
  uses np.fft instead), the filter recomputed in float64, skimage's Otsu on float64 — saved with a plain
  ``Image.save`` from a ``multiprocessing.Pool.imap_unordered`` (chunksize 1), as the original script does.

Usage: ``python bench/generator_bench.py -n 200 -nw 2 -is 256 --repeats 2``. ``run()`` returns a dict
(ours_img_s, original_img_s, ratio, ...) for bench/cpu_bench.py.
"""

import argparse
import functools
import multiprocessing
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import scipy.fft
from PIL import Image

from bench.reference import original_image
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.ph.generator import TRAIN_STREAM, GeneratorConfig, image_name, write_images

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BENCH_PROB_BINARY = 0.5
BENCH_PROB_COLOUR = 0.5


def _original_task(index, cfg, seed, folder, fft_module):
    image = original_image(cfg, seed, index, scipy.fft if fft_module == 'scipy' else np.fft)
    Image.fromarray(image).save(os.path.join(folder, f"v{index:08d}.jpg"))
    return 1


def _cpu_seconds():
    """CPU seconds (user + system) used so far by this process and its waited-for children (pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn):
    """Run ``fn()``; return (wall seconds, CPU seconds of this process and its finished children)."""
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - wall0, _cpu_seconds() - cpu0


def _run_original(cfg, n_images, workers, folder, fft_module, seed=0):
    task = functools.partial(_original_task, cfg=cfg, seed=seed, folder=folder, fft_module=fft_module)
    if workers > 1:
        pool = multiprocessing.Pool(workers)
        for _ in pool.imap_unordered(task, range(n_images)):
            pass
        pool.close()
        pool.join()  # workers exit and are reaped, so their CPU time is counted
    else:
        for i in range(n_images):
            task(i)


def _run_ours(cfg, n_images, workers, folder, seed=0):
    jobs = [(folder, TRAIN_STREAM, i) for i in range(n_images)]
    done = write_images(cfg, seed, jobs, prefix='v', fmt='jpg', num_workers=workers)
    assert done == n_images and os.path.exists(os.path.join(folder, image_name('v', n_images - 1, 'jpg')))


def run(n_images=200, workers=2, img_size=256, repeats=1, original_fft='scipy'):
    """Time both generators (alternating, ``repeats`` rounds, best round kept); return a dict.

    Keys: ours_img_s, original_img_s, ratio (wall-clock throughputs, ours / original);
    ours_img_cpu_s, original_img_cpu_s, cpu_ratio (images per CPU-second of all processes involved, i.e.
    per core; less sensitive to other load on the machine); n_images, workers, img_size, original_fft.
    """
    if n_images < 1 or workers < 1 or repeats < 1:
        raise UserError("n_images, workers and repeats must be >= 1")
    cfg = GeneratorConfig(img_size=img_size, prob_binary=BENCH_PROB_BINARY, prob_colour=BENCH_PROB_COLOUR)
    cfg.validate()
    best = {'ours': [float('inf'), float('inf')], 'original': [float('inf'), float('inf')]}
    root = tempfile.mkdtemp(prefix='generator_bench-')
    try:
        for r in range(repeats):
            for name in ('ours', 'original'):
                folder = os.path.join(root, f"{name}{r}")
                os.makedirs(folder)
                if name == 'ours':
                    wall, cpu = _timed(lambda: _run_ours(cfg, n_images, workers, folder))
                else:
                    wall, cpu = _timed(lambda: _run_original(cfg, n_images, workers, folder, original_fft))
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours, orig = n_images / best['ours'][0], n_images / best['original'][0]
    ours_cpu, orig_cpu = n_images / best['ours'][1], n_images / best['original'][1]
    return dict(
        ours_img_s=ours,
        original_img_s=orig,
        ratio=ours / orig,
        ours_img_cpu_s=ours_cpu,
        original_img_cpu_s=orig_cpu,
        cpu_ratio=ours_cpu / orig_cpu,
        n_images=n_images,
        workers=workers,
        img_size=img_size,
        original_fft=original_fft,
    )


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="Benchmark util/random_image.py against the original algorithm.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument('--n_images', '-n', type=int, default=200, help="images per generator per round")
    p.add_argument('--num_workers', '-nw', type=int, default=2, help="worker processes for both generators")
    p.add_argument('--img_size', '-is', type=int, default=256, help="image side in pixels")
    p.add_argument('--repeats', '-r', type=int, default=2, help="alternating rounds; the best of each is kept")
    p.add_argument(
        '--original_fft',
        choices=('scipy', 'numpy'),
        default='scipy',
        help="FFT module of the original re-implementation (the original imports scipy.fft)",
    )
    return p


def main(args):
    res = run(args.n_images, args.num_workers, args.img_size, args.repeats, args.original_fft)
    print(
        f"{res['n_images']} images of {res['img_size']} px, {res['workers']} worker(s), -pb "
        f"{BENCH_PROB_BINARY} -pc {BENCH_PROB_COLOUR}, jpg, {os.cpu_count()} cores"
    )
    print(f"ours:     {res['ours_img_s']:8.1f} img/s wall  {res['ours_img_cpu_s']:8.1f} img per CPU-second")
    print(
        f"original: {res['original_img_s']:8.1f} img/s wall  {res['original_img_cpu_s']:8.1f} img per CPU-second"
        f"  ({res['original_fft']}.fft, float64)"
    )
    print(f"ratio:    {res['ratio']:8.2f}x wall       {res['cpu_ratio']:8.2f}x per CPU-second")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
