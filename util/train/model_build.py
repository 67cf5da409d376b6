"""The models the learning modes (:mod:`util.train.modes`) train: the pretraining network, a classifier with a
fresh head initialised from -pw or from the pretraining phase, and the two-head model of -lm simultaneous and
alternating."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from torch import nn

import models
from models.loading import classifier_weights
from models.two_heads import TwoHeads
from util.config import RunConfig, resolve_num_classes
from util.errors import UserError
from util.train import distributed


def build_finetune_model(
    run: RunConfig, init_state: dict | None = None, quiet: bool = False
) -> tuple[nn.Module, int | None]:
    """(model, head size read from -pw or None): the model with a fresh head of -nc outputs (-nc not given:
    see :func:`util.config.resolve_num_classes`), initialised from ``init_state`` (a state dict, e.g. the
    pretraining phase's model), else from -pw (ours / imagenet), else at random."""
    m = run.model
    num_classes = resolve_num_classes(m.numof_classes)
    pw = m.path2weight
    if init_state is not None:
        model, report = models.load_for(m.usenet, init_state, num_classes, input_size=run.data.augment.crop_size)
        if distributed.is_main_process():
            print(
                f"initialised from the pretraining phase: {report['loaded']} tensors loaded, head "
                f"{'re-initialised' if report['head_reinitialised'] else 'kept'}",
                flush=True,
            )
        return model, None
    if pw == 'imagenet':
        model, _ = models.load_for(m.usenet, 'imagenet', num_classes, input_size=run.data.augment.crop_size)
        print(f"initialised from torchvision's ImageNet weights for {m.usenet}", flush=True)
        return model, None
    if not pw:
        model, _ = models.load_for(m.usenet, None, num_classes, input_size=run.data.augment.crop_size)
        if not quiet:
            print("WARNING: no -pw given: training from scratch (random initialisation)", file=sys.stderr, flush=True)
        return model, None
    if not os.path.isfile(pw):
        raise UserError(f"-pw {pw!r}: no such weights file")
    weights = classifier_weights(pw)  # read once; a two-head checkpoint (contrastive, simultaneous) by its network
    stored = models.infer_num_classes(weights, m.usenet)
    if m.numof_pretrained_classes is not None and m.numof_pretrained_classes != stored:
        raise UserError(
            f"-npc {m.numof_pretrained_classes} but {pw} has a head of {stored} outputs; "
            f"drop -npc (it is read from the file)"
        )
    model, report = models.load_for(
        m.usenet, weights, num_classes, verbose=distributed.is_main_process(), input_size=run.data.augment.crop_size
    )
    print(
        f"initialised from {pw}: {report['loaded']} tensors loaded, head "
        f"{'re-initialised' if report['head_reinitialised'] else 'kept'}",
        flush=True,
    )
    return model, stored


def finetune_model(run: RunConfig, init_state: dict | None = None, quiet: bool = False) -> tuple[nn.Module, RunConfig]:
    """(model, ``run`` with -npc the head size read from -pw, as the run records it)."""
    model, stored = build_finetune_model(run, init_state, quiet)
    if stored is not None:
        run = replace(run, model=replace(run.model, numof_pretrained_classes=stored))
    return model, run


def pretraining_model(run: RunConfig) -> nn.Module:
    """The network of -lm pretraining: -u with -nc outputs, from -pw when given, else at random."""
    model, _ = models.load_for(
        run.model.usenet,
        run.model.path2weight or None,
        run.model.numof_classes,
        verbose=distributed.is_main_process(),
        input_size=run.data.augment.crop_size,
    )
    return model


def two_head_model(run: RunConfig) -> tuple[TwoHeads, RunConfig]:
    """(two-head model, ``run`` with the head size read from -pw)."""
    model, run = finetune_model(run, quiet=bool(run.resume))
    return TwoHeads(model, run.ph_dims), run
