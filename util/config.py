"""The settings library code takes, as small dataclasses; :mod:`util.cli` builds them from the flags.

Their field defaults are the single source of truth for the flags' defaults.
"""
from dataclasses import dataclass, fields
from typing import Optional


@dataclass
class TrainConfig:
    """What the training engine, the distributed start-up and the run folders need.

    ``device``/``amp``/``channels_last`` None mean "decide at start-up" (CUDA when available, and then
    bfloat16 autocast and channels-last); :func:`util.distributed.init_distributed` fills them in, and
    ``rank``/``world_size``/``local_rank``/``distributed`` from torchrun's environment.
    """
    device: Optional[str] = None
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    backend: Optional[str] = None          # -p/--pidf: 'nccl' or 'gloo' (default by device)
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    distributed: bool = False
    seed: int = 1
    batch_size: int = 96
    num_workers: int = 8
    log_interval: int = 100
    optimizer: str = 'sgd'
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 90
    start_epoch: int = 1
    stop_after: int = 0
    save_interval: int = 90
    freeze_encoder: bool = False
    ph_weight: float = 1.0                 # two-task modes: weight of the PH regression loss


@dataclass
class AugmentConfig:
    """Sizes and augmentation of training images (see util.datasets' transforms)."""
    img_size: int = 256
    crop_size: int = 224
    aug_plus: bool = False
    random_scale: float = 0.0
    random_rotation: float = 0.0
    crop_padding: int = 0
    affine: bool = False
    hflip: Optional[bool] = None           # None: the script's default (fine-tuning on; pretraining off, on with aug_plus)


def from_mapping(cls, values, **overrides):
    """``cls`` with the fields present in ``values`` (a dict) taken from it, then ``overrides``."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in dict(values).items() if k in names}, **overrides})
