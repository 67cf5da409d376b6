"""The GPU bench's throughput measurements (stages (a) ``ceiling`` and (b) ``pipeline`` of bench/gpu_bench.py).

:func:`ceiling_rate` (training images/s on synthetic tensors already on the device), :func:`make_jpegs`,
:func:`label_matrix` (PHdict-style labels), :func:`cripser_floor` (cores / single-core cripser time),
:func:`train_rate` (the real loader + training loop) and :func:`loader_rate` (the loader alone).  Every training
step is the product's engine (``util.train.engine``).
"""

import contextlib
import os
import time

import numpy as np

from bench.gpu_timing import TimedBatches, sync
from util.errors import UserError

LABEL_DIM = 200


def train_args(device, batch_size, workers, amp, channels_last, seed=0):
    """The training settings of the shared engine (as pretraining.py builds them, single process)."""
    from util.config import TrainConfig

    return TrainConfig(
        device=str(device), batch_size=batch_size, num_workers=workers, seed=seed, amp=amp, channels_last=channels_last
    )


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
        sync(device)
        t0 = time.perf_counter()
        steps = 0
        while True:
            for _ in range(5):
                yield x, y, 0
            steps += 5  # the engine has launched the 5th step when it asks for the next batch
            sync(device)
            timed.update(steps=steps, seconds=time.perf_counter() - t0)
            if timed['seconds'] >= seconds:
                return

    with open(os.devnull, 'w') as null, contextlib.redirect_stderr(null):  # no progress bar in the log
        engine.train_one_epoch(model, batches(), engine.supervised_step(torch.nn.MSELoss(), cfg), opt, 1, cfg)
    return dict(img_s=timed['steps'] * batch_size / timed['seconds'], steps=timed['steps'], seconds=timed['seconds'])


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
