#!/usr/bin/env python
"""All CPU benchmarks in one run, side by side on the same cores, as a table of ratios against the targets.

Runs, one after the other and each with its own alternating rounds (best kept):

* the generator vs the original-style generator (``bench/generator_bench.py``; per core, i.e. images per
  CPU-second of all processes, target >= 3x);
* PHdict's per-image pipeline vs the cripser-only floor (``bench/ph_bench.py``; wall-clock, target >= 0.75x),
  and vs the original pipeline (no target);
* the persistence-image vectorisation vs persim (``bench/vectorise_bench.py``; target >= 100x);
* the on-the-fly pretraining loader vs the original-style loader (``bench/loader_bench.py``; target >= 2x).

Prints the table last (what | ours | reference | ratio | target | met?) and writes a JSON with the results,
the date, the CPU model, the core count, the load average before and after each benchmark and the
library versions -- to ``$OUT/cpu_bench.json`` when ``OUT`` is set, and to ``--json`` when given.

    python bench/cpu_bench.py                 # a few minutes on 2 cores
    python bench/cpu_bench.py --quick         # about 1-2 minutes
    python bench/cpu_bench.py --tiny          # seconds; checks that everything runs (numbers meaningless)
"""

import datetime
import math
import os
import platform
import time

from bench.common import add_json_flag, print_paths, save_result
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Sizes of each benchmark per preset (images / diagrams per round, rounds).
PRESETS = {
    'tiny': dict(
        generator=dict(n_images=8, img_size=64, repeats=1),
        ph=dict(n_images=8, size=64, repeats=1, profile_images=2),
        vectorise=dict(n_diagrams=16, persim_diagrams=4, repeats=1),
        loader=dict(n_images=48, img_size=64, crop_size=56, batch_size=8, repeats=1),
    ),
    'quick': dict(
        generator=dict(n_images=100, img_size=256, repeats=1),
        ph=dict(n_images=100, size=256, repeats=1, profile_images=20),
        vectorise=dict(n_diagrams=300, persim_diagrams=40, repeats=2),
        loader=dict(n_images=256, img_size=256, crop_size=224, batch_size=32, repeats=1),
    ),
    'default': dict(
        generator=dict(n_images=200, img_size=256, repeats=2),
        ph=dict(n_images=200, size=256, repeats=2, profile_images=50),
        vectorise=dict(n_diagrams=1000, persim_diagrams=100, repeats=3),
        loader=dict(n_images=768, img_size=256, crop_size=224, batch_size=32, repeats=2),
    ),
}

TARGETS = {'generator': 3.0, 'phdict': 0.75, 'vectorise': 100.0, 'loader': 2.0}


