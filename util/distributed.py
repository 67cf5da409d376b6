"""Distributed start-up (torchrun environment or -ws local processes) and the collective helpers."""
import os

import torch
import torch.distributed as dist

from util.seeding import fix_random_seeds
from util.errors import UserError


def init_distributed(args):
    """Set ``args.rank/world_size/local_rank/distributed/device`` from torchrun's environment.

    Without RANK/WORLD_SIZE in the environment this is a quiet single process on one device.
    """
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        args.rank = int(os.environ['RANK'])
        args.world_size = int(os.environ['WORLD_SIZE'])
        args.local_rank = int(os.environ.get('LOCAL_RANK', 0))
    else:
        args.rank, args.world_size, args.local_rank = 0, 1, 0
    args.distributed = args.world_size > 1
    if args.device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is visible")
        if args.device == 'cuda':
            args.device = f'cuda:{args.local_rank % torch.cuda.device_count()}'
        torch.cuda.set_device(torch.device(args.device))
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if args.distributed:
        backend = args.pidf if args.pidf in ('nccl', 'gloo') else (
            'nccl' if args.device.startswith('cuda') else 'gloo')
        dist.init_process_group(backend=backend, init_method='env://')
        dist.barrier()
    fix_random_seeds(args.seed + args.rank)  # model initialisation; DDP then copies rank 0's weights
    if args.amp is None:
        args.amp = args.device.startswith('cuda')
    if args.channels_last is None:
        args.channels_last = args.device.startswith('cuda')
    return args


def spawn_or_run(worker, args):
    """Run ``worker(args)`` here, or in ``-ws`` local processes when asked and not under torchrun."""
    if args.world_size > 1 and 'RANK' not in os.environ:
        import socket
        import torch.multiprocessing as mp
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', str(port))
        mp.spawn(_spawned, args=(worker, args), nprocs=args.world_size, join=True)
        return 0
    return worker(args)


def _spawned(rank, worker, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(args.world_size), LOCAL_RANK=str(rank))
    from util.errors import run_cli
    run_cli(worker, args)


def is_main(args):
    return getattr(args, 'rank', 0) == 0


def cleanup_distributed(args):
    if getattr(args, 'distributed', False) and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj, args):
    """Rank 0's ``obj`` on every rank (identity when not distributed)."""
    if not getattr(args, 'distributed', False):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values, args, device='cpu'):
    """Element-wise sum of a list of floats over all ranks."""
    if not getattr(args, 'distributed', False):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


