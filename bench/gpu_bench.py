#!/usr/bin/env python
"""GPU benchmark in one call (<= 10 minutes on an H100/H200 with 16 cores): ceilings, our pipelines, accuracy.

Stages (each prints its results as it finishes and rewrites the results JSON, so a timeout keeps them):

(a) ``ceiling``: training images/s of ResNet-50 and ResNet-18 at 224 px on synthetic tensors already on the
    GPU (bf16 autocast, channels-last, SGD, MSE on 200 outputs as in pretraining, cudnn.benchmark on, a few
    warm-up steps, timed with ``torch.cuda.synchronize``): the most any data pipeline can reach.
(b) ``pipeline``: the real pretraining code path (``util.train.engine.make_loader`` + ``train_one_epoch``) with
    ``--workers`` loader processes, for each model:
      * from a consolidated label matrix: ``--n_jpegs`` 256 px JPEGs made by the generator in parallel,
        their PH histogram labels computed PHdict-style
        (``util.ph.cubical.iter_diagrams`` + ``util.ph.vectorise``), then
        ``util.train.datasets.FolderPH`` + ``MatrixLabels`` (what ``pretraining.py -t DIR -pd PH -pc`` runs);
      * on the fly: ``util.train.datasets.GeneratedPH`` (what ``pretraining.py`` without ``-t`` runs);
    each as a ratio of (a) for the same model.  Also measured there: the cripser-only floor of this machine
    (cores / single-core ``cripser.computePH`` time per 256 px image: cripser alone, on filtrations made
    beforehand; skipped with a note where cripser is not installed), the on-the-fly rate as a ratio of it,
    the label precompute rate (target >= 0.75 x floor) and the loader alone (no model) from the label matrix.
    Rates are steady state: the clock starts once the loader's whole prefetch (workers x prefetch batches,
    which pile up while the model starts) has been consumed (:func:`steady_skip`).  cudnn.benchmark is on
    everywhere, as every CUDA run of pretraining.py / finetuning.py has it (``util.train.distributed``).
(c) ``accuracy``: ResNet-18 pretrained at ``--pre_size`` px for a fixed number of steps (from a time budget)
    on ``--pre_images`` generated images held on the GPU (random flips/transpositions, which leave PH
    unchanged), (i) with PH histogram labels (ranges scaled by pre_size / 256), (ii) with random
    targets (a fixed standard-normal vector per image, same dimension; the PH labels are standardised by the
    product's ``--label_norm standard`` with its floor, so both targets have the same scale), then fine-tuned
    on scikit-learn's handwritten digits (1797 real 8x8 scans, upscaled without smoothing) with 10 and 50
    labels per class and with all training images, for ``--ft_steps`` steps, against training from scratch;
    ``--seeds`` fine-tuning seeds (each seed draws its own train/val split and labelled subset, shared by the
    three initialisations); the table gives mean +- standard deviation of the top-1 validation accuracy.

    python bench/gpu_bench.py --device cuda         # on the GPU machine, ~6-8 minutes (stops if no GPU is seen)
    python bench/gpu_bench.py --tiny                # any device, ~30 s on 2 CPU cores: checks that all runs
    python bench/gpu_bench.py --device cuda --stages ceiling pipeline --deadline 300

Every training step of (b) and (c) is the product's engine (``util.train.engine``: ``make_loader`` /
``train_one_epoch`` / ``supervised_step`` / ``evaluate_*``, optimiser and schedule builders); no second
training loop lives here.

The JSON goes to ``$OUT/gpu_bench.json`` when OUT is set, and to ``--json`` when given.

This file is the entry point (flags, settings, the stage loop); the work lives beside it: ``gpu_timing`` (clock,
machine facts, steady-state timing, the results file), ``gpu_rates`` (stages a and b), ``gpu_accuracy`` (stage
c's pretraining and fine-tuning), ``gpu_stages`` (the three stages), ``gpu_report`` (the closing table).
"""

