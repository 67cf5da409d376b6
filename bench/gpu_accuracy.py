"""The GPU bench's accuracy runs (stage (c) ``accuracy`` of bench/gpu_bench.py): pretraining data with PH labels,
pretraining on the device, held-out R^2, fine-tuning on scikit-learn's digits, all through the product's engine.
"""

import contextlib
import multiprocessing
import os
import time

import numpy as np

from bench.gpu_rates import LABEL_DIM, histogram_vectoriser
from bench.gpu_timing import sync


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
    """The product's ``--label_norm standard`` (:mod:`util.ph.label_norm`: per-output z-scores, the std floored
    at 0.1 x its RMS over outputs, so an output that never varies becomes 0 instead of amplified noise):
    float32 [N, D], and the count of outputs that never vary."""
    from util.ph.label_norm import DEFAULT_FLOOR, compute_stats

    mean, std = compute_stats(labels, DEFAULT_FLOOR)
    const = int((np.asarray(labels, np.float64).std(0) < 1e-6).sum())
    return ((labels - mean) / std).astype(np.float32), const


def random_symmetry(x, gen):
    """Per-sample random element of the square's symmetry group (flips, transposition): PH is invariant.

    ``gen``: a torch.Generator on ``x``'s device (random numbers drawn there: no host-device copy)."""
    import torch

    b = x.shape[0]
    masks = torch.rand(3, b, 1, 1, 1, generator=gen, device=x.device).lt(0.5)
    x = torch.where(masks[0], x.flip(-1), x)
    x = torch.where(masks[1], x.flip(-2), x)
    return torch.where(masks[2], x.transpose(-1, -2), x)


def random_shift(x, pad, gen):
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
    batches = DeviceBatches(images, targets, batch_size, per_epoch, gen, random_symmetry)
    t = time.perf_counter()
    metrics = _run_engine(model, batches, torch.nn.MSELoss(), cfg, lr, 'regression')
    sync(device)
    return model, dict(final_loss=metrics['train_loss'], seconds=time.perf_counter() - t, steps=epochs * per_epoch)


def held_out_r2(model, images, targets, device, amp, channels_last, batch_size=512):
    """R^2 of the model's outputs on held-out images, by the product's ``evaluate_regression``."""
    import torch

    from util.train import engine

    cfg = _engine_config(device, batch_size, amp, channels_last, 1, 0.0)
    batches = DeviceBatches(images, targets, batch_size, shuffle=False)
    return engine.evaluate_regression(model, batches, torch.nn.MSELoss(), cfg)['val_r2']


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
    batches = DeviceBatches(train_x, train_y, batch_size, per_epoch, gen, lambda x, g: random_shift(x, pad, g))
    criterion = torch.nn.CrossEntropyLoss()
    _run_engine(model, batches, criterion, cfg, lr, 'classification')
    val = DeviceBatches(val_x, val_y, 512, shuffle=False)
    return engine.evaluate_classification(model, val, criterion, cfg, num_classes)[0]['val_acc1']
