"""Random targets (``--label_type random``), the control with no PH in it: image ``key`` gets
``default_rng([seed, *sha256(key)[:16] as 4 uint32]).standard_normal(D)``, a fixed N(0, 1) vector that depends only
on ``--seed`` and the image's identity, never on its pixels (see :mod:`util.train.sources` for the keys of folder and
generated images).  PHdict.py writes them as a label matrix; the training loaders draw the same ones.  Numpy only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

RANDOM = 'random'


def image_key(rel_path: str) -> str:
    """The identity of a folder image: its relative path without extension, '/'-separated."""
    return os.path.splitext(str(rel_path).replace(os.sep, '/'))[0]


def random_target(seed: int, key: str, dim: int) -> np.ndarray:
    """The fixed N(0, 1) vector (float32 [dim]) of image ``key`` under ``seed``."""
    words = np.frombuffer(hashlib.sha256(str(key).encode('utf-8')).digest()[:16], dtype='<u4')
    rng = np.random.default_rng([int(seed)] + [int(w) for w in words])
    return rng.standard_normal(int(dim)).astype(np.float32)


def random_matrix(seed: int, keys: Sequence[str], dim: int) -> np.ndarray:
    """The random targets (float32 ``[len(keys), dim]``) of the images ``keys`` under ``seed``."""
    return np.asarray([random_target(seed, k, dim) for k in keys], dtype=np.float32).reshape(len(keys), int(dim))