import argparse
import os
import shutil
import tempfile
import time

from bench.common import add_json_flag, print_paths, result_paths
from bench.gpu_accuracy import random_shift as _random_shift
from bench.gpu_accuracy import random_symmetry as _random_symmetry
from bench.gpu_accuracy import split, standardise
from bench.gpu_rates import ceiling_rate, cripser_floor
from bench.gpu_report import format_summary
from bench.gpu_stages import stage_accuracy, stage_ceiling, stage_pipeline
from bench.gpu_timing import Clock, Results, TimedBatches, machine_info, say, steady_skip
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli
from util.train.metrics import r_squared

# what the tests and callers reach through this module (the entry point keeps its old names)
__all__ = [
    'STAGES', 'TINY', 'TimedBatches', '_config', '_random_shift', '_random_symmetry', 'ceiling_rate',
    'cripser_floor', 'get_args_parser', 'main', 'r_squared', 'split', 'standardise', 'steady_skip',
]  # fmt: skip

STAGES = ('ceiling', 'pipeline', 'accuracy')

# --tiny: everything at toy size, so that the whole script runs in well under a minute on 2 CPU cores
TINY = dict(
    models=['resnet18'],
    ceiling_size=32,
    ceiling_seconds=0.5,
    warmup=2,
    batch_size=4,
    n_jpegs=24,
    jpeg_size=64,
    crop_size=56,
    pipeline_seconds=1.5,
    floor_images=4,
    pre_images=160,
    pre_size=16,
    pre_batch=16,
    pre_seconds=1.0,
    min_pre_steps=3,
    ft_steps=2,
    ft_batch=8,
    ft_size=16,
    max_val=40,
    seeds=[0, 1],
    workers=2,
    deadline=120,
)


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        description="GPU benchmark: training ceilings, our pretraining pipelines against "
        "them and the cripser floor, and PH pretraining accuracy on digits.",
    )
    p.add_argument(
        '--tiny',
        action='store_true',
        help="tiny sizes on any device (seconds on a CPU): checks that everything runs; the numbers mean nothing",
    )
    p.add_argument('--stages', nargs='+', choices=STAGES, default=list(STAGES), help="stages to run (default: all)")
    p.add_argument(
        '--device',
        default=None,
        help="'cuda' or 'cpu' (default: cuda, an error when no GPU is visible; with --tiny: cuda when available)",
    )
    p.add_argument(
        '--deadline',
        type=float,
        default=540,
        help="seconds for the whole run; stages shrink or skip to fit (default: %(default)s)",
    )
    p.add_argument(
        '--workers',
        '-w',
        type=int,
        default=None,
        help="CPU processes for loaders, generation and PH (default: all cores)",
    )
    p.add_argument(
        '--models',
        nargs='+',
        default=['resnet50', 'resnet18'],
        help="models of the ceiling and pipeline stages (default: %(default)s)",
    )
    p.add_argument(
        '--batch_size',
        '-b',
        type=int,
        default=128,
        help="batch size of ceiling and pipeline runs (default: %(default)s)",
    )
    p.add_argument('--ceiling_seconds', type=float, default=8, help="timed seconds per ceiling (default: %(default)s)")
    p.add_argument(
        '--n_jpegs', type=int, default=4000, help="JPEGs generated for the label-matrix pipeline (default: %(default)s)"
    )
    p.add_argument(
        '--pipeline_seconds', type=float, default=20, help="timed seconds per pipeline run (default: %(default)s)"
    )
    p.add_argument(
        '--floor_images', type=int, default=64, help="images timed for the cripser floor (default: %(default)s)"
    )
    p.add_argument(
        '--pre_images',
        type=int,
        default=40000,
        help="generated images for the accuracy pretraining (default: %(default)s)",
    )
    p.add_argument('--pre_size', type=int, default=64, help="their side in pixels (default: %(default)s)")
    p.add_argument('--pre_batch', type=int, default=256, help="pretraining batch size (default: %(default)s)")
    p.add_argument(
        '--pre_seconds',
        type=float,
        default=75,
        help="time budget per pretraining (PH, random), turned into a step count shared by both (default: %(default)s)",
    )
    p.add_argument('--ft_steps', type=int, default=300, help="fine-tuning steps per run (default: %(default)s)")
    p.add_argument('--ft_batch', type=int, default=64, help="fine-tuning batch size (default: %(default)s)")
    p.add_argument('--ft_size', type=int, default=None, help="digit image side (default: --pre_size)")
    p.add_argument(
        '--labels_per_class',
        type=int,
        nargs='+',
        default=[10, 50, 0],
        help="labelled training images per class; 0 = all (default: %(default)s)",
    )
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help="fine-tuning seeds (default: %(default)s)")
    add_json_flag(p, "write the results here too (default: only $OUT/gpu_bench.json when OUT is set)")
    return p


