"""The exact signed squared Euclidean distance transform of a 2-D mask (numba), from which
:mod:`util.ph.cubical` takes the signed-distance filtration and :mod:`util.ph.unionfind` its integer keys."""

from __future__ import annotations

import numpy as np

from util.ph.jit import jit


@jit
def _signed_sqedt(bw):
    """Exact signed squared EDT (see :func:`signed_sqedt`): a column pass giving each pixel the distance
    along its column to the nearest pixel of the other class (rows in memory order), then per row the lower
    envelope of parabolas (Felzenszwalb & Huttenlocher) for each class, evaluated at the other class."""
    h, w = bw.shape
    big = h + w + 2
    # vertical distance to the nearest pixel of the other class in the same column
    vd = np.empty((h, w), np.int64)
    for c in range(w):
        vd[0, c] = big
    for r in range(1, h):
        for c in range(w):
            if bw[r, c] != bw[r - 1, c]:
                vd[r, c] = 1
            else:
                vd[r, c] = vd[r - 1, c] + 1 if vd[r - 1, c] < big else big
    for r in range(h - 2, -1, -1):
        for c in range(w):
            if bw[r, c] != bw[r + 1, c]:
                vd[r, c] = 1
            elif vd[r + 1, c] + 1 < vd[r, c]:
                vd[r, c] = vd[r + 1, c] + 1
    out = np.empty((h, w), np.int64)
    g = np.empty(w, np.int64)
    v = np.empty(w, np.int64)
    # the breakpoint between parabolas v[i-1] and v[i] of the envelope is the fraction zn[i] / zd[i] (zd > 0):
    # integer comparisons, exact, and no division
    zn = np.empty(w, np.int64)
    zd = np.empty(w, np.int64)
    inf = big * big
    for r in range(h):
        for cls in range(2):
            target = cls == 1  # evaluate at pixels of class `target`; features = the other class
            any_target = False
            for c in range(w):
                if bw[r, c] == target:
                    any_target = True
                    break
            if not any_target:
                continue
            for c in range(w):  # squared vertical distance from (r, c) to the nearest feature
                if bw[r, c] != target:
                    g[c] = 0
                elif vd[r, c] < big:
                    g[c] = vd[r, c] * vd[r, c]
                else:
                    g[c] = inf
            k = -1
            for q in range(w):
                gq = g[q]
                if gq >= inf:
                    continue
                fq = gq + q * q
                if k < 0:
                    k = 0
                    v[0] = q
                    continue
                while True:  # pop the parabolas that q's lies below from their breakpoint on
                    p = v[k]
                    num = fq - (g[p] + p * p)
                    den = 2 * (q - p)
                    if k > 0 and num * zd[k] <= zn[k] * den:
                        k -= 1
                    else:
                        break
                k += 1
                v[k] = q
                zn[k] = num
                zd[k] = den
            j = 0
            sign = 1 if target else -1
            for c in range(w):
                while j < k and zn[j + 1] < c * zd[j + 1]:
                    j += 1
                if bw[r, c] == target:
                    p = v[j]
                    out[r, c] = sign * ((c - p) * (c - p) + g[p])
    return out


def signed_sqedt(bw: np.ndarray) -> np.ndarray:
    """Signed squared Euclidean distance transform of a bool mask ``(H, W)``: int64, ``+d^2`` on foreground
    pixels (``d`` = distance to the nearest background pixel), ``-d^2`` on background pixels (distance to the
    nearest foreground pixel); exact integers.  ``np.sign(k) * np.sqrt(abs(k))`` equals
    ``EDT(bw) - EDT(~bw)`` of scipy.  Both classes must be present (``ValueError`` otherwise)."""
    b = np.ascontiguousarray(bw, dtype=np.bool_)
    if b.ndim != 2 or b.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {b.shape}")
    if b.all() or not b.any():
        raise ValueError("signed distance of a mask needs both foreground and background pixels")
    return _signed_sqedt(b)


def warm_up() -> None:
    """Compile (first process) or load from numba's cache the kernel (see :func:`util.ph.unionfind.warm_up`)."""
    signed_sqedt(np.array([[True, False], [False, False]]))
