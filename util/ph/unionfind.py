"""Exact persistent homology (dimensions 0 and 1) of 2-D images by two union-find passes (numba).

The diagrams are those of ``cripser.computePH(f, maxdim=1)`` (V-construction: pixels are vertices, edges join
4-neighbours, a unit square is filled when its four corners are) and, with ``construction='T'``, of
``cripser.computePH_T(f, maxdim=1)`` (pixels are unit squares; touching squares meet, so components are
8-connected): the same multisets of (dimension, birth, death), checked equal in ``tests/test_ph_unionfind.py``.

Method.  The pixels are put in one total order: ascending value, ties by row-major index (a stable sort).
* H0: the pixels are added in that order; each is joined to its already-added neighbours (4 for V, 8 for T).
  When two components meet, the younger (the one whose first pixel comes later) dies at the joining pixel's
  value (elder rule); the component of the first pixel is the one essential class.
* H1 by Alexander duality: the pixels are added in the reverse order to the complement, on the grid padded
  by one ring of pixels that stands for the unbounded outside (present from the start, the eldest
  component); complement components are 8-connected for V and 4-connected for T.  A pixel that joins ``k``
  complement components makes ``k - 1`` H1 classes of the sublevel set: each is born at that pixel's value
  and dies at the value of the *last* pixel (in the order) of a younger component -- the component's first
  pixel in the reverse pass.
* Pairs with birth == death are dropped, as cripser drops them.
Because the order refines the filtration, the multiset of (birth, death) pairs is the one of any other
refinement, hence cripser's.  Which tied pixel is reported may differ from cripser.

Output rows (float64 ``(n, 9)``): ``dim, birth, death, x1, y1, z1, x2, y2, z2`` with ``x`` the row and ``y``
the column of a pixel, ``z = 0``, as cripser writes them; H0 rows first, then H1.
* H0 finite pair: creator = the first pixel (in the order) of the dying component, so value = birth;
  destroyer = the pixel whose arrival joined the two components, value = death.
* The essential H0 class: creator = the first pixel in the order (the row-major first global minimum),
  death = the largest double (``sys.float_info.max``, what cripser writes), destroyer ``(-1, -1, -1)``.
* H1 pair: creator = the pixel of the reverse pass that joined the complement components (value = birth;
  among tied pixels the reverse pass takes the row-major last first); destroyer = the last pixel in the
  order of the younger complement component (the row-major last of its maxima; value = death).

Implementation (speed: BENCHMARKS.md): a one-pixel padded grid (no bounds checks); a 256-entry table over
the mask of already-added 8-neighbours, which names one neighbour per locally connected run (most pixels touch
one run and are linked without a find); integer keys and a counting sort when the values are (signed square
roots of) integers
(:func:`diagram_of_sqkeys`, used for the distance filtrations via :func:`util.ph.distance.signed_sqedt`).
"""

from __future__ import annotations

import sys

import numpy as np

from util.ph.jit import jit

ESSENTIAL_DEATH = sys.float_info.max  # cripser's death of an essential class
CONSTRUCTIONS = ('V', 'T')


# ----------------------------------------------------------------------------------------------------
# neighbour tables

# ring positions 0..7: N, NE, E, SE, S, SW, W, NW  (row, column) offsets
_RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def _run_table(eight):
    """``(reps[256, 4], count[256])``: for each mask of present ring neighbours, one position per group of
    neighbours already known connected through the ring (8-connectivity if ``eight``, else 4)."""
    reps = np.zeros((256, 4), np.int64)
    count = np.zeros(256, np.int64)
    for m in range(256):
        on = [(m >> i) & 1 == 1 for i in range(8)]
        cand = list(range(8)) if eight else [0, 2, 4, 6]
        cand = [i for i in cand if on[i]]
        group = {i: i for i in cand}

        def find(i):
            while group[i] != i:
                i = group[i]
            return i

        def link(a, b):
            ra, rb = find(a), find(b)
            if ra != rb:
                group[max(ra, rb)] = min(ra, rb)

        for a in cand:
            for b in cand:
                if a >= b:
                    continue
                if eight:
                    da, db = _RING[a], _RING[b]
                    if max(abs(da[0] - db[0]), abs(da[1] - db[1])) == 1:
                        link(a, b)
                else:  # 4-neighbours a, b (two ring steps apart) meet through the corner between them
                    if (b - a) == 2 and on[a + 1]:
                        link(a, b)
                    elif a == 0 and b == 6 and on[7]:
                        link(a, b)
        roots = sorted({find(i) for i in cand})
        count[m] = len(roots)
        reps[m, : len(roots)] = roots
    return reps, count


