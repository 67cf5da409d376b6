"""The configuration of one PHdict.py run: a frozen dataclass built once from the flags by
:mod:`util.cli.ph_build`; the pipeline (:mod:`util.ph.pipeline`) takes it, never the flags.

Field defaults are the flags' defaults (PHdict.py's parser reads them).  A field is named after its flag (its
``vars(args)`` key); ``flags`` keeps every flag as given, in the parser's order, so that :func:`record` writes
args.json as the flags are, with the values this run uses (a part of several filtrations, fitted ``auto``
parameters) in their place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from util.io.fileio import DEFAULT_MAX_PIXELS
from util.ph.cubical import DEFAULT_ENGINE, DEFAULT_FILTRATION
from util.ph.label_norm import DEFAULT_COMPONENTS, DEFAULT_FLOOR
from util.ph.ph_class import DEFAULT_CLASS_OF, DEFAULT_CLASSES
from util.ph.vectorise import (
    DEFAULT_BANDWIDTH,
    DEFAULT_LABEL_DIM,
    DEFAULT_MAX_BIRTH,
    DEFAULT_MAX_LIFE,
    DEFAULT_NUM_LANDSCAPES,
    DEFAULT_POWER,
    DEFAULT_SIGMA,
)

DEFAULT_NUM_BINS = (50, 50, 50, 50)  # -ch: H0 lifetimes, H1 lifetimes, H0 births, H1 births
DEFAULT_WORKERS = 8  # PHdict.py --num_workers
DEFAULT_SEED = 1  # --label_type random's seed, as pretraining.py's --seed


@dataclass(frozen=True)
class PHConfig:
    """What one PHdict.py run computes and writes (see PHdict.py's docstring for the outputs).

    ``filtration``: one name, or a list of several (one part per filtration, their label matrices joined);
    ``max_life``/``max_birth``/``min_birth``/``sigma`` may be ``'auto'`` (fitted on a sample, then replaced:
    ``auto_fitted`` names them); ``shard``: ``'K/N'`` or None (torchrun's RANK/WORLD_SIZE, else all files).
    """

    target_dir: str = '.'
    output: str = 'output'
    imgtype: str = 'npy'  # lower case, no dot
    compute_hist: bool = False
    compute_persistence_image: bool = False
    num_bins: list = dataclasses.field(default_factory=lambda: list(DEFAULT_NUM_BINS))
    num_workers: int = DEFAULT_WORKERS
    filtration: Union[str, list] = DEFAULT_FILTRATION
    gradient: bool = False
    size_normalise: bool = False
    ph_engine: str = DEFAULT_ENGINE
    numof_dims: int = DEFAULT_LABEL_DIM
    shard: Optional[str] = None
    skip_bad: bool = False
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
    plot: int = 0
    label_type: Optional[str] = None
    max_life: Any = DEFAULT_MAX_LIFE
    max_birth: Any = DEFAULT_MAX_BIRTH
    min_birth: Any = None
    bandwidth: Any = DEFAULT_BANDWIDTH
    sigma: Any = DEFAULT_SIGMA
    power: float = DEFAULT_POWER
    num_landscapes: int = DEFAULT_NUM_LANDSCAPES
    seed: int = DEFAULT_SEED
    label_norm: str = 'none'
    label_norm_components: int = DEFAULT_COMPONENTS
    label_norm_floor: float = DEFAULT_FLOOR
    ph_classes: int = DEFAULT_CLASSES  # --label_type ph_class: K classes of the --ph_class_of label vectors
    ph_class_of: str = DEFAULT_CLASS_OF
    auto_fitted: Optional[list] = None  # the 'auto' parameters fitted by this run (set by the pipeline)
    flags: tuple = ()  # ((name, value), ...) of every flag as parsed, in order

    def params(self) -> dict:
        """{name: value} of every setting (the label flags among them, for
        :func:`util.ph.vectorise.vectoriser_from_params`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != 'flags'}


def field_names() -> set:
    """The names of :class:`PHConfig`'s settings (the flags it takes from the parsed ones)."""
    return {f.name for f in fields(PHConfig)} - {'flags', 'auto_fitted'}


def record(cfg: PHConfig) -> dict:
    """args.json of a run: the flags as given, each setting with the value this run uses, then ``auto_fitted``
    when parameters were fitted."""
    names = field_names()
    out = {k: (getattr(cfg, k) if k in names else v) for k, v in cfg.flags}
    if cfg.auto_fitted is not None:
        out['auto_fitted'] = cfg.auto_fitted
    return out
