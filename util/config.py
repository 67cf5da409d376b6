"""The settings library code takes, as small dataclasses; :mod:`util.cli.flags` builds them from the flags.

Their field defaults are the single source of truth for the flags' defaults.
"""

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Optional

from util.ph.cubical import DEFAULT_ENGINE
from util.ph.generator import GeneratorConfig
from util.ph.vectorise import (
    DEFAULT_BANDWIDTH,
    DEFAULT_MAX_BIRTH,
    DEFAULT_MAX_LIFE,
    DEFAULT_NUM_LANDSCAPES,
    DEFAULT_POWER,
    DEFAULT_SIGMA,
    vectoriser_from_params,
)

# Defaults of the images generated on the fly (no -t), which differ from util/random_image.py's on purpose:
# that script writes a dataset once (200000 images, all in colour as in the original's generator, seed 0),
# while training draws a fresh set every epoch: 50000 images (the original README's dataset size), half of
# them in colour (the README's "-pc 0.5" command), from the training seed (--seed, default 1).
ON_THE_FLY_IMAGES = 50000
ON_THE_FLY_PROB_COLOUR = 0.5

# -nc/--numof_classes when it is not given and there is no class folder to count: the PH label dimension of
# pretraining, and the head size of a model built by a direct call without a dataset.
DEFAULT_NUM_OUTPUTS = 100


@dataclass
class TrainConfig:
    """What the training engine, the distributed start-up and the run folders need.

    ``device``/``amp``/``channels_last`` None mean "decide at start-up" (CUDA when available, and then
    bfloat16 autocast and channels-last); :func:`util.train.distributed.init_distributed` fills them in, and
    ``rank``/``world_size``/``local_rank``/``distributed`` from torchrun's environment.
    """

    device: Optional[str] = None
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    backend: Optional[str] = None  # -p/--pidf: 'nccl' or 'gloo' (default by device)
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
    ph_weight: float = 1.0  # two-task modes: weight of the PH regression loss
    tensorboard: bool = False  # --tensorboard: log.jsonl's figures also written for TensorBoard


@dataclass
class AugmentConfig:
    """Sizes and augmentation of training images (see util.train.datasets' transforms)."""

    img_size: int = 256
    crop_size: int = 224
    aug_plus: bool = False
    random_scale: float = 0.0
    random_rotation: float = 0.0
    crop_padding: int = 0
    affine: bool = False
    hflip: Optional[bool] = None  # None: the script's default (fine-tuning on; pretraining off, on with aug_plus)


@dataclass
class LabelConfig:
    """How persistence diagrams become label vectors: the label flags of :func:`util.ph.vectorise.add_label_args`
    (``label_type`` may also be 'class', the class folders as labels, which has no vectoriser)."""

    label_type: str = 'histogram'
    max_life: float = DEFAULT_MAX_LIFE
    max_birth: float = DEFAULT_MAX_BIRTH
    min_birth: Optional[float] = None
    bandwidth: int = DEFAULT_BANDWIDTH
    sigma: float = DEFAULT_SIGMA
    power: float = DEFAULT_POWER
    num_landscapes: int = DEFAULT_NUM_LANDSCAPES

    def vectoriser(self, dim, flag=None):
        """The :class:`util.ph.vectorise.Vectoriser` of these settings with output length ``dim``; ``flag`` (the
        option that set ``dim``) makes a length the label type cannot split evenly an error naming it."""
        return vectoriser_from_params(dataclasses.asdict(self), dim, flag)


def _on_the_fly_generator():
    return GeneratorConfig(img_size=AugmentConfig.img_size, prob_colour=ON_THE_FLY_PROB_COLOUR)


@dataclass
class DataConfig:
    """Where training and validation images and their labels come from (see util.train.data_sources).

    ``train``/``val``: image folders (None: none given); ``ph_dir``/``precomputed``: the -pd folder of
    PHdict.py and whether it holds a label matrix; ``persistence``: 'pre' or 'post' (label before / after the
    spatial augmentation); ``filtration``/``gradient``/``ph_engine``: how PH is computed in the loader; ``generator``,
    ``n_samples``, ``n_samples_val`` (-1: min(1000, n/10)), ``seed``, ``cache_dir``: the images generated on
    the fly when there is no ``train`` folder.
    """

    train: Optional[str] = None
    val: Optional[str] = None
    ph_dir: str = ''
    precomputed: bool = False
    persistence: str = 'pre'
    filtration: str = 'signed_distance'
    gradient: bool = False
    ph_engine: str = DEFAULT_ENGINE
    bad_images: str = 'skip'
    label: LabelConfig = field(default_factory=LabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    generator: GeneratorConfig = field(default_factory=_on_the_fly_generator)
    n_samples: int = ON_THE_FLY_IMAGES
    n_samples_val: int = -1
    seed: int = TrainConfig.seed
    cache_dir: Optional[str] = None


def from_mapping(cls, values, **overrides):
    """``cls`` with the fields present in ``values`` (a dict) taken from it, then ``overrides``."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in dict(values).items() if k in names}, **overrides})
