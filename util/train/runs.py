"""Run folders, the per-epoch log, checkpoints (save / restore by key) and weights files."""

from __future__ import annotations

import datetime
import json
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models import unwrap
from util.errors import UserError
from util.io import fileio
from util.train.distributed import broadcast_object, is_main
from util.train.transforms import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from torch import nn

    from util.config import TrainConfig

CHECKPOINT_NAME = 'checkpoint.pth'


def make_run_dir(output: str, cfg: TrainConfig) -> str:
    """Create a fresh dated folder under ``output`` (``YYYY_MMDD_HHMM``, suffixed ``_2``, ... when taken).

    Never reuses an existing folder. Rank 0 creates it; every rank gets its path.
    """
    path = None
    if is_main(cfg):
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
    return broadcast_object(path, cfg)


def resolve_resume(path: str) -> str:
    """``--resume`` may name a checkpoint file or the run folder holding ``checkpoint.pth``."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise UserError(f"--resume {path!r}: no such checkpoint file")
    return path


def jsonable(settings: dict) -> dict:
    """A dict of settings (e.g. ``vars(args)``) reduced to JSON-able builtins (what checkpoints and args.json
    store)."""
    out = {}
    for k, v in dict(settings).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) or x is None else str(x) for x in v]
        else:
            out[k] = str(v)
    return out


def rng_state() -> dict:
    """Every RNG's state as tensors/builtins (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        'python': _tuple_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(_list_to_tuple(state['python']))
    if 'cuda' in state and torch.cuda.is_available():
        # the checkpoint may come from a machine with more (or fewer) GPUs: restore the devices both have
        for i, s in enumerate(list(state['cuda'])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, (tuple, list)) else x


def save_checkpoint(
    run_dir: str, model: nn.Module, optimizer: Any, scheduler: Any, epoch: int, meta: dict | None = None
) -> None:
    """Write ``checkpoint.pth`` (atomically): model, optimizer, lr_scheduler, epoch, RNG, and ``meta`` (builtins:
    the run's ``args``, ``arch``, ``num_outputs``, ``mode``, ``phase``)."""
    state = {
        'model': unwrap(model).state_dict(),
        'optimizer': optimizer.state_dict(),
        'lr_scheduler': scheduler.state_dict(),
        'epoch': epoch,
        'rng': rng_state(),
        'scaler': {},
    }  # no loss scaler (bfloat16 autocast needs none); the key keeps the format of old runs
    if meta:
        state.update(meta)
    fileio.torch_save(state, os.path.join(run_dir, CHECKPOINT_NAME))


def load_checkpoint(path: str, map_location: str = 'cpu') -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and builtins
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path!r} safely: {first}") from None


def save_weights(path: str, model: nn.Module) -> None:
    """A plain state_dict, loadable by ``torchvision.models.<arch>(num_classes=D).load_state_dict``."""
    fileio.torch_save(unwrap(model).state_dict(), path)


def open_checkpoint(resume: str, kind: str, arch: str) -> tuple[str, dict]:
    """``--resume``: (the run folder, its checkpoint dict), refusing a file that is not a ``kind`` checkpoint
    of architecture ``arch``."""
    path = resolve_resume(resume)
    checkpoint = load_checkpoint(path)
    for key in ('model', 'optimizer', 'lr_scheduler', 'epoch'):
        if key not in checkpoint:
            raise UserError(f"{path} is not a {kind} checkpoint (no {key!r}); pass the run's {CHECKPOINT_NAME}")
    if checkpoint.get('arch') not in (None, arch):
        raise UserError(f"{path} was trained with -u {checkpoint['arch']}, not -u {arch}")
    return os.path.dirname(os.path.abspath(path)), checkpoint


# Settings a resumed run may change: how it runs, not what it computes.  Everything else recorded in the run's
# settings must be given as before (-e may only grow).
RESUME_FREE = frozenset(
    {
        'resume',
        'run_dir',
        'output',
        'num_workers',
        'log_interval',
        'stop_after',
        'save_interval',
        'output_training_images',
        'bad_images',
        'max_pixels',
        'device',
        'pidf',
        'dist_url',
        'rank',
        'local_rank',
        'path2weight',  # the initial weights: a resumed run continues from its checkpoint instead
        'evaluate',
        'phase',
    }
)


