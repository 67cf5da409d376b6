"""The training steps of the two-task modes (-lm simultaneous, alternating) on a TwoHeads model."""
import sys
import time
from dataclasses import astuple, dataclass

import torch.nn.functional as F
from tqdm import tqdm

from util import distributed, engine


def _two_task_step(model, optimizer, inputs, classes, ph_labels, cfg, epoch, it):
    """One optimiser step on ``CE(classes) + ph_weight * MSE(ph_labels)`` (either may be None).

    Returns (ce, mse, correct) as floats/ints (None for an absent term). Both heads always enter the loss
    (an absent one with weight 0) so that DDP sees every parameter used.
    """
    with engine.autocast(cfg):
        out, ph = model(inputs)
    out, ph = out.float(), ph.float()
    loss = 0.0 * out.sum() + 0.0 * ph.sum()
    ce = mse = correct = None
    if classes is not None:
        ce_t = F.cross_entropy(out, classes)
        loss = loss + ce_t
        ce = ce_t.item()
        correct = (out.argmax(1) == classes).sum().item()
    if ph_labels is not None:
        mse_t = F.mse_loss(ph, ph_labels)
        loss = loss + cfg.ph_weight * mse_t
        mse = mse_t.item()
    engine.optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_fine) or --ph_weight')
    return ce, mse, correct


def _batches(loader, cfg):
    """(inputs, targets, dropped) of a loader, moved to the device (inputs None for an all-bad batch)."""
    for inputs, targets, dropped in loader:
        if inputs is None:
            yield None, None, dropped
            continue
        inputs = engine.to_device(inputs, cfg)
        if isinstance(targets, (list, tuple)):
            targets = [t.to(cfg.device, non_blocking=True) for t in targets]
        else:
            targets = targets.to(cfg.device, non_blocking=True)
        yield inputs, targets, dropped


@dataclass
class EpochSums:
    """Running totals of one two-task epoch on this rank."""
    ce: float = 0.0        # cross-entropy x images
    correct: float = 0.0   # top-1 hits
    images: float = 0.0    # labelled images
    mse: float = 0.0       # PH MSE x PH images
    ph_images: float = 0.0
    skipped: float = 0.0   # undecodable images dropped

    def reduced(self, cfg):
        """The totals summed over all ranks."""
        return EpochSums(*distributed.all_reduce_sum(list(astuple(self)), cfg, device=cfg.device))


def _epoch_metrics(sums, cfg, start, ph_key='train_ph_loss'):
    ce_sum, correct, n, mse_sum, n_ph, skipped = astuple(sums.reduced(cfg))
    metrics = {'train_acc1': 100.0 * correct / max(n, 1), 'images': int(n), 'skipped_bad': int(skipped),
               ph_key: mse_sum / max(n_ph, 1), 'seconds': time.time() - start}
    return metrics, ce_sum / max(n, 1)


def train_simultaneous_epoch(model, loader, optimizer, epoch, cfg):
    """One pass over a :class:`util.datasets.LabelledPH` loader; both losses on every batch.

    Returns {'train_loss' (CE + ph_weight x MSE), 'train_ce', 'train_ph_loss', 'train_acc1', 'images', ...}.
    """
    model.train()
    sums = EpochSums()
    start = time.time()
    bar = tqdm(_batches(loader, cfg), total=len(loader), desc=f'simultaneous epoch {epoch}',
               disable=not distributed.is_main(cfg), leave=False, file=sys.stderr, dynamic_ncols=True)
    for it, (inputs, targets, dropped) in enumerate(bar):
        sums.skipped += dropped
        if inputs is None:
            continue
        ce, mse, correct = _two_task_step(model, optimizer, inputs, targets[0], targets[1].float(), cfg, epoch, it)
        n = inputs.shape[0]
        sums.ce += ce * n
        sums.correct += correct
        sums.images += n
        sums.mse += mse * n
        sums.ph_images += n
        if distributed.is_main(cfg) and it % max(1, cfg.log_interval) == 0:
            bar.set_postfix(ce=f'{ce:.4g}', ph=f'{mse:.4g}')
    bar.close()
    metrics, ce_mean = _epoch_metrics(sums, cfg, start)
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


def train_alternating_epoch(model, class_loader, make_ph_loader, optimizer, epoch, cfg):
    """One pass over the labelled loader; after each labelled batch (CE step) one PH batch (MSE step), the
    PH loader restarted when exhausted.

    Returns {'train_loss' (CE), 'train_acc1', 'train_ph_loss' (MSE), 'images', 'ph_images', ...}.
    """
    model.train()
    sums = EpochSums()
    start = time.time()
    ph_batches = _cycle(lambda: _batches(make_ph_loader(), cfg))
    bar = tqdm(_batches(class_loader, cfg), total=len(class_loader), desc=f'alternating epoch {epoch}',
               disable=not distributed.is_main(cfg), leave=False, file=sys.stderr, dynamic_ncols=True)
    for it, (inputs, targets, dropped) in enumerate(bar):
        sums.skipped += dropped
        if inputs is not None:
            ce, _, correct = _two_task_step(model, optimizer, inputs, targets, None, cfg, epoch, it)
            sums.ce += ce * inputs.shape[0]
            sums.correct += correct
            sums.images += inputs.shape[0]
        ph_inputs, ph_targets, ph_dropped = next(ph_batches, (None, None, 0))
        sums.skipped += ph_dropped
        if ph_inputs is not None:
            _, mse, _ = _two_task_step(model, optimizer, ph_inputs, None, ph_targets.float(), cfg, epoch, it)
            sums.mse += mse * ph_inputs.shape[0]
            sums.ph_images += ph_inputs.shape[0]
        if distributed.is_main(cfg) and it % max(1, cfg.log_interval) == 0 and inputs is not None:
            bar.set_postfix(ce=f'{ce:.4g}')
    bar.close()
    metrics, ce_mean = _epoch_metrics(sums, cfg, start)
    metrics['train_loss'] = ce_mean
    metrics['ph_images'] = int(distributed.all_reduce_sum([sums.ph_images], cfg, device=cfg.device)[0])
    return metrics


