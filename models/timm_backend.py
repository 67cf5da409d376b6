"""timm architectures as ``-u timm:NAME`` (optional: timm is installed with ``pip install -r requirements-extra.txt``).

``timm:convnext_atto``, ``timm:resnet18d``, ``timm:efficientnet_b0``, ``timm:vit_tiny_patch16_224``, ... are built
with ``timm.create_model(NAME, pretrained=False, num_classes=N)``; models that take an input size (vision
transformers and their kin) are built for the size the images reach the network (``input_size``: the training
scripts pass ``--crop_size``, the side after ``--img_size`` resizing and cropping), so their position embedding
fits it; a size their patches do not tile (8 or 30 pixels with 16-pixel patches) is refused naming ``--crop_size``.
A head of another size is put on through timm's own ``reset_classifier``.  Weights are saved as plain state dicts,
so ``timm.create_model(NAME, num_classes=N, img_size=S).load_state_dict(torch.load(f))`` reads them.
No timm weights are downloaded here (``pretrained=False`` always): to start from timm's ImageNet weights, save
them once with timm and give that file as ``-pw``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

import torch

from util.errors import UserError

if TYPE_CHECKING:
    from types import ModuleType

PREFIX = 'timm:'
INSTALL_HINT = "pip install timm (or: pip install -r requirements-extra.txt)"


def is_timm(arch: object) -> bool:
    """True for an architecture name of the form ``timm:NAME``."""
    return isinstance(arch, str) and arch.strip().lower().startswith(PREFIX)


def require_timm(arch: str | None = None) -> ModuleType:
    """The ``timm`` module, or a one-line :class:`UserError` saying how to install it."""
    try:
        return importlib.import_module('timm')
    except ImportError:
        what = f"-u {arch}" if arch else "a timm: architecture"
        raise UserError(f"{what} needs the optional package timm, which is not installed: {INSTALL_HINT}") from None


def model_name(arch: str) -> str:
    """The timm model name of ``timm:NAME`` (checked against timm's registry)."""
    return resolve(arch)[len(PREFIX) :]


def resolve(arch: str) -> str:
    """Canonical ``timm:NAME``; :class:`UserError` for a name timm does not know (with close matches)."""
    timm = require_timm(arch)
    name = arch.strip()[len(PREFIX) :].strip()
    if name and timm.is_model(name):
        return PREFIX + name
    close = difflib.get_close_matches(name.lower(), timm.list_models(), n=5, cutoff=0.6)
    hint = "did you mean " + ", ".join(PREFIX + c for c in close) + "?" if close else "see timm.list_models()"
    raise UserError(f"unknown timm architecture {arch!r}: {hint}")


def create(arch: str, num_classes: int, input_size: int | None = None) -> torch.nn.Module:
    """A randomly initialised timm model with a head of ``num_classes`` outputs.

    ``input_size`` (pixels, square) is passed as timm's ``img_size`` to the models that take one (ViTs, ...);
    the others (CNNs) do not depend on the input size and are built without it.
    """
    timm = require_timm(arch)
    name = model_name(arch)
    try:
        if input_size is not None:
            try:
                model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=input_size)
            except TypeError as e:
                if 'img_size' not in str(e):
                    raise
            else:
                check_patch_grid(model, arch, input_size)
                return model
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        size = f" for {input_size}x{input_size} images" if input_size is not None else ''
        raise UserError(f"cannot build {arch} with {num_classes} outputs{size}: {str(e).splitlines()[0]}") from None


def check_patch_grid(model: torch.nn.Module, arch: str, input_size: int) -> None:
    """Refuse an input side that the model's patches do not tile: a ViT cuts its input into P x P patches with a
    stride-P convolution, so a crop smaller than P fails in the first forward pass and one that is not a multiple
    of P is silently cut to the top-left multiple (30-pixel crops, 16-pixel patches: only 16 x 16 pixels seen).
    Models whose patch embedding pads or is not a plain patch convolution (hybrid CNN stems) are left alone."""
    from timm.layers import PatchEmbed

    embed = getattr(model, 'patch_embed', None)
    if not isinstance(embed, PatchEmbed) or getattr(embed, 'dynamic_img_pad', False):
        return
    patch = max(embed.patch_size)
    if all(input_size >= p and input_size % p == 0 for p in embed.patch_size):
        return
    valid = max(patch, (input_size + patch // 2) // patch * patch)  # the nearest multiple, ties up
    if input_size < patch:
        what = f"is smaller than the {patch}x{patch}-pixel patches of {arch}"
    else:
        seen = (input_size // patch) * patch
        what = f"is not a multiple of the {patch}-pixel patches of {arch}, which would see only {seen}x{seen} of it"
    raise UserError(f"--crop_size {input_size} {what}: give a multiple of {patch}, e.g. --crop_size {valid}")


def check_input_size(arch: str, input_size: int) -> None:
    """:func:`check_patch_grid` of ``timm:NAME`` built weight-free for ``input_size`` images, before any data is
    read; a model that takes no input size (CNNs) passes, and a failure to build is left to :func:`create`."""
    timm = require_timm(arch)
    try:
        with torch.device('meta'):
            model = timm.create_model(model_name(arch), pretrained=False, img_size=input_size)
    except Exception:  # noqa: BLE001 - no img_size, or the real build will say what is wrong
        return
    check_patch_grid(model, arch, input_size)


def skeleton(arch: str) -> torch.nn.Module:
    """A weight-free instance (parameters on the ``meta`` device) for inspecting its ``state_dict`` keys."""
    timm = require_timm(arch)
    with torch.device('meta'):
        return timm.create_model(model_name(arch), pretrained=False)


def fit_position_embedding(model: torch.nn.Module, state_dict: dict) -> dict:
    """``state_dict`` with its ``pos_embed`` resampled to the model's patch grid when the file was trained at
    another input size (a ViT pretrained on 64-pixel crops, fine-tuned on 32-pixel ones); other dicts as they are.
    """
    own = getattr(model, 'pos_embed', None)
    theirs = state_dict.get('pos_embed')
    if not isinstance(own, torch.Tensor) or theirs is None or tuple(theirs.shape) == tuple(own.shape):
        return state_dict
    grid = getattr(getattr(model, 'patch_embed', None), 'grid_size', None)
    if grid is None or theirs.dim() != 3:
        return state_dict  # not a plain ViT: load_pretrained reports the shape difference
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, 'no_embed_class', False) else int(getattr(model, 'num_prefix_tokens', 1))
    resized = resample_abs_pos_embed(theirs.float(), new_size=list(grid), num_prefix_tokens=prefix, verbose=False)
    return {**state_dict, 'pos_embed': resized.to(theirs.dtype)}
