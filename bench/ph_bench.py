"""Throughput of PHdict's per-image pipeline against the cripser-only floor and the original pipeline.

On the same generated 256x256 JPEGs (util/random_image.py's model with -pb 0.5 -pc 0.5 when available,
else power-law FFT noise), with the same number of worker processes, it times

* ``floor``: ``cripser.computePH`` alone (``engine='cripser'``) on filtrations computed beforehand (held by
  the workers, so no transfer is timed): the most any pipeline around cripser can reach;
* ``phdict``: PHdict.py's code path -- :func:`util.ph.cubical.iter_diagrams` (read JPEG + grey + Otsu + signed
  distance + PH with the default engine, union-find, in the workers) and the parent writing each diagram
  atomically with ``save_npy``;
* ``original``: a plain re-implementation of the original script's per-image pipeline (PIL grey as float64,
  ``skimage.filters.threshold_otsu``, two scipy EDTs, ``cripser.computePH`` with default arguments,
  ``np.save``), in a ``Pool.imap_unordered`` as the original ran it;

and reports images/s and the ratios to the floor (target: phdict >= 0.75 x floor).  The three run
interleaved ``repeats`` times and the best rate of each is kept (the machine may be shared).  A per-stage
profile of one process (decode, Otsu, EDT, PH, transfer, save; best-of timings, robust to other load)
is included, with the ratios it predicts.

    python bench/ph_bench.py                      # 200 images, 2 workers
    python bench/ph_bench.py -n 400 -w 2 --repeats 3 --json out.json

``run(...)`` returns the numbers as a dict (for bench/cpu_bench.py).
"""

import multiprocessing
import os
import resource
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from bench.common import add_json_flag, save_result
from bench.reference import original_ph_of_file
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io.fileio import load_image, save_npy
from util.ph import cubical as ph

# ----------------------------------------------------------------------------------------------------
# images


def _fft_noise(rng, size):
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f))
    radius[0, 0] = 1.0
    img = np.fft.ifft2(np.fft.fft2(rng.random((size, size))) / radius ** rng.uniform(0.5, 1.5)).real
    return ((img - img.min()) / np.ptp(img) * 255).astype(np.uint8)


def make_images(folder, n, size=256, seed=0):
    """Write ``n`` JPEGs ``folder/b#####.jpg`` of ``size`` px; return their paths and the generator used."""
    try:
        from util.ph.generator import GeneratorConfig, generate_image

        cfg = GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.5)
        make, source = (lambda i: generate_image(cfg, seed, i)), 'util.random_image (-pb 0.5 -pc 0.5)'
    except ImportError:
        rng = np.random.default_rng(seed)
        make, source = (lambda i: _fft_noise(rng, size)), 'FFT power-law noise'
    paths = []
    for i in range(n):
        path = os.path.join(folder, f'b{i:05d}.jpg')
        Image.fromarray(make(i)).save(path, quality=95)
        paths.append(path)
    return paths, source


# ----------------------------------------------------------------------------------------------------
# the three pipelines

_worker_filtrations = None  # set in each floor worker by _init_floor (inherited through fork)


def _init_floor(filtrations):
    global _worker_filtrations
    _worker_filtrations = filtrations


def _floor_task(i):
    return ph.diagram_of_filtration(_worker_filtrations[i], engine='cripser').shape[0]


def _noop(i):
    return i


def time_floor(filtrations, workers):
    """Seconds for ``workers`` processes to run ``computePH`` on all ``filtrations`` (pool started before)."""
    ctx = multiprocessing.get_context('fork')
    chunk = max(1, min(32, len(filtrations) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_floor, initargs=(filtrations,)) as pool:
        pool.map(_noop, range(workers * 4))  # workers up and running
        t = time.perf_counter()
        pool.map(_floor_task, range(len(filtrations)), chunksize=chunk)
        return time.perf_counter() - t


def time_phdict(paths, out_dir, workers):
    """Seconds for PHdict's path: iter_diagrams over the images, the parent saving every diagram atomically."""
    jobs = [(p, 'image', ph.DEFAULT_FILTRATION) for p in paths]
    t = time.perf_counter()
    for j, dgm, err in ph.iter_diagrams(jobs, workers=workers):
        if err is not None:
            raise UserError(err)
        save_npy(os.path.join(out_dir, os.path.splitext(os.path.basename(paths[j]))[0] + '.npy'), dgm)
    return time.perf_counter() - t


def _original_task(job):
    """The original per-image pipeline (bench/reference.py), saving the diagram as the original did."""
    path, out_dir = job
    np.save(os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0]), original_ph_of_file(path))


def time_original(paths, out_dir, workers):
    t = time.perf_counter()
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        for _ in pool.imap_unordered(_original_task, [(p, out_dir) for p in paths]):
            pass
    return time.perf_counter() - t


def _pairs(dgm):
    """Sorted (dim, birth, death) rows: what the union-find engine and cripser agree on exactly."""
    d = dgm[:, :3]
    return d[np.lexsort((d[:, 2], d[:, 1], d[:, 0]))]


