"""torchvision classification architectures by name: listing, resolving, and cheap weight-free "skeletons"
used to inspect an architecture's ``state_dict`` keys and shapes (building one: :mod:`models.loading`)."""

from __future__ import annotations

import difflib
import re
import warnings
from collections import defaultdict

import torch
import torchvision
from torch.overrides import TorchFunctionMode

from models import timm_backend
from models.heads import head_parameter_names, is_aux_name
from util.errors import UserError

# Keyword arguments that make googlenet / inception_v3 return a plain tensor (no auxiliary logits) and keep
# torchvision's historical initialisation without its FutureWarning.  Callers may override them.
ARCH_DEFAULTS = {
    'googlenet': {'aux_logits': False, 'init_weights': True},
    'inception_v3': {'aux_logits': False, 'init_weights': True},
}


def list_architectures() -> list[str]:
    """Sorted names of all torchvision *classification* models (``resnet50``, ``vit_b_16``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_arch(arch: str) -> str:
    """Return the canonical architecture name, or raise :class:`UserError` listing close matches.

    ``timm:NAME`` names a timm model (:mod:`models.timm_backend`; needs the optional package timm)."""
    if timm_backend.is_timm(arch):
        return timm_backend.resolve(arch)
    names = list_architectures()
    if isinstance(arch, str):
        key = arch.strip().lower().replace('-', '_')
        if key in names:
            return key
    if isinstance(arch, str) and arch.strip().lower() in torchvision.models.list_models():
        raise UserError(
            f"{arch!r} is not an image classification model; choose a classifier such as "
            f"resnet50 (all: models.list_architectures())"
        )
    close = difflib.get_close_matches(str(arch).lower(), names, n=5, cutoff=0.6)
    if close:
        hint = "did you mean " + ", ".join(close) + "?"
    else:
        hint = "choose one of: " + ", ".join(names)
    raise UserError(f"unknown architecture {arch!r}: {hint}")


class _MetaFactories(TorchFunctionMode):
    """Create parameter-sized tensors (``torch.empty/zeros/ones/full/rand/randn`` without an explicit device)
    on the ``meta`` device, so building even a huge model allocates no memory, and skip in-place initialisation
    of meta tensors (there is nothing to initialise; decomposing it is slow).  Other ops (e.g. regnet's width
    computation with ``arange``/``pow``/``tolist``) still run on the CPU, unlike ``with torch.device('meta')``."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}
    # Value-only in-place ops used to initialise parameters (shape-changing ones such as resize_ still run).
    _INIT_OPS = {
        'normal_',
        'uniform_',
        'zero_',
        'fill_',
        'copy_',
        'clamp_',
        'clamp_min_',
        'clamp_max_',
        'mul_',
        'add_',
        'sub_',
        'div_',
        'erfinv_',
        'exp_',
        'bernoulli_',
        'random_',
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get('device') is None:
            kwargs['device'] = 'meta'
        elif (
            args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
            and (
                getattr(func, '__module__', None) == 'torch.nn.init'
                or getattr(func, '__name__', None) in self._INIT_OPS
            )
        ):
            return args[0]  # initialising a meta tensor: there is no data, and decomposing the op is slow
        return func(*args, **kwargs)


def skeleton(arch: str, **kwargs) -> torch.nn.Module:
    """A weight-free instance of ``arch`` (parameters on the ``meta`` device) for inspecting its structure,
    ``state_dict`` keys and shapes.  It cannot run a forward pass."""
    arch = resolve_arch(arch)
    if timm_backend.is_timm(arch):
        return timm_backend.skeleton(arch)
    kwargs = {**ARCH_DEFAULTS.get(arch, {}), **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with _MetaFactories():
            return torchvision.models.get_model(arch, weights=None, **kwargs)


def file_stem(arch: str) -> str:
    """``arch`` as it appears in file names: ``timm:resnet18d`` -> ``timm-resnet18d`` (no colon)."""
    return arch.replace(':', '-')


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _pattern(key):
    return re.sub(r'\d+', '#', key)


def _num_params(arch):
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.meta.get('num_params', 0)
    except Exception:
        return 0


def architectures_matching(state_dict: dict) -> list[str]:
    """Names of the torchvision architectures whose ``state_dict`` has exactly the keys and shapes of
    ``state_dict`` (head sizes and auxiliary classifiers ignored).  Cheap: families are first ranked by the
    digit-free key patterns of their smallest member, then only the best family's members are compared."""
    file_shapes = {k: tuple(v.shape) for k, v in state_dict.items() if not is_aux_name(k)}
    file_patterns = {_pattern(k) for k in file_shapes}
    families = defaultdict(list)
    for name in list_architectures():
        families[torchvision.models.get_model_builder(name).__module__].append(name)
    scored = []
    for members in families.values():
        rep = min(members, key=_num_params)
        patterns = {_pattern(k) for k in _shapes(skeleton(rep)) if not is_aux_name(k)}
        score = len(file_patterns & patterns) / max(1, len(file_patterns | patterns))
        scored.append((score, members))
    scored.sort(key=lambda s: -s[0])
    matches = []
    for score, members in scored[:2]:
        if score < 0.5:
            break
        for name in members:
            model = skeleton(name)
            head = head_parameter_names(model)
            shapes = {k: s for k, s in _shapes(model).items() if not is_aux_name(k)}
            if set(shapes) != set(file_shapes):
                continue
            if all(shapes[k] == file_shapes[k] or k in head for k in shapes):
                matches.append(name)
        if matches:
            break
    return matches
