"""Fixed-length label vectors computed from persistence diagrams (the pretraining targets).

A *diagram* is a float array of shape ``(n, >=3)`` whose columns 0, 1, 2 are (homology dimension, birth,
death); further columns (cripser's birth/death locations) are ignored and ``n`` may be 0.  Pairs of
homology dimension 0 and 1 are used.  Pairs whose death is infinite -- ``np.inf``, or the largest double
(~1.8e308) that cripser writes for essential classes -- are excluded from every vectorisation, as are
pairs with a NaN birth or death.

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
saturate).  Scripts build a vectoriser from command-line flags with :func:`add_label_args` and
:func:`vectoriser_from_params` (or :func:`vectoriser_from_args`), or directly with :func:`make_vectoriser`.
"""
import inspect
import math

import numpy as np
from scipy.special import erfc

from util.errors import UserError
from util.ph import INFINITE_DEATH

VECTORISERS = {}   # label type -> Vectoriser subclass, filled as the classes below are defined

DEFAULT_MAX_LIFE = 50.0
DEFAULT_MAX_BIRTH = 50.0
DEFAULT_BANDWIDTH = 1
DEFAULT_SIGMA = 100.0
DEFAULT_POWER = 1.0
DEFAULT_NUM_LANDSCAPES = 2

_F32_MAX = float(np.finfo(np.float32).max)
_SQRT_HALF = math.sqrt(0.5)
# Upper bound on the number of float64 elements of one temporary array (memory of a batch chunk).
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------------
# shared helpers

def _as_diagram(diagram, position=None):
    """One diagram as a float64 array ``[n, 3]`` of (dim, birth, death); raise :class:`UserError` if malformed."""
    a = np.asarray(diagram, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 3))
    if a.ndim != 2 or a.shape[1] < 3:
        which = 'persistence diagram' if position is None else f'persistence diagram #{position}'
        raise UserError(f"{which} has shape {a.shape}; expected (n, >=3) rows of (dim, birth, death, ...) "
                        "as written by cripser.computePH -- recompute it with PHdict.py")
    return a[:, :3]


