"""The training engine: optimiser and schedule, one epoch, evaluation, and ``fit`` (the epoch loop).

Patterned on torchvision's reference classification recipe: ``train_one_epoch(model, loader, step_fn, ...)`` is
the one training loop (a step function per kind of training: :func:`supervised_step` here, the two-task steps
in :mod:`util.train.two_task`), ``evaluate_*`` return metric dicts, every epoch is seeded from (seed, epoch, rank)
alone so a resumed run repeats an uninterrupted one exactly on the CPU, and ``fit`` logs and checkpoints each
epoch through :mod:`util.train.runs`.
"""

import math
import os
import sys
import time
from dataclasses import astuple, dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import models
from models import unwrap
from util.errors import UserError
from util.train import tensorboard_log
from util.train.distributed import all_reduce_sum, is_main
from util.train.runs import RunLogger, save_checkpoint, save_weights, set_rng_state
from util.train.seeding import epoch_seed, fix_random_seeds, worker_init_fn

OPTIMIZERS = ('sgd', 'sgd_cos', 'sgd_nesterov', 'sgd_nesterov_cos', 'adam', 'adam_cos')


# ----------------------------------------------------------------------------------------- optimisation
def build_optimizer(params, cfg, lr):
    name = cfg.optimizer
    if name.startswith('adam'):
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov='nesterov' in name
    )


