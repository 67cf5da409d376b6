"""Training helpers shared by pretraining.py and finetuning.py.

Patterned on torchvision's reference classification recipe: distributed set-up driven by torchrun's
environment (quietly single-process otherwise), ``train_one_epoch``/``evaluate`` returning metric dicts,
checkpoints that are plain dicts of tensors and builtins so ``torch.load(..., weights_only=True)`` reads
them, a JSON-lines log per epoch, and seeds derived from (seed, epoch, rank) so a resumed run repeats an
uninterrupted one exactly on the CPU.
"""
import argparse
import datetime
import errno
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from util import fileio
from util.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPTIMIZERS = ('sgd', 'sgd_cos', 'sgd_nesterov', 'sgd_nesterov_cos', 'adam', 'adam_cos')
CHECKPOINT_NAME = 'checkpoint.pth'
LOG_NAME = 'log.jsonl'


# ----------------------------------------------------------------------------------------------- flags
def add_common_args(parser):
    """The flag set shared by pretraining.py and finetuning.py (the original's names, short names, defaults)."""
    g = parser.add_argument_group('data and files')
    g.add_argument('--train', '-t', default=None, help='folder of training images, searched recursively '
                   '(pretraining without it generates images on the fly)')
    g.add_argument('--val', '-val', default=None, help='folder of validation images')
    g.add_argument('--path2PHdir', '-pd', default='', help='folder written by PHdict.py: raw diagrams '
                   '(<relative path>.npy) or, with -pc, a consolidated label matrix')
    g.add_argument('--path2weight', '-pw', default=None, help="initial weights: a .pth or checkpoint file of "
                   "ours, 'imagenet' for torchvision's default weights, or nothing (random initialisation)")
    g.add_argument('--output', '-o', default='result', help='a new dated run folder is made under this one '
                   '(default: %(default)s)')
    g.add_argument('--resume', default='', help='checkpoint.pth (or its run folder) to continue from; the run '
                   'continues in that folder')
    g.add_argument('--bad_images', choices=('skip', 'fail'), default='skip',
                   help='what to do with an image that cannot be decoded during training: skip it (warned and '
                   'counted in the log) or stop (default: %(default)s)')
    fileio.add_max_pixels_arg(g)

    g = parser.add_argument_group('parallelism and devices')
    g.add_argument('--pidf', '-p', default=None, help="distributed backend ('nccl' or 'gloo'); default: nccl on "
                   "CUDA, gloo on CPU. Distributed training starts under torchrun, or with -ws N > 1")
    g.add_argument('--world_size', '-ws', default=1, type=int, help='number of processes to start on this '
                   'machine when not launched by torchrun (default: %(default)s)')
    g.add_argument('--device', default=None, help="'cuda', 'cpu', ... (default: cuda when available)")
    g.add_argument('--amp', default=None, action=argparse.BooleanOptionalAction, help='bfloat16 autocast (default: on with CUDA, '
                   'off on CPU)')
    g.add_argument('--channels_last', default=None, action=argparse.BooleanOptionalAction,
                   help='channels-last memory format (default: on with CUDA)')
    g.add_argument('--num_workers', '-nw', default=8, type=int, help='data loader processes per training process '
                   '(default: %(default)s)')
    g.add_argument('--seed', default=1, type=int, help='random seed; every worker and rank derives its own '
                   '(default: %(default)s)')

    g = parser.add_argument_group('network')
    g.add_argument('--usenet', '-u', default='resnet50', help='any torchvision classification model '
                   '(default: %(default)s)')
    g.add_argument('--epochs', '-e', default=90, type=int, help='number of epochs (default: %(default)s)')
    g.add_argument('--numof_pretrained_classes', '-npc', default=None, type=int,
                   help='output size of the pretrained weights given by -pw (the original assumed 200; now '
                   'read from the file when omitted)')
    g.add_argument('--numof_classes', '-nc', default=100, type=int, help='output size: the label dimension when '
                   'pretraining, the number of classes when fine-tuning (default: %(default)s)')
    g.add_argument('--numof_fclayer', default=4096, type=int, help='accepted for compatibility; heads are '
                   "replaced generically, keeping each architecture's own hidden widths")
    g.add_argument('--freeze_encoder', '-fe', action='store_true', help='train only the new head (linear probe)')

    g = parser.add_argument_group('optimisation')
    # The original wired these two short flags the wrong way round; the long names keep their meaning.
    g.add_argument('--lr_pre', '-lrf', default=0.1, type=float, help='learning rate for pretraining '
                   '(default: %(default)s). Note: -lrf sets this one, as in the original, whose short names '
                   'for the two rates are swapped; prefer the long names')
    g.add_argument('--lr_fine', '-lrp', default=0.01, type=float, help='learning rate for fine-tuning '
                   '(default: %(default)s). Note: -lrp sets this one (swapped, as in the original)')
    g.add_argument('--momentum', default=0.9, type=float, help='SGD momentum (default: %(default)s)')
    g.add_argument('--weight_decay', '-wd', default=1e-4, type=float, help='weight decay (default: %(default)s)')
    g.add_argument('--optimizer', '-op', default='sgd', choices=OPTIMIZERS, help='optimiser; a _cos suffix '
                   'anneals the rate by a cosine over all epochs, otherwise it drops x0.1 at 1/3 and 2/3 of '
                   'the epochs (default: %(default)s)')
    g.add_argument('--start-epoch', dest='start_epoch', default=1, type=int, help='first epoch number '
                   '(default: %(default)s; --resume sets it)')
    g.add_argument('--batch_size', '-b', default=96, type=int, help='batch size per process (default: %(default)s)')
    g.add_argument('--img_size', default=256, type=int, help='images are resized to this first (default: %(default)s)')
    g.add_argument('--crop_size', default=224, type=int, help='then cropped to this (default: %(default)s)')
    g.add_argument('--save-interval', '-si', dest='save_interval', default=90, type=int,
                   help='write the weights file every N epochs; the last epoch is always written '
                   '(default: %(default)s)')
    g.add_argument('--log-interval', dest='log_interval', default=100, type=int,
                   help='refresh the progress bar figures every N iterations (default: %(default)s)')
    g.add_argument('--output_training_images', '-oti', default=0, type=int,
                   help='save a picture of the first N training samples as the network sees them')
    g.add_argument('--stop_after', default=0, type=int, help='stop after N epochs in this invocation (for '
                   'time-limited cluster jobs); continue later with --resume (default: run to --epochs)')

    g = parser.add_argument_group(
        'augmentation of training images',
        'Spatial steps (affine, rescale, rotation, crop, flip) come before a "-ph post" label is computed,\n'
        'so that label describes what the network sees; the photometric steps of --aug_plus (colour jitter,\n'
        'greyscale, blur) always come after the label is computed, so they never change a PH label.\n'
        'With "-ph pre" the label is that of the whole image, untouched by any augmentation.\n'
        'Validation images are only resized and cropped.')
    g.add_argument('--aug_plus', action='store_true', help='MoCo v2 augmentation: RandomResizedCrop(crop, '
                   'scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2, '
                   'GaussianBlur (sigma 0.1-2) p=0.5, horizontal flip (default: off)')
    g.add_argument('--random_scale', '-rs', default=0.0, type=float, help='rescale each image by a random '
                   'factor in [1-S, 1+S] before cropping (default: %(default)s = off)')
    g.add_argument('--random_rotation', '-rr', default=0.0, type=float, help='rotate by a random angle in '
                   '[-DEG, DEG] degrees before cropping (default: %(default)s = off)')
    g.add_argument('--crop_padding', '-cp', default=0, type=int, help='pad the image by P pixels (zeros) '
                   'before the random crop (default: %(default)s)')
    g.add_argument('--affine', '-aff', action='store_true', help='random affine augmentation (rotation, scale, '
                   'shear) before cropping (default: off)')
    return parser


