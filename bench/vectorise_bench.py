"""Throughput of the label vectorisations (util/ph/vectorise.py) against persim's PersistenceImager.

Diagrams are realistic: cripser's H0/H1 persistence of the signed distance transform of thresholded 64x64
power-law (FFT) noise images, a few hundred pairs each -- the kind of input the pretraining labels see.
Each label type vectorises the whole batch with ``transform``; persim's ``PersistenceImager.transform``
(one imager per homology dimension, on the same pixel grid, kernel and weight) runs on a subset and its
rate is extrapolated.  The persistence images of both are compared on that subset.  Every timing is the
best of ``--repeats`` runs after a warm-up (imports excluded), so a busy machine disturbs it less.

    python bench/vectorise_bench.py                 # 1000 diagrams, persim on 100 of them
    python bench/vectorise_bench.py -n 200 --json out.json

``run(...)`` returns the numbers as a dict (for bench/cpu_bench.py).
"""

import time

import numpy as np

from bench.common import add_json_flag, save_result
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.ph.vectorise import LABEL_TYPES, make_vectoriser


def noise_diagrams(n, size=64, seed=0):
    """``n`` cripser diagrams ``(k, 9)`` of signed distance transforms of binarised power-law noise."""
    import cripser
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f))
    radius[0, 0] = 1.0
    out = []
    for _ in range(n):
        beta = rng.uniform(0.5, 1.25)
        img = np.fft.ifft2(np.fft.fft2(rng.random((size, size))) / radius**beta).real
        fg = img >= np.median(img)
        signed = (distance_transform_edt(fg) - distance_transform_edt(~fg)) * (256.0 / size)
        out.append(cripser.computePH(signed, maxdim=1))
    return out


def random_diagrams(sizes, seed=0):
    """Diagrams ``(k, 3)`` of uniformly random float pairs (no repeated values), ``k`` from ``sizes``."""
    rng = np.random.default_rng(seed)
    out = []
    for k in sizes:
        birth = rng.uniform(-40.0, 20.0, k)
        out.append(np.stack([rng.integers(0, 2, k), birth, birth + rng.exponential(4.0, k)], axis=1))
    return out


def _best_time(fn, repeats):
    best = float('inf')
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def _persim_images(diagrams, vec):
    """Persistence images of persim for ``diagrams`` on the grid of ``vec`` -> list of [img_H0, img_H1]."""
    from persim import PersistenceImager

    pixel = (vec.max_birth - vec.min_birth) / vec.grids[0][0]
    imagers = [
        PersistenceImager(
            birth_range=(vec.min_birth, vec.max_birth),
            pers_range=(0.0, vec.max_life),
            pixel_size=pixel,
            weight_params={'n': vec.power},
            kernel_params={'sigma': [[vec.sigma, 0.0], [0.0, vec.sigma]]},
        )
        for _ in (0, 1)
    ]
    for h, imager in enumerate(imagers):
        if tuple(imager.resolution) != vec.grids[h]:
            raise UserError(
                f"persim cannot reproduce the pixel grid {vec.grids[h]} (its pixels are square); "
                "choose --dim so that each half factors into square pixels, e.g. 256"
            )
    out = []
    for d in diagrams:
        d = d[d[:, 2] < 1e300]
        images = []
        for h, imager in enumerate(imagers):
            p = d[d[:, 0] == h, 1:3].copy()
            p[:, 1] = np.clip(p[:, 1] - p[:, 0], 0.0, vec.max_life)
            images.append(imager.transform(p, skew=False) if len(p) else np.zeros(vec.grids[h]))
        out.append(images)
    return out