def build_scheduler(optimizer, cfg):
    """Per-epoch schedule: cosine over all epochs for ``*_cos``, else x0.1 at 1/3 and 2/3 of the epochs."""
    if cfg.optimizer.endswith('_cos'):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
    milestones = sorted({max(1, cfg.epochs // 3), max(1, 2 * cfg.epochs // 3)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


# ----------------------------------------------------------------------------------------------- loops
def collate_skip_bad(batch):
    """Default collate that drops samples a dataset returned as ``None`` (undecodable images).

    Returns ``(inputs, targets, n_dropped)``; inputs is None when the whole batch was bad.
    """
    good = [b for b in batch if b is not None]
    dropped = len(batch) - len(good)
    if not good:
        return None, None, dropped
    inputs, targets = torch.utils.data.default_collate(good)
    return inputs, targets, dropped


def autocast(cfg):
    device_type = 'cuda' if str(cfg.device).startswith('cuda') else 'cpu'
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bool(cfg.amp))


def to_device(x, cfg):
    x = x.to(cfg.device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass
class EpochSums:
    """Running totals of one training epoch on this rank, which a step function adds to."""

    loss: float = 0.0  # loss x images (the cross-entropy in the two-task modes)
    correct: float = 0.0  # top-1 hits (classification)
    images: float = 0.0  # images of that loss
    ph_loss: float = 0.0  # two-task modes: PH MSE x PH images
    ph_images: float = 0.0
    skipped: float = 0.0  # undecodable images dropped

    def reduced(self, cfg):
        """The totals summed over all ranks."""
        return EpochSums(*all_reduce_sum(list(astuple(self)), cfg, device=cfg.device))


def targets_to_device(targets, cfg):
    """A target tensor, or a tuple of them (two-task samples), on the training device."""
    if isinstance(targets, (list, tuple)):
        return [t.to(cfg.device, non_blocking=True) for t in targets]
    return targets.to(cfg.device, non_blocking=True)


def train_one_epoch(model, loader, step_fn, optimizer, epoch, cfg, desc='train'):
    """One pass over ``loader``: the loop every learning mode shares; returns (:class:`EpochSums` summed over
    all ranks, seconds).

    For each batch ``(inputs, targets, dropped)`` (moved to the device; ``inputs`` None for an all-bad batch)
    it calls ``step_fn(model, inputs, targets, optimizer, sums, epoch, it)``, which takes its optimiser
    step(s), adds to ``sums`` and returns the figures for the progress bar (or None). The bar also shows the
    share of the epoch's time spent waiting for data (``data``) rather than in steps.
    """
    model.train()
    if cfg.freeze_encoder:
        _freeze_encoder_modes(model)
    sums = EpochSums()
    start = time.time()
    waiting = stepping = 0.0
    bar = tqdm(
        loader, desc=f'{desc} epoch {epoch}', disable=not is_main(cfg), leave=False, file=sys.stderr, dynamic_ncols=True
    )
    ready = time.perf_counter()
    for it, (inputs, targets, dropped) in enumerate(bar):
        got = time.perf_counter()
        waiting += got - ready
        sums.skipped += dropped
        if inputs is not None:
            inputs, targets = to_device(inputs, cfg), targets_to_device(targets, cfg)
        shown = step_fn(model, inputs, targets, optimizer, sums, epoch, it)
        ready = time.perf_counter()
        stepping += ready - got
        if shown and is_main(cfg) and it % max(1, cfg.log_interval) == 0:
            bar.set_postfix(**shown, data=f'{waiting / max(waiting + stepping, 1e-9):.0%}')
    bar.close()
    return sums.reduced(cfg), time.time() - start


def supervised_step(criterion, cfg, task='regression'):
    """The step function of single-task training: ``criterion`` on the model's output; ``task`` is
    'regression' (MSE on label vectors) or 'classification' (cross-entropy, top-1 hits counted)."""

    def step(model, inputs, targets, optimizer, sums, epoch, it):
        if inputs is None:
            return None
        with autocast(cfg):
            outputs = model(inputs)
            if isinstance(outputs, tuple):  # inception/googlenet auxiliary outputs in train mode
                outputs = outputs[0]
            loss = criterion(outputs.float(), targets)
        optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_pre/--lr_fine)')
        n = inputs.shape[0]
        sums.loss += loss.item() * n
        sums.images += n
        if task == 'classification':
            sums.correct += (outputs.argmax(1) == targets).sum().item()
        return {'loss': f'{loss.item():.4g}', 'lr': f"{optimizer.param_groups[0]['lr']:.3g}"}

    return step


def supervised_metrics(sums, seconds, task='regression'):
    """The log record part of a single-task epoch: {'train_loss', 'images', 'skipped_bad', 'seconds',
    ['train_acc1']}; the loss is averaged over all images of all ranks."""
    n = sums.images
    metrics = {
        'train_loss': sums.loss / max(n, 1),
        'images': int(n),
        'skipped_bad': int(sums.skipped),
        'seconds': seconds,
    }
    if task == 'classification':
        metrics['train_acc1'] = 100.0 * sums.correct / max(n, 1)
    return metrics


def optimizer_step(loss, optimizer, epoch, it, what_to_lower):
    """Backpropagate ``loss`` and step, refusing a non-finite loss with a message saying what to lower."""
    if not torch.isfinite(loss):
        raise UserError(
            f"the training loss became {loss.item()} at epoch {epoch}, iteration {it}: lower "
            f"{what_to_lower} or check the labels"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _freeze_encoder_modes(model):
    """Keep every module but the head in eval mode (BatchNorm statistics and dropout stay untouched)."""
    _, _, head = models.get_head(unwrap(model))
    head_modules = set(head.modules())
    for m in unwrap(model).modules():
        if m not in head_modules:
            m.training = False


@torch.no_grad()
def evaluate_regression(model, loader, criterion, cfg, prefix='val'):
    """MSE and R^2 of label-vector predictions: {'val_loss', 'val_r2', 'val_images'}.

    R^2 = 1 - sum((y - y_hat)^2) / sum((y - mean_y)^2), the mean taken per output over the whole set.
    """
    model.eval()
    sse = 0.0
    n = 0
    s1 = None
    s2 = None
    loss_sum = 0.0
    for inputs, targets, _ in loader:
        if inputs is None:
            continue
        inputs, targets = to_device(inputs, cfg), targets.to(cfg.device).double()
        with autocast(cfg):
            outputs = model(inputs)
        outputs = outputs.double()
        loss_sum += criterion(outputs.float(), targets.float()).item() * inputs.shape[0]
        sse += ((outputs - targets) ** 2).sum().item()
        s1 = targets.sum(0) if s1 is None else s1 + targets.sum(0)
        s2 = (targets**2).sum(0) if s2 is None else s2 + (targets**2).sum(0)
        n += inputs.shape[0]
    if n == 0:
        return {}
    sst = (s2 - s1**2 / n).sum().item()
    r2 = 1.0 - sse / sst if sst > 0 else float('nan')
    return {f'{prefix}_loss': loss_sum / n, f'{prefix}_r2': r2, f'{prefix}_images': n}


@torch.no_grad()
def evaluate_classification(model, loader, criterion, cfg, num_classes, prefix='val'):
    """Loss, top-1 and top-k (k = min(5, classes)) accuracy, and the confusion matrix [K, K] (rows = truth)."""
    model.eval()
    k = min(5, num_classes)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top1, topk, n, skipped = 0.0, 0, 0, 0, 0
    for inputs, targets, dropped in loader:
        skipped += dropped
        if inputs is None:
            continue
        inputs, targets = to_device(inputs, cfg), targets.to(cfg.device)
        with autocast(cfg):
            outputs = model(inputs)
        outputs = outputs.float()
        loss_sum += criterion(outputs, targets).item() * inputs.shape[0]
        pred = outputs.topk(k, dim=1).indices
        top1 += (pred[:, 0] == targets).sum().item()
        topk += (pred == targets[:, None]).any(1).sum().item()
        n += inputs.shape[0]
        idx = targets.cpu() * num_classes + pred[:, 0].cpu()
        cm += torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
    if n == 0:
        return {}, cm.numpy()
    return (
        {
            f'{prefix}_loss': loss_sum / n,
            f'{prefix}_acc1': 100.0 * top1 / n,
            f'{prefix}_acc{k}': 100.0 * topk / n,
            f'{prefix}_images': n,
            f'{prefix}_skipped_bad': skipped,
        },
        cm.numpy(),
    )


def format_metrics(record):
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f'{k}={v:.4g}' if not math.isnan(v) else f'{k}=nan')
        else:
            parts.append(f'{k}={v}')
    return ' '.join(parts)


def make_loader(dataset, cfg, epoch, shuffle=True, train=True):
    """A DataLoader for one epoch, seeded from (seed, epoch, rank) so any epoch can be replayed exactly.

    Under DDP a DistributedSampler splits the data between ranks. Training drops the last incomplete
    batch when the set holds at least one full batch (BatchNorm needs more than one sample).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    generator = torch.Generator()
    generator.manual_seed(epoch_seed(cfg, epoch))
    drop_last = train and len(dataset) >= cfg.batch_size * max(1, cfg.world_size)
    sampler = None
    if cfg.distributed and train:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=cfg.seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=str(cfg.device).startswith('cuda'),
        drop_last=drop_last,
        worker_init_fn=getattr(dataset, 'worker_init', worker_init_fn),
        generator=generator,
        collate_fn=collate_skip_bad,
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )


def prepare_model(model, cfg):
    """Move to the device (channels-last when asked) and wrap in DDP when distributed."""
    model = model.to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.distributed:
        ids = [torch.device(cfg.device).index] if str(cfg.device).startswith('cuda') else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def fit(
    model,
    criterion,
    train_set,
    cfg,
    *,
    run_dir,
    lr,
    task,
    weights_name,
    evaluate=None,
    checkpoint=None,
    params=None,
    train_epoch=None,
    tags=None,
    export=None,
    meta=None,
):
    """The epoch loop shared by both scripts; returns the list of per-epoch records.

    Per epoch: train, step the schedule, ``evaluate(model, epoch) -> dict`` on rank 0, append a record to
    log.jsonl, write checkpoint.pth (every epoch, atomically) and ``weights_name.format(epoch=E)`` every
    ``--save-interval`` epochs and at the last one. Each epoch is seeded from (seed, epoch, rank) alone, so
    a run resumed from ``checkpoint`` repeats the uninterrupted one exactly on the CPU.

    ``train_epoch(model, optimizer, epoch) -> dict`` replaces the default pass over ``train_set`` (which may
    then be None); ``tags`` (e.g. ``{'mode': ..., 'phase': ...}``) are added to every log record and to the
    checkpoint; ``export(bare_model) -> nn.Module`` picks what the weights files hold (default: the model).
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    optimizer = build_optimizer(params, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg)
    start = cfg.start_epoch
    if checkpoint is not None:
        unwrap(model).load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['lr_scheduler'])
        if 'rng' in checkpoint:
            set_rng_state(checkpoint['rng'])
        start = int(checkpoint['epoch']) + 1
    elif start > 1:
        for _ in range(start - 1):
            scheduler.step()
    logger = RunLogger(run_dir, enabled=is_main(cfg))
    if checkpoint is not None:
        logger.truncate_after(start - 1)
    board = tensorboard_log.open_log(cfg.tensorboard and is_main(cfg), run_dir, first_epoch=start)
    records = []
    last = cfg.epochs if cfg.stop_after < 1 else min(cfg.epochs, start + cfg.stop_after - 1)
    for epoch in range(start, last + 1):
        fix_random_seeds(epoch_seed(cfg, epoch))
        record = {'epoch': epoch, 'lr': optimizer.param_groups[0]['lr'], **(tags or {})}
        if train_epoch is None:
            if hasattr(train_set, 'set_epoch'):
                train_set.set_epoch(epoch - 1)
            loader = make_loader(train_set, cfg, epoch, shuffle=True, train=True)
            sums, seconds = train_one_epoch(model, loader, supervised_step(criterion, cfg, task), optimizer, epoch, cfg)
            record.update(supervised_metrics(sums, seconds, task))
        else:
            record.update(train_epoch(model, optimizer, epoch))
        scheduler.step()
        if evaluate is not None and is_main(cfg):
            record.update(evaluate(unwrap(model), epoch))
        if cfg.distributed:
            dist.barrier()
        if is_main(cfg):
            logger.log(record)
            if board is not None:
                board.log(record, unwrap(model))
            save_checkpoint(run_dir, model, optimizer, scheduler, epoch, dict(meta or {}, **(tags or {})))
            if epoch % cfg.save_interval == 0 or epoch == cfg.epochs:
                save_weights(
                    os.path.join(run_dir, weights_name.format(epoch=epoch)),
                    model if export is None else export(unwrap(model)),
                )
            print(format_metrics(record), flush=True)
        records.append(record)
    logger.close()
    if board is not None:
        board.close()
    return records
