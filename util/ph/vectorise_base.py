"""The parts every label type shares: diagram checks, the batch of finite pairs (:class:`Pairs`), numeric
helpers, the :class:`Vectoriser` base class and the registry :data:`VECTORISERS`.

A new label type subclasses :class:`Vectoriser` (in :mod:`util.ph.vectorise_types`) using these helpers; the
public face of the label vectors is :mod:`util.ph.vectorise`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np

from util.errors import UserError
from util.ph.cubical import INFINITE_DEATH

VECTORISERS = {}  # label type -> Vectoriser subclass, filled as the classes below are defined
# label types derived from another one's matrix by a fit over the whole set (ph_class): not vectorisations of one
# diagram on their own, so not in VECTORISERS (nor LABEL_TYPES); the scripts add them to --label_type's choices
DERIVED_VECTORISERS = {}

DEFAULT_MAX_LIFE = 50.0
DEFAULT_MAX_BIRTH = 50.0
DEFAULT_BANDWIDTH = 1
DEFAULT_SIGMA = 100.0
DEFAULT_POWER = 1.0
DEFAULT_NUM_LANDSCAPES = 2
DEFAULT_LABEL_DIM = 200  # the label length D: PHdict.py --numof_dims, pretraining -ph_dims, the vectorisers' dim

_F32_MAX = float(np.finfo(np.float32).max)
# Upper bound on the number of float64 elements of one temporary array (memory of a batch chunk).
CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------------
# shared helpers


def as_diagram(diagram: np.ndarray | list, position: int | None = None) -> np.ndarray:
    """One diagram as a float64 array ``[n, 3]`` of (dim, birth, death); raise :class:`UserError` if malformed."""
    a = np.asarray(diagram, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 3))
    if a.ndim != 2 or a.shape[1] < 3:
        which = 'persistence diagram' if position is None else f'persistence diagram #{position}'
        raise UserError(
            f"{which} has shape {a.shape}; expected (n, >=3) rows of (dim, birth, death, ...) "
            "as written by cripser.computePH -- recompute it with PHdict.py"
        )
    return a[:, :3]


class Pairs:
    """The finite H0 and H1 pairs of a batch of diagrams, concatenated.

    ``count`` is the number ``N`` of diagrams; ``by_dim[h]`` is a tuple ``(index, birth, death)`` of 1-D
    arrays over the pairs of homology dimension ``h`` (``index`` = which diagram, nondecreasing).
    """

    def __init__(self, diagrams):
        if isinstance(diagrams, np.ndarray) and diagrams.ndim == 2:
            raise UserError("transform() takes a sequence of diagrams; call the vectoriser on a single diagram")
        arrays = [as_diagram(d, i) for i, d in enumerate(diagrams)]
        self.count = len(arrays)
        sizes = np.array([a.shape[0] for a in arrays], dtype=np.intp)
        if sizes.sum() > 0:
            pairs = np.concatenate(arrays)
        else:
            pairs = np.zeros((0, 3))
        index = np.repeat(np.arange(self.count, dtype=np.intp), sizes)
        hom, birth, death = pairs[:, 0], pairs[:, 1], pairs[:, 2]
        usable = (np.abs(birth) < INFINITE_DEATH) & (np.abs(death) < INFINITE_DEATH)  # also False for NaN
        self.by_dim = {}
        for h in (0, 1):
            m = usable & (hom == h)
            self.by_dim[h] = (index[m], birth[m], death[m])

    def padded(self, h, start, stop, *columns):
        """Columns of the H``h`` pairs of diagrams ``start:stop`` laid out as ``[stop-start, P]`` arrays.

        ``P`` is the largest number of such pairs in one diagram; each diagram's pairs fill its row from the
        left in their original order, the rest is 0.  ``columns`` are 1-D arrays aligned with ``by_dim[h]``;
        returns the list of padded columns (same dtypes).
        """
        index = self.by_dim[h][0]
        lo, hi = np.searchsorted(index, [start, stop])
        local = index[lo:hi] - start
        counts = np.bincount(local, minlength=stop - start)
        width = int(counts.max()) if counts.size else 0
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pos = np.arange(hi - lo) - first[local]
        out = []
        for c in columns:
            p = np.zeros((stop - start, width), dtype=c.dtype)
            p[local, pos] = c[lo:hi]
            out.append(p)
        return out

    def chunks(self, h, per_diagram_cost):
        """Diagram ranges ``(start, stop)`` whose padded temporaries stay below ``CHUNK_ELEMENTS``."""
        index = self.by_dim[h][0]
        widest = int(np.bincount(index).max()) if index.size else 0
        step = max(1, CHUNK_ELEMENTS // max(1, widest * per_diagram_cost))
        return [(s, min(s + step, self.count)) for s in range(0, self.count, step)]


def ranges_by_cost(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """Split ``range(len(cost))`` into consecutive ``(start, stop)`` ranges of total cost about ``limit``."""
    n = len(cost)
    if n == 0:
        return []
    total = np.cumsum(cost)
    cuts = np.searchsorted(total, np.arange(limit, total[-1], limit), side='right')
    bounds = np.unique(np.concatenate(([0], np.minimum(cuts, n), [n])))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def finite_float32(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with NaN -> 0 and values beyond the float32 range saturated."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)
    return np.clip(x, -_F32_MAX, _F32_MAX).astype(np.float32)


def uniform_bin_index(x: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of each value of ``x`` among ``n`` equal bins on ``[lo, hi]``, exactly as ``np.histogram`` does.

    Returns ``(index, inside)``: ``inside`` marks values in ``[lo, hi]`` (the last bin is closed on the right);
    ``index`` (valid where ``inside``) is in ``0..n-1``.
    """
    inside = (x >= lo) & (x <= hi)
    if n == 0:
        return np.zeros(x.shape, dtype=np.intp), np.zeros(x.shape, dtype=bool)
    edges = np.linspace(lo, hi, n + 1)
    xi = np.where(inside, x, lo)
    index = ((xi - lo) / (hi - lo) * n).astype(np.intp)
    index[index == n] = n - 1
    index[xi < edges[index]] -= 1
    index[(xi >= edges[index + 1]) & (index != n - 1)] += 1
    return index, inside


