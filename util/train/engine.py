"""The training engine: optimiser and schedule, one epoch, evaluation, and ``fit`` (the epoch loop).

Patterned on torchvision's reference classification recipe: ``train_one_epoch(model, loader, step_fn, ...)`` is
the one training loop (a step function per kind of training: :func:`supervised_step` here, the two-task steps
in :mod:`util.train.two_task`), ``evaluate_*`` return metric dicts, every epoch is seeded from (seed, epoch, rank)
alone so a resumed run repeats an uninterrupted one exactly on the CPU, and ``fit`` logs and checkpoints each
epoch through :mod:`util.train.runs`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import models
from models import unwrap
from util.errors import UserError
from util.io.runlog import RunLogger
from util.train import tensorboard_log
from util.train.distributed import all_reduce_sum, is_main
from util.train.loaders import loader_workers, make_loader, release_loaders
from util.train.metrics import r_squared_of_sums
from util.train.runs import save_checkpoint, save_weights, set_rng_state
from util.train.seeding import epoch_seed, fix_random_seeds
from util.train.transforms import normalize_batch

if TYPE_CHECKING:
    import numpy as np

    from util.config import TrainConfig

OPTIMIZERS = ('sgd', 'sgd_cos', 'sgd_nesterov', 'sgd_nesterov_cos', 'adam', 'adam_cos')


# ----------------------------------------------------------------------------------------- optimisation
def build_optimizer(params: Iterable, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    name = cfg.optimizer
    if name.startswith('adam'):
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov='nesterov' in name
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine over all epochs for ``*_cos``, else x0.1 at 1/3 and 2/3 of the epochs."""
    if cfg.optimizer.endswith('_cos'):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
    milestones = sorted({max(1, cfg.epochs // 3), max(1, 2 * cfg.epochs // 3)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


# ----------------------------------------------------------------------------------------------- loops
def autocast(cfg: TrainConfig) -> torch.autocast:
    device_type = 'cuda' if str(cfg.device).startswith('cuda') else 'cpu'
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bool(cfg.amp))


def to_device(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """A batch of images on the training device: uint8 batches (what the datasets ship) are converted and
    normalised there (:func:`util.train.transforms.normalize_batch`), in channels-last when asked."""
    x = x.to(cfg.device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if x.dtype == torch.uint8:
        x = normalize_batch(x)
    return x


@dataclass
class EpochSums:
    """Running totals of one training epoch on this rank, which a step function adds to.

    Step functions add detached tensors on the device (or numbers): nothing waits for the GPU until the
    totals are read, once per ``--log_interval`` and at the end of the epoch."""

    loss: float = 0.0  # loss x images (the cross-entropy in the two-task modes)
    correct: float = 0.0  # top-1 hits (classification)
    images: float = 0.0  # images of that loss
    ph_loss: float = 0.0  # two-task modes: PH MSE x PH images
    ph_images: float = 0.0
    skipped: float = 0.0  # undecodable images dropped

    def values(self) -> list[float]:
        """The totals as floats (one host synchronisation for all of them)."""
        vals = list(astuple(self))
        where = [i for i, v in enumerate(vals) if torch.is_tensor(v)]
        if where:
            got = torch.stack([vals[i].detach().double().reshape(()) for i in where]).tolist()
            for i, v in zip(where, got):
                vals[i] = v
        return [float(v) for v in vals]

    def reduced(self, cfg):
        """The totals (floats) summed over all ranks."""
        return EpochSums(*all_reduce_sum(self.values(), cfg, device=cfg.device))


class NonFiniteWatch:
    """Notes, on the device, whether any loss of the epoch was not finite (no host synchronisation per step);
    :meth:`check` (at each log interval and at the end of the epoch) raises a UserError saying what to lower."""

    def __init__(self):
        self.bad = self.first = None
        self.epoch, self.what = None, ''

    def add(self, loss, epoch, it, what_to_lower):
        bad = ~torch.isfinite(loss.detach())
        self.bad = bad if self.bad is None else self.bad | bad
        if self.first is None:
            self.first, self.epoch, self.what = it, epoch, what_to_lower

    def check(self, upto):
        if self.bad is not None and bool(self.bad):
            where = f"iteration {upto}" if self.first == upto else f"iterations {self.first}-{upto}"
            raise UserError(
                f"the training loss was not finite at epoch {self.epoch}, {where}: lower {self.what} or check "
                "the labels"
            )
        self.bad = self.first = None


def targets_to_device(targets: Any, cfg: TrainConfig) -> Any:
    """A target tensor, or a tuple of them (two-task samples), on the training device."""
    if isinstance(targets, (list, tuple)):
        return [t.to(cfg.device, non_blocking=True) for t in targets]
    return targets.to(cfg.device, non_blocking=True)


#: the data-wait share of an epoch above which the log says that the loader, not the model, sets the pace
DATA_BOUND_SHARE = 0.2


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    step_fn: Callable,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: TrainConfig,
    desc: str = 'train',
) -> tuple[EpochSums, float]:
    """One pass over ``loader``: the loop every learning mode shares; returns (:class:`EpochSums` summed over
    all ranks, seconds).

    For each batch ``(inputs, targets, dropped)`` (moved to the device; ``inputs`` None for an all-bad batch)
    it calls ``step_fn(model, inputs, targets, optimizer, sums, epoch, it)``, which takes its optimiser
    step(s), adds detached device tensors to ``sums`` and returns the figures for the progress bar (tensors, or
    None).  The host waits for the device only every ``--log_interval`` iterations (bar figures, the non-finite
    loss check) and at the end of the epoch.  ``sums.data_wait`` is the share of the epoch's time spent
    waiting for the loader rather than in steps (also on the bar as ``data``).
    """
    model.train()
    if cfg.freeze_encoder:
        _freeze_encoder_modes(model)
    norms = batch_norm_in_training(model)
    sums = EpochSums()
    watch = NonFiniteWatch()
    start = time.time()
    waiting = stepping = 0.0
    interval = max(1, cfg.log_interval)
    bar = tqdm(
        loader, desc=f'{desc} epoch {epoch}', disable=not is_main(cfg), leave=False, file=sys.stderr, dynamic_ncols=True
    )
    it = -1
    ready = time.perf_counter()
    with _watching(watch):
        for it, (inputs, targets, dropped) in enumerate(bar):
            got = time.perf_counter()
            waiting += got - ready
            sums.skipped += dropped
            if inputs is not None and norms and inputs.shape[0] == 1:  # e.g. one survivor of undecodable images
                print(
                    "warning: a batch of one image was dropped (BatchNorm needs 2 or more per batch)"
                    + (f"; the batch's other {dropped} image(s) could not be read" if dropped else ''),
                    file=sys.stderr,
                    flush=True,
                )
                inputs = targets = None
            if inputs is not None:
                inputs, targets = to_device(inputs, cfg), targets_to_device(targets, cfg)
            shown = step_fn(model, inputs, targets, optimizer, sums, epoch, it)
            ready = time.perf_counter()
            stepping += ready - got
            if it % interval == 0:
                watch.check(it)
                if shown and is_main(cfg):
                    bar.set_postfix(**_shown(shown), data=f'{waiting / max(waiting + stepping, 1e-9):.0%}')
        watch.check(max(it, 0))
    bar.close()
    out = sums.reduced(cfg)
    out.data_wait = waiting / max(waiting + stepping, 1e-9)
    return out, time.time() - start


_WATCH = []  # the NonFiniteWatch of the epoch running in this process (optimizer_step reports to it)


@contextlib.contextmanager
def _watching(watch):
    _WATCH.append(watch)
    try:
        yield watch
    finally:
        _WATCH.pop()


def _shown(figures):
    """Bar figures: tensors read in one synchronisation, then formatted."""
    keys = [k for k, v in figures.items() if torch.is_tensor(v)]
    if keys:
        got = torch.stack([figures[k].detach().float().reshape(()) for k in keys]).tolist()
        figures = dict(figures, **dict(zip(keys, got)))
    return {k: f'{v:.4g}' if isinstance(v, float) else str(v) for k, v in figures.items()}


def supervised_step(criterion: nn.Module, cfg: TrainConfig, task: str = 'regression') -> Callable:
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
        loss = loss.detach()
        sums.loss += loss * n
        sums.images += n
        if task == 'classification':
            sums.correct += (outputs.detach().argmax(1) == targets).sum()
        return {'loss': loss, 'lr': optimizer.param_groups[0]['lr']}

    return step


def supervised_metrics(sums: EpochSums, seconds: float, task: str = 'regression') -> dict:
    """The log record part of a single-task epoch: {'train_loss', 'images', 'skipped_bad', 'seconds',
    'data_wait', ['train_acc1']}; the loss is averaged over all images of all ranks."""
    n = sums.images
    metrics = {
        'train_loss': sums.loss / max(n, 1),
        'images': int(n),
        'skipped_bad': int(sums.skipped),
        'seconds': seconds,
    }
    if task == 'classification':
        metrics['train_acc1'] = 100.0 * sums.correct / max(n, 1)
    if hasattr(sums, 'data_wait'):
        metrics['data_wait'] = round(sums.data_wait, 4)
    return metrics


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, epoch: int, it: int, what_to_lower: str
) -> None:
    """Backpropagate ``loss`` and step.  A non-finite loss stops the run with a message saying what to lower:
    inside :func:`train_one_epoch` it is noted on the device and reported at the next log interval (no host
    synchronisation per step); called on its own, it is checked at once."""
    if _WATCH:
        _WATCH[-1].add(loss, epoch, it, what_to_lower)
    elif not torch.isfinite(loss):
        raise UserError(
            f"the training loss became {loss.item()} at epoch {epoch}, iteration {it}: lower {what_to_lower} or "
            "check the labels"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def batch_norm_in_training(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that train mode makes normalise over the batch (none of them can take a
    batch of one image)."""
    return [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


def _first_image(dataset):
    """The path of a data set's first image, where it tells (ImageFolder samples, our folders' rel_paths)."""
    items = getattr(dataset, 'samples', None)
    if items:
        return items[0][0]
    rel = getattr(dataset, 'rel_paths', None)
    return os.path.join(getattr(dataset, 'root', ''), rel[0]) if rel else None


def check_trainable(train_set: Any, cfg: TrainConfig, arch: str | None = None, flag: str = '-t') -> None:
    """Refuse, before a run folder is made, a training set of fewer than 2 images (named) and ``-b 1`` with an
    architecture whose BatchNorm layers train (a batch of one image: "Expected more than 1 value per channel")."""
    n = len(train_set) if train_set is not None else None
    if n is not None and n < 2:
        first = _first_image(train_set)
        raise UserError(
            f"the training set ({flag}) holds {n} image{'' if n == 1 else 's'}"
            + (f" ({first})" if first else '')
            + "; training needs at least 2 (BatchNorm normalises over the images of a batch): add images"
        )
    if arch and cfg.batch_size < 2:
        model = models.skeleton(arch).train()
        if cfg.freeze_encoder:
            _freeze_encoder_modes(model)
        if batch_norm_in_training(model):
            raise UserError(f"-b 1: the BatchNorm layers of {arch} need at least 2 images per batch; use -b 2 or more")


def _freeze_encoder_modes(model):
    """Keep every module but the head in eval mode (BatchNorm statistics and dropout stay untouched)."""
    _, _, head = models.get_head(unwrap(model))
    head_modules = set(head.modules())
    for m in unwrap(model).modules():
        if m not in head_modules:
            m.training = False


@torch.no_grad()
def evaluate_regression(
    model: nn.Module, loader: Iterable, criterion: nn.Module, cfg: TrainConfig, prefix: str = 'val'
) -> dict:
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
    r2 = r_squared_of_sums(sse, (s2 - s1**2 / n).sum().item())
    return {f'{prefix}_loss': loss_sum / n, f'{prefix}_r2': r2, f'{prefix}_images': n}


@torch.no_grad()
def evaluate_classification(
    model: nn.Module, loader: Iterable, criterion: nn.Module, cfg: TrainConfig, num_classes: int, prefix: str = 'val'
) -> tuple[dict, np.ndarray]:
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


def data_wait_note(record: dict, cfg: TrainConfig) -> str | None:
    """A line for the log when the epoch spent more than :data:`DATA_BOUND_SHARE` of its time waiting for the
    loader (the loader, not the model, set the pace), else None."""
    share = record.get('data_wait')
    if share is None or share <= DATA_BOUND_SHARE:
        return None
    return (
        f"note: epoch {record.get('epoch')} waited for data {share:.0%} of its time with {loader_workers(cfg)} "
        "loader workers per process: the loader, not the model, is the bottleneck (more cores or --num_workers, "
        "a label matrix from PHdict.py instead of PH in the loader, or smaller images help)"
    )


def format_metrics(record: dict) -> str:
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f'{k}={v:.4g}' if not math.isnan(v) else f'{k}=nan')
        else:
            parts.append(f'{k}={v}')
    return ' '.join(parts)


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Move to the device (channels-last when asked) and wrap in DDP when distributed."""
    model = model.to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.distributed:
        ids = [torch.device(cfg.device).index] if str(cfg.device).startswith('cuda') else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def fit(
    model: nn.Module,
    criterion: nn.Module | None,
    train_set: Any,
    cfg: TrainConfig,
    *,
    run_dir: str,
    lr: float,
    task: str,
    weights_name: str,
    evaluate: Callable | None = None,
    checkpoint: dict | None = None,
    params: list | None = None,
    train_epoch: Callable | None = None,
    tags: dict | None = None,
    export: Callable | None = None,
    meta: dict | None = None,
) -> list[dict]:
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
    try:
        for epoch in range(start, last + 1):
            fix_random_seeds(epoch_seed(cfg, epoch))
            record = {'epoch': epoch, 'lr': optimizer.param_groups[0]['lr'], **(tags or {})}
            if train_epoch is None:
                if hasattr(train_set, 'set_epoch'):
                    train_set.set_epoch(epoch - 1)
                loader = make_loader(train_set, cfg, epoch, shuffle=True, train=True)
                step = supervised_step(criterion, cfg, task)
                sums, seconds = train_one_epoch(model, loader, step, optimizer, epoch, cfg)
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
                note = data_wait_note(record, cfg)
                if note:
                    print(note, flush=True)
            records.append(record)
    finally:
        release_loaders(cfg)
        if board is not None:
            board.close()
    logger.close()
    return records
