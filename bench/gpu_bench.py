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
"""

import argparse
import contextlib
import datetime
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from bench.cpu_bench import cpu_model
from util.cli.strict_args import StrictArgumentParser
from util.errors import UserError, run_cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAGES = ('ceiling', 'pipeline', 'accuracy')
LABEL_DIM = 200
TARGET_FROM_LABELS = 0.9  # x ceiling (ResNet-50 @ 224)
TARGET_ON_THE_FLY = 0.8  # x cripser-only floor
TARGET_PRECOMPUTE = 0.75  # x cripser-only floor

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


# ----------------------------------------------------------------------------------------------------
# small helpers


class Clock:
    """Seconds since the start of the run, and what is left before ``deadline``."""

    def __init__(self, deadline):
        self.t0 = time.perf_counter()
        self.deadline = deadline

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return self.deadline - self.elapsed()


def _sync(device):
    import torch

    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def machine_info(device):
    import numpy
    import torch
    import torchvision

    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        cpu_model=cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=numpy.__version__,
        device=str(device),
    )
    if str(device).startswith('cuda'):
        info['device_name'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    else:
        info['device_name'] = f"CPU: {info['cpu_model']}"
    try:
        from importlib.metadata import version

        info['cripser'] = version('cripser')
    except Exception:  # not installed as a distribution (e.g. unpacked wheel on PYTHONPATH without metadata)
        pass
    try:
        info['load_average'] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _train_args(device, batch_size, workers, amp, channels_last, seed=0):
    """The training settings of the shared engine (as pretraining.py builds them, single process)."""
    from util.config import TrainConfig

    return TrainConfig(
        device=str(device), batch_size=batch_size, num_workers=workers, seed=seed, amp=amp, channels_last=channels_last
    )


# ----------------------------------------------------------------------------------------------------
# (a) ceilings


def ceiling_rate(
    arch, batch_size, size, seconds, device, amp, channels_last, out_dim=LABEL_DIM, warmup=10, cudnn_benchmark=True
):
    """Training images/s of ``arch`` on synthetic inputs ``[B, 3, size, size]`` already on ``device``, through the
    product's engine (``train_one_epoch`` + ``supervised_step``: SGD momentum 0.9, MSE on ``out_dim`` outputs,
    bf16 autocast when ``amp``, channels-last when asked).  ``warmup`` untimed steps, then steps in blocks of
    5 (the device synchronised after each block) until ``seconds`` have passed.  Returns {'img_s', 'steps',
    'seconds'}.
    """
    import torch

    import models
    from util.config import TrainConfig
    from util.train import engine

    torch.backends.cudnn.benchmark = cudnn_benchmark
    cfg = TrainConfig(
        device=str(device), batch_size=batch_size, num_workers=0, amp=amp, channels_last=channels_last,
        log_interval=10**9, weight_decay=1e-4,
    )  # fmt: skip
    model = engine.prepare_model(models.build_model(arch, out_dim), cfg)
    opt = engine.build_optimizer(model.parameters(), cfg, lr=0.01)
    gen = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randn(batch_size, out_dim, generator=gen).to(device)
    timed = {}

    def batches():
        for _ in range(warmup):
            yield x, y, 0
        _sync(device)
        t0 = time.perf_counter()
        steps = 0
        while True:
            for _ in range(5):
                yield x, y, 0
            steps += 5  # the engine has launched the 5th step when it asks for the next batch
            _sync(device)
            timed.update(steps=steps, seconds=time.perf_counter() - t0)
            if timed['seconds'] >= seconds:
                return

    with open(os.devnull, 'w') as null, contextlib.redirect_stderr(null):  # no progress bar in the log
        engine.train_one_epoch(model, batches(), engine.supervised_step(torch.nn.MSELoss(), cfg), opt, 1, cfg)
    return dict(img_s=timed['steps'] * batch_size / timed['seconds'], steps=timed['steps'], seconds=timed['seconds'])


# ----------------------------------------------------------------------------------------------------
# (b) our pipelines


def steady_skip(workers):
    """Batches to let pass before the clock starts: every batch the loader may have prepared ahead
    (``workers x PREFETCH``, piled up while the model was starting), plus one.  Timing any earlier counts that
    backlog as throughput (about 10% too high at 14 workers)."""
    from util.train.engine import PREFETCH

    return max(1, workers * PREFETCH + 1) if workers > 0 else 2


class TimedBatches:
    """Iterate a DataLoader of ``(inputs, targets, dropped)``, stamping each batch; stop after ``seconds``.

    The clock starts when ``skip`` batches have arrived (each worker has then delivered one: start-up is
    over).  :meth:`rate` gives images/s over the later batches.
    """

    def __init__(self, loader, seconds, skip):
        self.loader, self.seconds, self.skip = loader, seconds, max(1, skip)
        self.stamps, self.sizes = [], []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        t_start = None
        for batch in self.loader:
            now = time.perf_counter()
            self.stamps.append(now)
            self.sizes.append(0 if batch[0] is None else int(batch[0].shape[0]))
            if len(self.stamps) == self.skip:
                t_start = now
            if t_start is not None and now - t_start >= self.seconds:
                return
            yield batch

    def rate(self):
        """(images/s in steady state, images counted, seconds); falls back to the whole pass if too short."""
        if len(self.stamps) > self.skip:
            counted = sum(self.sizes[self.skip :])
            dt = self.stamps[-1] - self.stamps[self.skip - 1]
        else:
            counted, dt = sum(self.sizes), (self.stamps[-1] - self.stamps[0]) if len(self.stamps) > 1 else float('nan')
        return counted / dt if dt > 0 else float('nan'), counted, dt


def make_jpegs(folder, n, size, workers, seed=0):
    """``n`` generated JPEGs (``-pb 0.5 -pc 0.5``) of ``size`` px in ``folder``: (relative paths, img/s)."""
    from util.ph.generator import GeneratorConfig, image_name, write_images

    cfg = GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.5)
    cfg.validate()
    t = time.perf_counter()
    write_images(cfg, seed, [(folder, 0, i) for i in range(n)], prefix='v', fmt='jpg', num_workers=workers)
    dt = time.perf_counter() - t
    return [image_name('v', i, 'jpg') for i in range(n)], n / dt


def histogram_vectoriser(dim=LABEL_DIM, scale=1.0):
    """The histogram label (the original's default) with its ranges scaled by ``scale`` (= image side / 256)."""
    from util.ph.vectorise import DEFAULT_MAX_BIRTH, DEFAULT_MAX_LIFE, make_vectoriser

    return make_vectoriser('histogram', dim, max_life=DEFAULT_MAX_LIFE * scale, max_birth=DEFAULT_MAX_BIRTH * scale)


def label_matrix(folder, rel, workers, dim=LABEL_DIM):
    """PHdict-style labels of the images: (float32 matrix [N, dim], img/s of diagrams + vectorisation)."""
    from util.ph import cubical as ph

    vec = histogram_vectoriser(dim)
    jobs = [(os.path.join(folder, r), 'image', ph.DEFAULT_FILTRATION) for r in rel]
    diagrams = [None] * len(rel)
    t = time.perf_counter()
    for i, dgm, err in ph.iter_diagrams(jobs, workers=workers):
        if err is not None:
            raise UserError(err)
        diagrams[i] = dgm
    matrix = vec.transform(diagrams)
    return matrix, len(rel) / (time.perf_counter() - t)


def cripser_floor(folder, rel, m, cores):
    """Single-core ms per image of ``cripser.computePH(f, maxdim=1)`` alone (on filtrations made beforehand)
    and of grey + Otsu + signed distance; floor = cores / cripser.  None when cripser cannot be imported.

    cripser is called directly: ``diagram_of_filtration`` would take the union-find engine (the default),
    several times faster than cripser, and give a floor 4-9x too high."""
    try:
        import cripser
    except ImportError:
        return None
    from util.io.fileio import load_image
    from util.ph import cubical as ph

    paths = [os.path.join(folder, r) for r in rel[:m]]
    t_filt = t_ph = 0.0
    for p in paths:
        grey = load_image(p, 'L')
        t0 = time.perf_counter()
        f = np.ascontiguousarray(ph.compute_filtration(grey), dtype=np.float64)
        t1 = time.perf_counter()
        cripser.computePH(f, maxdim=1)
        t2 = time.perf_counter()
        t_filt += t1 - t0
        t_ph += t2 - t1
    ms_ph, ms_filt = 1000 * t_ph / len(paths), 1000 * t_filt / len(paths)
    return dict(
        cripser_ms=ms_ph,
        otsu_signed_distance_ms=ms_filt,
        cores=cores,
        floor_img_s=cores * 1000 / ms_ph,
        images=len(paths),
    )


def train_rate(dataset, arch, targs, seconds, skip, out_dim=LABEL_DIM):
    """Images/s of the real training loop (make_loader + train_one_epoch) over ``dataset`` for ``seconds``."""
    import torch

    import models
    from util.train import engine as T

    torch.manual_seed(0)
    model = T.prepare_model(models.build_model(arch, out_dim), targs)
    opt = T.build_optimizer(model.parameters(), targs, lr=0.01)
    loader = TimedBatches(T.make_loader(dataset, targs, 1, shuffle=True, train=True), seconds, skip)
    with open(os.devnull, 'w') as null, contextlib.redirect_stderr(null):  # no progress bar in the log
        sums, seconds = T.train_one_epoch(model, loader, T.supervised_step(torch.nn.MSELoss(), targs), opt, 1, targs)
    metrics = T.supervised_metrics(sums, seconds)
    rate, counted, dt = loader.rate()
    del model, opt, loader
    if str(targs.device).startswith('cuda'):
        torch.cuda.empty_cache()
    return dict(img_s=rate, images=counted, seconds=dt, train_loss=metrics['train_loss'])


def loader_rate(dataset, targs, seconds, skip):
    """Images/s of the DataLoader alone (batches only collected, no model)."""
    from util.train import engine as T

    loader = TimedBatches(T.make_loader(dataset, targs, 1, shuffle=True, train=True), seconds, skip)
    for _ in loader:
        pass
    rate, counted, dt = loader.rate()
    return dict(img_s=rate, images=counted, seconds=dt)


# ----------------------------------------------------------------------------------------------------
# (c) accuracy


def _pretrain_chunk(job):
    """Worker: images ``start..stop`` of the generator and their PH histogram labels.

    Returns (uint8 images [k, S, S, 3], float32 labels [k, dim]).
    """
    from PIL import Image

    from util.ph.cubical import compute_ph
    from util.ph.generator import GeneratorConfig, generate_image

    start, stop, size, dim, seed = job
    cfg = GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.5)
    vec = histogram_vectoriser(dim, size / 256)
    images = np.empty((stop - start, size, size, 3), np.uint8)
    diagrams = []
    for k, i in enumerate(range(start, stop)):
        arr = generate_image(cfg, seed, i)
        images[k] = arr[:, :, None] if arr.ndim == 2 else arr
        diagrams.append(compute_ph(np.asarray(Image.fromarray(arr).convert('L'))))
    return images, vec.transform(diagrams)


