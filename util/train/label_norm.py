"""The training side of ``--label_norm`` (the maths and the json records are :mod:`util.ph.label_norm`): the
z-scored (or whitened) pretraining dataset and the label sample the statistics are estimated from when there is no
label matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from util.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Sequence

SAMPLE_IMAGES = 512  # labels computed to estimate the statistics when there is no label matrix


class Standardised:
    """A pretraining dataset whose labels are z-scored (``(y - mean) / std``), then, given ``matrix`` ``[D, D]``,
    mapped by it (``--label_norm whiten``: std = 1); every other attribute is the wrapped dataset's."""

    def __init__(self, base, mean, std, matrix=None):
        self.base = base
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.matrix = None if matrix is None else np.asarray(matrix, dtype=np.float32)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        item = self.base[index]
        if item is None:  # a skipped bad image
            return None
        x, y = item
        import torch

        z = (y - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        return x, z if self.matrix is None else z @ torch.from_numpy(self.matrix)

    def __getattr__(self, name):
        if name.startswith('__') or name == 'base':
            raise AttributeError(name)
        return getattr(self.base, name)


def sample_labels(dataset: Sequence, n: int = SAMPLE_IMAGES) -> np.ndarray:
    """Labels ``[<=n, D]`` of the first ``n`` items of a pretraining dataset (bad images skipped)."""
    rows = []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        if item is not None:
            rows.append(np.asarray(item[1], dtype=np.float64))
    if not rows:
        raise UserError("--label_norm standard: no readable training image to estimate the label statistics")
    return np.stack(rows)
