#!/usr/bin/env python
"""The union-find PH engine (util/ph/unionfind.py) against cripser, three ratios measured side by side:

(a) ``ph``: PH alone, ``diagram_of_filtration(f, engine='unionfind')`` vs ``cripser.computePH(f, maxdim=1)``
    on the same filtrations (every kind in ``util.ph.cubical.FILTRATIONS``) of generated 256 px images, one process,
    interleaved, best of ``repeats`` per filtration kind (target >= 4x); the pairs are checked equal.
(b) ``phdict``: PHdict.py run in this process (``main``: listing, reading the JPEGs, PH in ``workers``
    processes, writing every diagram atomically, settings) vs ``computePH`` alone on the precomputed
    filtrations of the same images in as many processes (``bench/ph_bench.py``'s floor); by wall clock and
    by CPU time (target >= 3.5x), the CPU ratio both with start-up (pool, listing, settings: one run's total)
    and without it (the CPU per further image: both sides also run on the first quarter of the images, and
    the difference is divided by the other three quarters).
(c) ``loader``: the on-the-fly loader (``GeneratedPH``, 256 px, histogram labels) vs the original-style one
    (``bench/loader_bench.py``), images per CPU-second (target >= 4x), with a per-stage breakdown of both
    (generate, filtration, PH, label, transforms; best-of timings in one process; ``rest`` = CPU ms per
    image of the loader minus their sum: collate, tensors through shared memory, worker start-up).

    nice -n 5 python bench/ph_engine_bench.py                 # 100 images, 2 workers
    python bench/ph_engine_bench.py -n 40 --loader_images 192 --json out.json
"""

import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from bench.common import add_json_flag, save_result
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.io.fileio import load_image
from util.ph import cubical as ph

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = {'ph': 4.0, 'phdict': 3.5, 'loader': 4.0}


def _pairs(dgm):
    d = dgm[:, :3]
    return d[np.lexsort((d[:, 2], d[:, 1], d[:, 0]))]


