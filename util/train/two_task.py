"""The training steps of the two-task modes (-lm simultaneous, alternating) on a TwoHeads model, as step
functions of :func:`util.train.engine.train_one_epoch` (the one training loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch.nn.functional as F

from util.train import engine

if TYPE_CHECKING:
    import torch
    from torch import nn

    from util.config import TrainConfig


def _two_task_step(model, optimizer, inputs, classes, ph_labels, cfg, epoch, it):
    """One optimiser step on ``CE(classes) + ph_weight * MSE(ph_labels)`` (either may be None).

    Returns (ce, mse, correct) as detached device tensors (None for an absent term): nothing waits for the
    device here.  Both heads always enter the loss (an absent one with weight 0) so that DDP sees every
    parameter used.
    """
    with engine.autocast(cfg):
        out, ph = model(inputs)
    out, ph = out.float(), ph.float()
    loss = 0.0 * out.sum() + 0.0 * ph.sum()
    ce = mse = correct = None
    if classes is not None:
        ce_t = F.cross_entropy(out, classes)
        loss = loss + ce_t
        ce = ce_t.detach()
        correct = (out.detach().argmax(1) == classes).sum()
    if ph_labels is not None:
        mse_t = F.mse_loss(ph, ph_labels)
        loss = loss + cfg.ph_weight * mse_t
        mse = mse_t.detach()
    engine.optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_fine) or --ph_weight')
    return ce, mse, correct


def _batches(loader, cfg):
    """(inputs, targets, dropped) of a loader, moved to the device (inputs None for an all-bad batch)."""
    for inputs, targets, dropped in loader:
        if inputs is None:
            yield None, None, dropped
            continue
        yield engine.to_device(inputs, cfg), engine.targets_to_device(targets, cfg), dropped


def _epoch_metrics(sums, seconds, ph_key='train_ph_loss'):
    metrics = {
        'train_acc1': 100.0 * sums.correct / max(sums.images, 1),
        'images': int(sums.images),
        'skipped_bad': int(sums.skipped),
        ph_key: sums.ph_loss / max(sums.ph_images, 1),
        'seconds': seconds,
    }
    if hasattr(sums, 'data_wait'):
        metrics['data_wait'] = round(sums.data_wait, 4)
    return metrics, sums.loss / max(sums.images, 1)


def simultaneous_step(cfg: TrainConfig) -> Callable:
    """Step function of -lm simultaneous: samples ``(image, (class, PH label))``, both losses on every batch."""

    def step(model, inputs, targets, optimizer, sums, epoch, it):
        if inputs is None:
            return None
        ce, mse, correct = _two_task_step(model, optimizer, inputs, targets[0], targets[1].float(), cfg, epoch, it)
        n = inputs.shape[0]
        sums.loss += ce * n
        sums.correct += correct
        sums.images += n
        sums.ph_loss += mse * n
        sums.ph_images += n
        return {'ce': ce, 'ph': mse}

    return step


def train_simultaneous_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, epoch: int, cfg: TrainConfig
) -> dict:
    """One pass over a :class:`util.train.datasets.LabelledPH` loader; both losses on every batch.

    Returns {'train_loss' (CE + ph_weight x MSE), 'train_ce', 'train_ph_loss', 'train_acc1', 'images', ...}.
    """
    sums, seconds = engine.train_one_epoch(
        model, loader, simultaneous_step(cfg), optimizer, epoch, cfg, desc='simultaneous'
    )
    metrics, ce_mean = _epoch_metrics(sums, seconds)
    metrics['train_ce'] = ce_mean
    metrics['train_loss'] = ce_mean + cfg.ph_weight * metrics['train_ph_loss']
    return metrics


def _cycle(make):
    """Endless batches: iterate ``make()`` again whenever it is exhausted."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            return


def alternating_step(cfg: TrainConfig, ph_batches: Iterator) -> Callable:
    """Step function of -lm alternating: a CE step on the labelled batch (unless it was all bad), then an MSE
    step on the next batch of ``ph_batches`` (an iterator of PH-labelled batches on the device)."""

    def step(model, inputs, targets, optimizer, sums, epoch, it):
        shown = None
        if inputs is not None:
            ce, _, correct = _two_task_step(model, optimizer, inputs, targets, None, cfg, epoch, it)
            sums.loss += ce * inputs.shape[0]
            sums.correct += correct
            sums.images += inputs.shape[0]
            shown = {'ce': ce}
        ph_inputs, ph_targets, ph_dropped = next(ph_batches, (None, None, 0))
        sums.skipped += ph_dropped
        if ph_inputs is not None:
            _, mse, _ = _two_task_step(model, optimizer, ph_inputs, None, ph_targets.float(), cfg, epoch, it)
            sums.ph_loss += mse * ph_inputs.shape[0]
            sums.ph_images += ph_inputs.shape[0]
        return shown

    return step


def train_alternating_epoch(
    model: nn.Module,
    class_loader: Iterable,
    make_ph_loader: Callable[[], Iterable],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: TrainConfig,
) -> dict:
    """One pass over the labelled loader; after each labelled batch (CE step) one PH batch (MSE step), the
    PH loader restarted when exhausted.

    Returns {'train_loss' (CE), 'train_acc1', 'train_ph_loss' (MSE), 'images', 'ph_images', ...}.
    """
    ph_batches = _cycle(lambda: _batches(make_ph_loader(), cfg))
    sums, seconds = engine.train_one_epoch(
        model, class_loader, alternating_step(cfg, ph_batches), optimizer, epoch, cfg, desc='alternating'
    )
    metrics, ce_mean = _epoch_metrics(sums, seconds)
    metrics['train_loss'] = ce_mean
    metrics['ph_images'] = int(sums.ph_images)
    return metrics
