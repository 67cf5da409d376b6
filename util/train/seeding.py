"""Seeds: the whole process, one epoch on one rank, and DataLoader workers."""

import random

import numpy as np
import torch


def fix_random_seeds(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg, epoch):
    """The seed of one epoch on one rank: depends on nothing but (seed, epoch, rank)."""
    return (cfg.seed * 1_000_003 + epoch * 7919 + cfg.rank) % 2**63


def worker_init_fn(worker_id):
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave it (itself derived from
    the epoch's generator), so augmentation is reproducible for any number of workers."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
