"""torchvision classification architectures by name: listing, building (random or ImageNet weights), and
cheap weight-free "skeletons" used to inspect an architecture's ``state_dict`` keys and shapes."""
import difflib
import os
import re
import urllib.error
import warnings
from collections import defaultdict
from urllib.parse import urlparse

import torch
import torchvision
from torch.overrides import TorchFunctionMode

from models.heads import (_check_num_classes, _is_aux_name, aux_module_paths, head_out_features,
                          head_parameter_names, replace_head)
from util.errors import UserError

# Accepted spellings of "torchvision's default ImageNet weights for this architecture".
IMAGENET_ALIASES = ('imagenet', 'default')
# Keyword arguments that make googlenet / inception_v3 return a plain tensor (no auxiliary logits) and keep
# torchvision's historical initialisation without its FutureWarning.  Callers may override them.
_ARCH_DEFAULTS = {
    'googlenet': {'aux_logits': False, 'init_weights': True},
    'inception_v3': {'aux_logits': False, 'init_weights': True},
}


def list_architectures():
    """Sorted names of all torchvision *classification* models (``resnet50``, ``vit_b_16``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_arch(arch):
    """Return the canonical architecture name, or raise :class:`UserError` listing close matches."""
    names = list_architectures()
    if isinstance(arch, str):
        key = arch.strip().lower().replace('-', '_')
        if key in names:
            return key
    if isinstance(arch, str) and arch.strip().lower() in torchvision.models.list_models():
        raise UserError(f"{arch!r} is not an image classification model; choose a classifier such as "
                        f"resnet50 (all: models.list_architectures())")
    close = difflib.get_close_matches(str(arch).lower(), names, n=5, cutoff=0.6)
    if close:
        hint = "did you mean " + ", ".join(close) + "?"
    else:
        hint = "choose one of: " + ", ".join(names)
    raise UserError(f"unknown architecture {arch!r}: {hint}")


def _resolve_weights(arch, weights):
    """torchvision weights enum member for ``'imagenet'``/``'DEFAULT'`` or an enum name like ``'IMAGENET1K_V2'``."""
    enum = torchvision.models.get_model_weights(arch)
    key = weights.strip()
    if key.lower() in IMAGENET_ALIASES:
        return enum.DEFAULT
    for member in enum:
        if member.name.lower() == key.lower():
            return member
    choices = ", ".join(["imagenet"] + [m.name for m in enum])
    raise UserError(f"unknown weights {weights!r} for {arch}: use None (random init), a weights file, "
                    f"or one of {choices}")


def hub_cache_path(weights_enum):
    """Where torch hub keeps the file of a torchvision weights enum member:
    ``$TORCH_HOME/hub/checkpoints/<basename of its URL>`` (e.g. ``resnet18-f37072fd.pth``)."""
    filename = os.path.basename(urlparse(weights_enum.url).path)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', filename)


def _fetch_torchvision_weights(arch, w):
    """Make sure the weights file of ``w`` is in the torch hub cache (downloading it if needed, which verifies
    the hash in its name) and that it loads with ``weights_only=True``; raise :class:`UserError` otherwise."""
    cached = hub_cache_path(w)
    try:
        torch.hub.load_state_dict_from_url(w.url, map_location='cpu', progress=True, check_hash=True,
                                           weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise UserError(f"cannot download the ImageNet weights of {arch} from {w.url} ({e}); "
                        f"without network access, put that file at {cached}") from None
    except Exception as e:  # a corrupt or unsafe file in the cache: never fall back to a full unpickle
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not os.path.exists(cached):
            raise UserError(f"cannot fetch the ImageNet weights of {arch} from {w.url} ({first}); "
                            f"without network access, put that file at {cached}") from None
        raise UserError(f"cached ImageNet weights {cached} for {arch} cannot be loaded safely ({first}); "
                        f"delete the file and retry") from None
    return cached


def _looks_like_file(arch, weights):
    """True if the ``weights`` string is meant as a file rather than a torchvision weights name."""
    names = {m.name.lower() for m in torchvision.models.get_model_weights(arch)} | set(IMAGENET_ALIASES)
    if weights.strip().lower() in names:
        return False
    return os.path.exists(weights) or os.sep in weights or weights.endswith(('.pth', '.pt', '.tar', '.ckpt'))


def build_model(arch, num_classes, weights=None, **kwargs):
    """A torchvision classifier ``arch`` with a head of ``num_classes`` outputs.

    ``weights``:
      * ``None``: random initialisation (torchvision's constructor with ``num_classes``);
      * ``'imagenet'`` / ``'DEFAULT'`` (or a torchvision weights name such as ``'IMAGENET1K_V2'``): torchvision's
        weights, fetched through torch hub (cache under ``$TORCH_HOME/hub/checkpoints``); the head is then
        replaced by a fresh one if ``num_classes`` differs from the weights' number of categories;
      * a path to a ``.pth`` file (state dict or our checkpoint): loaded with :func:`models.load_pretrained`
        (head kept fresh when its size differs).

    ``kwargs`` go to the torchvision constructor (e.g. ``image_size=64`` for vit with random init).
    googlenet / inception_v3 are built without auxiliary classifiers unless ``aux_logits=True`` is passed.
    Input: ``(B, 3, H, W)`` float tensors; output: ``(B, num_classes)`` logits.
    """
    arch = resolve_arch(arch)
    _check_num_classes(num_classes)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise UserError(f"weights for {arch} must be None, 'imagenet' or a file path, got {weights!r}")
    if weights is None or isinstance(weights, os.PathLike) or _looks_like_file(arch, weights):
        options = {**_ARCH_DEFAULTS.get(arch, {}), **kwargs}
        model = _construct(arch, weights=None, num_classes=num_classes, **options)
        if weights is not None:
            from models.weights import load_pretrained
            load_pretrained(model, weights, arch=arch)
        return model
    w = _resolve_weights(arch, weights)
    _fetch_torchvision_weights(arch, w)
    want_aux = kwargs.pop('aux_logits', False)
    if want_aux:
        kwargs['aux_logits'] = True
    # The file has just been read with weights_only=True, so torchvision's own torch.load of the same
    # cached file (which does not pass weights_only) can only rebuild tensors and plain containers.
    model = _construct(arch, weights=w, **kwargs)
    if not want_aux and getattr(model, 'aux_logits', False):
        model.aux_logits = False  # googlenet / inception_v3: return plain logits
        for path in aux_module_paths(model):
            if '.' not in path:
                setattr(model, path, None)
    if head_out_features(model) != num_classes:
        replace_head(model, num_classes)
    return model


def _construct(arch, **kwargs):
    try:
        return torchvision.models.get_model(arch, **kwargs)
    except (TypeError, ValueError) as e:
        options = {k: v for k, v in kwargs.items() if k != 'weights'}
        raise UserError(f"cannot build {arch} with options {options}: {e}") from None


class _MetaFactories(TorchFunctionMode):
    """Create parameter-sized tensors (``torch.empty/zeros/ones/full/rand/randn`` without an explicit device)
    on the ``meta`` device, so building even a huge model allocates no memory, and skip in-place initialisation
    of meta tensors (there is nothing to initialise; decomposing it is slow).  Other ops (e.g. regnet's width
    computation with ``arange``/``pow``/``tolist``) still run on the CPU, unlike ``with torch.device('meta')``."""
    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}
    # Value-only in-place ops used to initialise parameters (shape-changing ones such as resize_ still run).
    _INIT_OPS = {'normal_', 'uniform_', 'zero_', 'fill_', 'copy_', 'clamp_', 'clamp_min_', 'clamp_max_', 'mul_',
                 'add_', 'sub_', 'div_', 'erfinv_', 'exp_', 'bernoulli_', 'random_'}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get('device') is None:
            kwargs['device'] = 'meta'
        elif args and isinstance(args[0], torch.Tensor) and args[0].is_meta and (
                getattr(func, '__module__', None) == 'torch.nn.init'
                or getattr(func, '__name__', None) in self._INIT_OPS):
            return args[0]  # initialising a meta tensor: there is no data, and decomposing the op is slow
        return func(*args, **kwargs)


def skeleton(arch, **kwargs):
    """A weight-free instance of ``arch`` (parameters on the ``meta`` device) for inspecting its structure,
    ``state_dict`` keys and shapes.  It cannot run a forward pass."""
    arch = resolve_arch(arch)
    kwargs = {**_ARCH_DEFAULTS.get(arch, {}), **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with _MetaFactories():
            return torchvision.models.get_model(arch, weights=None, **kwargs)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _pattern(key):
    return re.sub(r'\d+', '#', key)


def _num_params(arch):
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.meta.get('num_params', 0)
    except Exception:
        return 0


def architectures_matching(state_dict):
    """Names of the torchvision architectures whose ``state_dict`` has exactly the keys and shapes of
    ``state_dict`` (head sizes and auxiliary classifiers ignored).  Cheap: families are first ranked by the
    digit-free key patterns of their smallest member, then only the best family's members are compared."""
    file_shapes = {k: tuple(v.shape) for k, v in state_dict.items() if not _is_aux_name(k)}
    file_patterns = {_pattern(k) for k in file_shapes}
    families = defaultdict(list)
    for name in list_architectures():
        families[torchvision.models.get_model_builder(name).__module__].append(name)
    scored = []
    for members in families.values():
        rep = min(members, key=_num_params)
        patterns = {_pattern(k) for k in _shapes(skeleton(rep)) if not _is_aux_name(k)}
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
            shapes = {k: s for k, s in _shapes(model).items() if not _is_aux_name(k)}
            if set(shapes) != set(file_shapes):
                continue
            if all(shapes[k] == file_shapes[k] or k in head for k in shapes):
                matches.append(name)
        if matches:
            break
    return matches
