"""What a finished run leaves besides its weights: the evaluation files and the pictures of the run."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from models import unwrap
from util.io import fileio
from util.io.runlog import LOG_NAME
from util.train import engine, loaders
from util.train.distributed import is_main

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from util.config import TrainConfig


def write_evaluation(
    model: nn.Module,
    val_set: Dataset,
    classes: Sequence[str],
    criterion: nn.Module,
    cfg: TrainConfig,
    run_dir: str,
    mode: str,
) -> dict:
    """metrics.json, per_class.csv, confusion_matrix.csv and .png in ``run_dir``; returns the metrics.

    Rank 0 alone evaluates and writes (under torchrun the other ranks return {} at once)."""
    if not is_main(cfg):
        return {}
    loader = loaders.make_loader(val_set, cfg, 0, shuffle=False, train=False)
    try:
        metrics, cm = engine.evaluate_classification(model, loader, criterion, cfg, len(classes))
    finally:
        loaders.release_loaders(cfg)  # after the training loop: its workers are not needed again
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.full(len(classes), np.nan), where=cm.sum(1) > 0)
    fileio.write_csv(
        os.path.join(run_dir, 'per_class.csv'),
        [['class', 'images', 'correct', 'accuracy']]
        + [[c, int(cm[i].sum()), int(cm[i, i]), f'{100 * per_class[i]:.2f}'] for i, c in enumerate(classes)],
    )
    for c in (c for i, c in enumerate(classes) if cm[i].sum() == 0):
        print(f"warning: class {c!r} has no usable validation image (accuracy nan)", file=sys.stderr, flush=True)
    fileio.write_json(os.path.join(run_dir, 'metrics.json'), dict(metrics, mode=mode))
    try:
        from util.plot.plotting import confusion_matrix_csv, confusion_matrix_png

        confusion_matrix_csv(cm, classes, os.path.join(run_dir, 'confusion_matrix.csv'))
        confusion_matrix_png(cm, classes, os.path.join(run_dir, 'confusion_matrix.png'))
    except Exception as e:  # pictures are a convenience; the CSV above already holds the numbers
        print(f"warning: could not draw the confusion matrix: {e}", file=sys.stderr)
    return metrics


def pictures(model: nn.Module | None, run_dir: str, filters: bool) -> None:
    """Loss curves (and first-layer filters); a plotting failure never fails the run."""
    try:
        from util.plot.plotting import curves_from_log, filter_grid

        curves_from_log(os.path.join(run_dir, LOG_NAME), os.path.join(run_dir, 'curves.png'))
        if filters:
            filter_grid(unwrap(model), os.path.join(run_dir, 'filters.png'))
    except Exception as e:  # pictures are a convenience
        print(f"warning: could not draw pictures: {e}", file=sys.stderr)