def check_common_args(args):
    """Validate flags that argparse cannot; raise :class:`UserError` with the flag's name."""
    for name in ('epochs', 'batch_size', 'img_size', 'crop_size', 'numof_classes'):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.num_workers < 0:
        raise UserError("--num_workers must be >= 0")
    if args.save_interval < 1:
        args.save_interval = args.epochs
    if args.stop_after < 0:
        raise UserError(f"--stop_after must be 0 (no stop) or a number of epochs, got {args.stop_after}")
    fileio.set_max_pixels(args.max_pixels)
    fileio.refuse_output_inside(args.output, [(f, getattr(args, d, None)) for f, d in (
        ('-t', 'train'), ('-val', 'val'), ('-t2', 'ph_train'), ('-v2', 'ph_val'), ('-pd', 'path2PHdir'))])
    if args.train and args.val and os.path.realpath(args.train) == os.path.realpath(args.val):
        print(f"warning: -val {args.val!r} is the training folder -t: the validation scores measure memorisation, "
              "not generalisation", file=sys.stderr, flush=True)
    if args.start_epoch < 1:
        raise UserError("--start-epoch must be at least 1")
    if not 0 <= getattr(args, 'random_scale', 0) < 1:
        raise UserError(f"--random_scale must be in [0, 1) (a factor in [1-S, 1+S]); got {args.random_scale}")
    if not 0 <= getattr(args, 'random_rotation', 0) <= 180:
        raise UserError(f"--random_rotation must be in [0, 180] degrees; got {args.random_rotation}")
    if getattr(args, 'crop_padding', 0) < 0:
        raise UserError(f"--crop_padding must be >= 0; got {args.crop_padding}")