_REPS4, _COUNT4 = _run_table(False)
_REPS8, _COUNT8 = _run_table(True)


# ----------------------------------------------------------------------------------------------------
# kernels


@jit
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@jit
def _masks(rank, h, w):
    """For every padded pixel ``p`` of the image, the 8-bit mask of ring neighbours earlier in the order
    (bit ``k`` for ring position ``k``: N, NE, E, SE, S, SW, W, NW); one raster scan."""
    wp = w + 2
    mask = np.zeros((h + 2) * wp, np.uint8)
    for r in range(1, h + 1):
        base = r * wp
        for c in range(1, w + 1):
            p = base + c
            x = rank[p]
            m = 0
            if rank[p - wp] < x:
                m |= 1
            if rank[p - wp + 1] < x:
                m |= 2
            if rank[p + 1] < x:
                m |= 4
            if rank[p + wp + 1] < x:
                m |= 8
            if rank[p + wp] < x:
                m |= 16
            if rank[p + wp - 1] < x:
                m |= 32
            if rank[p - 1] < x:
                m |= 64
            if rank[p - wp - 1] < x:
                m |= 128
            mask[p] = m
    return mask


@jit
def _pass(parent, rank, order, mask, flip, reps, count, off, vals, cs, ds, descending):
    """One union-find pass; pairs of positive length go to ``cs``/``ds`` (creator, destroyer); returns their
    number.  Ascending: the eldest root has the smallest rank, a pair is (root, joining pixel).  Descending
    (complement): the eldest has the largest rank, a pair is (joining pixel, root)."""
    n = order.shape[0]
    roots = np.empty(4, np.int32)
    npairs = 0
    for t in range(n):
        i = n - 1 - t if descending else t
        p = order[i]
        m = mask[p] ^ flip
        g = count[m]
        if g == 0:
            parent[p] = p
        elif g == 1:
            parent[p] = parent[p + off[reps[m, 0]]]
        else:
            nr = 0
            eldest = -1
            for u in range(g):
                r = _find(parent, p + off[reps[m, u]])
                dup = False
                for s in range(nr):
                    if roots[s] == r:
                        dup = True
                if not dup:
                    roots[nr] = r
                    nr += 1
                    if eldest < 0 or (rank[r] > rank[eldest] if descending else rank[r] < rank[eldest]):
                        eldest = r
            for s in range(nr):
                r = roots[s]
                if r != eldest:
                    parent[r] = eldest
                    if descending:
                        if vals[p] < vals[r]:
                            cs[npairs] = p
                            ds[npairs] = r
                            npairs += 1
                    elif vals[r] < vals[p]:
                        cs[npairs] = r
                        ds[npairs] = p
                        npairs += 1
            parent[p] = eldest
    return npairs


@jit
def _pairs(rank, order, h, w, reps0, count0, reps1, count1, vals):
    """Both union-find passes on the padded grid.

    ``rank``: int32 ``(h+2)*(w+2)`` position in the order of each padded pixel, ``n = h*w`` on the border;
    ``order``: int32 padded indices in ascending order; ``vals``: padded float64 values.  Returns
    ``(c0, d0, n0, c1, d1, n1)``: creator/destroyer padded indices of the H0 and H1 pairs of positive length.
    """
    n = h * w
    wp = w + 2
    size = (h + 2) * wp
    off = np.empty(8, np.int64)
    off[0] = -wp
    off[1] = -wp + 1
    off[2] = 1
    off[3] = wp + 1
    off[4] = wp
    off[5] = wp - 1
    off[6] = -1
    off[7] = -wp - 1
    mask = _masks(rank, h, w)
    parent = np.empty(size, np.int32)
    c0 = np.empty(max(n, 1), np.int32)
    d0 = np.empty(max(n, 1), np.int32)
    c1 = np.empty(max(n, 1), np.int32)
    d1 = np.empty(max(n, 1), np.int32)
    # H0: ascending; present neighbours = earlier ones (the border, rank n, never)
    n0 = _pass(parent, rank, order, mask, np.uint8(0), reps0, count0, off, vals, c0, d0, False)
    # H1: descending on the complement; present = later ones and the border ring, one component from the start
    for q in range(size):
        if rank[q] == n:
            parent[q] = 0
    n1 = _pass(parent, rank, order, mask, np.uint8(255), reps1, count1, off, vals, c1, d1, True)
    return c0, d0, n0, c1, d1, n1