# Facts a run records beside its flags (util.train.sources, util.train.label_diagnostics): what it found, not what
# was asked for.  A resume compares flags only (the labels themselves are pinned by ``label_matrix``); a fact
# follows from flags and data, so a changed flag is named instead of its consequences.
RECORDED_FACTS = (
    'label_diagnostics_',
    'fitted_',
    'label_norm_mean',
    'label_norm_std',
    'label_norm_source',
    'label_norm_count',
    'label_whiten_',
)


def _same_setting(before, now):
    if before == now:
        return True
    if isinstance(before, (list, tuple)) and isinstance(now, (list, tuple)):
        return list(before) == list(now)
    if isinstance(before, str) and isinstance(now, str) and before and now:  # the same folder, spelt otherwise
        return os.path.realpath(before) == os.path.realpath(now)
    return False


def resume_changes(recorded: dict, now: dict, done_epoch: int) -> list[str]:
    """The changes ``now`` (settings of this invocation) makes to ``recorded`` (the run's settings) that would
    alter the experiment, as ``['--key: old -> new', ...]``; ``epochs`` may change but not below ``done_epoch``,
    ``epochs_pre`` may only grow; the keys of :data:`RESUME_FREE` may change freely."""
    now = jsonable(now)
    changes = []
    for key in sorted(set(recorded) | set(now)):
        if key in RESUME_FREE or key not in recorded or key not in now or key.startswith(RECORDED_FACTS):
            continue  # a setting added by a later version, one of this invocation alone, or a recorded fact
        before, after = recorded[key], now[key]
        if key == 'epochs':
            if isinstance(after, int) and after < done_epoch:
                changes.append(f"--epochs: {after} is below the {done_epoch} epochs already done")
            continue
        if key == 'epochs_pre':  # follows -e unless given; a combined run's first phase may only grow
            if isinstance(after, int) and isinstance(before, int) and after < before:
                changes.append(f"--epochs_pre: {before} -> {after} (it may only grow)")
            continue
        if key == 'label_matrix':  # not a flag: the labels the run trained on (util.train.sources.label_record)
            if before != after:
                changes.append(f"the label matrix was recomputed since (now {after!r}, the run had {before!r})")
            continue
        if not _same_setting(before, after):
            changes.append(f"--{key}: {before!r} -> {after!r}")
    return changes


def _stored_outputs(checkpoint, arch):
    """The head size of the model in ``checkpoint`` (a two-head model's classifier), or None if it cannot tell."""
    import models
    from models.loading import classifier_state

    state = checkpoint.get('model')
    if not isinstance(state, dict) or not arch:
        return None
    try:
        return models.infer_num_classes(classifier_state(state), arch)
    except (UserError, ValueError, KeyError):
        return None


def check_resume(run_dir: str, checkpoint: dict, now: dict) -> None:
    """Refuse (UserError listing them) changes that alter the experiment against the run's ``args.json`` and
    against the settings the checkpoint itself records (a checkpoint of another run, copied in, is refused by
    its own settings); refuse a checkpoint whose model head is not of the size this run builds (-nc)."""
    recorded = _run_args(run_dir)
    own = checkpoint.get('args') if isinstance(checkpoint.get('args'), dict) else None
    done = int(checkpoint['epoch'])
    for what, settings in (("that run's args.json", recorded), ('its checkpoint', own)):
        changes = resume_changes(settings, now, done) if settings is not None else []
        if changes:
            shown = '; '.join(changes[:6]) + ('; ...' if len(changes) > 6 else '')
            raise UserError(
                f"--resume {run_dir}: {len(changes)} setting(s) differ from {what}: {shown}; "
                "give them as the run had them (only workers, intervals, --stop_after and a larger -e may "
                "change), or start a new run without --resume"
            )
    stored, wanted = _stored_outputs(checkpoint, jsonable(now).get('usenet')), jsonable(now).get('numof_classes')
    if stored is not None and isinstance(wanted, int) and stored != wanted:
        raise UserError(
            f"--resume {run_dir}: the model in its {CHECKPOINT_NAME} has a head of {stored} outputs, this run "
            f"builds {wanted} (-nc): that checkpoint is not this run's; resume the run it belongs to, or start a "
            "new run without --resume"
        )


