"""Any torchvision classifier by name, with a head of any size, and safe loading of pretrained weights.

Using our PH-pretrained weights in your own fine-tuning code (the head, trained with e.g. 200 PH outputs, is
replaced by a fresh one of your size; everything else is loaded)::

    from models import build_model, load_pretrained
    model = build_model('resnet50', num_classes=100)                 # random init, 100 outputs
    load_pretrained(model, 'result/XX/resnet50_epoch90.pth')          # encoder from the file, fresh head

Without this package, plain PyTorch does the same for a resnet (our files hold ``model.state_dict()``, or a
checkpoint dict with it under ``'model'``; keys may start with ``module.`` if saved from DDP)::

    sd = torch.load('resnet50_epoch90.pth', weights_only=True, map_location='cpu')
    sd = {k: v for k, v in sd.get('model', sd).items() if not k.startswith('fc.')}   # drop the PH head
    model = torchvision.models.resnet50(num_classes=100); model.load_state_dict(sd, strict=False)

timm models are ``-u timm:NAME`` (optional package; :mod:`models.timm_backend`): ``build_model('timm:resnet18d',
10)``, ``load_for('timm:vit_tiny_patch16_224', 'w.pth', 10, input_size=64)``.

The scripts build every model through :func:`load_for` (random, ImageNet, a file or checkpoint, a two-head
file).  Other entry points: :func:`list_architectures`; ``build_model(arch, n, weights='imagenet')`` for torchvision's
ImageNet weights (via the torch hub cache ``$TORCH_HOME/hub/checkpoints``); :func:`get_head`,
:func:`replace_head`, :func:`head_parameter_names` (freeze everything else for a linear probe);
:func:`read_state_dict`, :func:`infer_num_classes` (head size stored in a file).
"""

from models.heads import get_head, head_in_features, head_out_features, head_parameter_names, replace_head, unwrap
from models.loading import build_model, load_for
from models.registry import file_stem, list_architectures, resolve_arch, skeleton
from models.weights import architecture_hint, infer_num_classes, load_pretrained, read_state_dict, strip_prefixes

__all__ = [
    'load_for',
    'list_architectures',
    'resolve_arch',
    'file_stem',
    'build_model',
    'skeleton',
    'get_head',
    'head_out_features',
    'head_in_features',
    'replace_head',
    'head_parameter_names',
    'unwrap',
    'read_state_dict',
    'strip_prefixes',
    'infer_num_classes',
    'load_pretrained',
    'architecture_hint',
]
