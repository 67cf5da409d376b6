"""The training loaders: one persistent DataLoader per data set for the whole run, whose every sample is seeded
from (seed, epoch, index) alone (:class:`EpochSampler` + :class:`KeyedSamples`), images shipped as uint8 and
undecodable ones dropped and counted (:func:`collate_skip_bad`).  :mod:`util.train.engine`'s loop reads them."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from util.train.distributed import default_workers
from util.train.seeding import epoch_seed, worker_init_fn
from util.train.transforms import shipping_form

if TYPE_CHECKING:
    from util.config import TrainConfig

PREFETCH = 4  # batches each loader worker prepares ahead


def collate_skip_bad(batch: list) -> tuple[Any, Any, int]:
    """Default collate that drops samples a dataset returned as ``None`` (undecodable images).

    Returns ``(inputs, targets, n_dropped)``; inputs is None when the whole batch was bad.
    """
    good = [b for b in batch if b is not None]
    dropped = len(batch) - len(good)
    if not good:
        return None, None, dropped
    inputs, targets = torch.utils.data.default_collate(good)
    return inputs, targets, dropped


class EpochSampler(torch.utils.data.Sampler):
    """The samples of one epoch on one rank, each yielded as ``(index, data_epoch, seed)``.

    The epoch travels with every index, so that loader workers kept alive across epochs (persistent workers,
    forked once) still draw epoch ``e``'s images of a dataset whose ``set_epoch`` the parent called after they
    were forked (:class:`util.train.datasets.GeneratedPH`); ``seed`` makes each sample's augmentation a
    function of (seed, epoch, index) alone, whichever worker loads it.  The order is a permutation drawn from
    ``seed`` (shared by all ranks); under DDP each rank takes every ``world_size``-th sample after the order
    is cut (``drop_last``) or padded by wrapping around to a multiple of ``world_size``, as DistributedSampler
    does.
    """

    def __init__(self, n: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.n, self.shuffle, self.rank, self.world_size, self.drop_last = n, shuffle, rank, world_size, drop_last
        self.seed, self.data_epoch = 0, None

    def set_epoch(self, seed: int, data_epoch: int | None = None) -> None:
        self.seed, self.data_epoch = int(seed), data_epoch

    def _order(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.drop_last:
                order = order[: self.n // self.world_size * self.world_size]
            elif order:
                total = -(-self.n // self.world_size) * self.world_size
                order = (order * (-(-total // len(order))))[:total]
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self):
        if self.world_size == 1:
            return self.n
        return self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int | None, int]]:
        for i in self._order():
            yield i, self.data_epoch, self.seed


class KeyedSamples(torch.utils.data.Dataset):
    """``dataset`` indexed by the keys of :class:`EpochSampler`: sets the dataset's epoch in this (worker)
    process and seeds torch, numpy and ``random`` from (seed, index) before loading the sample (in the main
    process, with no workers, the RNG states are put back afterwards)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, data_epoch, seed = key
        if data_epoch is not None and getattr(self.dataset, 'epoch', data_epoch) != data_epoch:
            self.dataset.set_epoch(data_epoch)
        in_main = torch.utils.data.get_worker_info() is None
        if in_main:
            saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        _seed_sample((seed * 1_000_033 + index * 104_729 + 17) % 2**63)
        try:
            return self.dataset[index]
        finally:
            if in_main:
                torch.set_rng_state(saved[0])
                np.random.set_state(saved[1])
                random.setstate(saved[2])


def _seed_sample(seed):
    """Seed ``random``, numpy's global RNG and torch's CPU generator (what augmentation draws from).
    ``torch.manual_seed`` would also queue seeds for CUDA/XPU/MTIA, formatting a stack trace each time: ~1 ms
    per sample."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def _shipped(dataset):
    """A shallow copy of ``dataset`` whose image transform gives uint8 (:func:`shipping_form`), or the dataset
    itself when it has none to change; the dataset as given keeps returning what its transform gives."""
    for attr in ('to_tensor', 'transform'):
        current = getattr(dataset, attr, None)
        if current is not None:
            form = shipping_form(current)
            if form is current:
                return dataset
            twin = copy.copy(dataset)
            setattr(twin, attr, form)
            if hasattr(twin, 'keep_grey'):
                twin.keep_grey = True  # grey stays one channel until the uint8 tensor (the same values)
            return twin
    return dataset


def loader_workers(cfg: TrainConfig) -> int:
    """``--num_workers``, or when not given the usable cores per training process on this machine minus two
    (the training process itself and the pin-memory thread), at least 0."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return default_workers()


def make_loader(
    dataset: Any, cfg: TrainConfig, epoch: int, shuffle: bool = True, train: bool = True
) -> torch.utils.data.DataLoader:
    """The DataLoader of ``dataset`` for ``epoch``, seeded from (seed, epoch) so any epoch can be replayed exactly.

    One loader per (dataset, shuffle, train) is kept in ``cfg`` for the whole run: its worker processes are
    forked once and persist across epochs and validation passes (:func:`release_loaders` ends them; ``fit``
    does at its end).  Every call sets the epoch its next pass yields (:class:`EpochSampler`, which also
    carries the dataset's own epoch, e.g. ``GeneratedPH.set_epoch`` called in this process).  Images travel
    as uint8 (:func:`_shipped`) and are normalised on the device by :func:`util.train.engine.to_device`.  Under
    DDP the training samples are split between ranks.  Training drops the last incomplete batch when the set holds
    at least one full batch (BatchNorm needs more than one sample).
    """
    from torch.utils.data import DataLoader

    cache = cfg.__dict__.setdefault('_loaders', {})
    key = (id(dataset), bool(shuffle), bool(train))
    loader = cache.get(key)
    if loader is None:
        workers = loader_workers(cfg)
        world = max(1, cfg.world_size) if cfg.distributed and train else 1
        drop_last = train and len(dataset) >= cfg.batch_size * max(1, cfg.world_size)
        sampler = EpochSampler(len(dataset), shuffle, cfg.rank if world > 1 else 0, world, drop_last and world > 1)
        generator = torch.Generator()
        generator.manual_seed(cfg.seed)
        loader = DataLoader(
            KeyedSamples(_shipped(dataset)),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=str(cfg.device).startswith('cuda'),
            drop_last=drop_last,
            worker_init_fn=getattr(dataset, 'worker_init', worker_init_fn),
            generator=generator,
            collate_fn=collate_skip_bad,
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers > 0 else None,
        )
        loader.source = dataset  # held, so that id(dataset) stays this dataset's while cached
        cache[key] = loader
    shared = dataclasses.replace(cfg, rank=0) if cfg.rank else cfg  # the order is the same on every rank
    loader.sampler.set_epoch(epoch_seed(shared, epoch), getattr(dataset, 'epoch', None))
    return loader


def release_loaders(cfg: TrainConfig) -> None:
    """End the persistent workers of the loaders :func:`make_loader` kept in ``cfg``."""
    for loader in cfg.__dict__.pop('_loaders', {}).values():
        it = getattr(loader, '_iterator', None)
        if it is not None and hasattr(it, '_shutdown_workers'):
            it._shutdown_workers()
        loader._iterator = None