def _min_ms(fn, repeats):
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def profile_stages(paths, out_dir, repeats=3):
    """Per-stage cost in one process: mean over ``paths`` of the best of ``repeats`` timings, in ms.

    Stages of PHdict's path (``decode``, ``otsu``, ``signed_distance`` with the active EDT route and
    ``signed_distance_scipy`` with ``util.ph.cubical.NUMBA_EDT`` off, ``computePH``, ``transfer`` = pickling the
    diagram to the parent, ``save_npy``) and of the original's (``otsu_skimage_float``,
    ``edt_scipy_twice``, ``np_save``).  Best-of timings are robust to other load on the machine; the
    ``model_*`` ratios are computePH / (sum of a pipeline's stages).
    """
    import pickle

    from scipy.ndimage import distance_transform_edt
    from skimage.filters import threshold_otsu

    stages = {}

    def add(name, ms):
        stages[name] = stages.get(name, 0.0) + ms / len(paths)

    for p in paths:
        im = load_image(p, 'L')
        grey, counts = np.asarray(im), im.histogram()
        add('decode', _min_ms(lambda: np.asarray(load_image(p, 'L')), repeats))
        add('otsu', _min_ms(lambda: ph.otsu_mask(grey, counts), repeats))
        g = grey.astype(np.float64)
        add('otsu_skimage_float', _min_ms(lambda: g.min() == g.max() or g >= threshold_otsu(g), repeats))
        bw = ph.otsu_mask(grey, counts)
        if bw is None:
            filt = np.zeros(grey.shape)
        else:
            add('signed_distance', _min_ms(lambda: ph._signed_distance(bw), repeats))
            saved, ph.NUMBA_EDT = ph.NUMBA_EDT, False
            try:
                add('signed_distance_scipy', _min_ms(lambda: ph._signed_distance(bw), repeats))
            finally:
                ph.NUMBA_EDT = saved
            add('edt_scipy_twice', _min_ms(lambda: distance_transform_edt(bw) - distance_transform_edt(~bw), repeats))
            filt = ph._signed_distance(bw)
        add('computePH', _min_ms(lambda: ph.diagram_of_filtration(filt, engine='cripser'), repeats))
        add('unionfind', _min_ms(lambda: ph.diagram_of_filtration(filt, engine='unionfind'), repeats))
        dgm = ph.diagram_of_filtration(filt)
        add('transfer', _min_ms(lambda: pickle.loads(pickle.dumps(dgm)), repeats))
        add('save_npy', _min_ms(lambda: save_npy(os.path.join(out_dir, 'profile.npy'), dgm), repeats))
        add('np_save', _min_ms(lambda: np.save(os.path.join(out_dir, 'profile-plain.npy'), dgm), repeats))
    out = {k: round(v, 3) for k, v in stages.items()}
    common = stages['decode'] + stages['computePH']
    ours = stages['decode'] + stages['unionfind'] + stages['otsu'] + stages['transfer'] + stages['save_npy']
    cost = dict(
        phdict=ours + stages.get('signed_distance', 0.0),
        phdict_scipy=ours + stages.get('signed_distance_scipy', 0.0),
        original=common + stages['otsu_skimage_float'] + stages.get('edt_scipy_twice', 0.0) + stages['np_save'],
    )
    for k, v in cost.items():
        out[f'model_{k}_vs_floor'] = round(stages['computePH'] / v, 3)
    return out