def _config(args):
    """The effective settings (flags, or the tiny preset) as a Namespace; checks them."""
    import torch

    cfg = argparse.Namespace(**vars(args))
    if args.tiny:
        for k, v in TINY.items():
            setattr(cfg, k, v)
        cfg.ceiling_size = TINY['ceiling_size']
    else:
        cfg.ceiling_size, cfg.jpeg_size, cfg.crop_size = 224, 256, 224
        cfg.workers = args.workers or os.cpu_count()
    if cfg.ft_size is None or args.tiny:
        cfg.ft_size = cfg.pre_size
    if cfg.device is None:  # the full run is a GPU benchmark: never fall back to the CPU without a word
        cfg.device = 'cuda' if torch.cuda.is_available() or not args.tiny else 'cpu'
    if cfg.device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu (with --tiny)")
    on_gpu = cfg.device.startswith('cuda')
    cfg.amp = on_gpu
    cfg.channels_last = on_gpu
    for name in (
        'batch_size',
        'n_jpegs',
        'floor_images',
        'pre_images',
        'pre_size',
        'pre_batch',
        'ft_steps',
        'ft_batch',
        'workers',
    ):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if cfg.pre_size < 16 or cfg.ft_size < 16:
        raise UserError("--pre_size and --ft_size must be at least 16")
    if cfg.pre_images < 20:
        raise UserError("--pre_images must be at least 20")
    import models

    for m in cfg.models:
        models.resolve_arch(m)
    if not args.tiny:
        cfg.min_pre_steps, cfg.max_val, cfg.warmup = 10, 0, 10
    cfg.epoch_images = 2000 if cfg.tiny else 400000  # one long epoch per pipeline run; the timer stops it
    cfg.ft_reserve = 20 if cfg.tiny else 100
    cfg.reserve_after_pipeline = 0 if 'accuracy' not in cfg.stages else (10 if cfg.tiny else 200)
    return cfg


def main(args):
    cfg = _config(args)
    clock = Clock(cfg.deadline)
    paths = result_paths(args, 'gpu_bench')
    info = machine_info(cfg.device)
    info['settings'] = {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool, list))}
    res = Results(paths, info)
    res.save()
    say(
        clock,
        f"{info['device_name']}; {info['cores']} cores ({info['cpu_model']}); torch {info['torch']}; "
        f"stages {' '.join(cfg.stages)}; deadline {cfg.deadline:.0f} s",
    )
    tmp = tempfile.mkdtemp(prefix='gpu_bench-')
    try:
        for stage in STAGES:
            if stage not in cfg.stages:
                continue
            t = time.perf_counter()
            if stage == 'ceiling':
                stage_ceiling(cfg, clock, res)
            elif stage == 'pipeline':
                stage_pipeline(cfg, clock, res, tmp)
            else:
                stage_accuracy(cfg, clock, res)
            res.data['stage_seconds'][stage] = round(time.perf_counter() - t, 1)
            res.save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.data['total_seconds'] = round(clock.elapsed(), 1)
    res.save()
    print(format_summary(res.data), flush=True)
    print_paths(paths)
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