@jit
def _rows(c0, d0, n0, c1, d1, n1, first, vals, wp, essential):
    """The diagram ``(n0 + n1 + 1, 9)``: H0 pairs, the essential H0 class (creator ``first``), H1 pairs."""
    out = np.zeros((n0 + n1 + 1, 9), np.float64)
    j = 0
    for dim in range(2):
        cs = c0 if dim == 0 else c1
        ds = d0 if dim == 0 else d1
        cnt = n0 if dim == 0 else n1
        for t in range(cnt):
            c = cs[t]
            d = ds[t]
            out[j, 0] = dim
            out[j, 1] = vals[c]
            out[j, 2] = vals[d]
            out[j, 3] = c // wp - 1
            out[j, 4] = c % wp - 1
            out[j, 6] = d // wp - 1
            out[j, 7] = d % wp - 1
            j += 1
        if dim == 0:
            out[j, 1] = vals[first]
            out[j, 2] = essential
            out[j, 3] = first // wp - 1
            out[j, 4] = first % wp - 1
            out[j, 6] = -1.0
            out[j, 7] = -1.0
            out[j, 8] = -1.0
            j += 1
    return out


@jit
def _pad_float(f):
    """``(padded values, padded index of each pixel in row-major order)``."""
    h, w = f.shape
    wp = w + 2
    vals = np.zeros((h + 2) * wp, np.float64)
    for r in range(h):
        for c in range(w):
            vals[(r + 1) * wp + c + 1] = f[r, c]
    return vals