def write_settings(run_dir: str, settings: dict, checkpoint: dict | None = None) -> None:
    """``args.json`` of a fresh run, or ``args_resume_epoch{E}.json`` when continuing ``checkpoint``."""
    name = 'args.json' if checkpoint is None else f"args_resume_epoch{checkpoint['epoch'] + 1}.json"
    fileio.write_json(os.path.join(run_dir, name), jsonable(settings))


def final_message(
    run_dir: str,
    records: list[dict],
    weights_name: str,
    epochs: int,
    start_epoch: int = 1,
    resumed_epoch: int | None = None,
) -> str:
    """The closing line: where the final weights are, or how to continue a run stopped early.

    ``resumed_epoch``: the last epoch of the checkpoint this invocation resumed (None for a fresh run)."""
    if records:
        last = records[-1]['epoch']
    else:
        last = start_epoch - 1 if resumed_epoch is None else resumed_epoch
        if resumed_epoch is not None and last >= epochs:
            return (
                f"nothing to do: {run_dir} had already finished all {epochs} epochs; weights: "
                f"{os.path.join(run_dir, weights_name.format(epoch=epochs))} (give a larger -e to train further)"
            )
    if last >= epochs:
        return f"weights: {os.path.join(run_dir, weights_name.format(epoch=epochs))}"
    return f"stopped after epoch {last} of {epochs}; continue with --resume {run_dir}"


def save_sample_grid(dataset: Any, n: int, path: str, titles: Callable | None = None) -> None:
    """A picture of the first ``n`` samples of ``dataset`` as the network sees them (undecodable ones skipped).

    ``titles``: optional function of a sample's target giving its caption.
    """
    from util.plot.plotting import sample_grid

    items = [it for it in (dataset[i] for i in range(min(n, len(dataset)))) if it is not None]
    if items:
        sample_grid(
            torch.stack([it[0] for it in items]),
            path,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            titles=[titles(it[1]) for it in items] if titles else None,
        )


def read_classes(path: str) -> list[str] | None:
    """Class names from ``classes.json`` (a JSON list, as fine-tuning writes it) or a text file with one name
    per line."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read the class names {path!r}: {e.strerror}") from None
    if path.endswith('.json'):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e}); expected a list of class names") from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise UserError(f"{path} must hold a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _run_args(folder):
    """The ``args.json`` of a run folder as a dict, or None."""
    try:
        with open(os.path.join(folder, 'args.json'), encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def regression_weights(path: str, meta: dict | None = None) -> str | None:
    """Why the weights file ``path`` is a pretraining (PH regression) model and no classifier, or None when
    nothing says so.  Told by the checkpoint's own ``mode``/``phase`` (``meta``: its entries other than tensors),
    else by the ``args.json`` of the run that wrote it (its folder; a combined run's ``pretraining/`` phase
    folder: the run's top folder).  ``--label_type class`` pretraining trains a classifier: not refused."""
    meta = meta or {}
    if meta.get('mode') or meta.get('phase'):
        recorded = meta.get('args') if isinstance(meta.get('args'), dict) else {}
        if (meta.get('phase') or meta.get('mode')) == 'pretraining' and recorded.get('label_type') != 'class':
            return "pretraining weights (PH label regression; its checkpoint's mode says so)"
        return None
    folder = os.path.dirname(os.path.abspath(path))
    recorded = _run_args(folder)
    if recorded is None and os.path.basename(folder) == 'pretraining':
        top = _run_args(os.path.dirname(folder))
        if top is not None and top.get('learning_mode') == 'combined':
            return f"the pretraining phase's weights of the combined run {os.path.dirname(folder)} (PH regression)"
    phase = (recorded or {}).get('phase') or (recorded or {}).get('learning_mode')
    if phase == 'pretraining' and recorded.get('label_type') != 'class':  # a combined run's phase says 'phase'
        return f"pretraining weights (PH label regression; {os.path.join(folder, 'args.json')} says so)"
    return None