def run(n_diagrams=1000, persim_diagrams=100, dim=256, repeats=3, seed=0, verbose=False):
    """Time every label type on ``n_diagrams`` diagrams and persim on ``persim_diagrams`` of them.

    Returns ``{'n_diagrams', 'mean_pairs', 'dim', 'ph_diagrams_per_s', 'label_types': {type: diagrams/s},
    'persistence_image_random_pairs', 'persim_diagrams_per_s', 'persim_speedup',
    'persim_speedup_random_pairs', 'persim_max_rel_diff'}`` (rates in diagrams per second).
    """
    say = print if verbose else (lambda *a, **k: None)
    vecs = {t: make_vectoriser(t, dim) for t in LABEL_TYPES}
    pi = vecs['persistence_image']
    width = pi.max_birth - pi.min_birth
    if any(nb and abs(width / nb - pi.max_life / nl) > 1e-9 * width for nb, nl in pi.grids):
        raise UserError(
            f"--dim {dim} gives non-square pixels {pi.grids}, which persim cannot reproduce; "
            "choose --dim so that each half factors into square pixels, e.g. 256"
        )
    import cripser  # noqa: F401  (imports are slow; keep them out of the timings)
    import persim  # noqa: F401

    t = time.perf_counter()
    diagrams = noise_diagrams(n_diagrams, seed=seed)
    ph_rate = n_diagrams / (time.perf_counter() - t)
    finite = [int(np.sum(d[:, 2] < 1e300)) for d in diagrams]
    say(
        f"{n_diagrams} diagrams from 64x64 power-law noise, {np.mean(finite):.0f} finite pairs on average "
        f"(cripser: {ph_rate:.0f} diagrams/s)"
    )
    result = dict(
        n_diagrams=n_diagrams, mean_pairs=float(np.mean(finite)), dim=dim, ph_diagrams_per_s=ph_rate, label_types={}
    )
    for name, vec in vecs.items():
        vec.transform(diagrams[:10])  # warm-up
        seconds, _ = _best_time(lambda: vec.transform(diagrams), repeats)
        result['label_types'][name] = n_diagrams / seconds
        say(f"  {name:18s} {n_diagrams / seconds:12.0f} diagrams/s")

    # Image filtration values repeat (the persistence image exploits it); random floats are its worst case.
    rand = random_diagrams([len(d) for d in diagrams], seed=seed)
    seconds, _ = _best_time(lambda: pi.transform(rand), repeats)
    result['persistence_image_random_pairs'] = n_diagrams / seconds
    say(
        f"  {'persistence_image':18s} {n_diagrams / seconds:12.0f} diagrams/s  on random float pairs "
        "(no repeated values)"
    )

    subset = diagrams[: min(persim_diagrams, n_diagrams)]
    _persim_images(subset[:1], pi)  # warm-up
    seconds, persim_imgs = _best_time(lambda: _persim_images(subset, pi), repeats)
    persim_rate = len(subset) / seconds
    ours = pi.images(subset)
    rel = 0.0
    for n, pair in enumerate(persim_imgs):
        for h in (0, 1):
            scale = max(pair[h].max(), 1e-300)
            rel = max(rel, float(np.max(np.abs(ours[h][n] - pair[h])) / scale))
    result.update(
        persim_diagrams_per_s=persim_rate,
        persim_max_rel_diff=rel,
        persim_speedup=result['label_types']['persistence_image'] / persim_rate,
        persim_speedup_random_pairs=result['persistence_image_random_pairs'] / persim_rate,
    )
    say(f"  {'persim (PI)':18s} {persim_rate:12.0f} diagrams/s  (on {len(subset)} diagrams)")
    say(
        f"persistence_image / persim speed-up: {result['persim_speedup']:.0f}x "
        f"({result['persim_speedup_random_pairs']:.0f}x on random float pairs; "
        f"max |difference| / image max: {rel:.1e})"
    )
    return result


def get_args_parser():
    p = StrictArgumentParser(allow_abbrev=False, description="Benchmark the label vectorisations against persim.")
    p.add_argument('--n_diagrams', '-n', type=int, default=1000, help="diagrams to vectorise (default: %(default)s)")
    p.add_argument(
        '--persim_diagrams',
        type=int,
        default=100,
        help="how many of them persim transforms (it is slow) (default: %(default)s)",
    )
    p.add_argument(
        '--dim',
        type=int,
        default=256,
        help="label dimension; each half must make square pixels for persim (default: %(default)s)",
    )
    p.add_argument('--repeats', type=int, default=3, help="timing repeats, best kept (default: %(default)s)")
    p.add_argument('--seed', type=int, default=0, help="random seed of the noise images (default: %(default)s)")
    add_json_flag(p, "also write the results to this JSON file (default: none)")
    return p


def main(args):
    if args.n_diagrams < 1 or args.persim_diagrams < 1 or args.repeats < 1:
        raise UserError("--n_diagrams, --persim_diagrams and --repeats must be at least 1")
    result = run(args.n_diagrams, args.persim_diagrams, args.dim, args.repeats, args.seed, verbose=True)
    save_result(args, result)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