class _Pairs:
    """The finite H0 and H1 pairs of a batch of diagrams, concatenated.

    ``count`` is the number ``N`` of diagrams; ``by_dim[h]`` is a tuple ``(index, birth, death)`` of 1-D
    arrays over the pairs of homology dimension ``h`` (``index`` = which diagram, nondecreasing).
    """

    def __init__(self, diagrams):
        if isinstance(diagrams, np.ndarray) and diagrams.ndim == 2:
            raise UserError("transform() takes a sequence of diagrams; call the vectoriser on a single diagram")
        arrays = [_as_diagram(d, i) for i, d in enumerate(diagrams)]
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
        """Diagram ranges ``(start, stop)`` whose padded temporaries stay below ``_CHUNK_ELEMENTS``."""
        index = self.by_dim[h][0]
        widest = int(np.bincount(index).max()) if index.size else 0
        step = max(1, _CHUNK_ELEMENTS // max(1, widest * per_diagram_cost))
        return [(s, min(s + step, self.count)) for s in range(0, self.count, step)]


def _ranges_by_cost(cost, limit):
    """Split ``range(len(cost))`` into consecutive ``(start, stop)`` ranges of total cost about ``limit``."""
    n = len(cost)
    if n == 0:
        return []
    total = np.cumsum(cost)
    cuts = np.searchsorted(total, np.arange(limit, total[-1], limit), side='right')
    bounds = np.unique(np.concatenate(([0], np.minimum(cuts, n), [n])))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _finite_float32(x):
    """float32 copy of ``x`` with NaN -> 0 and values beyond the float32 range saturated."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)
    return np.clip(x, -_F32_MAX, _F32_MAX).astype(np.float32)


def _uniform_bin_index(x, lo, hi, n):
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


def _split_half(dim):
    """(H0 part, H1 part) of a length ``dim``: ``dim // 2`` and the rest."""
    return dim // 2, dim - dim // 2


def _check_dim(dim):
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise UserError(f"label dimension must be a positive integer, got {dim!r} (set the number of "
                        "output dimensions / classes to at least 1)")
    return int(dim)


def _check_positive(value, flag):
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a positive number, got {value}")
    return value


def _birth_range(min_birth, max_birth):
    max_birth = float(max_birth)
    min_birth = -max_birth if min_birth is None else float(min_birth)
    if not (math.isfinite(min_birth) and math.isfinite(max_birth) and min_birth < max_birth):
        raise UserError(f"--min_birth ({min_birth}) must be smaller than --max_birth ({max_birth}), both finite")
    return min_birth, max_birth


# ----------------------------------------------------------------------------------------------------
# histogram

def smoothing_matrix(n, bandwidth):
    """The linear map ``[n, n]`` of the histogram smoothing: ``smoothed = S @ h``.

    Smoothing convolves with a Hanning window ``np.hanning(b)`` (``b = int(bandwidth)``, normalised to sum
    1) after padding ``h`` with ``b - 1`` reflected values on each side (the edge value itself is not
    repeated; for ``n < b`` the reflection bounces back and forth), and keeps the ``n`` central values: the
    output at ``i`` combines ``h[i - (b-1) + (b-1)//2 + j]`` with weight ``w[j]``.  ``bandwidth < 2`` is the
    identity; since the window's end taps are zero, ``b = 3`` is the identity too, and ``b = 2`` (an
    all-zero window) is taken as the identity.
    """
    b = int(bandwidth)
    eye = np.eye(n)
    if b < 2 or n == 0:
        return eye
    w = np.hanning(b)
    if w.sum() <= 0:
        return eye
    w = w / w.sum()
    offsets = np.arange(b) + (b - 1) // 2 - (b - 1)
    src = np.arange(n)[:, None] + offsets[None, :]
    if n == 1:
        src = np.zeros_like(src)
    else:
        period = 2 * (n - 1)
        src = np.mod(src, period)
        src = np.where(src >= n, period - src, src)
    s = np.zeros((n, n))
    np.add.at(s, (np.repeat(np.arange(n), b), src.ravel()), np.tile(w, n))
    return s


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
    learn_ranges = False
    RANGE_PARAMS = ('max_life', 'max_birth', 'min_birth')

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.label_type is not None:
            VECTORISERS[cls.label_type] = cls

    def get_params(self, deep=True):
        raise NotImplementedError

    def _init_params(self):
        """The current values of this vectoriser's ``__init__`` arguments."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: v for k, v in self.get_params().items() if k in names}

    def set_params(self, **params):
        """Change hyperparameters (scikit-learn style; ``learn_ranges`` too); returns ``self``."""
        if 'learn_ranges' in params:
            self.learn_ranges = bool(params.pop('learn_ranges'))
        unknown = set(params) - set(inspect.signature(type(self).__init__).parameters) - {'self'}
        if unknown:
            raise UserError(f"{type(self).__name__} has no parameter {', '.join(sorted(unknown))}")
        if params:
            learn = self.learn_ranges
            type(self).__init__(self, **dict(self._init_params(), **params))
            self.learn_ranges = learn
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.get_params()})"

    def __call__(self, diagram):
        """One diagram ``(n, >=3)`` -> float32 vector ``[dim]``."""
        return self.transform([_as_diagram(diagram)])[0]

    def fit(self, diagrams, y=None):
        """With ``learn_ranges``: births and lifetimes ranges from the finite H0/H1 pairs of ``diagrams``
        (those this label type uses); otherwise nothing.  Returns ``self``."""
        if not self.learn_ranges:
            return self
        pairs = _Pairs(diagrams)
        births = np.concatenate([pairs.by_dim[h][1] for h in (0, 1)])
        lives = np.concatenate([pairs.by_dim[h][2] - pairs.by_dim[h][1] for h in (0, 1)])
        if births.size == 0:
            return self
        names = inspect.signature(type(self).__init__).parameters
        learned = {'max_life': float(max(lives.max(), 1e-6)), 'max_birth': float(max(np.abs(births).max(), 1e-6)),
                   'min_birth': float(min(births.min(), births.max() - 1e-6))}
        return self.set_params(**{k: v for k, v in learned.items() if k in names})

    def fit_transform(self, diagrams, y=None):
        return self.fit(diagrams, y).transform(diagrams)


class HistogramVectoriser(Vectoriser):
    """Lifetime and birth histograms of H0/H1 (the original project's default label).

    With ``nb = num_bins`` (four bin counts) and ``life = clip(death - birth, 0, max_life)``:

    * ``hl0``, ``hl1``: histograms of H0 / H1 lifetimes on ``[0, max_life]`` (``nb[0]``, ``nb[1]`` bins), each
      multiplied by ``1 + linspace(0, max_life, nb[k])`` and then smoothed;
    * ``hb0``: histogram of H0 births on ``[-max_birth, 0]`` (``nb[2]`` bins), ``hb1``: of H1 births on
      ``[-max_birth, max_birth]`` (``nb[3]`` bins), both weighted by the lifetime ``death - birth`` not clipped
      to ``max_life`` (a malformed pair with death < birth weighs 0), then smoothed (births outside the
      range are not counted);
    * output ``concat(log(hl0+1), log(hl1+1), log(hb0+1)/100, log(hb1+1))``, length ``D = sum(nb)``.

    Bins follow ``np.histogram`` (half-open, the last one closed).  Smoothing: :func:`smoothing_matrix`.
    By default the ``D`` outputs are split as ``D//4`` bins for each of the first three parts and the rest
    for the last; ``num_bins`` sets the four counts explicitly (it must sum to ``dim``).
    """

    label_type = 'histogram'

    def __init__(self, dim=200, *, max_life=DEFAULT_MAX_LIFE, max_birth=DEFAULT_MAX_BIRTH,
                 bandwidth=DEFAULT_BANDWIDTH, num_bins=None):
        dim = _check_dim(dim)
        if num_bins is None:
            q = dim // 4
            num_bins = (q, q, q, dim - 3 * q)
        num_bins = tuple(int(b) for b in num_bins)
        if len(num_bins) != 4 or min(num_bins) < 0 or sum(num_bins) != dim:
            raise UserError(f"histogram num_bins {num_bins} must be 4 non-negative bin counts summing to the "
                            f"label dimension {dim}")
        if int(bandwidth) != bandwidth or bandwidth < 0:
            raise UserError(f"--bandwidth must be a non-negative integer, got {bandwidth}")
        self.dim = dim
        self.num_bins = num_bins
        self.max_life = _check_positive(max_life, '--max_life')
        self.max_birth = _check_positive(max_birth, '--max_birth (for the histogram label)')
        self.bandwidth = int(bandwidth)
        self._smooth = [smoothing_matrix(n, self.bandwidth) for n in num_bins]
        self._life_factor = [1.0 + np.linspace(0.0, self.max_life, n) for n in num_bins[:2]]

    def get_params(self, deep=True):
        return dict(label_type=self.label_type, dim=self.dim, num_bins=list(self.num_bins),
                    max_life=self.max_life, max_birth=self.max_birth, bandwidth=self.bandwidth)

    def _hist(self, count, index, values, lo, hi, n, weights=None):
        """Per-diagram histograms ``[count, n]`` of ``values`` (``index`` = diagram of each value)."""
        b, inside = _uniform_bin_index(values, lo, hi, n)
        w = None if weights is None else weights[inside]
        flat = np.bincount(index[inside] * n + b[inside], weights=w, minlength=count * n)
        return flat.astype(np.float64).reshape(count, n)

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        pairs = _Pairs(diagrams)
        n_diag = pairs.count
        nb = self.num_bins
        parts = []
        for h in (0, 1):
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.max_life)
            hist = self._hist(n_diag, index, life, 0.0, self.max_life, nb[h])
            parts.append(hist * self._life_factor[h])
        for h, (lo, hi) in ((0, (-self.max_birth, 0.0)), (1, (-self.max_birth, self.max_birth))):
            index, birth, death = pairs.by_dim[h]
            weight = np.maximum(death - birth, 0.0)
            parts.append(self._hist(n_diag, index, birth, lo, hi, nb[2 + h], weights=weight))
        parts = [p @ s.T for p, s in zip(parts, self._smooth)]
        out = np.concatenate([np.log1p(parts[0]), np.log1p(parts[1]),
                              np.log1p(parts[2]) / 100.0, np.log1p(parts[3])], axis=1)
        return _finite_float32(out)


# ----------------------------------------------------------------------------------------------------
# persistence image

def pixel_grid(d, width, height):
    """Grid ``(n_birth, n_life)`` with ``n_birth * n_life == d`` whose pixels are closest to square.

    The pixel aspect is ``(width / n_birth) / (height / n_life)``; among the factorisations of ``d`` the one
    minimising ``|log(aspect)|`` wins (ties: more birth pixels).  A prime ``d`` therefore gives a strip
    ``d x 1`` or ``1 x d``: choose a label dimension whose halves have useful factors.
    """
    if d == 0:
        return 0, 0
    best = None
    for n_birth in range(1, d + 1):
        if d % n_birth:
            continue
        n_life = d // n_birth
        score = abs(math.log((width / n_birth) / (height / n_life)))
        key = (round(score, 12), -n_birth)
        if best is None or key < best[0]:
            best = (key, (n_birth, n_life))
    return best[1]


def pixel_masses(edges, centres, std):
    """Mass of ``N(centre, std**2)`` in each ``[edges[i], edges[i+1]]``: array ``[len(centres), len(edges)-1]``.

    ``edges`` must increase.  With ``Phi(z) = H(z) - s(z) T(z)`` (``H`` = step at 0, ``s`` = sign,
    ``T(z) = erfc(|z|/sqrt 2)/2`` the smaller tail), ``Phi(hi) - Phi(lo)`` is formed from the differences of
    ``H`` and of ``s T`` separately, which keeps full relative accuracy in both tails (a plain difference
    of CDFs loses it above the mean).
    """
    z = (edges[None, :] - centres[:, None]) * (_SQRT_HALF / std)
    below = np.signbit(z)                  # s = -1, H = 0 (signbit, so that -0.0 is consistent)
    tail = erfc(np.abs(z))                 # 2 T
    np.copysign(tail, z, out=tail)         # 2 s T
    mass = tail[:, :-1] - tail[:, 1:]
    mass *= 0.5
    mass += below[:, :-1] & ~below[:, 1:]  # H steps from 0 to 1 inside this interval
    return mass


def _distinct(values):
    """``(table, index)`` with ``table[index] == values``: the distinct values when they repeat much, else
    ``values`` itself (a gather in pair order is cheaper than one through a large shuffled table)."""
    table, index = np.unique(values, return_inverse=True)
    if 2 * table.size > values.size:
        return values, np.arange(values.size)
    return table, index.ravel()


def _aggregated_images(index, count, a_id, a_mass, b_id, b_mass, weight):
    """``img[n] = sum over pairs p of diagram n of weight[p] * outer(a_mass[a_id[p]], b_mass[b_id[p]])``.

    ``a_mass`` ``[Ua, na]``, ``b_mass`` ``[Ub, nb]``; returns ``[count, na, nb]``.  The weights are first summed
    into a sparse ``[count * Ua, Ub]`` matrix, so the cost scales with ``count * Ua``, not with the pairs.
    """
    from scipy.sparse import csr_matrix
    ua, na = a_mass.shape
    nb = b_mass.shape[1]
    s = csr_matrix((weight, (index * ua + a_id, b_id)), shape=(count * ua, b_mass.shape[0]))
    out = np.empty((count, na, nb))
    step = max(1, _CHUNK_ELEMENTS // max(1, ua * max(na, nb)))
    for start in range(0, count, step):
        stop = min(start + step, count)
        y = (s[start * ua:stop * ua] @ b_mass).reshape(stop - start, ua, nb)   # [C, Ua, nb]
        out[start:stop] = np.matmul(a_mass.T, y)
    return out


class PersistenceImageVectoriser(Vectoriser):
    """Persistence images of H0 and H1 (Adams et al. 2017), square-rooted.

    Each pair becomes the point ``(birth, life)`` with ``life = clip(death - birth, 0, max_life)``, weighted by
    ``life ** power``, and spread by an isotropic Gaussian of *variance* ``sigma`` (standard deviation
    ``sqrt(sigma)``), integrated exactly over each pixel -- the semantics of persim's ``PersistenceImager``
    with ``kernel_params={'sigma': [[sigma, 0], [0, sigma]]}`` and ``weight_params={'n': power}``.  The
    image covers births ``[min_birth, max_birth]`` (``min_birth`` defaults to ``-max_birth``) and lifetimes
    ``[0, max_life]``.  Output: ``sqrt(|image|)`` flattened birth-major (``image[i_birth, i_life]``, as
    persim's ``transform(...).ravel()``), H0 (``dim // 2`` values) then H1 (the rest).

    Each half of size ``d`` is a grid ``n_birth x n_life == d`` chosen by :func:`pixel_grid` (pixels as
    square as the factorisations of ``d`` allow; they are square, as persim's are, when the ranges permit).
    The default variance 100 is the original project's ``persImg_sigma=100``, which it passed to persim as
    the covariance diagonal, i.e. a standard deviation of 10 filtration units.
    """

    label_type = 'persistence_image'

    def __init__(self, dim=200, *, max_life=DEFAULT_MAX_LIFE, max_birth=DEFAULT_MAX_BIRTH, min_birth=None,
                 sigma=DEFAULT_SIGMA, power=DEFAULT_POWER):
        self.dim = _check_dim(dim)
        self.max_life = _check_positive(max_life, '--max_life')
        self.min_birth, self.max_birth = _birth_range(min_birth, max_birth)
        self.sigma = _check_positive(sigma, '--sigma')
        self.power = float(power)
        if not (math.isfinite(self.power) and self.power >= 0):
            raise UserError(f"--power must be a non-negative number, got {power}")
        width = self.max_birth - self.min_birth
        self.grids = tuple(pixel_grid(d, width, self.max_life) for d in _split_half(self.dim))
        # pixel edges per homology dimension: (birth edges [n_birth+1], life edges [n_life+1])
        self.edges = tuple((self.min_birth + np.arange(nb + 1) * (width / nb) if nb else np.zeros(1),
                            np.arange(nl + 1) * (self.max_life / nl) if nl else np.zeros(1))
                           for nb, nl in self.grids)

    def get_params(self, deep=True):
        return dict(label_type=self.label_type, dim=self.dim, max_life=self.max_life,
                    min_birth=self.min_birth, max_birth=self.max_birth, sigma=self.sigma, power=self.power,
                    grids=[list(g) for g in self.grids])

    def images(self, diagrams):
        """Raw persistence images, before the square root: ``[H0 [N, nb0, nl0], H1 [N, nb1, nl1]]`` (float64)."""
        pairs = _Pairs(diagrams)
        std = math.sqrt(self.sigma)
        result = []
        for h in (0, 1):
            nb, nl = self.grids[h]
            img = np.zeros((pairs.count, nb, nl))
            if nb == 0:
                result.append(img)
                continue
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.max_life)
            weight = life ** self.power
            bedges, ledges = self.edges[h]
            # The kernel is separable: a pair's image is outer(birth masses, life masses).  Filtration values
            # of images repeat a lot (8-bit levels, distances sqrt(k)), so the masses are computed once per
            # distinct birth / lifetime and gathered.
            births, birth_id = _distinct(birth)
            lives, life_id = _distinct(life)
            birth_mass = pixel_masses(bedges, births, std)   # [distinct births, nb]
            life_mass = pixel_masses(ledges, lives, std)     # [distinct lifetimes, nl]
            if min(births.size, lives.size) * pairs.count <= birth.size:
                # few distinct values (fewer than pairs per diagram): sum the weights per (diagram, value)
                if births.size <= lives.size:
                    img[:] = _aggregated_images(index, pairs.count, birth_id, birth_mass, life_id, life_mass, weight)
                else:
                    img[:] = _aggregated_images(index, pairs.count, life_id, life_mass, birth_id, birth_mass,
                                                weight).transpose(0, 2, 1)
                result.append(img)
                continue
            for start, stop in pairs.chunks(h, nb + nl + 3):
                bi, li, w = pairs.padded(h, start, stop, birth_id, life_id, weight)
                # [C, P, nb] times [C, P, nl] (weighted; padding has weight 0), summed over the pairs P
                ml = life_mass[li] * w[:, :, None]
                img[start:stop] = np.matmul(birth_mass[bi].transpose(0, 2, 1), ml)
            result.append(img)
        return result

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        imgs = self.images(diagrams)
        n = imgs[0].shape[0]
        out = np.concatenate([np.sqrt(np.abs(i.reshape(n, i.shape[1] * i.shape[2]))) for i in imgs], axis=1)
        return _finite_float32(out)


# ----------------------------------------------------------------------------------------------------
# Betti curve

class BettiCurveVectoriser(Vectoriser):
    """Lifetime-weighted Betti curves of H0 and H1, square-rooted.

    For H0 (``dim // 2`` thresholds) then H1 (the rest): at each threshold ``t`` of
    ``linspace(min_birth, max_birth, n)`` the sum of ``clip(death - birth, 0, max_life)`` over the pairs
    with ``birth < t < death``; output its square root.  ``min_birth`` defaults to ``-max_birth``.
    """

    label_type = 'betti_curve'

    def __init__(self, dim=200, *, max_life=DEFAULT_MAX_LIFE, max_birth=DEFAULT_MAX_BIRTH, min_birth=None):
        self.dim = _check_dim(dim)
        self.max_life = _check_positive(max_life, '--max_life')
        self.min_birth, self.max_birth = _birth_range(min_birth, max_birth)
        self.thresholds = tuple(np.linspace(self.min_birth, self.max_birth, n) for n in _split_half(self.dim))

    def get_params(self, deep=True):
        return dict(label_type=self.label_type, dim=self.dim, max_life=self.max_life,
                    min_birth=self.min_birth, max_birth=self.max_birth)

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        pairs = _Pairs(diagrams)
        count = pairs.count
        parts = []
        for h in (0, 1):
            t = self.thresholds[h]
            n = t.size
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.max_life)
            # thresholds first..last-1 (a contiguous run) satisfy birth < t < death
            first = np.searchsorted(t, birth, side='right')
            last = np.searchsorted(t, death, side='left')
            keep = first < last
            idx, first, last, life = index[keep], first[keep], last[keep], life[keep]
            size = count * (n + 1)
            pos = np.concatenate((idx * (n + 1) + first, idx * (n + 1) + last))
            val = np.concatenate((life, -life))
            one = np.concatenate((np.ones(first.size), -np.ones(first.size)))
            acc = np.bincount(pos, weights=val, minlength=size).reshape(count, n + 1).cumsum(axis=1)[:, :n]
            active = np.bincount(pos, weights=one, minlength=size).reshape(count, n + 1).cumsum(axis=1)[:, :n]
            # the running sum may leave rounding residue where no pair is alive; those values are exactly 0
            acc = np.where(active > 0.5, np.maximum(acc, 0.0), 0.0)
            parts.append(np.sqrt(acc))
        return _finite_float32(np.concatenate(parts, axis=1))


# ----------------------------------------------------------------------------------------------------
# persistence landscape

class LandscapeVectoriser(Vectoriser):
    """The first ``num_landscapes`` persistence landscapes of H0 and H1, square-rooted.

    The ``k``-th landscape at ``t`` is the ``k``-th largest of ``max(0, min(t - birth, death - t))`` over the
    finite pairs (0 when there are fewer than ``k``); deaths are not clipped.  Each half (H0: ``dim // 2``
    values, H1: the rest) of size ``d`` holds ``k = min(num_landscapes, d)`` landscapes sampled at
    ``r = d // k`` points of ``linspace(min_birth, max_birth, r)``, landscape-major (``lambda_1`` at all
    points, then ``lambda_2``, ...), followed by ``d - k * r`` zeros of padding.  ``min_birth`` defaults
    to ``-max_birth``.
    """

    label_type = 'landscape'

    def __init__(self, dim=200, *, max_birth=DEFAULT_MAX_BIRTH, min_birth=None,
                 num_landscapes=DEFAULT_NUM_LANDSCAPES):
        self.dim = _check_dim(dim)
        self.min_birth, self.max_birth = _birth_range(min_birth, max_birth)
        if isinstance(num_landscapes, bool) or int(num_landscapes) != num_landscapes or num_landscapes < 1:
            raise UserError(f"--num_landscapes must be a positive integer, got {num_landscapes}")
        self.num_landscapes = int(num_landscapes)
        self.layout = []  # per homology dimension: (k landscapes, r samples, padding)
        for d in _split_half(self.dim):
            k = min(self.num_landscapes, d)
            r = d // k if k else 0
            self.layout.append((k, r, d - k * r))
        self.samples = tuple(np.linspace(self.min_birth, self.max_birth, r) for _, r, _ in self.layout)

    def get_params(self, deep=True):
        return dict(label_type=self.label_type, dim=self.dim, min_birth=self.min_birth,
                    max_birth=self.max_birth, num_landscapes=self.num_landscapes)

    def _landscapes(self, pairs, h, k, r):
        """Landscapes ``[N, k, r]`` of the H``h`` pairs at the sample points (before the square root).

        A tent ``min(t - birth, death - t)`` is positive exactly at the samples ``birth < t < death``, a
        contiguous run per pair; these (pair, sample) events are the only candidates.  The ``j``-th landscape
        is found by ``k`` rounds of a per-(diagram, sample) maximum, each round removing one event that
        attains the maximum (so equal tents count as often as they occur).
        """
        t = self.samples[h]
        index, birth, death = pairs.by_dim[h]
        first = np.searchsorted(t, birth, side='right')
        runs = np.maximum(np.searchsorted(t, death, side='left') - first, 0)
        result = np.zeros((pairs.count, k, r))
        for start, stop in _ranges_by_cost(np.bincount(index, weights=runs, minlength=pairs.count),
                                           _CHUNK_ELEMENTS):
            lo, hi = np.searchsorted(index, [start, stop])
            n_runs = runs[lo:hi]
            pair = np.repeat(np.arange(lo, hi), n_runs)
            offset = np.arange(pair.size) - np.repeat(np.cumsum(n_runs) - n_runs, n_runs)
            sample = first[pair] + offset
            tent = np.minimum(t[sample] - birth[pair], death[pair] - t[sample])
            group = (index[pair] - start) * r + sample
            n_groups = (stop - start) * r
            alive = np.ones(pair.size, dtype=bool)
            position = np.arange(pair.size)
            for j in range(k):
                best = np.zeros(n_groups)
                np.maximum.at(best, group[alive], tent[alive])
                result[start:stop, j] = best.reshape(stop - start, r)
                if j + 1 < k:
                    hit = alive & (tent == best[group])
                    chosen = np.full(n_groups, pair.size)
                    np.minimum.at(chosen, group[hit], position[hit])
                    alive[chosen[chosen < pair.size]] = False
        return result

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        pairs = _Pairs(diagrams)
        count = pairs.count
        parts = []
        for h in (0, 1):
            k, r, pad = self.layout[h]
            out = np.zeros((count, k * r + pad))
            if k:
                out[:, :k * r] = np.sqrt(self._landscapes(pairs, h, k, r)).reshape(count, k * r)
            parts.append(out)
        return _finite_float32(np.concatenate(parts, axis=1))


# ----------------------------------------------------------------------------------------------------
# construction from parameters / command-line flags

LABEL_TYPES = tuple(VECTORISERS)   # ('histogram', 'persistence_image', 'betti_curve', 'landscape')


def make_vectoriser(label_type, dim, *, max_life=DEFAULT_MAX_LIFE, max_birth=DEFAULT_MAX_BIRTH, min_birth=None,
                    bandwidth=DEFAULT_BANDWIDTH, sigma=DEFAULT_SIGMA, power=DEFAULT_POWER,
                    num_landscapes=DEFAULT_NUM_LANDSCAPES, num_bins=None):
    """The vectoriser of ``label_type`` (one of :data:`LABEL_TYPES`) with output length ``dim``.

    Parameters a label type does not use are ignored (``num_bins`` is for the histogram only and, when
    given, must sum to ``dim``).  Raises :class:`UserError` for an unknown type or invalid values.
    """
    cls = VECTORISERS.get(label_type)
    if cls is not None:
        options = dict(max_life=max_life, max_birth=max_birth, min_birth=min_birth, bandwidth=bandwidth, sigma=sigma,
                       power=power, num_landscapes=num_landscapes, num_bins=num_bins)
        accepted = inspect.signature(cls.__init__).parameters
        return cls(dim, **{k: v for k, v in options.items() if k in accepted})
    raise UserError(f"unknown --label_type {label_type!r}; choose one of {', '.join(LABEL_TYPES)}")


_LABEL_FLAGS = {
    'label_type': dict(choices=LABEL_TYPES, default='histogram',
                       help="vectorisation of the persistence diagrams used as the label "
                            "(default: %(default)s)"),
    'max_life': dict(type=float, default=DEFAULT_MAX_LIFE,
                     help="lifetimes are clipped to [0, MAX_LIFE] (histogram, persistence image and Betti "
                          "curve) (default: %(default)s)"),
    'max_birth': dict(type=float, default=DEFAULT_MAX_BIRTH,
                      help="upper end of the birth range; the histogram bins H0 births on [-MAX_BIRTH, 0] and "
                           "H1 births on [-MAX_BIRTH, MAX_BIRTH] (default: %(default)s)"),
    'min_birth': dict(type=float, default=None,
                      help="lower end of the birth range of the persistence image, Betti curve and landscape "
                           "(default: -MAX_BIRTH)"),
    'bandwidth': dict(type=int, default=DEFAULT_BANDWIDTH,
                      help="width of the Hanning window smoothing the histogram label; below 4 means no "
                           "smoothing (default: %(default)s)"),
    'sigma': dict(type=float, default=DEFAULT_SIGMA,
                  help="variance of the Gaussian kernel of the persistence image, in squared filtration "
                       "units (default: %(default)s, i.e. standard deviation 10)"),
    'power': dict(type=float, default=DEFAULT_POWER,
                  help="persistence image weight: each pair counts lifetime**POWER (default: %(default)s)"),
    'num_landscapes': dict(type=int, default=DEFAULT_NUM_LANDSCAPES,
                           help="number of persistence landscapes per homology dimension for the landscape "
                                "label (default: %(default)s)"),
}


def add_label_args(parser, **short):
    """Add the label flags (``--label_type``, ``--max_life``, ``--max_birth``, ``--min_birth``, ``--bandwidth``,
    ``--sigma``, ``--power``, ``--num_landscapes``) to an argparse parser (or argument group).

    Only long options are added unless the caller names short aliases, e.g.
    ``add_label_args(p, max_life='-ml', bandwidth='-b')``.  Returns ``parser``.
    """
    unknown = set(short) - set(_LABEL_FLAGS)
    if unknown:
        raise TypeError(f"add_label_args: no label flag named {sorted(unknown)}; known: {list(_LABEL_FLAGS)}")
    for name, spec in _LABEL_FLAGS.items():
        names = [f'--{name}'] + ([short[name]] if name in short else [])
        parser.add_argument(*names, dest=name, **spec)
    return parser


def vectoriser_from_params(params, dim, flag=None):
    """The vectoriser described by ``params``, a mapping of the label flags (:func:`add_label_args`) such as
    ``dataclasses.asdict(util.config.LabelConfig(...))``; names it lacks take the flags' defaults, names that
    are not label flags are ignored.

    ``flag``: the option that set ``dim`` (e.g. ``'-nc'``); when given, a length the label type cannot split
    evenly is refused (:func:`check_label_dim`).
    """
    get = lambda name: params.get(name, _LABEL_FLAGS[name]['default'])  # noqa: E731
    if flag is not None:
        check_label_dim(get('label_type'), dim, flag, get('num_landscapes'))
    return make_vectoriser(get('label_type'), dim, max_life=get('max_life'), max_birth=get('max_birth'),
                           min_birth=get('min_birth'), bandwidth=get('bandwidth'), sigma=get('sigma'),
                           power=get('power'), num_landscapes=get('num_landscapes'))


def vectoriser_from_args(args, dim, flag=None):
    """For scripts: :func:`vectoriser_from_params` of the label flags their parser read into ``args``."""
    return vectoriser_from_params(vars(args), dim, flag)


def check_label_dim(label_type, dim, flag, num_landscapes=DEFAULT_NUM_LANDSCAPES):
    """Refuse a label length ``dim`` that ``label_type`` cannot split evenly, naming the valid ones.

    The histogram is four equal histograms (H0/H1 lifetimes and births): a multiple of 4.  The persistence
    image and Betti curve are H0 then H1 halves: even.  The landscape is ``num_landscapes`` landscapes per
    half: a multiple of ``2 * num_landscapes``.  (Otherwise bins would be split unevenly, e.g. 7 as
    1, 1, 1, 4, or padded with zeros.)
    """
    step = {'histogram': 4, 'persistence_image': 2, 'betti_curve': 2,
            'landscape': 2 * max(1, int(num_landscapes))}.get(label_type)
    if step is None or (isinstance(dim, int) and dim >= step and dim % step == 0):
        return
    lo = (int(dim) // step) * step if isinstance(dim, int) else 0
    near = ' or '.join(str(x) for x in (lo, lo + step) if x >= step)
    raise UserError(f"{flag} {dim} cannot be split evenly by --label_type {label_type}: it needs a multiple of "
                    f"{step} (e.g. {near})")