def _best(fn, repeats):
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _images(n, size, seed=0):
    from util.ph.generator import GeneratorConfig, generate_image

    cfg = GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.5)
    cfg.validate()
    return [generate_image(cfg, seed, i) for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# (a) PH alone


def bench_ph(images, repeats):
    """Per filtration kind: ms per image of cripser and union-find (best of ``repeats``), and the ratio."""
    out = {}
    tot_c = tot_u = 0.0
    for kind in ph.FILTRATIONS:
        filts = [ph.compute_filtration(im, kind) for im in images]
        for f in filts:
            if not np.array_equal(
                _pairs(ph.diagram_of_filtration(f, 'unionfind')), _pairs(ph.cripser.computePH(f, maxdim=1))
            ):
                raise AssertionError(f"union-find and cripser disagree ({kind})")
        c = u = float('inf')
        for _ in range(repeats):  # interleaved
            c = min(c, _best(lambda: [ph.cripser.computePH(f, maxdim=1) for f in filts], 1))
            u = min(u, _best(lambda: [ph.diagram_of_filtration(f, 'unionfind') for f in filts], 1))
        n = len(filts)
        out[kind] = dict(cripser_ms=round(1000 * c / n, 3), unionfind_ms=round(1000 * u / n, 3), ratio=round(c / u, 2))
        tot_c += c
        tot_u += u
    out['all'] = dict(
        cripser_ms=round(1000 * tot_c / len(images) / len(ph.FILTRATIONS), 3),
        unionfind_ms=round(1000 * tot_u / len(images) / len(ph.FILTRATIONS), 3),
        ratio=round(tot_c / tot_u, 2),
    )
    return out


# ----------------------------------------------------------------------------------------------------
# (b) PHdict whole chain vs computePH alone


def _phdict_once(src, out, workers):
    import PHdict

    args = PHdict.get_args_parser().parse_args([src, '-o', out, '-it', 'jpg', '-nw', str(workers)])
    devnull = open(os.devnull, 'w')
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = devnull
    try:
        rc = PHdict.main(args)
    finally:
        sys.stdout, sys.stderr = saved
        devnull.close()
    if rc != 0:
        raise AssertionError(f"PHdict exited {rc}")


def bench_phdict(images, workers, repeats):
    from PIL import Image

    from bench import ph_bench

    tmp = tempfile.mkdtemp(prefix='ph_engine_bench-')
    try:
        src = os.path.join(tmp, 'img')
        os.makedirs(src)
        paths = []
        for i, im in enumerate(images):
            p = os.path.join(src, f'b{i:05d}.jpg')
            Image.fromarray(im).save(p, quality=95)
            paths.append(p)
        filts = [ph.compute_filtration(load_image(p, 'L')) for p in paths]
        # the first quarter alone, to take start-up out: (CPU of n images - CPU of n/4) / (3n/4) per image
        k = max(1, len(paths) // 4)
        small = os.path.join(tmp, 'img_quarter')
        os.makedirs(small)
        for p in paths[:k]:
            shutil.copyfile(p, os.path.join(small, os.path.basename(p)))
        ph.warm_up()
        best = {'floor': (float('inf'), float('inf')), 'phdict': (float('inf'), float('inf'))}
        best_small = {'floor': float('inf'), 'phdict': float('inf')}
        for r in range(repeats):
            wall, cpu = ph_bench._measure(ph_bench.time_floor, filts, workers)
            best['floor'] = (min(best['floor'][0], wall), min(best['floor'][1], cpu))
            out = os.path.join(tmp, f'out{r}')
            wall, cpu = ph_bench._measure(lambda: _phdict_once(src, out, workers))
            best['phdict'] = (min(best['phdict'][0], wall), min(best['phdict'][1], cpu))
            best_small['floor'] = min(
                best_small['floor'], ph_bench._measure(ph_bench.time_floor, filts[:k], workers)[1]
            )
            out_small = os.path.join(tmp, f'out_small{r}')
            best_small['phdict'] = min(
                best_small['phdict'], ph_bench._measure(lambda: _phdict_once(small, out_small, workers))[1]
            )
            shutil.rmtree(out_small)
            for p in paths[:5]:
                stem = os.path.splitext(os.path.basename(p))[0] + '.npy'
                ref = ph.cripser.computePH(ph.compute_filtration(load_image(p, 'L')), maxdim=1)
                if not np.array_equal(_pairs(np.load(os.path.join(out, stem))), _pairs(ref)):
                    raise AssertionError(f"PHdict's diagram of {p} differs from cripser's")
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(images)
    fw, fc = best['floor']
    pw, pc = best['phdict']
    return dict(
        floor_img_s=round(n / fw, 1),
        phdict_img_s=round(n / pw, 1),
        ratio=round(fw / pw, 2),
        floor_cpu_ms=round(1000 * fc / n, 3),
        phdict_cpu_ms=round(1000 * pc / n, 3),
        cpu_ratio=round(fc / pc, 2),
        floor_cpu_ms_marginal=round(1000 * (fc - best_small['floor']) / max(1, n - k), 3),
        phdict_cpu_ms_marginal=round(1000 * (pc - best_small['phdict']) / max(1, n - k), 3),
        cpu_ratio_without_startup=round((fc - best_small['floor']) / max(pc - best_small['phdict'], 1e-9), 2),
        workers=workers,
    )


# ----------------------------------------------------------------------------------------------------
# (c) on-the-fly loader


def loader_stages(n, img_size, crop_size, repeats, label_dim=200):
    """Per-stage best-of ms per image, in one process, of ours and of the original-style loader."""
    import torch
    from PIL import Image

    from bench import loader_bench as lb
    from util.ph.generator import GeneratorConfig, generate_image
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import pretrain_transforms

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in DataLoader workers: threads fighting over 2 cores cost 100x here
    try:
        return _loader_stages(
            n,
            img_size,
            crop_size,
            repeats,
            label_dim,
            lb,
            pretrain_transforms,
            GeneratorConfig,
            generate_image,
            make_vectoriser,
            Image,
        )
    finally:
        torch.set_num_threads(threads)


def _loader_stages(
    n,
    img_size,
    crop_size,
    repeats,
    label_dim,
    lb,
    pretrain_transforms,
    GeneratorConfig,
    generate_image,
    make_vectoriser,
    Image,
):
    cfg = GeneratorConfig(img_size=img_size, prob_binary=lb.DEFAULT_PROB_BINARY, prob_colour=0.0)
    cfg.validate()
    from util.config import AugmentConfig

    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=img_size, crop_size=crop_size))
    vec = make_vectoriser('histogram', label_dim, max_life=lb.MAX_LIFE, max_birth=lb.MAX_BIRTH, bandwidth=lb.BANDWIDTH)
    q = label_dim // 4
    bins = (q, q, q, label_dim - 3 * q)
    ours = dict(generate=0.0, filtration=0.0, ph=0.0, label=0.0, transforms=0.0)
    orig = dict(generate=0.0, filtration=0.0, ph=0.0, label=0.0, transforms=0.0)
    from bench import reference
    from util.ph import unionfind as uf
    from util.ph.distance import signed_sqedt

    for i in range(n):
        ours['generate'] += _best(lambda: Image.fromarray(generate_image(cfg, 0, i)).convert('RGB'), repeats)
        pil = Image.fromarray(generate_image(cfg, 0, i)).convert('RGB')

        def filt():
            g, bw = ph._binary(pil, 'signed_distance', False)
            return None if bw is None else signed_sqedt(bw)

        ours['filtration'] += _best(filt, repeats)
        keys = filt()
        if keys is None:
            g = np.zeros(pil.size[::-1])
            ours['ph'] += _best(lambda: ph.diagram_of_filtration(g), repeats)
            dgm = ph.diagram_of_filtration(g)
        else:
            ours['ph'] += _best(lambda: uf.diagram_of_sqkeys(keys), repeats)
            dgm = uf.diagram_of_sqkeys(keys)
        ours['label'] += _best(lambda: vec(dgm), repeats)
        ours['transforms'] += _best(lambda: to_tensor(spatial(pil)), repeats)

        orig['generate'] += _best(
            lambda: reference.original_random_image(img_size, (0.01, 1.0), (0.5, 2.0), lb.DEFAULT_PROB_BINARY).convert(
                'RGB'
            ),
            repeats,
        )
        opil = reference.original_random_image(img_size, (0.01, 1.0), (0.5, 2.0), lb.DEFAULT_PROB_BINARY).convert('RGB')

        def ofilt():
            return reference.original_filtration(opil)

        orig['filtration'] += _best(ofilt, repeats)
        of = ofilt()
        orig['ph'] += _best(lambda: ph.cripser.computePH(of), repeats)
        odgm = ph.cripser.computePH(of)
        orig['label'] += _best(lambda: reference.original_histogram(odgm, bins), repeats)
        orig['transforms'] += _best(lambda: to_tensor(spatial(opil)), repeats)
    ours = {k: round(1000 * v / n, 3) for k, v in ours.items()}
    orig = {k: round(1000 * v / n, 3) for k, v in orig.items()}
    ours['total'] = round(sum(ours.values()), 3)
    orig['total'] = round(sum(orig.values()), 3)
    return dict(ours_ms=ours, original_ms=orig, predicted_ratio=round(orig['total'] / ours['total'], 2))