def _cpu_seconds():
    """CPU time (user + system) of this process and of its finished, waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn, *args):
    """``(wall seconds, CPU seconds)`` of ``fn(*args)`` (pools are closed inside, so workers are counted)."""
    c = _cpu_seconds()
    t = time.perf_counter()
    inner = fn(*args)
    wall = time.perf_counter() - t
    return (inner if inner is not None else wall), _cpu_seconds() - c


# ----------------------------------------------------------------------------------------------------


def run(n_images=200, workers=2, size=256, repeats=2, seed=0, profile_images=50, verbose=False):
    """Benchmark on ``n_images`` generated JPEGs of ``size`` px with ``workers`` processes.

    Returns ``{'n_images', 'size', 'workers', 'images', 'edt_backend', 'mean_pairs', 'profile_ms',
    'phdict_vs_original'}`` plus, for each pipeline ``P`` in floor, phdict, original (and phdict_scipy when the
    numba EDT is on, ``util.ph.cubical.NUMBA_EDT``): ``P_img_s`` (wall-clock images/s), ``P_cpu_ms_per_img`` (CPU time
    of parent + workers per image) and, but for the floor, ``P_vs_floor`` (ratio of wall rates) and
    ``P_vs_floor_cpu`` (ratio by CPU time, robust on a shared machine).  Best of ``repeats`` each.
    """
    say = print if verbose else (lambda *a, **k: None)
    tmp = tempfile.mkdtemp(prefix='ph_bench-')
    try:
        img_dir = os.path.join(tmp, 'img')
        os.makedirs(img_dir)
        paths, source = make_images(img_dir, n_images, size, seed)
        say(
            f"{n_images} JPEGs {size}x{size} from {source}; {workers} workers; "
            f"EDT: {'numba (util.ph.unionfind)' if ph.NUMBA_EDT else 'scipy'}"
        )
        filtrations = [ph.compute_filtration(load_image(p, 'L')) for p in paths]
        pairs = float(np.mean([ph.diagram_of_filtration(f).shape[0] for f in filtrations[:20]]))
        names = ['floor', 'phdict', 'original'] + (['phdict_scipy'] if ph.NUMBA_EDT else [])
        best = {k: float('inf') for k in names}
        best_cpu = {k: float('inf') for k in names}
        for r in range(repeats):
            for name in names:
                out = os.path.join(tmp, f'out-{name}-{r}')
                os.makedirs(out)
                if name == 'floor':
                    dt, cpu = _measure(time_floor, filtrations, workers)
                elif name == 'phdict':
                    dt, cpu = _measure(time_phdict, paths, out, workers)
                elif name == 'phdict_scipy':  # the same path with scipy's EDT (util.ph.cubical.NUMBA_EDT off)
                    saved, ph.NUMBA_EDT = ph.NUMBA_EDT, False
                    try:
                        dt, cpu = _measure(time_phdict, paths, out, workers)
                    finally:
                        ph.NUMBA_EDT = saved
                else:
                    dt, cpu = _measure(time_original, paths, out, workers)
                best[name] = min(best[name], dt)
                best_cpu[name] = min(best_cpu[name], cpu)
                say(
                    f"  round {r + 1}: {name:12s} {n_images / dt:8.1f} img/s wall, "
                    f"{1000 * cpu / n_images:6.1f} CPU ms/img"
                )
                shutil.rmtree(out)
        # the two real pipelines wrote the same pairs (checked on a few)
        check = os.path.join(tmp, 'check')
        os.makedirs(check)
        time_phdict(paths[:5], check, 1)
        for p in paths[:5]:
            _original_task((p, tmp))
            stem = os.path.splitext(os.path.basename(p))[0] + '.npy'
            ours, orig = (np.load(os.path.join(d, stem)) for d in (check, tmp))
            if not np.array_equal(_pairs(ours), _pairs(orig)):
                raise AssertionError(f"PHdict and the original pipeline disagree on {p}")
        prof = profile_stages(paths[:profile_images], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = {k: n_images / v for k, v in best.items()}
    cpu_ms = {k: 1000 * v / n_images for k, v in best_cpu.items()}
    result = dict(
        n_images=n_images,
        size=size,
        workers=workers,
        images=source,
        mean_pairs=round(pairs, 1),
        edt_backend='numba' if ph.NUMBA_EDT else 'scipy',
        profile_ms=prof,
    )
    for k in names:
        result[f'{k}_img_s'] = round(rate[k], 2)
        result[f'{k}_cpu_ms_per_img'] = round(cpu_ms[k], 3)
        if k != 'floor':
            result[f'{k}_vs_floor'] = round(rate[k] / rate['floor'], 3)
            result[f'{k}_vs_floor_cpu'] = round(cpu_ms['floor'] / cpu_ms[k], 3)
    result['phdict_vs_original'] = round(rate['phdict'] / rate['original'], 3)
    for k in names[1:]:
        say(
            f"{k:12s} {result[k + '_img_s']:8.1f} img/s = {result[k + '_vs_floor']:.2f} x floor "
            f"({result['floor_img_s']} img/s); by CPU time {result[k + '_vs_floor_cpu']:.2f} x floor"
        )
    say(
        "one process, best-of ms per image: "
        + ', '.join(f"{k} {v}" for k, v in prof.items() if not k.startswith('model_'))
    )
    say(
        "ratios predicted from the stages: "
        + ', '.join(f"{k[6:-9]} {v:.2f}" for k, v in prof.items() if k.startswith('model_'))
    )
    return result


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="PHdict throughput vs the cripser-only floor and the original pipeline, on generated JPEGs.",
    )
    p.add_argument('--n_images', '-n', type=int, default=200, help="number of images (default: %(default)s)")
    p.add_argument('--workers', '-w', type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument('--size', type=int, default=256, help="image side in pixels (default: %(default)s)")
    p.add_argument(
        '--repeats', type=int, default=2, help="interleaved rounds; the best of each is kept (default: %(default)s)"
    )
    p.add_argument('--seed', type=int, default=0, help="image seed (default: %(default)s)")
    add_json_flag(p)
    return p


def main(args):
    if min(args.n_images, args.workers, args.size, args.repeats) < 1:
        raise UserError("--n_images, --workers, --size and --repeats must be at least 1")
    result = run(args.n_images, args.workers, args.size, args.repeats, args.seed, verbose=True)
    save_result(args, result)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
