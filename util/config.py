"""The run configuration: one tree of frozen dataclasses (:class:`RunConfig` at the top), built once from the
flags by :mod:`util.cli.build`; library code takes it (or a branch of it), never the flags.

Field defaults are the single source of truth for the flags' defaults (:mod:`util.cli.flags` reads them).
A field is named after its flag (``vars(args)`` key) unless its metadata names the flag (``flag=...``); that
correspondence is what :func:`record` uses to write the settings of a run (args.json, checkpoints) under the
flags' names. Phases of a run are derived with :func:`dataclasses.replace`.
"""

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Optional

from util.errors import UserError
from util.io.fileio import DEFAULT_MAX_PIXELS
from util.ph import label_norm
from util.ph.cubical import DEFAULT_ENGINE, DEFAULT_FILTRATION
from util.ph.generator import GeneratorConfig
from util.ph.vectorise import (
    DEFAULT_BANDWIDTH,
    DEFAULT_LABEL_DIM,
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


def _flag(name):
    """Field metadata: the field holds the value of the flag whose ``vars(args)`` key is ``name``."""
    return {'flag': name}


@dataclass(frozen=True)
class TrainConfig:
    """What the training engine, the distributed start-up and the run folders need.

    ``device``/``amp``/``channels_last`` None mean "decide at start-up" (CUDA when available, and then
    bfloat16 autocast and channels-last); :func:`util.train.distributed.init_distributed` returns a copy with
    them decided, and ``rank``/``world_size``/``local_rank``/``distributed`` from torchrun's environment.
    """

    device: Optional[str] = None
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    backend: Optional[str] = field(default=None, metadata=_flag('pidf'))  # -p: 'nccl' or 'gloo' (default by device)
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    distributed: bool = False
    seed: int = 1
    batch_size: int = 96
    num_workers: Optional[int] = None  # None: the cores per training process minus two (util.train.distributed)
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


@dataclass(frozen=True)
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
    # --warp_scale LO HI / --warp_rotation / --warp_shear (util.train.transforms.WarpCrop): random-resized crop,
    # rotation and shear as one warp inside the image (no fill); None: off, the crops above as they were
    warp_scale: Optional[tuple] = None
    warp_rotation: float = 0.0
    warp_shear: float = 0.0


@dataclass(frozen=True)
class LabelConfig:
    """How persistence diagrams become label vectors: the label flags of :func:`util.cli.label_flags.add_label_args`
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


@dataclass(frozen=True)
class NormConfig:
    """``--label_norm``: 'none', 'standard' (z-score of the pretraining labels, std floored at ``floor`` x the
    RMS of the components' std) or 'whiten' (top-``components`` PCA whitening; see util.ph.label_norm)."""

    mode: str = field(default='none', metadata=_flag('label_norm'))
    floor: float = field(default=label_norm.DEFAULT_FLOOR, metadata=_flag('label_norm_floor'))
    components: int = field(
        default=label_norm.DEFAULT_COMPONENTS, metadata=_flag('label_norm_components')
    )  # --label_norm whiten: K


def _on_the_fly_generator():
    return GeneratorConfig(img_size=AugmentConfig.img_size, prob_colour=ON_THE_FLY_PROB_COLOUR)


@dataclass(frozen=True)
class DataConfig:
    """Where training and validation images and their labels come from (see util.train.sources).

    ``train``/``val``: image folders (None: none given); ``ph_dir``/``precomputed``: the -pd folder of
    PHdict.py and whether it holds a label matrix; ``persistence``: 'pre' or 'post' (label before / after the
    spatial augmentation); ``filtration``/``gradient``/``size_normalise``/``ph_engine``: how PH is computed in the
    loader (and what -pd's labels must have been made with); ``generator``,
    ``n_samples``, ``n_samples_val`` (-1: min(1000, n/10)), ``seed``, ``cache_dir``: the images generated on
    the fly when there is no ``train`` folder; ``bad_images``/``max_pixels``: what an undecodable image does
    (skip or fail) and the largest image decoded.
    """

    train: Optional[str] = None
    val: Optional[str] = None
    ph_dir: str = field(default='', metadata=_flag('path2PHdir'))
    precomputed: bool = False
    persistence: str = 'pre'
    filtration: str = DEFAULT_FILTRATION  # a list of names: several filtrations, their labels side by side
    gradient: bool = False
    size_normalise: bool = False  # filtration values times SIZE_REFERENCE / the image's size (PHdict.py's flag)
    ph_engine: str = DEFAULT_ENGINE
    bad_images: str = 'skip'
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images (width x height) are bad images, never decoded
    label: LabelConfig = field(default_factory=LabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    generator: GeneratorConfig = field(default_factory=_on_the_fly_generator)
    n_samples: int = ON_THE_FLY_IMAGES
    n_samples_val: int = -1
    seed: int = TrainConfig.seed
    cache_dir: Optional[str] = None
    norm: NormConfig = field(default_factory=NormConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The network: ``usenet`` (architecture), ``path2weight`` (-pw: a weights file, 'imagenet' or None),
    ``numof_pretrained_classes`` (-npc: the head size of -pw, None = read from the file), ``numof_classes``
    (-nc: the output size; None = not given, see :func:`resolve_num_classes`)."""

    usenet: str = 'resnet50'
    path2weight: Optional[str] = None
    numof_pretrained_classes: Optional[int] = None
    numof_classes: Optional[int] = None
    numof_fclayer: int = 4096  # accepted for compatibility; heads keep each architecture's hidden widths


@dataclass(frozen=True)
class ContrastiveConfig:
    """``-lm contrastive`` (util.train.contrastive): the NT-Xent temperature and the projection head's output size
    (its weight against the PH regression loss is ``TrainConfig.ph_weight``)."""

    temperature: float = 0.2
    proj_dim: int = 128


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation of pretraining.py / finetuning.py runs: the mode, the files, the phase
    settings, and the branches ``train``, ``data``, ``model``.

    ``phase``: the phase this configuration runs (the mode itself, or 'pretraining' / 'finetuning' inside
    ``-lm combined``). ``flags``: every flag as given (with the values util/cli/build.py resolves),
    ``((name, value), ...)``, kept only so that :func:`record` also writes the flags no branch records under
    their own names (the generator's).
    """

    learning_mode: str = 'pretraining'
    phase: str = 'pretraining'
    evaluate: bool = False
    output: str = 'result'
    resume: str = ''
    output_training_images: int = 0
    lr_pre: float = 0.1
    lr_fine: float = 0.01
    epochs_pre: Optional[int] = None  # combined: epochs of the pretraining phase (None: -e)
    ph_train: Optional[str] = None
    ph_val: Optional[str] = None
    ph_dims: int = DEFAULT_LABEL_DIM
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    flags: tuple = ()


# The branches whose fields are recorded under their flags' names (GeneratorConfig's come from the flags as
# they are and no phase changes them).
_RECORDED = (
    RunConfig,
    TrainConfig,
    DataConfig,
    LabelConfig,
    AugmentConfig,
    NormConfig,
    ModelConfig,
    ContrastiveConfig,
)


def flag_values(config):
    """{flag name: value} of the fields of ``config`` and its recorded branches."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == 'flags':
            continue
        if isinstance(value, _RECORDED):
            out.update(flag_values(value))
        elif not dataclasses.is_dataclass(value):
            out[f.metadata.get('flag', f.name)] = value
    return out


def record(run, **facts):
    """The settings of a run as args.json and checkpoints store them: the flags as given, the values this phase
    runs with (under the flags' names, with the device set-up decided at start), then ``facts`` (what the run
    found: its folder, label statistics, ...)."""
    return {**dict(run.flags), **flag_values(run), **facts}


def resolve_num_classes(given, classes=None, where=None):
    """The output size, the one place where -nc "not given" (None) is resolved.

    With ``classes`` (the class folders found in ``where``): their number, refusing an explicit -nc that
    differs. Without (PH label vectors, or a model built by a direct call): ``given``, else
    :data:`DEFAULT_NUM_OUTPUTS`.
    """
    if classes is not None and given is None:
        return len(classes)
    if classes is not None and given != len(classes):
        raise UserError(f"-nc {given} but {where!r} has {len(classes)} classes")
    return DEFAULT_NUM_OUTPUTS if given is None else given


def from_mapping(cls, values, **overrides):
    """``cls`` with the fields present in ``values`` (a dict) taken from it, then ``overrides``."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in dict(values).items() if k in names}, **overrides})
