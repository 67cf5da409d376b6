"""Fixed-length label vectors computed from persistence diagrams (the pretraining targets).

A *diagram* is a float array of shape ``(n, >=3)`` whose columns 0, 1, 2 are (homology dimension, birth,
death); further columns (cripser's birth/death locations) are ignored and ``n`` may be 0.  Pairs of
homology dimension 0 and 1 are used.  Pairs whose death is infinite -- ``np.inf``, or the largest double
(~1.8e308) that cripser writes for essential classes -- are excluded from every vectorisation, as are
pairs with a NaN birth or death.

The public face of the label vectors (the names below are re-exported from :mod:`util.ph.vectorise_base`, the
base class and shared helpers, :mod:`util.ph.vectorise_types`, the four label types' numerics, and
:mod:`util.ph.ph_class`, the derived ``ph_class`` type).

Four label types are provided (see :data:`LABEL_TYPES`; :data:`VECTORISERS` maps each to its class); each is
a :class:`Vectoriser` that keeps its hyperparameters (fixed in ``__init__``, in the style of
``gudhi.representations``) and offers

* ``dim`` -- the output length ``D``;
* ``transform(diagrams)`` -- a sequence of ``N`` diagrams to a float32 array ``[N, D]``, computed for the
  whole batch at once with numpy (no Python loop over pairs);
* ``__call__(diagram)`` -- one diagram to a float32 vector ``[D]``;
* ``get_params()`` -- the hyperparameters as a JSON-friendly dict; ``set_params(**changes)``;
* ``fit`` / ``fit_transform`` -- the scikit-learn transformer protocol (a vectoriser is a ``Pipeline`` step).

Outputs are always finite float32 (values beyond the float32 range, which need absurd filtration values,
saturate).  Scripts add the label flags (:data:`LABEL_FLAGS`) and build the vectoriser of the parsed flags with
:mod:`util.cli.label_flags`; library code calls :func:`vectoriser_from_params` or :func:`make_vectoriser`.
"""

from __future__ import annotations

import argparse
import inspect
import math
from typing import TYPE_CHECKING

from util.errors import UserError
from util.ph.ph_class import PhClassVectoriser  # noqa: F401 (re-exported; registers the derived label type)
from util.ph.vectorise_base import (  # noqa: F401 (re-exported)
    AUTO,
    AUTO_PARAMS,
    DEFAULT_BANDWIDTH,
    DEFAULT_LABEL_DIM,
    DEFAULT_MAX_BIRTH,
    DEFAULT_MAX_LIFE,
    DEFAULT_NUM_LANDSCAPES,
    DEFAULT_POWER,
    DEFAULT_SIGMA,
    DERIVED_VECTORISERS,
    VECTORISERS,
    Vectoriser,
)
from util.ph.vectorise_types import (  # noqa: F401 (re-exported)
    BettiCurveVectoriser,
    HistogramVectoriser,
    LandscapeVectoriser,
    PersistenceImageVectoriser,
    SplitImageVectoriser,
    pixel_grid,
    pixel_masses,
    smoothing_matrix,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    'VECTORISERS',
    'LABEL_TYPES',
    'DERIVED_LABEL_TYPES',
    'Vectoriser',
    'HistogramVectoriser',
    'PersistenceImageVectoriser',
    'BettiCurveVectoriser',
    'LandscapeVectoriser',
    'SplitImageVectoriser',
    'PhClassVectoriser',
    'make_vectoriser',
    'vectoriser_from_params',
    'LABEL_FLAGS',
    'check_label_dim',
    'smoothing_matrix',
    'pixel_grid',
    'pixel_masses',
    'DEFAULT_MAX_LIFE',
    'DEFAULT_MAX_BIRTH',
    'DEFAULT_BANDWIDTH',
    'DEFAULT_SIGMA',
    'DEFAULT_POWER',
    'DEFAULT_NUM_LANDSCAPES',
    'DEFAULT_LABEL_DIM',
]
# ----------------------------------------------------------------------------------------------------
# construction from parameters / command-line flags

LABEL_TYPES = tuple(VECTORISERS)  # ('histogram', 'persistence_image', 'betti_curve', 'landscape', 'split_image')
DERIVED_LABEL_TYPES = tuple(DERIVED_VECTORISERS)  # ('ph_class',): fitted over a whole label matrix by PHdict.py


def make_vectoriser(
    label_type: str,
    dim: int,
    *,
    max_life: float | list[float] = DEFAULT_MAX_LIFE,
    max_birth: float | list[float] = DEFAULT_MAX_BIRTH,
    min_birth: float | list[float] | None = None,
    bandwidth: int = DEFAULT_BANDWIDTH,
    sigma: float = DEFAULT_SIGMA,
    power: float = DEFAULT_POWER,
    num_landscapes: int = DEFAULT_NUM_LANDSCAPES,
    num_bins: list[int] | None = None,
) -> Vectoriser:
    """The vectoriser of ``label_type`` (one of :data:`LABEL_TYPES`) with output length ``dim``.

    Parameters a label type does not use are ignored (``num_bins`` is for the histogram only and, when
    given, must sum to ``dim``).  A range given as two values is H0's then H1's.  Raises :class:`UserError`
    for an unknown type or invalid values.
    """
    cls = VECTORISERS.get(label_type)
    if cls is not None:
        options = dict(
            max_life=max_life,
            max_birth=max_birth,
            min_birth=min_birth,
            bandwidth=bandwidth,
            sigma=sigma,
            power=power,
            num_landscapes=num_landscapes,
            num_bins=num_bins,
        )
        accepted = inspect.signature(cls.__init__).parameters
        return cls(dim, **{k: v for k, v in options.items() if k in accepted})
    raise UserError(f"unknown --label_type {label_type!r}; choose one of {', '.join(LABEL_TYPES)}")