def bench_loader(n_images, workers, repeats):
    from bench import loader_bench

    res = loader_bench.run(
        n_images=n_images, workers=workers, img_size=256, crop_size=224, batch_size=32, repeats=repeats
    )
    return dict(
        ours_img_cpu_s=round(res['ours_img_cpu_s'], 2),
        original_img_cpu_s=round(res['original_img_cpu_s'], 2),
        cpu_ratio=round(res['cpu_ratio'], 2),
        ours_img_s=round(res['ours_img_s'], 2),
        original_img_s=round(res['original_img_s'], 2),
        wall_ratio=round(res['ratio'], 2),
        n_images=n_images,
        workers=workers,
    )


# ----------------------------------------------------------------------------------------------------


def _machine():
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        cpu_model=model,
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )


def run(
    n_images=100, workers=2, size=256, repeats=3, loader_images=384, stage_images=20, phdict_images=None, verbose=False
):
    say = print if verbose else (lambda *a, **k: None)
    result = dict(machine=_machine(), n_images=n_images, size=size)
    say(f"machine: {result['machine']}")
    t = time.perf_counter()
    ph.warm_up()
    result['warm_up_s'] = round(time.perf_counter() - t, 3)
    images = _images(n_images, size)
    result['ph'] = bench_ph(images, repeats)
    say("(a) PH alone, ms per image (cripser / union-find = ratio):")
    for kind, r in result['ph'].items():
        say(f"    {kind:20s} {r['cripser_ms']:8.3f} / {r['unionfind_ms']:7.3f} = {r['ratio']:.2f}x")
    more = _images(phdict_images, size, seed=1) if phdict_images else images
    result['phdict'] = bench_phdict(more, workers, repeats)
    r = result['phdict']
    say(
        f"(b) PHdict whole chain ({len(more)} images) {r['phdict_img_s']} img/s vs computePH alone "
        f"{r['floor_img_s']} img/s ({workers} workers): {r['ratio']:.2f}x wall, {r['cpu_ratio']:.2f}x by CPU time "
        f"with start-up, {r['cpu_ratio_without_startup']:.2f}x without ({r['phdict_cpu_ms_marginal']} vs "
        f"{r['floor_cpu_ms_marginal']} CPU ms per further image)"
    )
    if loader_images:
        result['loader'] = bench_loader(loader_images, workers, max(1, repeats - 1))
        result['loader_stages'] = loader_stages(stage_images, size, 224, repeats)
        r = result['loader']
        say(
            f"(c) on-the-fly loader {r['ours_img_cpu_s']} vs original {r['original_img_cpu_s']} images per "
            f"CPU-second: {r['cpu_ratio']:.2f}x (wall {r['ours_img_s']} vs {r['original_img_s']} img/s: "
            f"{r['wall_ratio']:.2f}x)"
        )
        s = result['loader_stages']
        # what the stages leave out: DataLoader collate, tensors through shared memory, worker start-up
        s['ours_ms']['rest'] = round(1000 / r['ours_img_cpu_s'] - s['ours_ms']['total'], 3)
        s['original_ms']['rest'] = round(1000 / r['original_img_cpu_s'] - s['original_ms']['total'], 3)
        say(
            "    stages, ms per image (ours / original): "
            + ', '.join(f"{k} {s['ours_ms'][k]} / {s['original_ms'][k]}" for k in s['ours_ms'])
        )
    result['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    table = [
        ('PH alone (a)', result['ph']['all']['ratio'], TARGETS['ph']),
        ('PHdict chain / computePH (b, CPU)', result['phdict']['cpu_ratio'], TARGETS['phdict']),
        ('PHdict chain / computePH (b, wall)', result['phdict']['ratio'], TARGETS['phdict']),
    ]
    if loader_images:
        table.append(('loader per CPU-second (c)', result['loader']['cpu_ratio'], TARGETS['loader']))
    result['table'] = [dict(what=w, ratio=v, target=t, met=v >= t) for w, v, t in table]
    say(f"{'what':36s} {'ratio':>7s} {'target':>7s} met?")
    for row in result['table']:
        say(f"{row['what']:36s} {row['ratio']:6.2f}x {row['target']:6.2f}x {'yes' if row['met'] else 'NO'}")
    return result


