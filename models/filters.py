"""The first convolution's filters of any weights source (visMap.py): our files and checkpoints, plain
torchvision state dicts, MoCo checkpoints, or torchvision's ImageNet weights."""

from __future__ import annotations

import torch

from models.loading import IMAGENET_ALIASES, build_model, load_for
from models.registry import resolve_arch
from models.weights import architecture_hint, as_state_dict
from util.errors import UserError

DEFAULT_IMAGENET_ARCH = 'resnet50'


def _first_conv_of_model(model):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return name, module.weight.detach().clone()
    raise UserError(f"{type(model).__name__} has no 2-D convolution to draw")


def first_conv_filters(source: str | dict | torch.nn.Module, arch: str | None = None) -> tuple[torch.Tensor, dict]:
    """``(weight [out, in, kH, kW], info)`` of the first 2-D convolution.

    ``source``: ``'imagenet'`` (torchvision's weights of ``arch``, default resnet50) or a weights file /
    state dict.  ``arch`` None for a file: the first 4-D tensor of the file, and ``info['arch']`` says which
    architecture the file tells (its args, its 'arch' entry, or its tensor shapes), if any.  With ``arch``
    the file must fit that architecture (:func:`models.load_for`), the filters are that model's first
    convolution.  ``info``: {'arch', 'how', 'layer', 'source'}.
    """
    if isinstance(source, str) and source.strip().lower() in IMAGENET_ALIASES:
        how = 'given' if arch else 'the default for imagenet'
        arch = resolve_arch(arch or DEFAULT_IMAGENET_ARCH)
        layer, weight = _first_conv_of_model(build_model(arch, 1000, weights=source))
        return weight, {'arch': arch, 'how': how, 'layer': layer, 'source': f"torchvision's ImageNet weights of {arch}"}
    weights = as_state_dict(source)
    if arch is not None:
        model, _ = load_for(arch, weights, num_classes=None if _has_head(weights, arch) else 1)
        layer, weight = _first_conv_of_model(model)
        return weight, {'arch': resolve_arch(arch), 'how': 'given', 'layer': layer, 'source': weights.source}
    guess, how = architecture_hint(weights.state_dict, weights.meta)
    for key, value in weights.state_dict.items():
        if value.dim() == 4:
            return value.detach().clone().float(), {
                'arch': guess,
                'how': how,
                'layer': key.rsplit('.', 1)[0],
                'source': weights.source,
            }
    raise UserError(f"{weights.source} holds no 4-D (convolution) tensor to draw")


def _has_head(weights, arch):
    from models.heads import main_head_weight_key
    from models.registry import skeleton

    return main_head_weight_key(skeleton(resolve_arch(arch))) in weights.state_dict
