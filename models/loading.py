"""Build a torchvision classifier and load its weights: the one place a model meets a weights source.

:func:`load_for` is the entry the scripts use (random, ImageNet, a weights file or checkpoint of ours, a state
dict in memory, the classifier of a two-head file); :func:`build_model` is the lower-level constructor.
"""

from __future__ import annotations

import os
import urllib.error
from urllib.parse import urlparse

import torch
import torchvision

from models import timm_backend
from models.heads import aux_module_paths, check_num_classes, head_out_features, replace_head
from models.registry import ARCH_DEFAULTS, resolve_arch
from models.weights import Weights, as_state_dict, infer_num_classes, load_pretrained
from util.errors import UserError

# Accepted spellings of "torchvision's default ImageNet weights for this architecture".
IMAGENET_ALIASES = ('imagenet', 'default')


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
    raise UserError(
        f"unknown weights {weights!r} for {arch}: use None (random init), a weights file, or one of {choices}"
    )


def hub_cache_path(weights_enum: torchvision.models.WeightsEnum) -> str:
    """Where torch hub keeps the file of a torchvision weights enum member:
    ``$TORCH_HOME/hub/checkpoints/<basename of its URL>`` (e.g. ``resnet18-f37072fd.pth``)."""
    filename = os.path.basename(urlparse(weights_enum.url).path)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', filename)


def _fetch_torchvision_weights(arch, w):
    """Make sure the weights file of ``w`` is in the torch hub cache (downloading it if needed, which verifies
    the hash in its name) and that it loads with ``weights_only=True``; raise :class:`UserError` otherwise."""
    cached = hub_cache_path(w)
    try:
        torch.hub.load_state_dict_from_url(w.url, map_location='cpu', progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise UserError(
            f"cannot download the ImageNet weights of {arch} from {w.url} ({e}); "
            f"without network access, put that file at {cached}"
        ) from None
    except Exception as e:  # a corrupt or unsafe file in the cache: never fall back to a full unpickle
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not os.path.exists(cached):
            raise UserError(
                f"cannot fetch the ImageNet weights of {arch} from {w.url} ({first}); "
                f"without network access, put that file at {cached}"
            ) from None
        raise UserError(
            f"cached ImageNet weights {cached} for {arch} cannot be loaded safely ({first}); delete the file and retry"
        ) from None
    return cached


def _looks_like_file(arch, weights):
    """True if the ``weights`` string is meant as a file rather than a torchvision weights name."""
    names = {m.name.lower() for m in torchvision.models.get_model_weights(arch)} | set(IMAGENET_ALIASES)
    if weights.strip().lower() in names:
        return False
    return os.path.exists(weights) or os.sep in weights or weights.endswith(('.pth', '.pt', '.tar', '.ckpt'))


def _build_timm(arch, num_classes, weights=None, input_size=None):
    """:func:`build_model` for ``timm:NAME`` (random initialisation or a weights file; no downloads)."""
    if isinstance(weights, str) and weights.strip().lower() in IMAGENET_ALIASES:
        raise UserError(
            f"-pw {weights} gives torchvision's ImageNet weights, which {arch} has none of; nothing is downloaded "
            f"for timm models here: save timm's weights once (torch.save(timm.create_model("
            f"'{timm_backend.model_name(arch)}', pretrained=True).state_dict(), 'w.pth')) and give -pw w.pth"
        )
    model = timm_backend.create(arch, num_classes, input_size)
    if weights is not None:
        weights = as_state_dict(weights)
        sd = timm_backend.fit_position_embedding(model, weights.state_dict)
        load_pretrained(model, Weights(sd, weights.meta, weights.source), arch=arch)
    return model


def build_model(
    arch: str, num_classes: int, weights: str | None = None, input_size: int | None = None, **kwargs
) -> torch.nn.Module:
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
    ``timm:NAME`` builds a timm model (:mod:`models.timm_backend`); ``input_size`` is the side of the images it
    will get, used by the timm models that take one (ViTs); torchvision models ignore it.
    Input: ``(B, 3, H, W)`` float tensors; output: ``(B, num_classes)`` logits.
    """
    arch = resolve_arch(arch)
    check_num_classes(num_classes)
    if timm_backend.is_timm(arch):
        return _build_timm(arch, num_classes, weights, input_size)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise UserError(f"weights for {arch} must be None, 'imagenet' or a file path, got {weights!r}")
    if weights is None or isinstance(weights, os.PathLike) or _looks_like_file(arch, weights):
        options = {**ARCH_DEFAULTS.get(arch, {}), **kwargs}
        model = _construct(arch, weights=None, num_classes=num_classes, **options)
        if weights is not None:
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


def classifier_state(state_dict: dict) -> dict:
    """The classifier's tensors of a state dict: those under ``net.`` when it is a two-head model's
    (:class:`models.two_heads.TwoHeads`, which also holds ``ph_head.*``, or :class:`models.projection.ContrastiveNet`,
    ``proj_head.*``), else the dict itself."""
    if any(k.startswith(('ph_head.', 'proj_head.')) for k in state_dict):
        return {k[len('net.') :]: v for k, v in state_dict.items() if k.startswith('net.')}
    return state_dict


def classifier_weights(source: str | os.PathLike | dict | Weights) -> Weights:
    """A weights file (or state dict / checkpoint dict) read once, reduced to its classifier's tensors when it is a
    two-head model's (:func:`classifier_state`: the checkpoint.pth of -lm contrastive, simultaneous or
    alternating), so that :func:`models.infer_num_classes` and :func:`load_for` see the network's own head."""
    weights = as_state_dict(source)
    classifier = classifier_state(weights.state_dict)
    if classifier is not weights.state_dict:
        weights = Weights(classifier, weights.meta, weights.source + ' (its classifier)')
    return weights


