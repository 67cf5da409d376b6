"""The five label types: histogram, persistence image, Betti curve, persistence landscape and split image, each a
:class:`util.ph.vectorise_base.Vectoriser` registered under its ``label_type`` when this module is imported
(:mod:`util.ph.vectorise` does). Their numerics work on a whole batch of diagrams at once.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erfc

from util.errors import UserError
from util.ph import vectorise_base as base
from util.ph.vectorise_base import (
    DEFAULT_BANDWIDTH,
    DEFAULT_LABEL_DIM,
    DEFAULT_MAX_BIRTH,
    DEFAULT_MAX_LIFE,
    DEFAULT_NUM_LANDSCAPES,
    DEFAULT_POWER,
    DEFAULT_SIGMA,
    Pairs,
    Vectoriser,
    birth_ranges,
    check_dim,
    check_positive,
    finite_float32,
    one_or_two,
    positive_pair,
    ranges_by_cost,
    split_half,
    uniform_bin_index,
)

_SQRT_HALF = math.sqrt(0.5)


# ----------------------------------------------------------------------------------------------------
# histogram


def smoothing_matrix(n: int, bandwidth: int) -> np.ndarray:
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

    def __init__(
        self,
        dim=DEFAULT_LABEL_DIM,
        *,
        max_life=DEFAULT_MAX_LIFE,
        max_birth=DEFAULT_MAX_BIRTH,
        bandwidth=DEFAULT_BANDWIDTH,
        num_bins=None,
    ):
        dim = check_dim(dim)
        if num_bins is None:
            q = dim // 4
            num_bins = (q, q, q, dim - 3 * q)
        num_bins = tuple(int(b) for b in num_bins)
        if len(num_bins) != 4 or min(num_bins) < 0 or sum(num_bins) != dim:
            raise UserError(
                f"histogram num_bins {num_bins} must be 4 non-negative bin counts summing to the label dimension {dim}"
            )
        if int(bandwidth) != bandwidth or bandwidth < 0:
            raise UserError(f"--bandwidth must be a non-negative integer, got {bandwidth}")
        self.dim = dim
        self.num_bins = num_bins
        self.lives = positive_pair(max_life, '--max_life')  # per homology dimension
        self.births = positive_pair(max_birth, '--max_birth (for the histogram label)')
        self.max_life, self.max_birth = one_or_two(self.lives), one_or_two(self.births)
        self.bandwidth = int(bandwidth)
        self._smooth = [smoothing_matrix(n, self.bandwidth) for n in num_bins]
        self._life_factor = [1.0 + np.linspace(0.0, life, n) for life, n in zip(self.lives, num_bins[:2])]

    def get_params(self, deep=True):
        return dict(
            label_type=self.label_type,
            dim=self.dim,
            num_bins=list(self.num_bins),
            max_life=self.max_life,
            max_birth=self.max_birth,
            bandwidth=self.bandwidth,
        )

    def _hist(self, count, index, values, lo, hi, n, weights=None):
        """Per-diagram histograms ``[count, n]`` of ``values`` (``index`` = diagram of each value)."""
        b, inside = uniform_bin_index(values, lo, hi, n)
        w = None if weights is None else weights[inside]
        flat = np.bincount(index[inside] * n + b[inside], weights=w, minlength=count * n)
        return flat.astype(np.float64).reshape(count, n)

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        self.check_fitted()
        pairs = Pairs(diagrams)
        n_diag = pairs.count
        nb = self.num_bins
        parts = []
        for h in (0, 1):
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.lives[h])
            hist = self._hist(n_diag, index, life, 0.0, self.lives[h], nb[h])
            parts.append(hist * self._life_factor[h])
        mb = self.births
        for h, (lo, hi) in ((0, (-mb[0], 0.0)), (1, (-mb[1], mb[1]))):
            index, birth, death = pairs.by_dim[h]
            weight = np.maximum(death - birth, 0.0)
            parts.append(self._hist(n_diag, index, birth, lo, hi, nb[2 + h], weights=weight))
        parts = [p @ s.T for p, s in zip(parts, self._smooth)]
        out = np.concatenate(
            [np.log1p(parts[0]), np.log1p(parts[1]), np.log1p(parts[2]) / 100.0, np.log1p(parts[3])], axis=1
        )
        return finite_float32(out)


# ----------------------------------------------------------------------------------------------------
# persistence image


def pixel_grid(d: int, width: float, height: float) -> tuple[int, int]:
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


def pixel_masses(edges: np.ndarray, centres: np.ndarray, std: float) -> np.ndarray:
    """Mass of ``N(centre, std**2)`` in each ``[edges[i], edges[i+1]]``: array ``[len(centres), len(edges)-1]``.

    ``edges`` must increase.  With ``Phi(z) = H(z) - s(z) T(z)`` (``H`` = step at 0, ``s`` = sign,
    ``T(z) = erfc(|z|/sqrt 2)/2`` the smaller tail), ``Phi(hi) - Phi(lo)`` is formed from the differences of
    ``H`` and of ``s T`` separately, which keeps full relative accuracy in both tails (a plain difference
    of CDFs loses it above the mean).
    """
    z = (edges[None, :] - centres[:, None]) * (_SQRT_HALF / std)
    below = np.signbit(z)  # s = -1, H = 0 (signbit, so that -0.0 is consistent)
    tail = erfc(np.abs(z))  # 2 T
    np.copysign(tail, z, out=tail)  # 2 s T
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
    step = max(1, base.CHUNK_ELEMENTS // max(1, ua * max(na, nb)))
    for start in range(0, count, step):
        stop = min(start + step, count)
        y = (s[start * ua : stop * ua] @ b_mass).reshape(stop - start, ua, nb)  # [C, Ua, nb]
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

    def __init__(
        self,
        dim=DEFAULT_LABEL_DIM,
        *,
        max_life=DEFAULT_MAX_LIFE,
        max_birth=DEFAULT_MAX_BIRTH,
        min_birth=None,
        sigma=DEFAULT_SIGMA,
        power=DEFAULT_POWER,
    ):
        self.dim = check_dim(dim)
        self.lives = positive_pair(max_life, '--max_life')
        self.births = birth_ranges(min_birth, max_birth)
        self.max_life = one_or_two(self.lives)
        self.min_birth, self.max_birth = (one_or_two([b[i] for b in self.births]) for i in (0, 1))
        self.sigma = check_positive(sigma, '--sigma')
        self.power = float(power)
        if not (math.isfinite(self.power) and self.power >= 0):
            raise UserError(f"--power must be a non-negative number, got {power}")
        widths = [hi - lo for lo, hi in self.births]
        self.grids = tuple(pixel_grid(d, w, life) for d, w, life in zip(split_half(self.dim), widths, self.lives))
        # pixel edges per homology dimension: (birth edges [n_birth+1], life edges [n_life+1])
        self.edges = tuple(
            (
                lo + np.arange(nb + 1) * (w / nb) if nb else np.zeros(1),
                np.arange(nl + 1) * (life / nl) if nl else np.zeros(1),
            )
            for (nb, nl), (lo, _), w, life in zip(self.grids, self.births, widths, self.lives)
        )

    def get_params(self, deep=True):
        return dict(
            label_type=self.label_type,
            dim=self.dim,
            max_life=self.max_life,
            min_birth=self.min_birth,
            max_birth=self.max_birth,
            sigma=self.sigma,
            power=self.power,
            grids=[list(g) for g in self.grids],
        )

    def auto_sigma(self):
        """``--sigma auto``: the variance of a Gaussian whose standard deviation is half the mean pixel side."""
        sides = [
            (e[0][-1] - e[0][0]) / nb for (nb, _), e in zip(self.grids, self.edges) if nb
        ]  # square pixels: the birth side
        return (0.5 * float(np.mean(sides))) ** 2 if sides else self.sigma

    def images(self, diagrams):
        """Raw persistence images, before the square root: ``[H0 [N, nb0, nl0], H1 [N, nb1, nl1]]`` (float64)."""
        self.check_fitted()
        pairs = Pairs(diagrams)
        std = math.sqrt(self.sigma)
        result = []
        for h in (0, 1):
            nb, nl = self.grids[h]
            img = np.zeros((pairs.count, nb, nl))
            if nb == 0:
                result.append(img)
                continue
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.lives[h])
            weight = life**self.power
            bedges, ledges = self.edges[h]
            # The kernel is separable: a pair's image is outer(birth masses, life masses).  Filtration values
            # of images repeat a lot (8-bit levels, distances sqrt(k)), so the masses are computed once per
            # distinct birth / lifetime and gathered.
            births, birth_id = _distinct(birth)
            lives, life_id = _distinct(life)
            birth_mass = pixel_masses(bedges, births, std)  # [distinct births, nb]
            life_mass = pixel_masses(ledges, lives, std)  # [distinct lifetimes, nl]
            if min(births.size, lives.size) * pairs.count <= birth.size:
                # few distinct values (fewer than pairs per diagram): sum the weights per (diagram, value)
                if births.size <= lives.size:
                    img[:] = _aggregated_images(index, pairs.count, birth_id, birth_mass, life_id, life_mass, weight)
                else:
                    img[:] = _aggregated_images(
                        index, pairs.count, life_id, life_mass, birth_id, birth_mass, weight
                    ).transpose(0, 2, 1)
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
        return finite_float32(out)


# ----------------------------------------------------------------------------------------------------
# Betti curve


class BettiCurveVectoriser(Vectoriser):
    """Lifetime-weighted Betti curves of H0 and H1, square-rooted.

    For H0 (``dim // 2`` thresholds) then H1 (the rest): at each threshold ``t`` of
    ``linspace(min_birth, max_birth, n)`` the sum of ``clip(death - birth, 0, max_life)`` over the pairs
    with ``birth < t < death``; output its square root.  ``min_birth`` defaults to ``-max_birth``.
    """

    label_type = 'betti_curve'

    def __init__(
        self, dim=DEFAULT_LABEL_DIM, *, max_life=DEFAULT_MAX_LIFE, max_birth=DEFAULT_MAX_BIRTH, min_birth=None
    ):
        self.dim = check_dim(dim)
        self.lives = positive_pair(max_life, '--max_life')
        self.births = birth_ranges(min_birth, max_birth)
        self.max_life = one_or_two(self.lives)
        self.min_birth, self.max_birth = (one_or_two([b[i] for b in self.births]) for i in (0, 1))
        self.thresholds = tuple(np.linspace(lo, hi, n) for (lo, hi), n in zip(self.births, split_half(self.dim)))

    def get_params(self, deep=True):
        return dict(
            label_type=self.label_type,
            dim=self.dim,
            max_life=self.max_life,
            min_birth=self.min_birth,
            max_birth=self.max_birth,
        )

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        self.check_fitted()
        pairs = Pairs(diagrams)
        count = pairs.count
        parts = []
        for h in (0, 1):
            t = self.thresholds[h]
            n = t.size
            index, birth, death = pairs.by_dim[h]
            life = np.clip(death - birth, 0.0, self.lives[h])
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
        return finite_float32(np.concatenate(parts, axis=1)[:, : self.dim])


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

    def __init__(
        self,
        dim=DEFAULT_LABEL_DIM,
        *,
        max_birth=DEFAULT_MAX_BIRTH,
        min_birth=None,
        num_landscapes=DEFAULT_NUM_LANDSCAPES,
    ):
        self.dim = check_dim(dim)
        self.births = birth_ranges(min_birth, max_birth)
        self.min_birth, self.max_birth = (one_or_two([b[i] for b in self.births]) for i in (0, 1))
        if isinstance(num_landscapes, bool) or int(num_landscapes) != num_landscapes or num_landscapes < 1:
            raise UserError(f"--num_landscapes must be a positive integer, got {num_landscapes}")
        self.num_landscapes = int(num_landscapes)
        self.layout = []  # per homology dimension: (k landscapes, r samples, padding)
        for d in split_half(self.dim):
            k = min(self.num_landscapes, d)
            r = d // k if k else 0
            self.layout.append((k, r, d - k * r))
        self.samples = tuple(np.linspace(lo, hi, r) for (lo, hi), (_, r, _) in zip(self.births, self.layout))

    def get_params(self, deep=True):
        return dict(
            label_type=self.label_type,
            dim=self.dim,
            min_birth=self.min_birth,
            max_birth=self.max_birth,
            num_landscapes=self.num_landscapes,
        )

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
        for start, stop in ranges_by_cost(np.bincount(index, weights=runs, minlength=pairs.count), base.CHUNK_ELEMENTS):
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
        self.check_fitted()
        pairs = Pairs(diagrams)
        count = pairs.count
        parts = []
        for h in (0, 1):
            k, r, pad = self.layout[h]
            out = np.zeros((count, k * r + pad))
            if k:
                out[:, : k * r] = np.sqrt(self._landscapes(pairs, h, k, r)).reshape(count, k * r)
            parts.append(out)
        return finite_float32(np.concatenate(parts, axis=1)[:, : self.dim])


# ----------------------------------------------------------------------------------------------------
# counts apart from shape


class SplitImageVectoriser(PersistenceImageVectoriser):
    """Counts separated from the shape of the diagram: ``log(1 + n0), log(1 + n1)`` (the numbers of finite H0
    and H1 pairs), then per homology dimension the square root of the *mass-normalised* persistence image
    (the image divided by its total, so it sums to 1: where the pairs are, not how many there are).

    The square root of a distribution is a unit vector (the Hellinger embedding), so each shape half has
    norm 1 whatever the number of pairs, and the counts cannot dominate it the way they dominate the plain
    persistence image (whose first principal component tracks the count).  A dimension without pairs gives
    zeros.  The image is :class:`PersistenceImageVectoriser`'s with its parameters, over ``dim - 2`` values
    (H0 then H1 halves).
    """

    label_type = 'split_image'
    COUNTS = 2

    def __init__(
        self,
        dim=DEFAULT_LABEL_DIM,
        *,
        max_life=DEFAULT_MAX_LIFE,
        max_birth=DEFAULT_MAX_BIRTH,
        min_birth=None,
        sigma=DEFAULT_SIGMA,
        power=DEFAULT_POWER,
    ):
        dim = check_dim(dim)
        image_dim = max(dim - self.COUNTS, 2)  # below 4 values the vector is cut to ``dim``
        super().__init__(
            image_dim, max_life=max_life, max_birth=max_birth, min_birth=min_birth, sigma=sigma, power=power
        )
        self.dim = dim

    def get_params(self, deep=True):
        return dict(super().get_params(), label_type=self.label_type, dim=self.dim, counts=self.COUNTS)

    def transform(self, diagrams):
        """Sequence of ``N`` diagrams -> float32 array ``[N, dim]``."""
        diagrams = list(diagrams)
        pairs = Pairs(diagrams)
        counts = [np.bincount(pairs.by_dim[h][0], minlength=pairs.count) for h in (0, 1)]
        parts = [np.log1p(np.stack(counts, axis=1).astype(np.float64))]
        for img in self.images(diagrams):
            flat = np.abs(img.reshape(img.shape[0], img.shape[1] * img.shape[2]))
            total = flat.sum(axis=1, keepdims=True)
            parts.append(np.sqrt(np.divide(flat, total, out=np.zeros_like(flat), where=total > 0)))
        return finite_float32(np.concatenate(parts, axis=1)[:, : self.dim])
