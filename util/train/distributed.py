"""Distributed start-up (torchrun environment or -ws local processes) and the collective helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from util.errors import UserError, run_cli
from util.train.seeding import fix_random_seeds

if TYPE_CHECKING:
    from util.config import TrainConfig


def init_distributed(config: TrainConfig) -> TrainConfig:
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
    check_device(config, cfg.world_size)
    backend = _backend(cfg)
    if cfg.device.startswith('cuda'):
        count = torch.cuda.device_count()
        if cfg.distributed:
            check_ranks_per_gpu(cfg, local_world_size(cfg))
        if cfg.device == 'cuda':
            cfg.device = f'cuda:{cfg.local_rank % count}'
        torch.cuda.set_device(torch.device(cfg.device))
        # Every batch has the same shape (fixed crops), so cuDNN's benchmark mode picks the fastest convolution
        # kernels once, in the first iterations: on for every CUDA run, as the README and ARCHITECTURE.md say.
        torch.backends.cudnn.benchmark = True
    if cfg.num_workers is None:
        cfg.num_workers = default_workers(local_world_size(cfg))
    if cfg.distributed:
        dist.init_process_group(backend=backend, init_method='env://')
        dist.barrier()
    fix_random_seeds(cfg.seed + cfg.rank)  # model initialisation; DDP then copies rank 0's weights
    if cfg.amp is None:
        cfg.amp = cfg.device.startswith('cuda')
    if cfg.channels_last is None:
        cfg.channels_last = cfg.device.startswith('cuda')
    return replace(config, **vars(cfg))


def check_device(config: TrainConfig, world_size: int | None = None) -> None:
    """Refuse, in one line and before anything is written, a ``--device`` torch cannot open (``tpu``, ``cuda``
    without a visible GPU, ``cuda:3`` on a two-GPU machine, ``meta``) and ``-p nccl`` for ranks that are not on
    CUDA GPUs (NCCL runs on GPUs only).  ``world_size``: the training processes of the run (default: torchrun's
    WORLD_SIZE, else ``config.world_size``)."""
    asked = config.device
    name = asked or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {asked}: torch knows no device of that name; use cpu, or cuda (cuda:N)") from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f"--device {asked} was asked for but no CUDA device is visible; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"--device {asked}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1}); "
                "choose one of them, or --device cuda"
            )
    elif device.type == 'meta':
        raise UserError(f"--device {asked} holds no data and cannot train; use cpu, or cuda")
    elif device.type != 'cpu':
        try:
            torch.empty(1, device=device)
        except Exception as e:  # noqa: BLE001 - whatever torch says, the device cannot be used
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split('. ')[0][:120]
            raise UserError(
                f"--device {asked}: torch cannot use it on this machine ({reason}); use cpu, or cuda"
            ) from None
    if world_size is None:
        world_size = int(os.environ.get('WORLD_SIZE', config.world_size or 1))
    if world_size > 1 and config.backend == 'nccl' and device.type != 'cuda':
        where = 'no CUDA device is visible' if not torch.cuda.is_available() else f'this run is on --device {name}'
        raise UserError(
            f"-p nccl runs on CUDA GPUs only and {where}: use -p gloo, or drop -p (gloo is the default on the CPU)"
        )


def _backend(cfg):
    if cfg.backend in ('nccl', 'gloo'):
        return cfg.backend
    return 'nccl' if str(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu')).startswith('cuda') else 'gloo'


def check_ranks_per_gpu(cfg: TrainConfig, processes: int) -> None:
    """Refuse ``processes`` NCCL ranks on this machine when it has fewer visible GPUs: NCCL rejects two ranks
    on one device (after a long hang or with an opaque error), so say it in one line before anything starts."""
    device = str(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if processes < 2 or not device.startswith('cuda') or not torch.cuda.is_available() or _backend(cfg) != 'nccl':
        return
    count = torch.cuda.device_count()
    if processes > count:
        raise UserError(
            f"{processes} training processes on this machine but {count} visible GPU(s): NCCL cannot run two "
            "ranks on one GPU; start at most one process per GPU, or use -p gloo"
        )


def local_world_size(cfg: TrainConfig) -> int:
    """Training processes on this machine: torchrun's LOCAL_WORLD_SIZE, else the world size (``-ws`` spawns
    all ranks here)."""
    return max(1, int(os.environ.get('LOCAL_WORLD_SIZE', cfg.world_size if cfg.distributed else 1)))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(processes: int | None = None) -> int:
    """DataLoader workers per training process when ``--num_workers`` is not given: the usable cores shared
    by the training processes of this machine, minus two per process (the process itself and its pin-memory
    thread), at least 0.  16 cores, one GPU: 14; 2 cores: 0 (loading in the training process)."""
    if processes is None:
        processes = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    return max(0, usable_cores() // max(1, processes) - 2)


def spawn_or_run(job: Callable, world_size: int, cfg: TrainConfig | None = None) -> Any:
    """Run ``job()`` here, or in ``world_size`` local processes (ranks 0..N-1) when N > 1 and not under
    torchrun. ``job`` must be picklable (e.g. a ``functools.partial`` of a module-level function).  With the
    run's ``cfg``, too many NCCL ranks for the GPUs are refused before any process starts; a rank that stops
    ends the run with a one-line error (its own message is printed above by that rank)."""
    if world_size > 1 and 'RANK' not in os.environ:
        import socket

        import torch.multiprocessing as mp

        if cfg is not None:
            check_ranks_per_gpu(cfg, world_size)
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', str(port))
        try:
            mp.spawn(_spawned, args=(job, world_size), nprocs=world_size, join=True)
        except mp.ProcessExitedException as e:
            raise UserError(f"rank {e.error_index} of {world_size} stopped (exit status {e.exit_code})") from None
        except mp.ProcessRaisedException as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise UserError(f"a rank of {world_size} stopped: {last}") from None
        return 0
    return job()


def _call(job):
    return job()


def _spawned(rank, job, world_size):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    run_cli(_call, job)


def is_main_process() -> bool:
    """True in the process of rank 0 (or when not distributed), judged by torchrun's environment alone."""
    return int(os.environ.get('RANK', '0')) == 0


def is_main(cfg: TrainConfig) -> bool:
    return cfg.rank == 0


def cleanup_distributed(cfg: TrainConfig) -> None:
    if cfg.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any, cfg: TrainConfig) -> Any:
    """Rank 0's ``obj`` on every rank (identity when not distributed)."""
    if not cfg.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list, cfg: TrainConfig, device: str = 'cpu') -> list:
    """Element-wise sum of a list of floats over all ranks."""
    if not cfg.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
