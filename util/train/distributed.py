"""Distributed start-up (torchrun environment or -ws local processes) and the collective helpers."""

import os
from dataclasses import fields, replace
from types import SimpleNamespace

import torch
import torch.distributed as dist

from util.errors import UserError, run_cli
from util.train.seeding import fix_random_seeds


def init_distributed(config):
    """A copy of ``config`` (a frozen :class:`util.config.TrainConfig`) with ``rank/world_size/local_rank/
    distributed/device/amp/channels_last`` decided from torchrun's environment and the devices found.

    Without RANK/WORLD_SIZE in the environment this is a quiet single process on one device.
    """
    cfg = SimpleNamespace(**{f.name: getattr(config, f.name) for f in fields(config)})  # the draft decided below
    if cfg.device is None:
        cfg.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        cfg.rank = int(os.environ['RANK'])
        cfg.world_size = int(os.environ['WORLD_SIZE'])
        cfg.local_rank = int(os.environ.get('LOCAL_RANK', 0))
    else:
        cfg.rank, cfg.world_size, cfg.local_rank = 0, 1, 0
    cfg.distributed = cfg.world_size > 1
    if cfg.device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is visible")
        if cfg.device == 'cuda':
            cfg.device = f'cuda:{cfg.local_rank % torch.cuda.device_count()}'
        torch.cuda.set_device(torch.device(cfg.device))
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if cfg.distributed:
        backend = (
            cfg.backend if cfg.backend in ('nccl', 'gloo') else ('nccl' if cfg.device.startswith('cuda') else 'gloo')
        )
        dist.init_process_group(backend=backend, init_method='env://')
        dist.barrier()
    fix_random_seeds(cfg.seed + cfg.rank)  # model initialisation; DDP then copies rank 0's weights
    if cfg.amp is None:
        cfg.amp = cfg.device.startswith('cuda')
    if cfg.channels_last is None:
        cfg.channels_last = cfg.device.startswith('cuda')
    return replace(config, **vars(cfg))


def spawn_or_run(job, world_size):
    """Run ``job()`` here, or in ``world_size`` local processes (ranks 0..N-1) when N > 1 and not under
    torchrun. ``job`` must be picklable (e.g. a ``functools.partial`` of a module-level function)."""
    if world_size > 1 and 'RANK' not in os.environ:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', str(port))
        mp.spawn(_spawned, args=(job, world_size), nprocs=world_size, join=True)
        return 0
    return job()


def _call(job):
    return job()


def _spawned(rank, job, world_size):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    run_cli(_call, job)


def is_main_process():
    """True in the process of rank 0 (or when not distributed), judged by torchrun's environment alone."""
    return int(os.environ.get('RANK', '0')) == 0


def is_main(cfg):
    return cfg.rank == 0


def cleanup_distributed(cfg):
    if cfg.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj, cfg):
    """Rank 0's ``obj`` on every rank (identity when not distributed)."""
    if not cfg.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values, cfg, device='cpu'):
    """Element-wise sum of a list of floats over all ranks."""
    if not cfg.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
