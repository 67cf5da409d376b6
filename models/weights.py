"""Reading weight files safely and loading them into a model whose head may have another size.

Accepted files (always read with ``torch.load(..., weights_only=True, map_location='cpu')``, so a file holding
arbitrary pickled objects is refused before anything in it can run):

* a plain ``state_dict`` (``torch.save(model.state_dict(), 'resnet50_epoch90.pth')``);
* a training checkpoint: a dict holding the state dict under ``'model'`` (or ``'state_dict'`` /
  ``'model_state_dict'``) next to ``'optimizer'``, ``'epoch'``, ``'args'`` (a plain dict), ...;
* either of the above with keys prefixed by ``module.`` (DataParallel / DDP) and/or ``_orig_mod.``
  (``torch.compile``), in any combination;
* a MoCo checkpoint (``module.encoder_q.*``, or MoCo v3's ``module.base_encoder.*``): its query encoder is
  taken and its projection head dropped (see :func:`moco_encoder`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch

from models.heads import head_parameter_names, head_paths, is_aux_name, main_head_weight_key, out_size, unwrap
from models.registry import architectures_matching, resolve_arch, skeleton
from util.errors import UserError

STATE_DICT_KEYS = ('model', 'state_dict', 'model_state_dict')
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
ARCH_ARG_NAMES = ('usenet', 'arch', 'model', 'architecture')


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _refusal_reason(e):
    """Short explanation of why ``torch.load(weights_only=True)`` refused a file."""
    m = re.search(r'GLOBAL (\S+) was not an allowed global', str(e))
    if m is None:
        return "it contains pickled data other than tensors and plain containers"
    name = m.group(1)
    if name.startswith('torch.nn.modules') or name.startswith('torchvision.models'):
        return f"it holds a whole pickled model ({name}), not a state dict; save model.state_dict() instead"
    return f"it contains a pickled Python object ({name}), not only tensors"


def _is_tensor_dict(obj):
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _contains_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, Mapping):
        return any(_contains_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_tensor(v) for v in obj)
    return False


def strip_prefixes(state_dict: dict) -> dict:
    """Remove ``module.`` / ``_orig_mod.`` wrapper prefixes (in any combination) shared by all keys, and
    ``_orig_mod`` components anywhere (a compiled submodule); drop AveragedModel's ``n_averaged`` counter."""
    sd = dict(state_dict)
    if 'n_averaged' in sd and len(sd) > 1:
        del sd['n_averaged']
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return {'.'.join(p for p in k.split('.') if p != '_orig_mod'): v for k, v in sd.items()}


MOCO_QUERY_PREFIXES = ('encoder_q.', 'base_encoder.')
MOCO_OTHER_PREFIXES = ('encoder_k.', 'momentum_encoder.', 'predictor.')
MOCO_BUFFERS = ('queue', 'queue_ptr')
PROJECTION_HEADS = ('fc', 'head', 'heads', 'classifier')


def moco_encoder(state_dict: dict) -> tuple[dict, dict | None]:
    """``(encoder state dict, note)`` of a MoCo state dict (prefixes already stripped), else
    ``(state_dict, None)``.  The query encoder's keys lose their prefix; its projection head (``fc``/``head``...,
    an MLP or a 128-d projection that is no classifier), the key encoder, the predictor and the queue are
    dropped; ``note`` counts what was dropped."""
    query = next((p for p in MOCO_QUERY_PREFIXES if any(k.startswith(p) for k in state_dict)), None)
    if query is None or not all(
        k.startswith(MOCO_QUERY_PREFIXES + MOCO_OTHER_PREFIXES) or k in MOCO_BUFFERS for k in state_dict
    ):
        return state_dict, None
    encoder = {k[len(query) :]: v for k, v in state_dict.items() if k.startswith(query)}
    head = [k for k in encoder if k.split('.', 1)[0] in PROJECTION_HEADS]
    for k in head:
        del encoder[k]
    return encoder, {
        'format': 'moco',
        'prefix': query,
        'projection_head_dropped': len(head),
        'other_dropped': len(state_dict) - len(encoder) - len(head),
    }


