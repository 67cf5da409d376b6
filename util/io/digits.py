"""Write scikit-learn's handwritten digits (1797 real 8x8 scans, shipped inside the package: no download)
as an image folder ``<output>/{train,val}/<digit>/*.png`` for finetuning.py (scripts/export_digits.py is the
command).

``--labels_per_class K`` keeps K training images per class (the low-label regime where pretraining shows);
the validation split is fixed by ``--val_fraction`` and ``--seed`` and never depends on K, so runs with
different K are evaluated on the same images.
"""

from __future__ import annotations

import json
import os

import numpy as np

from util.errors import UserError
from util.io import fileio


def load_digit_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as uint8 [N, S, S] greyscale (8x8 scans upscaled by pixel repetition to S = 8 *
    (size // 8)) and their int64 targets [N]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("scikit-learn is needed for the digits dataset: pip install scikit-learn") from None
    digits = load_digits()
    images = np.rint(digits.images / 16.0 * 255.0).astype(np.uint8)  # the scans hold values 0..16
    scale = max(1, size // 8)
    return np.kron(images, np.ones((1, scale, scale), np.uint8)), digits.target.astype(np.int64)


def split_indices(
    targets: np.ndarray, val_fraction: float, labels_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): a per-class split fixed by ``seed``; train keeps K per class if K > 0."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:n_val])
        rest = idx[n_val:]
        if labels_per_class > 0:
            if labels_per_class > len(rest):
                raise UserError(
                    f"--labels_per_class {labels_per_class}: class {c} has only {len(rest)} training images"
                )
            rest = rest[:labels_per_class]
        train.extend(rest)
    return np.sort(train), np.sort(val)


def export_digits(
    output: str, labels_per_class: int = 0, val_fraction: float = 0.3, size: int = 32, seed: int = 0
) -> tuple[int, int]:
    """Write the digits as ``<output>/{train,val}/<digit>/<index>.png`` plus ``export.json`` (the settings);
    return ``(n_train, n_val)``. An ``output`` already holding an export of other settings, or a ``train/``
    folder of something else, is refused."""
    if not 0 < val_fraction < 1:
        raise UserError("--val_fraction must be between 0 and 1")
    settings = {'labels_per_class': labels_per_class, 'val_fraction': val_fraction, 'size': size, 'seed': seed}
    meta = os.path.join(output, 'export.json')
    if os.path.exists(meta):
        with open(meta, encoding='utf-8') as f:
            if json.load(f) != settings:
                raise UserError(f"{output!r} holds an export made with other settings ({meta}); choose another -o")
    elif os.path.isdir(os.path.join(output, 'train')):
        raise UserError(f"{output!r} already holds a train/ folder not written by this script; choose another -o")
    fileio.ensure_dir(output)
    images, targets = load_digit_images(size)
    train, val = split_indices(targets, val_fraction, labels_per_class, seed)
    for split, indices in (('train', train), ('val', val)):
        for i in indices:
            folder = os.path.join(output, split, str(targets[i]))
            os.makedirs(folder, exist_ok=True)
            fileio.save_image(os.path.join(folder, f'{i:04d}.png'), images[i])
    fileio.write_json(meta, settings)
    return len(train), len(val)