def get_args_parser():
    p = StrictArgumentParser(
        description="Union-find PH engine vs cripser: PH alone, PHdict's whole chain, the on-the-fly loader.",
        allow_abbrev=False,
    )
    p.add_argument('--n_images', '-n', type=int, default=100, help="images for (a) and (b) (default: %(default)s)")
    p.add_argument('--workers', '-w', type=int, default=2, help="processes for (b) and (c) (default: %(default)s)")
    p.add_argument('--size', type=int, default=256, help="image side (default: %(default)s)")
    p.add_argument('--repeats', type=int, default=3, help="interleaved rounds, best kept (default: %(default)s)")
    p.add_argument(
        '--phdict_images',
        type=int,
        default=800,
        help="images for (b): PHdict's start-up (imports, pool) is spread over them (default: %(default)s)",
    )
    p.add_argument(
        '--loader_images',
        type=int,
        default=384,
        help="images per loader per round for (c); 0 skips (c) (default: %(default)s)",
    )
    p.add_argument(
        '--stage_images', type=int, default=20, help="images of the per-stage breakdown of (c) (default: %(default)s)"
    )
    add_json_flag(p)
    return p


def main(args):
    if (
        min(args.n_images, args.workers, args.size, args.repeats, args.stage_images) < 1
        or min(args.loader_images, args.phdict_images) < 0
    ):
        raise UserError("--n_images, --workers, --size, --repeats and --stage_images must be at least 1")
    result = run(
        args.n_images,
        args.workers,
        args.size,
        args.repeats,
        args.loader_images,
        args.stage_images,
        args.phdict_images,
        verbose=True,
    )
    save_result(args, result)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
