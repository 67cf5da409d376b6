"""Find, measure and replace the classification head of any torchvision classifier, generically.

The *head* is the layer that produces the class scores: the last ``nn.Linear`` or ``nn.Conv2d`` registered
in the model (outside auxiliary classifiers).  For the torchvision families this is

* ``fc``                 -- resnet, resnext, wide_resnet, regnet, shufflenet, googlenet, inception
* ``classifier[i]``      -- the last Linear of the ``classifier`` Sequential: vgg, alexnet, densenet (a bare
  Linear), efficientnet, mobilenet, mnasnet, convnext, maxvit
* ``classifier[1]``      -- squeezenet's final 1x1 ``Conv2d`` (its output channels are the classes)
* ``heads.head`` / ``head`` -- vision transformer / swin transformer

timm models (``-u timm:NAME``) name their head themselves: ``get_classifier()`` gives it and
:func:`replace_head` goes through their ``reset_classifier``.

Auxiliary classifiers (googlenet ``aux1``/``aux2``, inception ``AuxLogits``: any submodule whose name contains
``aux``) have their own last layer, which is treated as part of the head: :func:`replace_head` resizes it too,
and :func:`head_parameter_names` includes it.  Widths are always read from the existing layer.
"""

from __future__ import annotations

import torch.nn as nn

from util.errors import UserError

HEAD_TYPES = (nn.Linear, nn.Conv2d)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DataParallel``/``DistributedDataParallel`` (``.module``) or ``torch.compile``
    (``._orig_mod``) wrappers, possibly nested."""
    while True:
        if isinstance(getattr(model, '_orig_mod', None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def is_aux_name(path: str) -> bool:
    """True if any component of the dotted module/key path names an auxiliary classifier."""
    return any('aux' in part.lower() for part in path.split('.'))


def aux_module_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the outermost auxiliary-classifier submodules (e.g. ``['aux1', 'aux2']``)."""
    paths = []
    for path, module in model.named_modules():
        if path and 'aux' in path.rsplit('.', 1)[-1].lower() and not any(path.startswith(p + '.') for p in paths):
            paths.append(path)
    return paths


def _last_layer(named_modules):
    found = None
    for path, module in named_modules:
        if isinstance(module, HEAD_TYPES):
            found = (path, module)
    return found


def timm_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, layer)`` of the head a timm model reports (``get_classifier``), or None for other models."""
    inner = unwrap(model)
    if not (callable(getattr(inner, 'get_classifier', None)) and callable(getattr(inner, 'reset_classifier', None))):
        return None
    head = inner.get_classifier()
    if not isinstance(head, HEAD_TYPES):
        return None
    for path, module in model.named_modules():
        if module is head:
            return path, module
    return None


def head_paths(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(path, layer), ...]``: the main head first, then the last layer of each auxiliary classifier."""
    timm = timm_head(model)
    if timm is not None:
        return [timm]
    aux = aux_module_paths(model)

    def outside_aux(item):
        path = item[0]
        return not any(path == p or path.startswith(p + '.') for p in aux)

    main = _last_layer(filter(outside_aux, model.named_modules()))
    if main is None:
        raise UserError(f"cannot find a classification head (a Linear or Conv2d layer) in {type(model).__name__}")
    heads = [main]
    for p in aux:
        sub = model.get_submodule(p)
        last = _last_layer(sub.named_modules(prefix=p))
        if last is not None:
            heads.append(last)
    return heads


def _parent_and_name(model, path):
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        return parent, int(name)
    return parent, name


def get_head(model: nn.Module) -> tuple[nn.Module, str | int, nn.Module]:
    """``(parent module, attribute name or Sequential index, head layer)`` of the main classifier layer.

    ``getattr(parent, name)`` (or ``parent[index]``) is the head; e.g. ``(model, 'fc', Linear)`` for a resnet,
    ``(model.classifier, 6, Linear)`` for vgg.
    """
    path, layer = head_paths(model)[0]
    parent, name = _parent_and_name(model, path)
    return parent, name, layer


def out_size(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_size(layer):
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def head_out_features(model: nn.Module) -> int:
    """Number of outputs (classes) of the main head."""
    return out_size(get_head(model)[2])


def head_in_features(model: nn.Module) -> int:
    """Number of features the main head receives from the encoder."""
    return _in_size(get_head(model)[2])


def _fresh_like(layer, num_classes):
    """A new layer of the same kind and input width as ``layer`` with ``num_classes`` outputs, default init,
    on the same device/dtype and in the same train/eval mode."""
    factory = {'device': layer.weight.device, 'dtype': layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, num_classes, bias=bias, **factory)
    else:
        if layer.groups != 1:
            raise UserError(f"cannot replace a grouped convolution head ({layer}) generically")
        new = nn.Conv2d(
            layer.in_channels,
            num_classes,
            kernel_size=layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=bias,
            padding_mode=layer.padding_mode,
            **factory,
        )
    new.train(layer.training)
    return new


def check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"number of classes must be a positive integer, got {num_classes!r}")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the head (and any auxiliary heads) by fresh layers with ``num_classes`` outputs, in place.

    The new layers keep the old ones' type, input width and bias setting; they get PyTorch's default
    initialisation.  Returns the new main head layer (the model itself is modified).  A timm model's head is
    replaced by its own ``reset_classifier`` (then moved to the old head's device, dtype and mode).
    """
    check_num_classes(num_classes)
    timm = timm_head(model)
    if timm is not None:
        old = timm[1]
        inner = unwrap(model)
        inner.reset_classifier(num_classes)
        new = inner.get_classifier()
        new.to(device=old.weight.device, dtype=old.weight.dtype).train(old.training)
        return new
    new_main = None
    for path, layer in head_paths(model):
        parent, name = _parent_and_name(model, path)
        new = _fresh_like(layer, num_classes)
        setattr(parent, str(name), new)
        if new_main is None:
            new_main = new
    return new_main


def head_parameter_names(model: nn.Module) -> set[str]:
    """``state_dict`` keys of the head and auxiliary heads, e.g. ``{'fc.weight', 'fc.bias'}``.

    Keys carry whatever prefix the given (possibly wrapped) model uses, so they match ``model.state_dict()``
    and ``model.named_parameters()`` -- handy for freezing the encoder (linear probing).
    """
    names = set()
    for path, layer in head_paths(model):
        names.update(f"{path}.{key}" for key in layer.state_dict())
    return names


def main_head_weight_key(model: nn.Module) -> str:
    """``state_dict`` key of the main head's weight (``'fc.weight'``, ``'classifier.6.weight'``, ...)."""
    return head_paths(model)[0][0] + '.weight'