# ------------------------------------------------------------------------------------------ distributed
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


def unwrap(model):
    """The bare model inside DDP / torch.compile wrappers."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


# ------------------------------------------------------------------------------------------------ seeds
def fix_random_seeds(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(args, epoch):
    """The seed of one epoch on one rank: depends on nothing but (seed, epoch, rank)."""
    return (args.seed * 1_000_003 + epoch * 7919 + getattr(args, 'rank', 0)) % 2**63


def worker_init_fn(worker_id):
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave it (itself derived from
    the epoch's generator), so augmentation is reproducible for any number of workers."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


# ----------------------------------------------------------------------------------------- optimisation
def build_optimizer(params, args, lr):
    name = args.optimizer
    if name.startswith('adam'):
        return torch.optim.Adam(params, lr=lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           nesterov='nesterov' in name)


def build_scheduler(optimizer, args):
    """Per-epoch schedule: cosine over all epochs for ``*_cos``, else x0.1 at 1/3 and 2/3 of the epochs."""
    if args.optimizer.endswith('_cos'):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs))
    milestones = sorted({max(1, args.epochs // 3), max(1, 2 * args.epochs // 3)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


# ---------------------------------------------------------------------------------------------- run dir
def make_run_dir(output, args):
    """Create a fresh dated folder under ``output`` (``YYYY_MMDD_HHMM``, suffixed ``_2``, ... when taken).

    Never reuses an existing folder. Rank 0 creates it; every rank gets its path.
    """
    path = None
    if is_main(args):
        fileio.ensure_dir(output)
        stamp = datetime.datetime.now().strftime('%Y_%m%d_%H%M')
        for k in range(1, 10000):
            candidate = os.path.join(output, stamp if k == 1 else f'{stamp}_{k}')
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            except OSError as e:
                raise UserError(f"cannot create a run folder in {output!r}: {e.strerror}") from None
            path = candidate
            break
    return broadcast_object(path, args)


def resolve_resume(path):
    """``--resume`` may name a checkpoint file or the run folder holding ``checkpoint.pth``."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise UserError(f"--resume {path!r}: no such checkpoint file")
    return path