def make_pretrain_data(n, size, workers, dim=LABEL_DIM, seed=0):
    """``n`` generated images (uint8 [n, S, S, 3]) and their PH histogram labels (float32 [n, dim]), in parallel."""
    chunk = max(1, min(500, n // max(1, workers * 4)))
    jobs = [(s, min(n, s + chunk), size, dim, seed) for s in range(0, n, chunk)]
    if workers > 1:
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            parts = pool.map(_pretrain_chunk, jobs)
    else:
        parts = [_pretrain_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def standardise(labels):
    """The product's ``--label_norm standard`` (:mod:`util.train.label_norm`: per-output z-scores, the std floored
    at 0.1 x its RMS over outputs, so an output that never varies becomes 0 instead of amplified noise):
    float32 [N, D], and the count of outputs that never vary."""
    from util.train.label_norm import DEFAULT_FLOOR, compute_stats

    mean, std = compute_stats(labels, DEFAULT_FLOOR)
    const = int((np.asarray(labels, np.float64).std(0) < 1e-6).sum())
    return ((labels - mean) / std).astype(np.float32), const


def _random_symmetry(x, gen):
    """Per-sample random element of the square's symmetry group (flips, transposition): PH is invariant.

    ``gen``: a torch.Generator on ``x``'s device (random numbers drawn there: no host-device copy)."""
    import torch

    b = x.shape[0]
    masks = torch.rand(3, b, 1, 1, 1, generator=gen, device=x.device).lt(0.5)
    x = torch.where(masks[0], x.flip(-1), x)
    x = torch.where(masks[1], x.flip(-2), x)
    return torch.where(masks[2], x.transpose(-1, -2), x)


def _random_shift(x, pad, gen):
    """Per-sample random translation by up to ``pad`` pixels (zero fill): [B, C, H, W] -> same shape.

    ``gen``: a torch.Generator on ``x``'s device."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


class DeviceBatches:
    """Batches ``(uint8 images [B, 3, S, S], targets, 0)`` drawn from tensors already on the device, augmented
    there by ``augment(x, gen)``: what :func:`util.train.engine.train_one_epoch` iterates (its ``to_device``
    then normalises the uint8 batch on the device, as for every product loader).  ``steps`` batches per pass;
    shuffled epochs over the data (``shuffle``), or one pass in order (evaluation)."""

    def __init__(self, images, targets, batch_size, steps=None, gen=None, augment=None, shuffle=True):
        self.images, self.targets, self.batch_size = images, targets, min(batch_size, images.shape[0])
        self.gen, self.augment, self.shuffle = gen, augment, shuffle
        n = images.shape[0]
        self.steps = steps if steps is not None else -(-n // self.batch_size)
        self.order, self.pos = None, n

    def __len__(self):
        return self.steps

    def __iter__(self):
        import torch

        n = self.images.shape[0]
        for s in range(self.steps):
            if not self.shuffle:
                idx = torch.arange(s * self.batch_size, min(n, (s + 1) * self.batch_size), device=self.images.device)
            else:
                if self.pos + self.batch_size > n:
                    self.order = torch.randperm(n, generator=self.gen, device=self.images.device)
                    self.pos = 0
                idx = self.order[self.pos : self.pos + self.batch_size]
                self.pos += self.batch_size
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x, self.gen)
            yield x, self.targets[idx], 0


def _engine_config(device, batch_size, amp, channels_last, epochs, weight_decay, seed=0):
    """The product's training settings for the accuracy runs: SGD with Nesterov momentum 0.9 and the cosine
    schedule over ``epochs`` (``-o sgd_nesterov_cos``), no loader workers (the data is on the device)."""
    from util.config import TrainConfig

    return TrainConfig(
        device=str(device),
        batch_size=batch_size,
        num_workers=0,
        seed=seed,
        amp=amp,
        channels_last=channels_last,
        optimizer='sgd_nesterov_cos',
        momentum=0.9,
        weight_decay=weight_decay,
        epochs=epochs,
        log_interval=10**9,
    )


def _epochs_of(steps, most=20):
    """(epochs, steps per epoch) for ``steps`` optimiser steps: the schedule steps once per epoch."""
    epochs = max(1, min(most, steps))
    return epochs, max(1, steps // epochs)


def _run_engine(model, batches, criterion, cfg, lr, task):
    """Train ``model`` with the product's engine (build_optimizer, build_scheduler, train_one_epoch with
    supervised_step) for ``cfg.epochs`` passes of ``batches``; returns the last epoch's metrics."""
    from util.train import engine

    optimizer = engine.build_optimizer([p for p in model.parameters() if p.requires_grad], cfg, lr)
    scheduler = engine.build_scheduler(optimizer, cfg)
    step = engine.supervised_step(criterion, cfg, task)
    metrics = {}
    with open(os.devnull, 'w') as null, contextlib.redirect_stderr(null):  # no progress bar in the log
        for epoch in range(1, cfg.epochs + 1):
            sums, seconds = engine.train_one_epoch(model, batches, step, optimizer, epoch, cfg)
            metrics = engine.supervised_metrics(sums, seconds, task)
            scheduler.step()
    return metrics


def pretrain(images, targets, arch, steps, batch_size, device, amp, channels_last, lr=0.1, seed=0):
    """Regress ``targets`` [N, D] from ``images`` uint8 [N, 3, S, S] (both on ``device``) for about ``steps``
    steps with the product's engine (:func:`_run_engine`: SGD, Nesterov, weight decay 1e-4, cosine over the
    epochs, MSE), random flips/transposition on the device.  Returns (the model, {'final_loss': the last
    epoch's mean loss, 'seconds', 'steps'})."""
    import torch

    import models
    from util.train import engine

    epochs, per_epoch = _epochs_of(steps)
    cfg = _engine_config(device, batch_size, amp, channels_last, epochs, 1e-4, seed)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = engine.prepare_model(models.build_model(arch, targets.shape[1]), cfg)
    batches = DeviceBatches(images, targets, batch_size, per_epoch, gen, _random_symmetry)
    t = time.perf_counter()
    metrics = _run_engine(model, batches, torch.nn.MSELoss(), cfg, lr, 'regression')
    _sync(device)
    return model, dict(final_loss=metrics['train_loss'], seconds=time.perf_counter() - t, steps=epochs * per_epoch)


def held_out_r2(model, images, targets, device, amp, channels_last, batch_size=512):
    """R^2 of the model's outputs on held-out images, by the product's ``evaluate_regression``."""
    import torch

    from util.train import engine

    cfg = _engine_config(device, batch_size, amp, channels_last, 1, 0.0)
    batches = DeviceBatches(images, targets, batch_size, shuffle=False)
    return engine.evaluate_regression(model, batches, torch.nn.MSELoss(), cfg)['val_r2']


def r_squared(pred, target):
    """1 - SSE / SST over all outputs (SST around each output's mean)."""
    sst = float(((target - target.mean(0, keepdim=True)) ** 2).sum())
    return 1.0 - float(((pred - target) ** 2).sum()) / sst if sst > 0 else float('nan')


def digits(size):
    """scikit-learn's digits as uint8 [1797, 3, size, size] (8x8 upscaled without smoothing) and int64 targets."""
    from util.io.digits import load_digit_images

    img, targets = load_digit_images(size)
    return np.repeat(img[:, None], 3, axis=1), targets


def split(targets, val_fraction, labels_per_class, seed):
    """Per-class split fixed by ``seed``: (train indices, val indices), K training images per class if K > 0
    (the same split scripts/export_digits.py writes to disk)."""
    from util.io.digits import split_indices

    return split_indices(targets, val_fraction, labels_per_class, seed)


def finetune(
    backbone_state,
    arch,
    train_x,
    train_y,
    val_x,
    val_y,
    steps,
    batch_size,
    device,
    amp,
    channels_last,
    lr=0.05,
    seed=0,
    num_classes=10,
):
    """Top-1 validation accuracy (%) after about ``steps`` steps of fine-tuning on (train_x uint8 [N,3,S,S],
    train_y), with the product's engine.

    The model is built with a fresh ``num_classes`` head under ``seed`` (so every initialisation gets the same
    head); ``backbone_state`` (a pretrained state_dict, or None for scratch) replaces everything but the head.
    Shuffled epochs of mini-batches, random shifts of up to S/16 pixels on the device, SGD (Nesterov momentum 0.9,
    weight decay 5e-4, cosine over the epochs), cross-entropy (``train_one_epoch`` + ``supervised_step``);
    the accuracy is ``evaluate_classification``'s top-1.
    """
    import torch

    import models
    from util.train import engine

    torch.manual_seed(seed)
    model = models.build_model(arch, num_classes)
    if backbone_state is not None:
        head = models.head_parameter_names(model)
        own = model.state_dict()
        keep = {k: v for k, v in backbone_state.items() if k not in head and k in own and v.shape == own[k].shape}
        missing = [k for k in own if k not in keep and k not in head]
        if missing:
            raise AssertionError(f"pretrained weights lack {missing[:3]}")
        model.load_state_dict(keep, strict=False)
    epochs, per_epoch = _epochs_of(steps)
    cfg = _engine_config(device, batch_size, amp, channels_last, epochs, 5e-4, seed)
    model = engine.prepare_model(model, cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    pad = max(1, train_x.shape[-1] // 16)
    batches = DeviceBatches(train_x, train_y, batch_size, per_epoch, gen, lambda x, g: _random_shift(x, pad, g))
    criterion = torch.nn.CrossEntropyLoss()
    _run_engine(model, batches, criterion, cfg, lr, 'classification')
    val = DeviceBatches(val_x, val_y, 512, shuffle=False)
    return engine.evaluate_classification(model, val, criterion, cfg, num_classes)[0]['val_acc1']


# ----------------------------------------------------------------------------------------------------
# the stages


class Results:
    """The results dict, rewritten to every output path after each update (so a timeout keeps them)."""

    def __init__(self, paths, info):
        self.paths = paths
        self.data = dict(info, stages={}, stage_seconds={}, notes=[])

    def set(self, stage, key, value):
        self.data['stages'].setdefault(stage, {})[key] = value
        self.save()

    def save(self):
        from util.io.fileio import write_json

        for p in self.paths:
            write_json(p, self.data)


def _say(clock, msg):
    print(f"[{clock.elapsed():6.1f} s] {msg}", flush=True)


def stage_ceiling(cfg, clock, res):
    for arch in cfg.models:
        if clock.left() < cfg.ceiling_seconds + 10:
            res.data['notes'].append(f"ceiling {arch} skipped: deadline")
            break
        r = ceiling_rate(
            arch,
            cfg.batch_size,
            cfg.ceiling_size,
            cfg.ceiling_seconds,
            cfg.device,
            cfg.amp,
            cfg.channels_last,
            warmup=cfg.warmup,
        )
        res.set('ceiling', arch, r)
        _say(
            clock,
            f"ceiling {arch}@{cfg.ceiling_size}: {r['img_s']:.0f} img/s (batch {cfg.batch_size}, "
            f"{'bf16' if cfg.amp else 'fp32'}{' + channels_last' if cfg.channels_last else ''}, "
            f"cudnn.benchmark)",
        )


def stage_pipeline(cfg, clock, res, tmp):
    import torch

    from util.config import AugmentConfig
    from util.ph.generator import GeneratorConfig
    from util.ph.labels import find_label_matrix, label_names, load_label_matrix, write_label_matrix
    from util.train.datasets import ComputedLabels, FolderPH, GeneratedPH, MatrixLabels, pretrain_transforms

    torch.backends.cudnn.benchmark = True  # as pretraining.py runs (util.train.distributed turns it on)
    folder = os.path.join(tmp, 'jpegs')
    os.makedirs(folder)
    rel, gen_rate = make_jpegs(folder, cfg.n_jpegs, cfg.jpeg_size, cfg.workers)
    res.set('pipeline', 'generator_img_s', gen_rate)
    _say(clock, f"generated {len(rel)} JPEGs of {cfg.jpeg_size} px: {gen_rate:.0f} img/s with {cfg.workers} processes")
    matrix, lab_rate = label_matrix(folder, rel, cfg.workers)
    floor = cripser_floor(folder, rel, cfg.floor_images, os.cpu_count())
    res.set('pipeline', 'label_precompute_img_s', lab_rate)
    if floor is None:
        res.data['notes'].append("cripser floor skipped: cripser is not installed (no ratios to it)")
        _say(clock, f"PH labels (diagrams + histogram): {lab_rate:.0f} img/s; cripser floor skipped (not installed)")
    else:
        res.set('pipeline', 'cripser_floor', floor)
        res.set('pipeline', 'label_precompute_vs_floor', lab_rate / floor['floor_img_s'])
        _say(
            clock,
            f"PH labels (diagrams + histogram): {lab_rate:.0f} img/s with {cfg.workers} processes; cripser-only "
            f"floor {floor['floor_img_s']:.0f} img/s ({floor['cores']} cores / {floor['cripser_ms']:.1f} ms; "
            f"Otsu + signed distance {floor['otsu_signed_distance_ms']:.1f} ms) -> "
            f"{lab_rate / floor['floor_img_s']:.2f}x floor",
        )
    # the consolidated label matrix, as PHdict.py --label_type writes it, read back as pretraining.py -pc does
    ph_dir = os.path.join(tmp, 'PH')
    os.makedirs(ph_dir)
    write_label_matrix(ph_dir, label_names('histogram'), matrix, rel, {'label_type': 'histogram'})
    loaded, names = load_label_matrix(*find_label_matrix(ph_dir, 'histogram'), expected_dim=LABEL_DIM)
    loaded = np.array(loaded)  # a writable copy: torch warns about read-only (memory-mapped) label rows
    reps = max(1, -(-cfg.epoch_images // len(rel)))
    long_rel = rel * reps  # one long epoch; the timer stops it
    targs = _train_args(cfg.device, cfg.batch_size, cfg.workers, cfg.amp, cfg.channels_last)
    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=cfg.jpeg_size, crop_size=cfg.crop_size))
    from_labels = FolderPH(
        folder, long_rel, MatrixLabels(loaded, names, long_rel, 'labels_histogram.npy'), spatial, to_tensor, 'pre'
    )
    # the same image model as the JPEGs the floor was measured on (the README's -pb 0.5 -pc 0.5)
    gcfg = GeneratorConfig(img_size=cfg.jpeg_size, prob_binary=0.5, prob_colour=0.5)
    on_the_fly = GeneratedPH(
        gcfg, 1, cfg.epoch_images, ComputedLabels(histogram_vectoriser(), 'signed_distance'), spatial, to_tensor, 'pre'
    )
    skip = steady_skip(cfg.workers)
    need = cfg.pipeline_seconds + 30 + cfg.reserve_after_pipeline  # leave the accuracy stage its time
    if clock.left() > need:
        r = loader_rate(from_labels, targs, cfg.pipeline_seconds / 2, skip)
        res.set('pipeline', 'from_labels_loader_only', r)
        _say(clock, f"loader alone from the label matrix (JPEG decode + crop + tensor): {r['img_s']:.0f} img/s")
    ceilings = res.data['stages'].get('ceiling', {})
    for arch in cfg.models:
        for name, ds in (('from_labels', from_labels), ('on_the_fly', on_the_fly)):
            if clock.left() < need:
                res.data['notes'].append(f"pipeline {name} {arch} skipped: deadline")
                continue
            r = train_rate(ds, arch, targs, cfg.pipeline_seconds, skip)
            ceil = ceilings.get(arch, {}).get('img_s')
            r['vs_ceiling'] = r['img_s'] / ceil if ceil else None
            if name == 'on_the_fly' and floor is not None:
                r['vs_floor'] = r['img_s'] / floor['floor_img_s']
            res.set('pipeline', f'{name}_{arch}', r)
            extra = f", {r['vs_ceiling']:.2f}x ceiling" if ceil else ''
            if 'vs_floor' in r:
                extra += f", {r['vs_floor']:.2f}x cripser floor"
            _say(clock, f"pretraining {name.replace('_', ' ')} {arch}@{cfg.crop_size}: {r['img_s']:.0f} img/s{extra}")


def stage_accuracy(cfg, clock, res):
    import torch

    torch.backends.cudnn.benchmark = True
    arch = 'resnet18'
    t = time.perf_counter()
    images, labels = make_pretrain_data(cfg.pre_images, cfg.pre_size, cfg.workers, seed=0)
    z, const = standardise(labels)
    n_hold = max(1, cfg.pre_images // 10)
    res.set(
        'accuracy',
        'pretrain_data',
        dict(
            images=cfg.pre_images,
            size=cfg.pre_size,
            label='histogram',
            label_dim=LABEL_DIM,
            constant_outputs=const,
            held_out=n_hold,
            seconds=time.perf_counter() - t,
        ),
    )
    _say(
        clock,
        f"{cfg.pre_images} images of {cfg.pre_size} px with PH histogram labels in "
        f"{time.perf_counter() - t:.1f} s ({const} of {LABEL_DIM} outputs constant)",
    )
    dev = cfg.device
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)
    x_train, x_hold = x_all[:-n_hold], x_all[-n_hold:]
    targets = {
        'ph': torch.from_numpy(z).to(dev),
        'random': torch.randn(z.shape, generator=torch.Generator().manual_seed(12345)).to(dev),
    }
    # steps from the time budget, measured on a throwaway run; both pretrainings get the same steps
    probe_steps = 2 if cfg.tiny else 20
    _, probe = pretrain(
        x_train, targets['ph'][:-n_hold], arch, probe_steps, cfg.pre_batch, dev, cfg.amp, cfg.channels_last
    )
    step_s = probe['seconds'] / probe_steps
    ft_reserve = cfg.ft_reserve
    budget = min(cfg.pre_seconds, max(step_s * 10, (clock.left() - ft_reserve) / 2))
    steps = max(cfg.min_pre_steps, int(budget / step_s))
    res.set(
        'accuracy',
        'pretrain_steps',
        dict(steps=steps, batch=cfg.pre_batch, step_seconds=step_s, epochs=steps * cfg.pre_batch / x_train.shape[0]),
    )
    _say(
        clock,
        f"pretraining: {steps} steps of {cfg.pre_batch} ({steps * cfg.pre_batch / x_train.shape[0]:.1f} "
        f"epochs) per label kind, {step_s * 1000:.1f} ms/step",
    )
    backbones = {}
    for kind in ('ph', 'random'):
        model, stats = pretrain(
            x_train, targets[kind][:-n_hold], arch, steps, cfg.pre_batch, dev, cfg.amp, cfg.channels_last
        )
        stats['held_out_r2'] = held_out_r2(model, x_hold, targets[kind][-n_hold:], dev, cfg.amp, cfg.channels_last)
        backbones[kind] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        del model
        res.set('accuracy', f'pretrain_{kind}', stats)
        _say(
            clock,
            f"pretrained on {kind} targets: final loss {stats['final_loss']:.3f}, held-out R^2 "
            f"{stats['held_out_r2']:.3f}, {stats['seconds']:.0f} s",
        )
    del x_all, x_train, x_hold, targets
    if str(dev).startswith('cuda'):
        torch.cuda.empty_cache()

    dx, dy = digits(cfg.ft_size)
    dx_t, dy_t = torch.from_numpy(dx).to(dev), torch.from_numpy(dy).to(dev)
    inits = {'scratch': None, 'ph': backbones['ph'], 'random': backbones['random']}
    table = {}
    per_seed_s = None
    for seed in cfg.seeds:
        if per_seed_s is not None and clock.left() < per_seed_s * 1.2:
            res.data['notes'].append(f"accuracy: seeds from {seed} on skipped (deadline)")
            _say(clock, f"skipping seeds from {seed} on: deadline")
            break
        t_seed = time.perf_counter()
        for k in cfg.labels_per_class:
            tr, va = split(dy, 0.3, k, seed)
            if cfg.max_val:
                va = np.random.default_rng(seed).permutation(va)[: cfg.max_val]
            tr_t, va_t = torch.from_numpy(tr).to(dev), torch.from_numpy(va).to(dev)
            for name, state in inits.items():
                acc = finetune(
                    state,
                    arch,
                    dx_t[tr_t],
                    dy_t[tr_t],
                    dx_t[va_t],
                    dy_t[va_t],
                    cfg.ft_steps,
                    cfg.ft_batch,
                    dev,
                    cfg.amp,
                    cfg.channels_last,
                    seed=seed,
                )
                table.setdefault(f"{'all' if k <= 0 else k}", {}).setdefault(name, []).append(acc)
        per_seed_s = time.perf_counter() - t_seed
        res.set('accuracy', 'finetune_top1', table)
        res.set(
            'accuracy',
            'finetune_setup',
            dict(
                steps=cfg.ft_steps,
                batch=cfg.ft_batch,
                size=cfg.ft_size,
                seeds_done=len(next(iter(next(iter(table.values())).values()))),
                val_fraction=0.3,
                lr=0.05,
                arch=arch,
            ),
        )
        _say(
            clock,
            f"fine-tuning seed {seed} done in {per_seed_s:.0f} s: "
            + '; '.join(f"K={k}: " + ', '.join(f"{n} {v[-1]:.1f}" for n, v in row.items()) for k, row in table.items()),
        )
    summary = {
        k: {
            n: dict(
                mean=float(np.mean(v)),
                std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                min=float(np.min(v)),
                max=float(np.max(v)),
                n=len(v),
            )
            for n, v in row.items()
        }
        for k, row in table.items()
    }
    res.set('accuracy', 'summary', summary)


def format_summary(data):
    """The short table printed last."""
    lines = [f"{data['device_name']}, {data['cores']} cores, {data['date']}"]
    st = data['stages']
    ceil = st.get('ceiling', {})
    for arch, r in ceil.items():
        lines.append(f"  ceiling {arch:34s} {r['img_s']:8.0f} img/s")
    pipe = st.get('pipeline', {})
    if 'cripser_floor' in pipe and 'label_precompute_vs_floor' in pipe:
        fl = pipe['cripser_floor']
        lines.append(f"  cripser-only floor {'':23s} {fl['floor_img_s']:8.0f} img/s")
        lines.append(
            f"  PH label precompute {'':22s} {pipe['label_precompute_img_s']:8.0f} img/s = "
            f"{pipe['label_precompute_vs_floor']:.2f}x floor (target >= {TARGET_PRECOMPUTE})"
        )
    if 'from_labels_loader_only' in pipe:
        lines.append(f"  loader alone, from labels {'':15s} {pipe['from_labels_loader_only']['img_s']:8.0f} img/s")
    for key, r in pipe.items():
        if isinstance(r, dict) and 'vs_ceiling' in r:  # the training runs
            s = f"  {key:41s} {r['img_s']:8.0f} img/s"
            if r.get('vs_ceiling'):
                target = f" (target >= {TARGET_FROM_LABELS})" if key == 'from_labels_resnet50' else ''
                s += f" = {r['vs_ceiling']:.2f}x ceiling{target}"
            if 'vs_floor' in r:
                s += f", {r['vs_floor']:.2f}x floor (target >= {TARGET_ON_THE_FLY})"
            lines.append(s)
    acc = st.get('accuracy', {})
    if 'summary' in acc:
        lines.append("  digits top-1 % (mean +- sd over seeds): labels/class | scratch | PH-pretrained | random-target")
        for k, row in acc['summary'].items():
            cells = ' | '.join(
                f"{row[n]['mean']:5.1f} +- {row[n]['std']:4.1f}" for n in ('scratch', 'ph', 'random') if n in row
            )
            lines.append(f"    {k:>4s} | {cells}")
    return '\n'.join(lines)


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
    p.add_argument(
        '--json', default=None, help="write the results here too (default: only $OUT/gpu_bench.json when OUT is set)"
    )
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
    paths = []
    if os.environ.get('OUT'):
        paths.append(os.path.join(os.environ['OUT'], 'gpu_bench.json'))
    if args.json:
        paths.append(args.json)
    info = machine_info(cfg.device)
    info['settings'] = {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool, list))}
    res = Results(paths, info)
    res.save()
    _say(
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
    if paths:
        print(f"results: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
