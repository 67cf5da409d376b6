"""``-lm contrastive``: instance discrimination beside the PH regression (issue 28, 2d).

Each synthetic image (generated on the fly, or a folder -t with its PH labels as -lm pretraining reads them) is
seen as two augmented views (:func:`view_transform`: a random-resized crop, flips, and for colour images the
colour steps of ``--aug_plus``); the loss is

    NT-Xent(projections of the two views; --temperature) + --ph_weight x MSE(PH predictions of both views, label)

The projection head is a small MLP on the pooled backbone features (:class:`models.projection.ContrastiveNet`);
the PH head is the network's own head, so the weights files ``{usenet}_epoch{E}.pth`` are laid out as
-lm pretraining's and fine-tuning loads them with ``-pw``.  Controls: ``--ph_weight 0`` is contrastive learning
alone (no PH label is computed or read), and contrastive + shuffled PH labels is this mode on a shuffled label
matrix (``-t DIR -pd SHUFFLED -pc``, bench/probe.py's ``shuffled_copy``) or with ``--label_type random``.

Under DDP each process contrasts the views of its own batch (the negatives are not gathered across processes).
log.jsonl holds ``train_contrastive_loss``, ``train_ph_loss`` (absent with --ph_weight 0), ``train_loss`` (their
weighted sum), ``train_pair_acc1`` (how often a view's nearest other view is its pair) and, with PH labels and a
validation set, the PH head's ``val_loss`` / ``val_r2``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

import models
from models.projection import ContrastiveNet, PHPrediction
from util.config import AugmentConfig, RunConfig, TrainConfig, record, resolve_num_classes
from util.errors import UserError
from util.io import fileio
from util.train import distributed, engine, runs, sources
from util.train.reports import pictures
from util.train.transforms import ToUint8Tensor, normalize_batch, photometric_transforms


# -------------------------------------------------------------------------------------------------- loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The NT-Xent loss (SimCLR) of paired projections ``z1``, ``z2`` ``[N, K]``: the 2N vectors are
    L2-normalised; each is an anchor whose positive is its pair and whose negatives are the other 2N - 2;
    the loss is the cross-entropy of picking the positive among the 2N - 1 others by cosine similarity /
    ``temperature``, averaged over the 2N anchors. Returns (loss, the number of anchors whose most similar other
    vector is their pair, detached)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float('-inf'))
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, pair), (logits.detach().argmax(1) == pair).sum()


# ------------------------------------------------------------------------------------------------- views
class _Colour:
    """The colour steps, applied to colour images only (a grey image, R = G = B, is left as it is)."""

    def __init__(self, steps):
        self.steps = T.Compose(steps)

    def __call__(self, img):
        if img.mode == 'L':
            return img
        a = np.asarray(img)
        if a.ndim == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            return img
        return self.steps(img if img.mode == 'RGB' else img.convert('RGB'))

    def __repr__(self):
        return f'{type(self).__name__}({self.steps!r})'


def view_transform(aug: AugmentConfig) -> Callable:
    """PIL -> uint8 ``[3, crop, crop]``: one augmented view. RandomResizedCrop(crop, scale 0.2-1), horizontal and
    vertical flips (none with --no-hflip), then for colour images the photometric steps of --aug_plus (colour
    jitter p=0.8, greyscale p=0.2, blur p=0.5). The engine normalises uint8 batches on the device."""
    steps = [T.RandomResizedCrop(aug.crop_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BILINEAR)]
    if aug.hflip is not False:
        steps += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
    steps.append(_Colour(photometric_transforms(replace(aug, aug_plus=True))))
    return T.Compose(steps + [ToUint8Tensor()])


class TwoViews:
    """PIL -> uint8 ``[2, 3, crop, crop]``: two independent views of one image."""

    def __init__(self, aug):
        self.view = view_transform(aug)

    def __call__(self, img):
        return torch.stack([self.view(img), self.view(img)])

    def __repr__(self):
        return f'{type(self).__name__}({self.view!r})'


def _unchanged(img):
    return img


def _use_views(dataset, views):
    """Make a pretraining dataset (or the one its label normalisation wraps, ``.base``) give its whole image to
    ``views``: its spatial step becomes the identity (a ``-ph pre`` label is that of the whole image)."""
    inner = dataset
    while 'base' in vars(inner):
        inner = inner.base
    inner.spatial, inner.to_tensor = _unchanged, views
    return dataset


class NoLabels:
    """The label source of ``--ph_weight 0``: an empty vector per image, nothing computed or read."""

    dim = 0

    def label(self, index):
        return np.zeros(0, np.float32)


def _unlabelled_set(data, views):
    """The training images of ``--ph_weight 0``: generated (fresh each epoch) or the images below -t."""
    from util.train.datasets import FolderPH, GeneratedPH

    if data.train is None:
        data.generator.validate()
        if data.n_samples < 1:
            raise UserError("--n_samples must be at least 1")
        return GeneratedPH(
            data.generator, data.seed, data.n_samples, None, _unchanged, views, 'pre', stream=0, index_labels=NoLabels()
        )
    fileio.require_dir(data.train, 'image folder', '-t')
    rel = fileio.list_images(data.train)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {data.train!r} (given by -t)")
    return FolderPH(data.train, rel, NoLabels(), _unchanged, views, 'pre', bad_images=data.bad_images)


def contrastive_sets(run: RunConfig, dim: int) -> tuple:
    """(train set of ``(uint8 views [2, 3, crop, crop], label [D])``, PH validation set or None, facts): the images
    and PH labels -lm pretraining would train on (labels of length ``dim``, --label_norm applied), or with
    ``--ph_weight 0`` the images alone (empty labels)."""
    views = TwoViews(run.data.augment)
    if run.train.ph_weight == 0:
        return _unlabelled_set(run.data, views), None, {}
    train, val, facts = sources.pretraining_sets(run, dim)
    return _use_views(train, views), val, facts


# -------------------------------------------------------------------------------------------------- step
def _pair_batch(inputs, cfg):
    """``[B, 2, 3, H, W]`` -> the first views then the second ``[2B, 3, H, W]``, in channels-last when asked."""
    x = inputs.transpose(0, 1).reshape(-1, *inputs.shape[2:])
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def contrastive_step(cfg: TrainConfig, temperature: float) -> Callable:
    """Step function of :func:`util.train.engine.train_one_epoch`: ``NT-Xent + ph_weight x MSE`` on a batch of
    view pairs. ``sums``: loss = NT-Xent x images, ph_loss = MSE x images, correct = anchors whose nearest other
    view is their pair (out of 2 x images)."""

    def step(model, inputs, targets, optimizer, sums, epoch, it):
        if inputs is None:
            return None
        n = inputs.shape[0]
        with engine.autocast(cfg):
            ph, z = model(_pair_batch(inputs, cfg))
        ph, z = ph.float(), z.float()
        loss_c, hits = nt_xent(z[:n], z[n:], temperature)
        if cfg.ph_weight > 0:
            mse = F.mse_loss(ph, torch.cat([targets, targets]).float())
            loss = loss_c + cfg.ph_weight * mse
            sums.ph_loss += mse.detach() * n
            sums.ph_images += n
        else:
            loss = loss_c + 0.0 * ph.sum()  # the PH head unused: in the graph all the same (DDP)
        engine.optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_pre), --temperature or --ph_weight')
        loss_c = loss_c.detach()
        sums.loss += loss_c * n
        sums.images += n
        sums.correct += hits
        return {'nt_xent': loss_c, 'lr': optimizer.param_groups[0]['lr']}

    return step


def epoch_metrics(sums: engine.EpochSums, seconds: float, ph_weight: float) -> dict:
    """The log record part of a contrastive epoch (losses averaged over all images of all ranks)."""
    n = max(sums.images, 1)
    contrastive = sums.loss / n
    ph = sums.ph_loss / max(sums.ph_images, 1) if ph_weight > 0 else None
    metrics = {
        'train_loss': contrastive + (ph_weight * ph if ph is not None else 0.0),
        'train_contrastive_loss': contrastive,
        'train_pair_acc1': 100.0 * sums.correct / (2 * n),
        'images': int(sums.images),
        'skipped_bad': int(sums.skipped),
        'seconds': seconds,
    }
    if ph is not None:
        metrics['train_ph_loss'] = ph
    if hasattr(sums, 'data_wait'):
        metrics['data_wait'] = round(sums.data_wait, 4)
    return metrics


# ------------------------------------------------------------------------------------------------ runner
def _sample_grid(train_set, n, path):
    """-oti: the two views of the first images, side by side, as the network sees them."""
    items = []
    for i in range(min(len(train_set), max(1, n // 2))):
        item = train_set[i]
        if item is not None:
            items += [(v, None) for v in normalize_batch(item[0])]
    runs.save_sample_grid(items[:n], n, path)


def run_contrastive(run: RunConfig, open_run: Callable) -> tuple[nn.Module, list]:
    """Train -lm contrastive (see the module's text); ``open_run(run, kind, facts)`` opens the run folder
    (:func:`util.train.modes.open_run`). Returns (bare network, records)."""
    run = replace(run, phase='pretraining')  # a pretraining: its weights are no classifier (runs.regression_weights)
    data, cfg, lam = run.data, run.train, run.train.ph_weight
    dim = resolve_num_classes(run.model.numof_classes)
    run = replace(run, model=replace(run.model, numof_classes=dim))
    train_set, val_set, facts = contrastive_sets(run, dim)
    if distributed.is_main(cfg):
        source = 'generated on the fly' if data.train is None else f'from {data.train}'
        labels = f"PH labels {data.label.label_type} of dimension {dim}, weight {lam}" if lam > 0 else 'no PH labels'
        print(
            f"{len(train_set)} training images {source}, two views each; NT-Xent (temperature "
            f"{run.contrastive.temperature}) + {labels}" + (f"; {len(val_set)} validation images" if val_set else ''),
            flush=True,
        )
    net, _ = models.load_for(
        run.model.usenet,
        run.model.path2weight or None,
        dim,
        verbose=distributed.is_main_process(),
        input_size=data.augment.crop_size,
    )
    model = ContrastiveNet(net, run.contrastive.proj_dim)
    engine.check_trainable(train_set, cfg, run.model.usenet)  # before the run folder
    run_dir, checkpoint, facts = open_run(run, 'pretraining', facts)
    if distributed.is_main(cfg) and run.output_training_images > 0 and checkpoint is None:
        _sample_grid(train_set, run.output_training_images, os.path.join(run_dir, 'training_samples.png'))
    model = engine.prepare_model(model, cfg)
    step = contrastive_step(cfg, run.contrastive.temperature)

    def train_epoch(m, optimizer, epoch):
        if hasattr(train_set, 'set_epoch'):
            train_set.set_epoch(epoch - 1)
        loader = engine.make_loader(train_set, cfg, epoch, shuffle=True, train=True)
        sums, seconds = engine.train_one_epoch(m, loader, step, optimizer, epoch, cfg, desc='contrastive')
        return epoch_metrics(sums, seconds, lam)

    evaluate = None
    if val_set is not None:

        def evaluate(bare, epoch):
            loader = engine.make_loader(val_set, cfg, epoch, shuffle=False, train=False)
            return engine.evaluate_regression(PHPrediction(bare), loader, nn.MSELoss(), cfg)

    weights_name = f'{models.file_stem(run.model.usenet)}_epoch{{epoch}}.pth'
    records = engine.fit(
        model,
        None,
        None,
        cfg,
        run_dir=run_dir,
        lr=run.lr_pre,
        task='regression',
        weights_name=weights_name,
        evaluate=evaluate,
        checkpoint=checkpoint,
        train_epoch=train_epoch,
        tags={'mode': run.learning_mode, 'phase': run.phase},
        export=lambda bare: bare.net,
        meta={'args': runs.jsonable(record(run, **facts)), 'arch': run.model.usenet, 'num_outputs': dim},
    )
    if distributed.is_main(cfg):
        pictures(models.unwrap(model).net, run_dir, filters=True)
        print(
            runs.final_message(
                run_dir,
                records,
                weights_name,
                cfg.epochs,
                cfg.start_epoch,
                None if checkpoint is None else int(checkpoint['epoch']),
            ),
            flush=True,
        )
    return models.unwrap(model).net, records