def range_value(text: str) -> float | str:
    """argparse type of the range and sigma flags: a number, or ``auto`` (fitted from a sample of diagrams)."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not math.isfinite(value):  # as util.cli.strict_args.finite_float: no inf/nan (nor Infinity in args.json)
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


_AUTO_HELP = "; 'auto': fitted per homology dimension from a sample of the diagrams (PHdict.py)"

LABEL_FLAGS = {
    'label_type': dict(
        choices=LABEL_TYPES,
        default='histogram',
        help="vectorisation of the persistence diagrams used as the label (default: %(default)s)",
    ),
    'max_life': dict(
        type=range_value,
        default=DEFAULT_MAX_LIFE,
        help="lifetimes are clipped to [0, MAX_LIFE] (histogram, persistence image and Betti "
        "curve); two values: H0 then H1" + _AUTO_HELP + " (default: %(default)s)",
    ),
    'max_birth': dict(
        type=range_value,
        default=DEFAULT_MAX_BIRTH,
        help="upper end of the birth range; the histogram bins H0 births on [-MAX_BIRTH, 0] and "
        "H1 births on [-MAX_BIRTH, MAX_BIRTH]; two values: H0 then H1" + _AUTO_HELP + " (default: %(default)s)",
    ),
    'min_birth': dict(
        type=range_value,
        default=None,
        help="lower end of the birth range of the persistence image, Betti curve and landscape; two "
        "values: H0 then H1" + _AUTO_HELP + " (default: -MAX_BIRTH)",
    ),
    'bandwidth': dict(
        type=int,
        default=DEFAULT_BANDWIDTH,
        help="width of the Hanning window smoothing the histogram label; below 4 means no "
        "smoothing (default: %(default)s)",
    ),
    'sigma': dict(
        type=range_value,
        default=DEFAULT_SIGMA,
        help="variance of the Gaussian kernel of the persistence image, in squared filtration "
        "units; 'auto': a standard deviation of half a pixel, after the ranges (default: %(default)s, "
        "i.e. standard deviation 10)",
    ),
    'power': dict(
        type=float,
        default=DEFAULT_POWER,
        help="persistence image weight: each pair counts lifetime**POWER (default: %(default)s)",
    ),
    'num_landscapes': dict(
        type=int,
        default=DEFAULT_NUM_LANDSCAPES,
        help="number of persistence landscapes per homology dimension for the landscape label (default: %(default)s)",
    ),
}


def vectoriser_from_params(params: Mapping, dim: int, flag: str | None = None) -> Vectoriser:
    """The vectoriser described by ``params``, a mapping of the label flags (:data:`LABEL_FLAGS`) such as
    ``dataclasses.asdict(util.config.LabelConfig(...))``; names it lacks take the flags' defaults, names that
    are not label flags are ignored.

    ``flag``: the option that set ``dim`` (e.g. ``'-nc'``); when given, a length the label type cannot split
    evenly is refused (:func:`check_label_dim`).
    """
    get = lambda name: params.get(name, LABEL_FLAGS[name]['default'])  # noqa: E731
    if get('label_type') == PhClassVectoriser.label_type:  # its record (labels_ph_class.json), not label flags
        keys = ('ph_class_of', 'base', 'classes')
        return PhClassVectoriser(dim, **{k: params[k] for k in keys if params.get(k) is not None})
    if flag is not None:
        check_label_dim(get('label_type'), dim, flag, get('num_landscapes'))
    values = {name: get(name) for name in AUTO_PARAMS}
    auto = []
    for name, value in values.items():
        parts = value if isinstance(value, (list, tuple)) else [value]
        if any(v == AUTO for v in parts):
            if len(parts) > 1 and not all(v == AUTO for v in parts):
                raise UserError(f"--{name} {' '.join(map(str, parts))}: give 'auto' alone (it fits both dimensions)")
            auto.append(name)
            values[name] = LABEL_FLAGS[name]['default']
    vec = make_vectoriser(
        get('label_type'),
        dim,
        bandwidth=get('bandwidth'),
        power=get('power'),
        num_landscapes=get('num_landscapes'),
        **values,
    )
    return vec.set_params(auto=auto) if auto else vec


def check_label_dim(label_type: str, dim: int, flag: str | None, num_landscapes: int = DEFAULT_NUM_LANDSCAPES) -> None:
    """Refuse a label length ``dim`` that ``label_type`` cannot split evenly, naming the valid ones.

    The histogram is four equal histograms (H0/H1 lifetimes and births): a multiple of 4.  The persistence
    image and Betti curve are H0 then H1 halves: even.  The landscape is ``num_landscapes`` landscapes per
    half: a multiple of ``2 * num_landscapes``.  (Otherwise bins would be split unevenly, e.g. 7 as
    1, 1, 1, 4, or padded with zeros.)
    """
    step = {
        'histogram': 4,
        'persistence_image': 2,
        'betti_curve': 2,
        'landscape': 2 * max(1, int(num_landscapes)),
        'split_image': 2,  # 2 counts, then H0 and H1 halves
    }.get(label_type)
    if step is None or (isinstance(dim, int) and dim >= step and dim % step == 0):
        return
    lo = (int(dim) // step) * step if isinstance(dim, int) else 0
    near = ' or '.join(str(x) for x in (lo, lo + step) if x >= step)
    raise UserError(
        f"{flag} {dim} cannot be split evenly by --label_type {label_type}: it needs a multiple of {step} (e.g. {near})"
    )
