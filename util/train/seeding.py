"""Seeds: the whole process, one epoch on one rank, and DataLoader workers."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from util.config import TrainConfig


def fix_random_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    """The seed of one epoch on one rank: depends on nothing but (seed, epoch, rank)."""
    return (cfg.seed * 1_000_003 + epoch * 7919 + cfg.rank) % 2**63


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave it (itself derived from
    the epoch's generator), so augmentation is reproducible for any number of workers."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