def split_half(dim: int) -> tuple[int, int]:
    """(H0 part, H1 part) of a length ``dim``: ``dim // 2`` and the rest."""
    return dim // 2, dim - dim // 2


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise UserError(
            f"label dimension must be a positive integer, got {dim!r} (set the number of "
            "output dimensions / classes to at least 1)"
        )
    return int(dim)


def check_positive(value: float, flag: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a positive number, got {value}")
    return value


def birth_range(min_birth: float | None, max_birth: float) -> tuple[float, float]:
    max_birth = float(max_birth)
    min_birth = -max_birth if min_birth is None else float(min_birth)
    if not (math.isfinite(min_birth) and math.isfinite(max_birth) and min_birth < max_birth):
        raise UserError(f"--min_birth ({min_birth}) must be smaller than --max_birth ({max_birth}), both finite")
    return min_birth, max_birth


AUTO = 'auto'
AUTO_QUANTILE = 0.99  # auto ranges cover this share of the pairs' lifetimes / births (robust to outliers)
AUTO_PARAMS = ('max_life', 'max_birth', 'min_birth', 'sigma')


def pair_of(value: object) -> tuple:
    """``(H0, H1)`` of a range given as one value (both dimensions) or two (H0 then H1, the original's shape)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 1:
            return value[0], value[0]
        if len(value) != 2:
            raise UserError(f"a range takes one value or two (H0 then H1), got {len(value)}: {list(value)}")
        return value[0], value[1]
    return value, value


def one_or_two(pair: Sequence) -> float | list | None:
    """The parameter form of ``(H0, H1)``: one number when both are equal (as the original's labels record
    them), else the list of two."""
    a, b = (None if v is None else float(v) for v in pair)
    return a if a == b else [a, b]


def positive_pair(value: object, flag: str) -> tuple[float, float]:
    return tuple(check_positive(v, flag) for v in pair_of(value))


def birth_ranges(min_birth: object, max_birth: object) -> tuple:
    """``((lo0, hi0), (lo1, hi1))`` from one or two values of each end (``min_birth`` None: ``-max_birth``)."""
    his = pair_of(max_birth)
    los = pair_of(min_birth) if min_birth is not None else (None, None)
    return tuple(birth_range(lo, hi) for lo, hi in zip(los, his))


def fitted_ranges(diagrams: Sequence, quantile: float = AUTO_QUANTILE) -> dict:
    """Ranges of the finite pairs of ``diagrams`` per homology dimension ``h``: ``{'life': [h], 'low': [h],
    'high': [h], 'abs': [h]}`` = the ``quantile`` of the lifetimes, the ``1 - quantile`` and ``quantile`` of the
    births, the ``quantile`` of ``|birth|`` (None for a dimension without pairs)."""
    pairs = Pairs(diagrams)
    out = {'life': [], 'low': [], 'high': [], 'abs': []}
    for h in (0, 1):
        _, birth, death = pairs.by_dim[h]
        if birth.size == 0:
            for v in out.values():
                v.append(None)
            continue
        life = np.maximum(death - birth, 0.0)
        lo, hi = (float(x) for x in np.quantile(birth, [1 - quantile, quantile]))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        out['life'].append(max(float(np.quantile(life, quantile)), 1e-6))
        out['low'].append(lo)
        out['high'].append(hi)
        out['abs'].append(max(float(np.quantile(np.abs(birth), quantile)), 1e-6))
    return out


class Vectoriser:
    """Base of the label types: a fixed map from persistence diagrams to float32 vectors of length ``dim``.

    Subclasses set ``label_type`` (registering themselves in :data:`VECTORISERS`), take their hyperparameters
    as keyword arguments of ``__init__``, and implement ``transform(diagrams) -> [N, dim]`` and
    ``get_params()``.  The scikit-learn transformer protocol comes with it, so a vectoriser is a step of a
    ``sklearn.pipeline.Pipeline``: ``fit`` learns nothing unless ``learn_ranges`` is set
    (``set_params(learn_ranges=True)``), in which case it sets the birth and lifetime ranges to those of the
    finite pairs it is given.
    """

    label_type = None
    derived = False  # True: registered in DERIVED_VECTORISERS
    learn_ranges = False
    auto = ()  # parameters `fit` sets from a sample of diagrams (--max_life auto ...), see fit_auto
    RANGE_PARAMS = ('max_life', 'max_birth', 'min_birth')

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.label_type is not None:
            (DERIVED_VECTORISERS if cls.derived else VECTORISERS)[cls.label_type] = cls

    def get_params(self, deep=True):
        raise NotImplementedError

    def _init_params(self):
        """The current values of this vectoriser's ``__init__`` arguments."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: v for k, v in self.get_params().items() if k in names}

    def set_params(self, **params):
        """Change hyperparameters (scikit-learn style; ``learn_ranges`` and ``auto`` too); returns ``self``."""
        if 'learn_ranges' in params:
            self.learn_ranges = bool(params.pop('learn_ranges'))
        if 'auto' in params:
            self.auto = tuple(params.pop('auto'))
        unknown = set(params) - set(inspect.signature(type(self).__init__).parameters) - {'self'}
        if unknown:
            raise UserError(f"{type(self).__name__} has no parameter {', '.join(sorted(unknown))}")
        if params:
            learn, auto = self.learn_ranges, self.auto
            type(self).__init__(self, **dict(self._init_params(), **params))
            self.learn_ranges, self.auto = learn, auto
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.get_params()})"

    def __call__(self, diagram):
        """One diagram ``(n, >=3)`` -> float32 vector ``[dim]``."""
        return self.transform([as_diagram(diagram)])[0]

    def fit(self, diagrams, y=None):
        """With ``auto`` (parameter names): :meth:`fit_auto`.  With ``learn_ranges``: births and lifetimes
        ranges from the extremes of the finite H0/H1 pairs of ``diagrams`` (one range for both dimensions);
        otherwise nothing.  Returns ``self``."""
        if self.auto:
            return self.fit_auto(diagrams)
        if not self.learn_ranges:
            return self
        pairs = Pairs(diagrams)
        births = np.concatenate([pairs.by_dim[h][1] for h in (0, 1)])
        lives = np.concatenate([pairs.by_dim[h][2] - pairs.by_dim[h][1] for h in (0, 1)])
        if births.size == 0:
            return self
        names = inspect.signature(type(self).__init__).parameters
        learned = {
            'max_life': float(max(lives.max(), 1e-6)),
            'max_birth': float(max(np.abs(births).max(), 1e-6)),
            'min_birth': float(min(births.min(), births.max() - 1e-6)),
        }
        return self.set_params(**{k: v for k, v in learned.items() if k in names})

    def fit_transform(self, diagrams, y=None):
        return self.fit(diagrams, y).transform(diagrams)

    def fit_auto(self, diagrams):
        """Set the parameters named in ``auto`` from ``diagrams`` (:func:`fitted_ranges`), per homology dimension:
        ``max_life`` = the 99th percentile of the lifetimes; ``max_birth`` / ``min_birth`` = the 1st and 99th
        percentiles of the births (the histogram, whose birth ranges are ``[-max_birth, 0]`` and
        ``[-max_birth, max_birth]``, takes the 99th percentile of ``|birth|``); either of the two birth flags
        fits both ends; ``sigma`` (persistence image) = the variance of a Gaussian half a pixel wide, after
        the ranges.  A dimension without pairs keeps its value.  Returns ``self`` (``auto`` is cleared, so
        ``get_params`` records plain numbers, and ``fitted`` the names fitted)."""
        names = set(inspect.signature(type(self).__init__).parameters)
        wanted = set(self.auto)
        unknown = wanted - set(AUTO_PARAMS)
        if unknown:
            raise UserError(f"'auto' is not a value of {', '.join(sorted(unknown))}")
        r = fitted_ranges(diagrams)
        current = self.get_params()
        change = {}

        def merged(values, name):
            old = pair_of(current.get(name))
            return one_or_two(tuple(v if v is not None else o for v, o in zip(values, old)))

        if 'max_life' in wanted and 'max_life' in names:
            change['max_life'] = merged(r['life'], 'max_life')
        if wanted & {'max_birth', 'min_birth'}:
            if 'min_birth' in names:
                change['max_birth'] = merged(r['high'], 'max_birth')
                change['min_birth'] = merged(r['low'], 'min_birth')
            elif 'max_birth' in names:
                change['max_birth'] = merged(r['abs'], 'max_birth')
        self.auto = ()
        if change:
            self.set_params(**change)
        if 'sigma' in wanted:
            sigma = self.auto_sigma()  # refused by label types without a kernel
            self.set_params(sigma=sigma)
        self.fitted = tuple(sorted(wanted))
        self.fit_sample = len(diagrams)
        self.without_pairs = tuple(h for h in (0, 1) if r['life'][h] is None)  # kept their values
        return self

    def fit_warning(self):
        """After :meth:`fit_auto`: one line saying what could not be fitted (a homology dimension without finite
        pairs in the sample keeps its value; without any, nothing is fitted), or None when everything was."""
        missing = getattr(self, 'without_pairs', ())
        if not missing:
            return None
        flags = '/'.join(f'--{n}' for n in self.fitted)
        params = self.get_params()
        kept = ', '.join(f"{n} {params[n]}" for n in AUTO_PARAMS if n in params)
        n = getattr(self, 'fit_sample', 0)
        if len(missing) == 2:
            return (
                f"{flags} auto could not be fitted: the {n} sampled diagrams have no finite pairs (constant "
                f"images, e.g. all black or all white?), so the labels use {kept} (the values given or the "
                "defaults); check the images, or give these flags numbers"
            )
        h = f"H{missing[0]}"
        return (
            f"{flags} auto: the {n} sampled diagrams have no finite {h} pairs, so {h} keeps the value given "
            f"or the default (labels use {kept}); give numbers for {h} to choose them"
        )

    def auto_sigma(self):
        """The ``sigma`` of ``--sigma auto`` for the current ranges (label types with pixels override this)."""
        raise UserError(f"--sigma auto applies to the persistence image, not to {self.label_type}")

    def check_fitted(self):
        """Refuse to vectorise with parameters still to be fitted (``auto``)."""
        if self.auto:
            raise UserError(
                f"{', '.join('--' + a for a in self.auto)} auto: fit the vectoriser on a sample of diagrams first "
                "(PHdict.py does; its labels_TYPE.json records the fitted values to pass elsewhere)"
            )