def args_to_dict(args):
    """``vars(args)`` reduced to JSON-able builtins (what checkpoints and args.json store)."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) or x is None else str(x) for x in v]
        else:
            out[k] = str(v)
    return out


class RunLogger:
    """Per-epoch JSON-lines log (+ TensorBoard scalars when the package is installed), rank 0 only."""

    def __init__(self, run_dir, enabled=True):
        self.path = os.path.join(run_dir, LOG_NAME)
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=os.path.join(run_dir, 'tensorboard'))
            except Exception:  # TensorBoard is optional
                self.tb = None

    def log(self, record):
        if not self.enabled:
            return
        data = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    os.ftruncate(fd, start)  # never leave half a record for the next one to be glued to
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}; make room, then continue with --resume "
                            f"{os.path.dirname(self.path)}") from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != 'epoch':
                    self.tb.add_scalar(k, v, record.get('epoch', 0))
            self.tb.flush()

    def truncate_after(self, epoch):
        """Drop records of epochs after ``epoch`` (a resumed run repeats them)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        keep = []
        with open(self.path, encoding='utf-8') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get('epoch', 0) <= epoch:
                    keep.append(json.dumps(rec, sort_keys=True))
        fileio.write_text(self.path, ''.join(k + '\n' for k in keep))

    def close(self):
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------ checkpoints
def rng_state():
    """Every RNG's state as tensors/builtins (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {'torch': torch.get_rng_state(),
             'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             'python': _tuple_to_list(random.getstate())}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(_list_to_tuple(state['python']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, (tuple, list)) else x


def save_checkpoint(run_dir, model, optimizer, scheduler, scaler, epoch, args, extra=None):
    """Write ``checkpoint.pth`` (atomically): model, optimizer, lr_scheduler, scaler, epoch, RNG, args."""
    state = {'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
             'lr_scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict() if scaler else {},
             'epoch': epoch, 'rng': rng_state(), 'args': args_to_dict(args),
             'arch': args.usenet, 'num_outputs': args.numof_classes}
    if extra:
        state.update(extra)
    fileio.torch_save(state, os.path.join(run_dir, CHECKPOINT_NAME))


def load_checkpoint(path, map_location='cpu'):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and builtins
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path!r} safely: {first}") from None


def save_weights(path, model):
    """A plain state_dict, loadable by ``torchvision.models.<arch>(num_classes=D).load_state_dict``."""
    fileio.torch_save(unwrap(model).state_dict(), path)


# ----------------------------------------------------------------------------------------------- loops
def collate_skip_bad(batch):
    """Default collate that drops samples a dataset returned as ``None`` (undecodable images).

    Returns ``(inputs, targets, n_dropped)``; inputs is None when the whole batch was bad.
    """
    good = [b for b in batch if b is not None]
    dropped = len(batch) - len(good)
    if not good:
        return None, None, dropped
    inputs, targets = torch.utils.data.default_collate(good)
    return inputs, targets, dropped


def _autocast(args):
    device_type = 'cuda' if str(args.device).startswith('cuda') else 'cpu'
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bool(args.amp))


def _to_device(x, args):
    x = x.to(args.device, non_blocking=True)
    if args.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(model, loader, criterion, optimizer, epoch, args, task='regression', desc='train'):
    """One pass over ``loader``; returns {'train_loss', ['train_acc1'], 'skipped_bad', 'images', 'seconds'}.

    ``task`` is 'regression' (MSE on label vectors) or 'classification' (cross-entropy, top-1).
    Losses are averaged over all images of all ranks.
    """
    model.train()
    if getattr(args, 'freeze_encoder', False):
        _freeze_encoder_modes(model)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss*n, correct, n, skipped
    start = time.time()
    bar = tqdm(loader, desc=f'{desc} epoch {epoch}', disable=not is_main(args), leave=False, file=sys.stderr,
               dynamic_ncols=True)
    for it, (inputs, targets, dropped) in enumerate(bar):
        sums[3] += dropped
        if inputs is None:
            continue
        inputs, targets = _to_device(inputs, args), targets.to(args.device, non_blocking=True)
        with _autocast(args):
            outputs = model(inputs)
            if isinstance(outputs, tuple):  # inception/googlenet auxiliary outputs in train mode
                outputs = outputs[0]
            loss = criterion(outputs.float(), targets)
        optimizer_step(loss, optimizer, epoch, it, 'the learning rate (--lr_pre/--lr_fine)')
        n = inputs.shape[0]
        sums[0] += loss.item() * n
        sums[2] += n
        if task == 'classification':
            sums[1] += (outputs.argmax(1) == targets).sum().item()
        if is_main(args) and it % max(1, args.log_interval) == 0:
            bar.set_postfix(loss=f'{loss.item():.4g}', lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    bar.close()
    loss_sum, correct, n, skipped = all_reduce_sum(sums, args, device=args.device)
    metrics = {'train_loss': loss_sum / max(n, 1), 'images': int(n), 'skipped_bad': int(skipped),
               'seconds': time.time() - start}
    if task == 'classification':
        metrics['train_acc1'] = 100.0 * correct / max(n, 1)
    return metrics


def optimizer_step(loss, optimizer, epoch, it, what_to_lower):
    """Backpropagate ``loss`` and step, refusing a non-finite loss with a message saying what to lower."""
    if not torch.isfinite(loss):
        raise UserError(f"the training loss became {loss.item()} at epoch {epoch}, iteration {it}: lower "
                        f"{what_to_lower} or check the labels")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _freeze_encoder_modes(model):
    """Keep every module but the head in eval mode (BatchNorm statistics and dropout stay untouched)."""
    import models
    _, _, head = models.get_head(unwrap(model))
    head_modules = set(head.modules())
    for m in unwrap(model).modules():
        if m not in head_modules:
            m.training = False


@torch.no_grad()
def evaluate_regression(model, loader, criterion, args, prefix='val'):
    """MSE and R^2 of label-vector predictions: {'val_loss', 'val_r2', 'val_images'}.

    R^2 = 1 - sum((y - y_hat)^2) / sum((y - mean_y)^2), the mean taken per output over the whole set.
    """
    model.eval()
    sse = 0.0
    n = 0
    s1 = None
    s2 = None
    loss_sum = 0.0
    for inputs, targets, _ in loader:
        if inputs is None:
            continue
        inputs, targets = _to_device(inputs, args), targets.to(args.device).double()
        with _autocast(args):
            outputs = model(inputs)
        outputs = outputs.double()
        loss_sum += criterion(outputs.float(), targets.float()).item() * inputs.shape[0]
        sse += ((outputs - targets) ** 2).sum().item()
        s1 = targets.sum(0) if s1 is None else s1 + targets.sum(0)
        s2 = (targets ** 2).sum(0) if s2 is None else s2 + (targets ** 2).sum(0)
        n += inputs.shape[0]
    if n == 0:
        return {}
    sst = (s2 - s1 ** 2 / n).sum().item()
    r2 = 1.0 - sse / sst if sst > 0 else float('nan')
    return {f'{prefix}_loss': loss_sum / n, f'{prefix}_r2': r2, f'{prefix}_images': n}


@torch.no_grad()
def evaluate_classification(model, loader, criterion, args, num_classes, prefix='val'):
    """Loss, top-1 and top-k (k = min(5, classes)) accuracy, and the confusion matrix [K, K] (rows = truth)."""
    model.eval()
    k = min(5, num_classes)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top1, topk, n, skipped = 0.0, 0, 0, 0, 0
    for inputs, targets, dropped in loader:
        skipped += dropped
        if inputs is None:
            continue
        inputs, targets = _to_device(inputs, args), targets.to(args.device)
        with _autocast(args):
            outputs = model(inputs)
        outputs = outputs.float()
        loss_sum += criterion(outputs, targets).item() * inputs.shape[0]
        pred = outputs.topk(k, dim=1).indices
        top1 += (pred[:, 0] == targets).sum().item()
        topk += (pred == targets[:, None]).any(1).sum().item()
        n += inputs.shape[0]
        idx = targets.cpu() * num_classes + pred[:, 0].cpu()
        cm += torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
    if n == 0:
        return {}, cm.numpy()
    return ({f'{prefix}_loss': loss_sum / n, f'{prefix}_acc1': 100.0 * top1 / n, f'{prefix}_acc{k}': 100.0 * topk / n,
             f'{prefix}_images': n, f'{prefix}_skipped_bad': skipped}, cm.numpy())


def format_metrics(record):
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f'{k}={v:.4g}' if not math.isnan(v) else f'{k}=nan')
        else:
            parts.append(f'{k}={v}')
    return ' '.join(parts)


def make_loader(dataset, args, epoch, shuffle=True, train=True):
    """A DataLoader for one epoch, seeded from (seed, epoch, rank) so any epoch can be replayed exactly.

    Under DDP a DistributedSampler splits the data between ranks. Training drops the last incomplete
    batch when the set holds at least one full batch (BatchNorm needs more than one sample).
    """
    from torch.utils.data import DataLoader, DistributedSampler
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(args, epoch))
    drop_last = train and len(dataset) >= args.batch_size * max(1, args.world_size)
    sampler = None
    if getattr(args, 'distributed', False) and train:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=args.seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=args.num_workers, pin_memory=str(args.device).startswith('cuda'),
                      drop_last=drop_last, worker_init_fn=getattr(dataset, 'worker_init', worker_init_fn), generator=generator,
                      collate_fn=collate_skip_bad, persistent_workers=False,
                      prefetch_factor=4 if args.num_workers > 0 else None)


def prepare_model(model, args):
    """Move to the device (channels-last when asked) and wrap in DDP when distributed."""
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if getattr(args, 'distributed', False):
        ids = [torch.device(args.device).index] if str(args.device).startswith('cuda') else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def setup_run(args, kind):
    """The run folder: the resumed run's folder with ``--resume``, else a fresh dated one. Writes args.json.

    Returns (run_dir, checkpoint dict or None).
    """
    checkpoint = None
    if args.resume:
        path = resolve_resume(args.resume)
        checkpoint = load_checkpoint(path)
        for key in ('model', 'optimizer', 'lr_scheduler', 'epoch'):
            if key not in checkpoint:
                raise UserError(f"{path} is not a {kind} checkpoint (no {key!r}); pass the run's {CHECKPOINT_NAME}")
        if checkpoint.get('arch') not in (None, args.usenet):
            raise UserError(f"{path} was trained with -u {checkpoint['arch']}, not -u {args.usenet}")
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        run_dir = make_run_dir(args.output, args)
    args.run_dir = run_dir
    if is_main(args):
        name = 'args.json' if checkpoint is None else f"args_resume_epoch{checkpoint['epoch'] + 1}.json"
        fileio.write_json(os.path.join(run_dir, name), args_to_dict(args))
    return run_dir, checkpoint


def fit(model, criterion, train_set, args, *, lr, task, weights_name, evaluate=None, checkpoint=None,
        params=None, on_epoch_end=None, train_epoch=None, tags=None, export=None):
    """The epoch loop shared by both scripts; returns the list of per-epoch records.

    Per epoch: train, step the schedule, ``evaluate(model, epoch) -> dict`` on rank 0, append a record to
    log.jsonl, write checkpoint.pth (every epoch, atomically) and ``weights_name.format(epoch=E)`` every
    ``--save-interval`` epochs and at the last one. Each epoch is seeded from (seed, epoch, rank) alone, so
    a run resumed from ``checkpoint`` repeats the uninterrupted one exactly on the CPU.

    ``train_epoch(model, optimizer, epoch) -> dict`` replaces the default pass over ``train_set`` (which may
    then be None); ``tags`` (e.g. ``{'mode': ..., 'phase': ...}``) are added to every log record and to the
    checkpoint; ``export(bare_model) -> nn.Module`` picks what the weights files hold (default: the model).
    """
    run_dir = args.run_dir
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    optimizer = build_optimizer(params, args, lr)
    scheduler = build_scheduler(optimizer, args)
    scaler = None  # bfloat16 autocast needs no loss scaling
    start = args.start_epoch
    if checkpoint is not None:
        unwrap(model).load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['lr_scheduler'])
        if 'rng' in checkpoint:
            set_rng_state(checkpoint['rng'])
        start = int(checkpoint['epoch']) + 1
    elif start > 1:
        for _ in range(start - 1):
            scheduler.step()
    logger = RunLogger(run_dir, enabled=is_main(args))
    if checkpoint is not None:
        logger.truncate_after(start - 1)
    records = []
    last = args.epochs if args.stop_after < 1 else min(args.epochs, start + args.stop_after - 1)
    for epoch in range(start, last + 1):
        fix_random_seeds(epoch_seed(args, epoch))
        record = {'epoch': epoch, 'lr': optimizer.param_groups[0]['lr'], **(tags or {})}
        if train_epoch is None:
            if hasattr(train_set, 'set_epoch'):
                train_set.set_epoch(epoch - 1)
            loader = make_loader(train_set, args, epoch, shuffle=True, train=True)
            record.update(train_one_epoch(model, loader, criterion, optimizer, epoch, args, task=task))
        else:
            record.update(train_epoch(model, optimizer, epoch))
        scheduler.step()
        if evaluate is not None and is_main(args):
            record.update(evaluate(unwrap(model), epoch))
        if getattr(args, 'distributed', False):
            dist.barrier()
        if is_main(args):
            logger.log(record)
            save_checkpoint(run_dir, model, optimizer, scheduler, scaler, epoch, args, extra=tags)
            if epoch % args.save_interval == 0 or epoch == args.epochs:
                save_weights(os.path.join(run_dir, weights_name.format(epoch=epoch)),
                             model if export is None else export(unwrap(model)))
            print(format_metrics(record), flush=True)
            if on_epoch_end is not None:
                on_epoch_end(record)
        records.append(record)
    logger.close()
    return records


def save_sample_grid(dataset, n, path, titles=None):
    """A picture of the first ``n`` samples of ``dataset`` as the network sees them (undecodable ones skipped).

    ``titles``: optional function of a sample's target giving its caption.
    """
    from util.plotting import sample_grid
    items = [it for it in (dataset[i] for i in range(min(n, len(dataset)))) if it is not None]
    if items:
        sample_grid(torch.stack([it[0] for it in items]), path, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    titles=[titles(it[1]) for it in items] if titles else None)


def final_message(args, records, weights_name):
    """The closing line: where the final weights are, or how to continue a run stopped early."""
    last = records[-1]['epoch'] if records else args.start_epoch - 1
    if last >= args.epochs:
        return f"weights: {os.path.join(args.run_dir, weights_name.format(epoch=args.epochs))}"
    return f"stopped after epoch {last} of {args.epochs}; continue with --resume {args.run_dir}"
