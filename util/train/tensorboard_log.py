"""``--tensorboard``: the per-epoch figures of log.jsonl, and the first layer's filters, for TensorBoard.

Optional (``pip install tensorboard``, or ``-r requirements-extra.txt``).  log.jsonl stays the record of a run;
this only copies each epoch's record, as the engine logs it, into ``<run_dir>/tensorboard/`` (view it with
``tensorboard --logdir <output>``):

* ``loss/<key>`` for every ``*loss`` figure (``train_loss``, ``val_loss``, the two-task modes' losses),
  ``accuracy/<key>`` for every ``*acc*`` figure, ``r2/<key>`` for every ``*r2`` figure;
* ``lr`` (the epoch's learning rate), ``speed/images_per_s`` (training images / epoch seconds) and
  ``speed/data_wait_share`` (the share of the epoch spent waiting for the loader, when the record has it);
* ``filters/first_conv``: the first 2-D convolution's filters (at most 64, each scaled to its own range,
  colour when it reads 3 channels), every epoch.

A resumed run rewrites the epochs after its checkpoint (``purge_step``), as log.jsonl does.
"""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING, Optional

import torch.nn.functional as F
from torch import nn

from util.errors import UserError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install tensorboard (or: pip install -r requirements-extra.txt)"
FOLDER = 'tensorboard'
MAX_FILTERS = 64


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line :class:`UserError` saying how to install it."""
    try:
        import tensorboard  # noqa: F401  (torch's module imports it lazily; fail here, before any training)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            f"--tensorboard needs the optional package tensorboard, which is not installed: {INSTALL_HINT}"
        ) from None
    return SummaryWriter


def scalars(record: dict) -> dict[str, float]:
    """``{tag: value}`` of one log.jsonl record (see the module docstring)."""
    out = {}
    for key, value in record.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue
        if key.endswith('loss'):
            out[f'loss/{key}'] = value
        elif 'acc' in key:
            out[f'accuracy/{key}'] = value
        elif key.endswith('r2'):
            out[f'r2/{key}'] = value
        elif key == 'lr':
            out['lr'] = value
        elif key == 'data_wait':
            out['speed/data_wait_share'] = value
    if isinstance(record.get('images'), numbers.Real) and record.get('seconds'):
        out['speed/images_per_s'] = record['images'] / record['seconds']
    return out


def filter_image(model: nn.Module, max_filters: int = MAX_FILTERS) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """(CHW float image in [0, 1] of the first Conv2d's filters in a grid, layer name), or (None, None)."""
    from torchvision.utils import make_grid

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight.detach().float().cpu()[:max_filters]
            w = w[:, :3] if w.shape[1] >= 3 else w[:, :1]
            low = w.amin(dim=(1, 2, 3), keepdim=True)
            high = w.amax(dim=(1, 2, 3), keepdim=True)
            w = (w - low) / (high - low).clamp_min(1e-12)
            scale = max(1, 32 // max(w.shape[-2:]))  # small kernels drawn at least 32 pixels wide
            w = F.interpolate(w, scale_factor=scale, mode='nearest')
            return make_grid(w, nrow=8, padding=1, pad_value=1.0), name
    return None, None


class TensorBoardLog:
    """Writes the records the engine logs (``log(record, model)``) under ``<run_dir>/tensorboard``."""

    def __init__(self, run_dir, first_epoch=1):
        writer_class = summary_writer_class()
        folder = os.path.join(run_dir, FOLDER)
        try:
            self.writer = writer_class(log_dir=folder, purge_step=first_epoch)
        except OSError as e:
            raise UserError(_unwritable(folder, e)) from None

    def log(self, record, model):
        epoch = int(record['epoch'])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, epoch)
        image, _ = filter_image(model)
        if image is not None:
            self.writer.add_image('filters/first_conv', image, epoch)
        self.writer.flush()

    def close(self):
        self.writer.close()


def open_log(enabled: bool, run_dir: str, first_epoch: int = 1) -> Optional[TensorBoardLog]:
    """A :class:`TensorBoardLog` when ``enabled`` (``--tensorboard`` on the main process), else None."""
    return TensorBoardLog(run_dir, first_epoch) if enabled else None


def _unwritable(folder: str, error: OSError) -> str:
    return (
        f"--tensorboard cannot write into {folder}: {error.strerror or error}; make that folder writable (or "
        "move it away), or drop --tensorboard"
    )


def check_folder(run_dir: str) -> None:
    """Raise a one-line :class:`UserError` when ``<run_dir>/tensorboard`` exists (a resumed run) but cannot take
    a new file: it is not a folder, or creating a file in it fails.  A missing one is made by the writer."""
    import tempfile

    folder = os.path.join(run_dir, FOLDER)
    if not os.path.lexists(folder):
        return
    try:
        if not os.path.isdir(folder):
            raise NotADirectoryError(20, 'not a folder', folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-check.tmp-'):
            pass
    except OSError as e:
        raise UserError(_unwritable(folder, e)) from None


def check_available(enabled: bool) -> None:
    """Raise the one-line install hint early (at flag checking) when ``--tensorboard`` is asked without it."""
    if enabled:
        summary_writer_class()
