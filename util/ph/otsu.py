"""Otsu's threshold as ``skimage.filters.threshold_otsu`` computes it on a float image, for the generator's
binarised channels (:mod:`util.ph.generator`) and the Otsu mask of the filtrations (:mod:`util.ph.cubical`).

skimage lays :data:`OTSU_BINS` equal bins on ``[min, max]`` as ``np.histogram`` does (edges
``linspace(min, max, OTSU_BINS + 1)``; value ``v`` is in bin ``i`` iff ``edge[i] <= v < edge[i+1]``, the last
bin closed) and takes the threshold of that histogram. :func:`otsu_threshold` builds the same histogram
(of weighted values, when given) and hands it to ``threshold_otsu(hist=...)``: equal thresholds, bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from skimage.filters import threshold_otsu

if TYPE_CHECKING:
    from collections.abc import Callable

OTSU_BINS = 256  # skimage.filters.threshold_otsu's default number of bins


def _scratch(n, dtype):
    return np.empty(n, dtype), np.empty(n, dtype), np.empty(n, np.intp), np.empty(n, bool), np.empty(n, bool)


def otsu_threshold(
    values: np.ndarray,
    low: float | None = None,
    high: float | None = None,
    weights: np.ndarray | None = None,
    scratch: Callable = _scratch,
) -> float:
    """``skimage.filters.threshold_otsu(values)`` of a float array (each value counted ``weights`` times).

    ``low``/``high``: the array's min/max (numpy scalars of its dtype) if already known; ``scratch(n, dtype)``
    returns work arrays (2 of ``dtype``, 1 intp, 2 bool, length ``n``) to reuse. A constant array gives its
    value. Bins are estimated arithmetically and only values within rounding distance of a bin edge are
    checked against the edges; arrays that are not float, or whose values sit far from zero relative to their
    range, are binned by comparisons alone (unweighted ones simply go to ``threshold_otsu``).
    """
    flat = values.reshape(-1)
    floating = np.issubdtype(flat.dtype, np.floating)
    if not floating and weights is None:
        return threshold_otsu(values)
    low = flat.min() if low is None else low
    high = flat.max() if high is None else high
    if not low < high:
        return low
    dtype = np.result_type(low, high, flat) if floating else np.dtype(np.float64)
    # Rounding (of the offset from `low`, of the scale, of the edges) moves a position, in bin units, by far
    # less than `tol`; so an estimate farther than `tol` from an integer is the exact bin.
    eps = float(np.finfo(dtype).eps)
    tol = 64 * OTSU_BINS * eps * (1.0 + max(abs(float(low)), abs(float(high))) / float(high - low))
    if tol >= 0.25 and weights is None:
        return threshold_otsu(values)
    edges = np.linspace(low, high, OTSU_BINS + 1, endpoint=True, dtype=dtype)
    if not floating or tol >= 0.25:
        bins = np.minimum(np.searchsorted(edges, flat, side='right') - 1, OTSU_BINS - 1)
    else:
        position, floors, bins, near, near2 = scratch(flat.size, dtype)
        np.subtract(flat, low, out=position)  # position in bin units ...
        position *= dtype.type(OTSU_BINS / (high - low))
        np.minimum(position, OTSU_BINS - 1, out=position)  # ... the last bin is closed
        np.floor(position, out=floors)
        np.copyto(bins, floors, casting='unsafe')
        position -= floors
        np.less(position, tol, out=near)
        np.greater(position, 1.0 - tol, out=near2)
        near |= near2
        check = np.flatnonzero(near)
        if check.size:  # the edge rule, on the few close calls
            v, b = flat[check], bins[check]
            b -= v < edges[b]
            b += (v >= edges[b + 1]) & (b != OTSU_BINS - 1)
            bins[check] = b
    counts = np.bincount(bins, weights=weights, minlength=OTSU_BINS)
    centers = (edges[:-1] + edges[1:]) / 2
    return threshold_otsu(hist=(counts, centers))


def otsu_threshold_from_counts(counts: np.ndarray) -> float | None:
    """Otsu's threshold of an 8-bit image given its 256 pixel counts (``counts[v]`` = pixels of value ``v``):
    ``threshold_otsu`` of the image as float64 (which is what the original thresholded), from the grey levels
    weighted by their counts, without touching the pixels again. None for a constant image."""
    counts = np.asarray(counts)
    levels = np.flatnonzero(counts)
    if levels.size < 2:
        return None
    return float(otsu_threshold(levels.astype(np.float64), weights=counts[levels]))