def _split_checkpoint(obj, source):
    """``(state_dict, meta)`` from a loaded object; raise :class:`UserError` if it holds no state dict."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{source} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    candidate = {k: v for k, v in obj.items() if k != 'n_averaged'}
    if _is_tensor_dict(candidate):
        sd, note = moco_encoder(strip_prefixes(obj))
        return sd, ({'moco': note} if note else {})
    for key in STATE_DICT_KEYS:
        if _is_tensor_dict(obj.get(key)):
            meta = {k: v for k, v in obj.items() if k != key and not _contains_tensor(v)}
            sd, note = moco_encoder(strip_prefixes(obj[key]))
            if note:
                meta['moco'] = note
            return sd, meta
    keys = ", ".join(map(repr, list(obj)[:8]))
    raise UserError(
        f"{source} is a dict (keys {keys}) but holds no model state dict; expected "
        f"model.state_dict() or a checkpoint with the state dict under 'model'"
    )


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a weights file: ``(state_dict, meta)``.

    ``state_dict``: ``{key: tensor}`` with wrapper prefixes stripped.  ``meta``: for a checkpoint, its other
    entries that hold no tensors (``{'epoch': 90, 'args': {...}}``; optimizer state etc. are left out),
    else ``{}``.  Raises :class:`UserError` naming the file if it is missing, unreadable, refused by
    ``weights_only=True`` (the payload never runs) or not a state dict / checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(
            f"weights file {path!r} does not exist"
            if not os.path.exists(path)
            else f"weights file {path!r} is not a file"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        if str(e).startswith('Weights only load failed'):
            raise UserError(f"refusing to load weights file {path!r}: {_refusal_reason(e)}") from None
        raise UserError(
            f"{path!r} is not a weights file: PyTorch cannot read it ({type(e).__name__}: "
            f"{_first_line(e)}); give a .pth written by torch.save"
        ) from None
    return _split_checkpoint(obj, f"weights file {path!r}")


class Weights(NamedTuple):
    """A weights source read once: its state dict (prefixes stripped), checkpoint meta and a description for
    messages.  :func:`infer_num_classes` and :func:`load_pretrained` accept it in place of a path."""

    state_dict: dict
    meta: dict
    source: str


def as_state_dict(path_or_state_dict: str | os.PathLike | Mapping) -> Weights:
    """``Weights(state_dict, meta, description)`` for a path or an in-memory state dict / checkpoint dict."""
    if isinstance(path_or_state_dict, Weights):
        return path_or_state_dict
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        sd, meta = read_state_dict(path_or_state_dict)
        return Weights(sd, meta, repr(os.fspath(path_or_state_dict)) + _moco_suffix(meta))
    sd, meta = _split_checkpoint(path_or_state_dict, 'the given state dict')
    return Weights(sd, meta, 'the given state dict' + _moco_suffix(meta))


def _moco_suffix(meta):
    note = meta.get('moco')
    return f" (MoCo query encoder {note['prefix'].rstrip('.')}; projection head dropped)" if note else ''


def architecture_hint(state_dict: dict, meta: Mapping | None) -> tuple[str | None, str | None]:
    """``(arch, how)`` the weights look made for, or ``(None, None)``: the checkpoint's recorded
    architecture (``args['usenet']``/``args['arch']``...) if present, else the torchvision architecture whose
    keys and shapes match exactly."""
    recorded = meta.get('args') if isinstance(meta, Mapping) else None
    if isinstance(recorded, Mapping):
        for name in ARCH_ARG_NAMES:
            if isinstance(recorded.get(name), str):
                return recorded[name], f"according to its args['{name}']"
    for name in ('arch', 'usenet'):
        if isinstance(meta.get(name), str):
            return meta[name], f"according to its '{name}' entry"
    found = architectures_matching(state_dict)
    if found:
        return ' or '.join(found), "judging by its tensor names and shapes"
    return None, None


def infer_num_classes(path_or_state_dict: str | os.PathLike | Mapping, arch: str) -> int:
    """Number of outputs of the ``arch`` head stored in a weights file (or state dict / checkpoint dict)."""
    arch = resolve_arch(arch)
    sd, meta, source = as_state_dict(path_or_state_dict)
    key = main_head_weight_key(skeleton(arch))
    if key not in sd and meta.get('moco'):
        raise UserError(
            f"{source} is a MoCo encoder: it has no classifier head, so the number of classes must be given"
        )
    if key not in sd:
        guess, how = architecture_hint(sd, meta)
        extra = f"; it looks like weights for {guess} ({how})" if guess else ''
        raise UserError(f"{source} has no {key!r} tensor, so it is not a {arch} file{extra}")
    return int(sd[key].shape[0])


def _fmt_keys(keys, limit=5):
    keys = list(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ''
    return ", ".join(keys[:limit]) + more


def load_pretrained(
    model: torch.nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    *,
    arch: str | None = None,
    verbose: bool = True,
    strict: bool = True,
) -> dict:
    """Copy weights from a file (or a state dict / checkpoint dict) into ``model``, in place.

    Every tensor whose name and shape match is loaded.  Head tensors (see
    :func:`models.head_parameter_names`) whose shape differs -- pretrained with 200 outputs, fine-tuned on
    100 classes -- or that are absent keep the model's current (fresh) values.  Auxiliary-classifier tensors
    are optional on both sides.  Anything else missing, unexpected or of another shape means the file was
    made for another architecture: with ``strict`` (default) this raises :class:`UserError` saying, when it
    can tell, which architecture the file is for; with ``strict=False`` only the matching tensors are loaded.

    ``model`` may be wrapped (DDP, ``torch.compile``).  ``arch`` names the model in messages.
    Returns ``{'loaded': n, 'missing': [...], 'unexpected': [...], 'mismatched': [...],
    'head_reinitialised': bool, 'meta': {...}}`` (``mismatched``: keys present in both but of other shape).
    """
    target = unwrap(model)
    sd, meta, source = as_state_dict(path_or_state_dict)
    own = target.state_dict()
    head_keys = head_parameter_names(target)
    aux_keys = {k for k in own if is_aux_name(k)}

    loadable = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and k not in loadable]
    optional = head_keys | aux_keys
    bad_missing = [k for k in missing if k not in optional]
    bad_shapes = [k for k in mismatched if k not in optional]
    bad_unexpected = [k for k in unexpected if not is_aux_name(k)]
    name = arch or type(target).__name__

    if strict and (bad_missing or bad_shapes or bad_unexpected):
        problems = []
        if bad_missing:
            problems.append(
                f"{len(bad_missing)} of the model's {len(own)} tensors are missing (e.g. {_fmt_keys(bad_missing, 2)})"
            )
        if bad_shapes:
            k = bad_shapes[0]
            problems.append(
                f"{len(bad_shapes)} have another shape (e.g. {k}: file {tuple(sd[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if bad_unexpected:
            problems.append(
                f"{len(bad_unexpected)} tensors in the file are not in the model (e.g. {_fmt_keys(bad_unexpected, 2)})"
            )
        guess, how = architecture_hint(sd, meta)
        hint = (
            f"; the file looks like it is for {guess} ({how})"
            if guess
            else "; it was probably made for another architecture"
        )
        raise UserError(f"weights {source} do not fit {name}: " + "; ".join(problems) + hint)

    target.load_state_dict(loadable, strict=False)
    head_reinitialised = any(k not in loadable for k in head_keys)
    if verbose:
        print(f"loaded {len(loadable)}/{len(own)} tensors of {name} from {source}", flush=True)
        if head_reinitialised:
            main_key = main_head_weight_key(target)
            file_out = tuple(sd[main_key].shape)[0] if main_key in sd else None
            model_out = out_size(head_paths(target)[0][1])
            if file_out is None:
                print(f"  head not in the file: kept the model's fresh head ({model_out} outputs)", flush=True)
            else:
                print(
                    f"  head re-initialised: the file's head has {file_out} outputs, the model's {model_out}",
                    flush=True,
                )
        others = [k for k in missing if k not in head_keys]
        if others:
            print(f"  missing from the file (kept as initialised): {_fmt_keys(others)}", flush=True)
        if unexpected:
            print(f"  in the file but not in the model (ignored): {_fmt_keys(unexpected)}", flush=True)
        other_shapes = [k for k in mismatched if k not in head_keys]
        if other_shapes:
            print(f"  shape differs (kept as initialised): {_fmt_keys(other_shapes)}", flush=True)
    return {
        'loaded': len(loadable),
        'missing': missing,
        'unexpected': unexpected,
        'mismatched': mismatched,
        'head_reinitialised': head_reinitialised,
        'meta': meta,
    }