def load_for(
    arch: str,
    source: str | os.PathLike | dict | Weights | None = None,
    num_classes: int | None = None,
    *,
    verbose: bool = False,
    input_size: int | None = None,
) -> tuple[torch.nn.Module, dict]:
    """``arch`` with a head of ``num_classes`` outputs, initialised from ``source``; returns (model, report).

    ``source``: None (random initialisation), ``'imagenet'`` (torchvision's weights), a weights file or an
    in-memory state dict / checkpoint dict.  A file may hold a plain state dict, a checkpoint of ours (the
    state dict under ``'model'``), keys prefixed by ``module.``/``_orig_mod.`` (DDP, ``torch.compile``), or a
    two-head model (its classifier is taken).  ``num_classes`` None keeps the head size stored in ``source``.
    A head of another size than the stored one is re-initialised, every other tensor must fit
    (:func:`models.load_pretrained`).  ``report``: that of :func:`models.load_pretrained` (empty counts
    without a file) plus ``num_classes`` (the model's) and ``stored_classes`` (the source's head, or None).
    ``input_size``: the side of the network's input images, for the timm models that need it (ViTs).

    A timm model (``timm:NAME``) is built with the stored head, loaded, and then given a head of ``num_classes``
    by timm's ``reset_classifier`` if the size differs.
    """
    arch = resolve_arch(arch)
    if source is None or (isinstance(source, str) and source.strip().lower() in IMAGENET_ALIASES):
        if num_classes is None:
            raise UserError(f"building {arch} without a weights file needs the number of classes")
        model = build_model(arch, num_classes, weights=source, input_size=input_size)
        return model, {
            'loaded': 0,
            'missing': [],
            'unexpected': [],
            'mismatched': [],
            'head_reinitialised': False,
            'meta': {},
            'num_classes': num_classes,
            'stored_classes': None,
        }
    weights = classifier_weights(source)
    try:
        stored = infer_num_classes(weights, arch)
    except UserError:
        if num_classes is None:
            raise
        stored = None  # no head of arch in there: load_pretrained says what the file looks like instead
    num_classes = stored if num_classes is None else num_classes
    if timm_backend.is_timm(arch):
        return _load_timm(arch, weights, stored, num_classes, verbose, input_size)
    model = build_model(arch, num_classes)
    report = load_pretrained(model, weights, arch=arch, verbose=verbose)
    return model, dict(report, num_classes=num_classes, stored_classes=stored)


def _load_timm(arch, weights, stored, num_classes, verbose, input_size):
    """:func:`load_for` of a timm model: built with the stored head, loaded, head reset if ``num_classes`` differs."""
    model = timm_backend.create(arch, stored if stored is not None else num_classes, input_size)
    sd = timm_backend.fit_position_embedding(model, weights.state_dict)
    report = load_pretrained(model, Weights(sd, weights.meta, weights.source), arch=arch, verbose=verbose)
    if head_out_features(model) != num_classes:
        replace_head(model, num_classes)  # timm's reset_classifier
        report['head_reinitialised'] = True
        if verbose:
            print(f"  head replaced by timm's reset_classifier: {num_classes} outputs", flush=True)
    return model, dict(report, num_classes=num_classes, stored_classes=stored)