def cpu_model():
    """The CPU model name from /proc/cpuinfo (else platform.processor(), else 'unknown')."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info():
    """Date, host facts and library versions, for the JSON of any benchmark."""
    import numpy
    import torch

    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        cpu_model=cpu_model(),
        cores=os.cpu_count(),
        usable_cores=usable_cores(),
        python=platform.python_version(),
        numpy=numpy.__version__,
        torch=torch.__version__,
        platform=platform.platform(),
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
    )
    try:
        import torchvision

        info['torchvision'] = torchvision.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info['cripser'] = version('cripser')
    except Exception:  # not installed as a distribution
        pass
    return info


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def table_rows(results):
    """Rows ``(what, ours, reference, ratio, target, met)`` from the benchmark results (missing ones skipped)."""
    rows = []
    g = results.get('generator')
    if g:
        rows.append(
            (
                'generator, img per CPU-second (per core)',
                g['ours_img_cpu_s'],
                g['original_img_cpu_s'],
                g['cpu_ratio'],
                TARGETS['generator'],
            )
        )
        rows.append(('generator, img/s wall', g['ours_img_s'], g['original_img_s'], g['ratio'], None))
    p = results.get('ph')
    if p:
        rows.append(
            (
                'PHdict vs cripser-only floor, img/s wall',
                p['phdict_img_s'],
                p['floor_img_s'],
                p['phdict_vs_floor'],
                TARGETS['phdict'],
            )
        )
        rows.append(
            (
                'PHdict vs cripser floor, img per CPU-second',
                1000 / p['phdict_cpu_ms_per_img'],
                1000 / p['floor_cpu_ms_per_img'],
                p['phdict_vs_floor_cpu'],
                TARGETS['phdict'],
            )
        )
        rows.append(
            (
                'PHdict vs original PH pipeline, img/s',
                p['phdict_img_s'],
                p['original_img_s'],
                p['phdict_vs_original'],
                None,
            )
        )
    v = results.get('vectorise')
    if v:
        rows.append(
            (
                'persistence image vs persim, diagrams/s',
                v['label_types']['persistence_image'],
                v['persim_diagrams_per_s'],
                v['persim_speedup'],
                TARGETS['vectorise'],
            )
        )
    lo = results.get('loader')
    if lo:
        rows.append(
            (
                'on-the-fly loader vs original-style, img/s wall',
                lo['ours_img_s'],
                lo['original_img_s'],
                lo['ratio'],
                TARGETS['loader'],
            )
        )
        rows.append(
            (
                'on-the-fly loader, img per CPU-second',
                lo['ours_img_cpu_s'],
                lo['original_img_cpu_s'],
                lo['cpu_ratio'],
                TARGETS['loader'],
            )
        )
    return [
        dict(what=w, ours=o, reference=r, ratio=q, target=t, met=None if t is None else bool(q >= t))
        for w, o, r, q, t in rows
    ]


def format_table(rows):
    lines = [f"{'what':48s} {'ours':>10s} {'reference':>10s} {'ratio':>8s} {'target':>8s}  met?"]
    for r in rows:
        target = f">= {r['target']:g}" if r['target'] is not None else '-'
        met = '-' if r['met'] is None else ('yes' if r['met'] else 'NO')
        lines.append(f"{r['what']:48s} {r['ours']:10.1f} {r['reference']:10.1f} {r['ratio']:7.2f}x {target:>8s}  {met}")
    return '\n'.join(lines)


def run(preset='default', workers=2, only=None, verbose=True):
    """Run the benchmarks of ``preset`` ('tiny', 'quick', 'default') with ``workers`` processes each.

    ``only``: optional subset of ('generator', 'ph', 'vectorise', 'loader').  Returns a dict with the machine
    info, ``preset``, ``workers``, ``load_average`` ({'start', '<bench>_before', ..., 'end'}), ``seconds``
    (per benchmark), ``results`` (each benchmark's own dict) and ``table`` (rows as in :func:`table_rows`).
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    names = ('generator', 'ph', 'vectorise', 'loader')
    only = names if not only else tuple(only)
    unknown = set(only) - set(names)
    if unknown:
        raise UserError(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(names)}")
    from bench import generator_bench, loader_bench, ph_bench, vectorise_bench

    say = print if verbose else (lambda *a, **k: None)
    sizes = PRESETS[preset]
    out = machine_info()
    out.update(preset=preset, workers=workers, load_average={'start': _load()}, seconds={}, results={})
    say(
        f"{out['date']}  {out['cpu_model']}, {out['cores']} cores ({out['usable_cores']} usable), "
        f"load average {out['load_average']['start']}; preset {preset}, {workers} worker(s)",
        flush=True,
    )
    for name in only:
        out['load_average'][f'{name}_before'] = _load()
        say(f"--- {name}", flush=True)
        t = time.perf_counter()
        s = sizes[name]
        if name == 'generator':
            res = generator_bench.run(s['n_images'], workers, s['img_size'], s['repeats'])
            say(
                f"  ours {res['ours_img_cpu_s']:.1f} vs original {res['original_img_cpu_s']:.1f} img per "
                f"CPU-second ({res['cpu_ratio']:.2f}x); wall {res['ratio']:.2f}x",
                flush=True,
            )
        elif name == 'ph':
            res = ph_bench.run(
                s['n_images'], workers, s['size'], s['repeats'], profile_images=s['profile_images'], verbose=verbose
            )
        elif name == 'vectorise':
            res = vectorise_bench.run(s['n_diagrams'], s['persim_diagrams'], repeats=s['repeats'], verbose=verbose)
        else:
            res = loader_bench.run(
                s['n_images'], workers, s['img_size'], s['crop_size'], s['batch_size'], s['repeats'], verbose=verbose
            )
            say(
                f"  ours {res['ours_img_s']:.1f} vs original {res['original_img_s']:.1f} img/s ({res['ratio']:.2f}x)",
                flush=True,
            )
        out['seconds'][name] = round(time.perf_counter() - t, 1)
        out['results'][name] = res
    out['load_average']['end'] = _load()
    out['table'] = table_rows(out['results'])
    for row in out['table']:
        for k in ('ours', 'reference', 'ratio'):
            if not (isinstance(row[k], (int, float)) and math.isfinite(row[k]) and row[k] > 0):
                raise AssertionError(f"benchmark row {row['what']!r} has a bad {k}: {row[k]!r}")
    return out


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="Run every CPU benchmark once, side by side on the same cores, and "
        "print a table of ratios against the targets.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument('--quick', action='store_true', help="smaller sizes: about 1-2 minutes on 2 cores")
    size.add_argument(
        '--tiny',
        action='store_true',
        help="tiny sizes (seconds): checks that everything runs; the numbers mean nothing",
    )
    p.add_argument(
        '--workers', '-w', type=int, default=2, help="worker processes of every benchmark (default: %(default)s)"
    )
    p.add_argument(
        '--only',
        nargs='+',
        default=None,
        metavar='BENCH',
        help="run only these of: generator ph vectorise loader (default: all)",
    )
    add_json_flag(p, "write the results here too (default: only $OUT/cpu_bench.json when the OUT variable is set)")
    return p


def main(args):
    preset = 'tiny' if args.tiny else 'quick' if args.quick else 'default'
    res = run(preset, args.workers, args.only)
    paths = save_result(args, res, 'cpu_bench')
    print()
    print(
        f"{res['date']}  {res['cpu_model']}, {res['cores']} cores, {args.workers} worker(s), preset {preset}; "
        f"load average {res['load_average']['start']} at start, {res['load_average']['end']} at end"
    )
    print(format_table(res['table']))
    print_paths(paths)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