@jit
def _rank_of_order(order_flat, h, w):
    """Padded rank array and padded order from a row-major order of the pixels."""
    n = h * w
    wp = w + 2
    rank = np.full((h + 2) * wp, n, np.int32)
    order = np.empty(n, np.int32)
    for i in range(n):
        q = order_flat[i]
        p = (q // w + 1) * wp + q % w + 1
        order[i] = p
        rank[p] = i
    return rank, order


@jit
def _diagram_float(f, order_flat, reps0, count0, reps1, count1, essential):
    h, w = f.shape
    vals = _pad_float(f)
    rank, order = _rank_of_order(order_flat, h, w)
    c0, d0, n0, c1, d1, n1 = _pairs(rank, order, h, w, reps0, count0, reps1, count1, vals)
    return _rows(c0, d0, n0, c1, d1, n1, order[0], vals, w + 2, essential)


@jit
def _diagram_keys(keys, reps0, count0, reps1, count1, essential):
    """Diagram of the filtration ``sign(k) * sqrt(|k|)`` given the integer keys ``k`` ``(h, w)``; the order is
    a counting sort of the keys (stable: ties in row-major order)."""
    h, w = keys.shape
    n = h * w
    wp = w + 2
    lo = keys[0, 0]
    hi = keys[0, 0]
    for r in range(h):
        for c in range(w):
            k = keys[r, c]
            if k < lo:
                lo = k
            if k > hi:
                hi = k
    span = hi - lo + 1
    start = np.zeros(span + 1, np.int64)
    for r in range(h):
        for c in range(w):
            start[keys[r, c] - lo + 1] += 1
    for t in range(span):
        start[t + 1] += start[t]
    rank = np.full((h + 2) * wp, n, np.int32)
    order = np.empty(n, np.int32)
    vals = np.zeros((h + 2) * wp, np.float64)
    for r in range(h):
        for c in range(w):
            k = keys[r, c]
            i = start[k - lo]
            start[k - lo] = i + 1
            p = (r + 1) * wp + c + 1
            order[i] = p
            rank[p] = i
            vals[p] = np.sqrt(k) if k >= 0 else -np.sqrt(-k)
    c0, d0, n0, c1, d1, n1 = _pairs(rank, order, h, w, reps0, count0, reps1, count1, vals)
    return _rows(c0, d0, n0, c1, d1, n1, order[0], vals, wp, essential)


@jit
def _radix_order(f):
    """Stable ascending order of the flat float64 array ``f`` (no NaN): LSD radix sort of the values' bits
    mapped to order-preserving unsigned keys, 11 bits a pass, passes whose digit is the same everywhere
    skipped; the order of a stable ``np.argsort``."""
    n = f.size
    keys = np.empty(n, np.uint64)
    bits = (f + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into +0.0 (equal values, equal keys)
    sign = np.uint64(1) << np.uint64(63)
    for i in range(n):
        b = bits[i]
        keys[i] = ~b if b & sign else b | sign
    nd = 6
    counts = np.zeros((nd, 2049), np.int64)
    for i in range(n):
        k = keys[i]
        for d in range(nd):
            counts[d, ((k >> np.uint64(11 * d)) & np.uint64(2047)) + 1] += 1
    order = np.arange(n).astype(np.int64)
    tmp = np.empty(n, np.int64)
    for d in range(nd):
        trivial = False
        for b in range(2048):
            if counts[d, b + 1] == n:
                trivial = True
                break
        if trivial:
            continue
        start = counts[d]
        for b in range(2048):
            start[b + 1] += start[b]
        shift = np.uint64(11 * d)
        for i in range(n):
            o = order[i]
            b = (keys[o] >> shift) & np.uint64(2047)
            tmp[start[b]] = o
            start[b] += 1
        order, tmp = tmp, order
    return order


@jit
def _sqrt_keys(f, max_span):
    """``(True, k)`` if every value is ``sign(k) * sqrt(|k|)`` of an integer ``k`` (integers and square roots of
    integers, e.g. distances on the pixel grid) with keys spanning at most ``max_span``; else ``(False, _)``."""
    h, w = f.shape
    keys = np.empty((h, w), np.int64)
    lo = 0
    hi = 0
    for r in range(h):
        for c in range(w):
            v = f[r, c]
            a = abs(v)
            if not a < 67108864.0:  # 2**26: a*a is exact to well under 0.5; also rejects inf and NaN
                return False, keys
            k = np.int64(np.rint(a * a))
            if np.sqrt(np.float64(k)) != a:
                return False, keys
            if v < 0:
                k = -k
            keys[r, c] = k
            if r == 0 and c == 0:
                lo = k
                hi = k
            elif k < lo:
                lo = k
            elif k > hi:
                hi = k
    if hi - lo > max_span:
        return False, keys
    return True, keys


# ----------------------------------------------------------------------------------------------------
# public API


def _tables(construction):
    if construction == 'V':
        return _REPS4, _COUNT4, _REPS8, _COUNT8
    if construction == 'T':
        return _REPS8, _COUNT8, _REPS4, _COUNT4
    raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {construction!r}")


def _check_2d(a, what):
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")


def diagram(filtration: np.ndarray, construction: str = 'V') -> np.ndarray:
    """Persistence diagram ``(n, 9)`` float64 of H0 and H1 of a 2-D filtration ``(H, W)`` (any real values).

    ``construction``: ``'V'`` = ``cripser.computePH(f, maxdim=1)``, ``'T'`` = ``cripser.computePH_T(f,
    maxdim=1)``.  Ties are broken by row-major index (see the module docstring for which pixels are named).
    NaN values are refused (``ValueError``): they have no place in an order.
    """
    f = np.ascontiguousarray(filtration, dtype=np.float64)
    _check_2d(f, 'filtration')
    if np.isnan(f).any():
        raise ValueError("filtration contains NaN")
    tables = _tables(construction)
    ok, keys = _sqrt_keys(f, 8 * f.size + 4096)
    if ok:  # integer or square-root-of-integer values: a counting sort orders them (same order)
        return _diagram_keys(keys, *tables, ESSENTIAL_DEATH)
    order = _radix_order(f.ravel())
    return _diagram_float(f, order, *tables, ESSENTIAL_DEATH)


def diagram_of_sqkeys(keys: np.ndarray, construction: str = 'V') -> np.ndarray:
    """Diagram of the filtration ``sign(k) * sqrt(|k|)`` of integer keys ``k`` ``(H, W)`` -- e.g. the signed
    squared distances of :func:`signed_sqedt`; equal to :func:`diagram` of that float filtration (the square
    root is monotone, so the keys order the pixels as their values do), without a comparison sort."""
    k = np.ascontiguousarray(keys, dtype=np.int64)
    _check_2d(k, 'keys')
    return _diagram_keys(k, *_tables(construction), ESSENTIAL_DEATH)


def warm_up() -> None:
    """Compile (first process) or load from numba's cache every kernel, so that later calls cost no start-up;
    call it in a parent process before starting workers."""
    for construction in CONSTRUCTIONS:
        diagram(np.array([[0.0, 2.0, 1.0], [2.0, 3.0, 2.0], [1.0, 2.0, 0.5]]), construction)
        diagram(np.array([[0.0, 2.0], [-3.0, 1.0]]), construction)
        diagram_of_sqkeys(np.array([[1, -2], [4, -1]]), construction)
