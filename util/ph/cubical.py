"""Persistent homology of images: grey conversion, filtration, and cubical PH with ``cripser``.

Pipeline (the original project's, made faster where it costs nothing in exactness)::

    image -> grey (H, W) -> filtration (H, W) float64 -> cripser.computePH -> diagram (n, 9) float64

* Grey: PIL images and files are converted with ``convert('L')`` (8-bit, via :func:`util.io.fileio.load_image`
  for files, which also handles 16-bit, RGBA and palette images); ``(H, W, 3)`` arrays are reduced with the
  luma weights 0.2989 / 0.5870 / 0.1140; ``(H, W)`` arrays are used as they are.
* Filtration (:data:`FILTRATIONS`, default ``'signed_distance'``): the image is binarised at Otsu's threshold
  (``bw = grey >= t``) and transformed by ``cripser.apply_transform``; ``'signed_distance'`` is
  ``EDT(bw) - EDT(~bw)``, the original's filtration.  ``'none'`` uses the raw grey values (sublevel sets),
  ``'none_inv'`` their negation (superlevel sets).  A constant image (no threshold exists) gives an all-zero
  filtration for every kind but these two.
* Edges (``gradient=True``, the original's later ``--gradient``): instead of the Otsu mask, the binary image
  is the Canny edge map of the denoised grey image (see :func:`edge_map`); the chosen filtration is then
  taken of that edge map (``'none'``: the edge map as 0/255 values).
* Engine (:data:`ENGINES`, every PH function's ``engine`` keyword): ``'unionfind'`` is the exact
  union-find engine of :mod:`util.ph.unionfind` (2-D only, numba; the same birth/death multisets as
  cripser, checked in ``tests/test_ph_unionfind.py``), ``'cripser'`` is ``cripser.computePH(f, maxdim=1)``,
  and ``'auto'`` (the default) takes union-find for 2-D filtrations and cripser otherwise.  Diagrams of
  both engines hold the same pairs, so label vectors made from either are interchangeable; only the row
  order and which of several tied pixels is named in the location columns may differ.
* Diagram: one row per persistence pair, columns ``dim, birth, death, x1, y1, z1, x2, y2, z2`` (homology
  dimension 0 or 1, birth/death filtration values, and the pixel locations of the birth and death cells as
  cripser reports them); essential classes have ``death`` = the largest double (~1.8e308).

Exactness: for 8-bit grey images Otsu's threshold is computed from the 256 level counts
(:func:`util.ph.otsu.otsu_threshold_from_counts`), binned exactly as ``skimage.filters.threshold_otsu`` bins
the float image, so the mask is bit for bit the one the original computed.  The signed distance is taken
from the exact squared EDT of :mod:`util.ph.distance`, or, with :data:`NUMBA_EDT` off, from scipy's two
feature transforms combined in integer arithmetic: either way the values of two ``distance_transform_edt``
calls, bit for bit (speed: BENCHMARKS.md, "Module notes").
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from util.errors import UserError
from util.io.fileio import convert_image, load_image
from util.ph.otsu import otsu_threshold, otsu_threshold_from_counts

if TYPE_CHECKING:
    from collections.abc import Iterator

    from PIL import Image


def _import_cripser():
    """``import cripser`` without its optional PyTorch helpers when torch is not loaded yet.

    cripser's package ``__init__`` imports torch (seconds) for ``compute_ph_torch`` and friends, which this
    module does not use; every guard there catches ``ModuleNotFoundError``, so while torch is absent from
    ``sys.modules`` we hide it for the duration of the import.  In a process that imported torch first, this is
    a plain ``import cripser``.  (Consequence: in a process that imports this module before torch,
    ``cripser.compute_ph_torch`` is cripser's "PyTorch is required" stub.)
    """
    if 'cripser' in sys.modules or 'torch' in sys.modules:
        import cripser

        return cripser
    sys.modules['torch'] = None
    try:
        import cripser
    finally:
        if 'torch' in sys.modules and sys.modules['torch'] is None:
            del sys.modules['torch']
    return cripser


def _cripser():
    """The cripser module, imported on first use: the default engine (union-find) and filtrations
    (signed distance, none) never need it, so a machine without cripser runs everything else; what does need it
    (``--ph_engine cripser``, 3-D filtrations, the other filtrations) stops with a one-line error saying so."""
    mod = globals().get('cripser')
    if mod is None:
        try:
            mod = _import_cripser()
        except ImportError as e:
            raise UserError(
                f"this needs the cripser package, which cannot be imported here ({e}): install it (pip install "
                "cripser), or keep --ph_engine auto/unionfind with the signed_distance or none filtration"
            ) from None
        globals()['cripser'] = mod
    return mod


def __getattr__(name):  # ``cubical.cripser``: the module, imported when first asked for
    if name == 'cripser':
        return _cripser()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FILTRATIONS = (
    'signed_distance',
    'distance',
    'distance_inv',
    'signed_distance_inv',
    'binarisation',
    'radial',
    'radial_inv',
    'upward',
    'downward',
    'none',
    'none_inv',
)
GREY_FILTRATIONS = ('none', 'none_inv')  # grey values: sublevel sets ('none') and superlevel sets ('none_inv')
DEFAULT_FILTRATION = 'signed_distance'
LUMA = (0.2989, 0.5870, 0.1140)
ENGINES = ('auto', 'unionfind', 'cripser')
DEFAULT_ENGINE = 'auto'
DIAGRAM_COLUMNS = ('dim', 'birth', 'death', 'x1', 'y1', 'z1', 'x2', 'y2', 'z2')
# Deaths at or above this are "infinite": cripser writes DBL_MAX (~1.8e308) for essential classes.
INFINITE_DEATH = 0.5 * np.finfo(np.float64).max

# The signed distance comes from util.ph.distance's exact numba squared EDT; False = scipy's feature
# transforms (the reference route, kept for tests and the benchmarks).
NUMBA_EDT = True


# ----------------------------------------------------------------------------------------------------
# grey conversion


def _is_pil(img):
    return hasattr(img, 'mode') and hasattr(img, 'convert') and hasattr(img, 'histogram')


def _grey(img):
    """``img`` as a 2-D array ``(H, W)``: uint8 for PIL images and uint8 arrays, float64 otherwise."""
    if _is_pil(img):
        return np.asarray(convert_image(img, 'L'))
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return np.dot(a[..., :3].astype(np.float64, copy=False), LUMA)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise UserError(f"image of shape {a.shape} is not an (H, W) grey or (H, W, 3) colour image")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
    return a.astype(np.float64, copy=False)


def to_grey(img: Image.Image | np.ndarray | str | os.PathLike) -> np.ndarray:
    """Grey values of an image as float64 ``(H, W)``.

    ``img``: a PIL image (converted with ``convert('L')``; 16-bit and palette images handled), a file path, or
    an array ``(H, W)`` (used as is) / ``(H, W, 3|4)`` (luma 0.2989 R + 0.5870 G + 0.1140 B; alpha dropped).
    """
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img, 'L')
    return _grey(img).astype(np.float64, copy=False)


# ----------------------------------------------------------------------------------------------------
# Otsu threshold


def otsu_mask(grey: np.ndarray, counts: np.ndarray | list[int] | None = None) -> np.ndarray | None:
    """Foreground mask ``grey >= t`` at Otsu's threshold ``t`` (as skimage computes it on the float image).

    ``grey``: ``(H, W)`` array.  uint8 input takes the fast route: the threshold from the 256 level counts
    (``counts``, e.g. PIL's ``Image.histogram()``, else counted here) and one comparison with ``ceil(t)``.
    Returns a bool array ``(H, W)``, or ``None`` for a constant image (no threshold separates anything).
    """
    if grey.dtype == np.uint8:
        if counts is None:
            counts = np.bincount(grey.ravel(), minlength=256)
        t = otsu_threshold_from_counts(counts)
        if t is None:
            return None
        return grey >= np.uint8(math.ceil(t))  # integer grey: v >= t  <=>  v >= ceil(t); t < 255
    grey = np.asarray(grey, dtype=np.float64)
    lo, hi = grey.min(), grey.max()
    if not lo < hi:
        return None
    return grey >= otsu_threshold(grey, lo, hi)


# ----------------------------------------------------------------------------------------------------
# edges

CANNY_SPREAD = 0.33  # Canny thresholds (1 -/+ 0.33) x median grey value, as the original's later versions
TV_WEIGHT = 0.1  # strength of the total-variation denoising before edge detection (grey scaled to [0, 1])


def edge_map(grey: np.ndarray) -> np.ndarray:
    """Binary edge map ``(H, W)`` bool of a grey image ``(H, W)`` (uint8, or float on the 0..255 scale).

    The image is denoised (total-variation, :func:`skimage.restoration.denoise_tv_chambolle` with weight
    :data:`TV_WEIGHT` on the image scaled to [0, 1]) and passed, as floats on the 0..255 scale (not rounded:
    rounding would turn the smooth residue of denoising into one-level steps that Canny reports as edges),
    to :func:`skimage.feature.canny` (Gaussian sigma 1) with hysteresis thresholds from the median grey value
    ``m`` of the denoised image: ``low = max(0, (1 - 0.33) m)``, ``high = min(255, (1 + 0.33) m)``, in
    grey-level units of the Sobel gradient magnitude (the units of OpenCV's Canny on an 8-bit image; skimage
    rescales neither a float image nor thresholds given for it).  A constant image has no edges (all False).
    """
    from skimage.feature import canny
    from skimage.restoration import denoise_tv_chambolle

    g = np.asarray(grey)
    if g.dtype != np.uint8:
        g = np.clip(np.rint(np.asarray(g, dtype=np.float64)), 0, 255).astype(np.uint8)
    if g.min() == g.max():
        return np.zeros(g.shape, dtype=bool)
    smooth = denoise_tv_chambolle(g.astype(np.float64) / 255.0, weight=TV_WEIGHT) * 255.0
    m = float(np.median(smooth))
    low = max(0.0, (1.0 - CANNY_SPREAD) * m)
    high = min(255.0, (1.0 + CANNY_SPREAD) * m)
    # a float image is not rescaled by canny, so thresholds on the 0..255 scale apply as they are
    return canny(smooth, sigma=1.0, low_threshold=low, high_threshold=high)


# ----------------------------------------------------------------------------------------------------
# filtrations


def _signed_distance(bw):
    """``EDT(bw) - EDT(~bw)`` as float64 ``(H, W)``, bit for bit scipy's (both classes must be present).

    With :data:`NUMBA_EDT` (the default): :func:`util.ph.distance.signed_sqedt`, the exact signed squared
    distances as integers, whose float64 square roots are those scipy takes of the same integers.  Else
    scipy's two feature transforms (nearest background pixel of each foreground pixel and vice versa),
    combined into one integer squared distance -- the values ``distance_transform_edt`` computes, without its
    float64 temporaries for each of the two calls.
    """
    if NUMBA_EDT and bw.ndim == 2:
        k = _distance().signed_sqedt(bw)
        d = np.sqrt(np.abs(k), dtype=np.float64)
        np.negative(d, out=d, where=k < 0)
        return d
    from scipy.ndimage import distance_transform_edt

    itype = np.int32 if max(bw.shape) < 30000 else np.int64  # squares must not overflow
    ft = np.empty((2, bw.ndim) + bw.shape, np.int32)
    distance_transform_edt(bw, return_distances=False, return_indices=True, indices=ft[0])
    distance_transform_edt(~bw, return_distances=False, return_indices=True, indices=ft[1])
    # each pixel is its own feature in one of the two transforms, so
    # (feature of the other class) - (pixel) = ft[0] + ft[1] - 2 * (pixel), per axis
    delta = ft[0].astype(itype, copy=False)
    delta += ft[1]
    for axis, n in enumerate(bw.shape):
        shape = [1] * bw.ndim
        shape[axis] = n
        delta[axis] -= (2 * np.arange(n, dtype=itype)).reshape(shape)
    delta *= delta
    for axis in range(1, bw.ndim):
        delta[0] += delta[axis]
    d = np.sqrt(delta[0], dtype=np.float64)
    np.negative(d, out=d, where=~bw)
    return d


def _check_kind(kind):
    if kind not in FILTRATIONS:
        raise UserError(f"unknown --filtration {kind!r}; choose one of {', '.join(FILTRATIONS)}")


def _binary(grey, kind, gradient):
    """``(g, bw)``: the grey array and the binary image the filtration ``kind`` is taken of (Otsu mask, or
    Canny edges with ``gradient``); ``bw`` is None when the filtration is all zeros (constant image, or no
    edges), and for ``kind == 'none'`` without ``gradient`` (the grey values are the filtration)."""
    counts = None
    if _is_pil(grey):
        im = convert_image(grey, 'L')
        g, counts = np.asarray(im), im.histogram()  # PIL counts the 256 levels faster than numpy
    else:
        g = _grey(grey)
    if gradient:
        bw = edge_map(g)
        if kind not in GREY_FILTRATIONS and (bw.all() or not bw.any()):  # no edges: nothing to measure distances to
            return g, None
        return g, bw
    if kind in GREY_FILTRATIONS:
        return g, None
    return g, otsu_mask(g, counts)


def compute_filtration(
    grey: Image.Image | np.ndarray, kind: str = DEFAULT_FILTRATION, gradient: bool = False
) -> np.ndarray:
    """The filtration ``(H, W)`` float64 of a grey image (``(H, W)``; a colour image is reduced to grey).

    ``kind`` (one of :data:`FILTRATIONS`): ``'none'`` = the grey values themselves; any other is
    ``cripser.apply_transform(bw, kind)`` of the Otsu mask ``bw`` (see :func:`otsu_mask`), or with
    ``gradient=True`` of the Canny edge map (see :func:`edge_map`; ``'none'`` then gives the edge map as 0/255):
    ``signed_distance`` = EDT(bw) - EDT(~bw) (the default, as in the original), ``distance`` = EDT(bw),
    ``*_inv`` the same for ``~bw``, ``binarisation`` = bw as 0/1, ``radial`` / ``radial_inv`` = distance to
    the top-left pixel on bw, ``upward`` / ``downward`` = row index (negated for upward) on bw.
    A constant image gives zeros (except for ``'none'``).
    """
    _check_kind(kind)
    g, bw = _binary(grey, kind, gradient)
    return _filtration_of(g, bw, kind, gradient)


def _filtration_of(g, bw, kind, gradient):
    if kind in GREY_FILTRATIONS:  # 'none_inv': negated, so the sublevel sets are the superlevel sets of grey
        sign = -1.0 if kind == 'none_inv' else 1.0
        if gradient:
            return bw.astype(np.float64) * (255.0 * sign)
        return np.ascontiguousarray(g, dtype=np.float64) * sign
    if bw is None:
        return np.zeros(g.shape, dtype=np.float64)
    if kind == 'signed_distance':
        return _signed_distance(bw)
    out = _cripser().apply_transform(bw.view(np.uint8), kind, threshold=1)
    return np.ascontiguousarray(out, dtype=np.float64)


def resolve_engine(engine: str, ndim: int = 2) -> str:
    """The engine that computes a diagram of a filtration with ``ndim`` axes: ``'unionfind'`` or
    ``'cripser'`` (``'auto'``: union-find for 2-D, cripser otherwise); an unknown name is a UserError, and
    ``'unionfind'`` for anything but 2-D is refused by name."""
    if engine not in ENGINES:
        raise UserError(f"unknown --ph_engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == 'auto':
        return 'unionfind' if ndim == 2 else 'cripser'
    if engine == 'unionfind' and ndim != 2:
        raise UserError(
            f"--ph_engine unionfind computes 2-D images only (got a {ndim}-D filtration); "
            "use --ph_engine cripser or auto"
        )
    return engine


def _unionfind():
    from util.ph import unionfind as ph_unionfind

    return ph_unionfind


def _distance():
    from util.ph import distance

    return distance


def diagram_of_filtration(filtration: np.ndarray, engine: str = DEFAULT_ENGINE) -> np.ndarray:
    """Persistence diagram ``(n, 9)`` float64 of H0 and H1 of a filtration (2-D; cripser also takes 3-D).

    ``engine`` (:data:`ENGINES`): ``'auto'`` = union-find for 2-D, else cripser.  Both give the diagram of
    ``cripser.computePH(f, maxdim=1)``.  cripser makes every pixel of a ``(1, n)`` or ``(n, 1)`` array an
    essential class of its own, so with cripser a filtration one pixel thick is computed as that line
    doubled (a product with an interval, which has the same persistent homology), and the coordinates along
    the doubled side are put back to 0; union-find needs no such detour.
    """
    f = np.ascontiguousarray(filtration, dtype=np.float64)
    if resolve_engine(engine, f.ndim) == 'unionfind':
        return _unionfind().diagram(f)
    if f.ndim == 2 and 1 in f.shape and f.size > 1:
        axis = 0 if f.shape[0] == 1 else 1
        dgm = _cripser().computePH(np.ascontiguousarray(np.concatenate([f, f], axis=axis)), maxdim=1)
        for col in (3 + axis, 6 + axis):  # x1/y1 and x2/y2 along the doubled side: 0 (or -1 = none)
            np.minimum(dgm[:, col], 0, out=dgm[:, col])
        return dgm
    return _cripser().computePH(f, maxdim=1)


def compute_ph(
    img: Image.Image | np.ndarray | str | os.PathLike,
    filtration: str = DEFAULT_FILTRATION,
    gradient: bool = False,
    engine: str = DEFAULT_ENGINE,
) -> np.ndarray:
    """Persistence diagram ``(n, 9)`` float64 of an image (uint8/float array ``(H, W)`` or ``(H, W, 3)``,
    PIL image, or file path), with the given filtration (see :func:`compute_filtration`), of the Canny edge
    map instead of the Otsu mask when ``gradient``; ``engine`` as in :func:`diagram_of_filtration`.

    With union-find and the signed distance the float filtration is never formed: the exact signed squared
    distances (:func:`util.ph.distance.signed_sqedt`) are counting-sorted and square roots are taken for
    the output rows only -- the same diagram, bit for bit.
    """
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img, 'L')
    _check_kind(filtration)
    g, bw = _binary(img, filtration, gradient)
    if (
        filtration == 'signed_distance'
        and bw is not None
        and resolve_engine(engine, g.ndim) == 'unionfind'
        and NUMBA_EDT
        and bw.any()
        and not bw.all()
    ):
        return _unionfind().diagram_of_sqkeys(_distance().signed_sqedt(bw))
    return diagram_of_filtration(_filtration_of(g, bw, filtration, gradient), engine)


def ph_of_file(
    path: str | os.PathLike,
    filtration: str = DEFAULT_FILTRATION,
    gradient: bool = False,
    engine: str = DEFAULT_ENGINE,
    size_normalise: bool = False,
) -> np.ndarray:
    """Persistence diagram ``(n, 9)`` of an image file (read as 8-bit grey); raises
    :class:`util.errors.BadImageError` naming the file if it cannot be decoded.  ``size_normalise``: see
    :func:`normalise_size`."""
    image = load_image(path, 'L')
    dgm = compute_ph(image, filtration, gradient=gradient, engine=engine)
    return normalise_size(dgm, max(image.size)) if size_normalise else dgm


SIZE_REFERENCE = 256  # --size_normalise: filtration values in pixels of a 256-px image
SIZE_FILTRATIONS = tuple(k for k in FILTRATIONS if k not in ('binarisation',) + GREY_FILTRATIONS)  # in pixel units


def normalise_size(diagram: np.ndarray, size: int, reference: float = SIZE_REFERENCE) -> np.ndarray:
    """``--size_normalise``: births and deaths of a diagram of a filtration in pixel units (distances, radial,
    row index) times ``reference / size`` (the original's later version multiplies the distance by 256/size),
    so that a shape gives the same values at every image size.  Infinite deaths stay infinite; a copy."""
    d = np.array(diagram, dtype=np.float64, copy=True)
    values = d[:, 1:3]
    finite = np.abs(values) < INFINITE_DEATH
    values[finite] *= float(reference) / float(size)
    return d


def warm_up(engine: str = DEFAULT_ENGINE) -> None:
    """Load (or, the first time on a machine, compile) the union-find engine's numba code when ``engine``
    uses it, so that worker processes forked afterwards start with it ready."""
    if resolve_engine(engine, 2) == 'unionfind':
        _unionfind().warm_up()
        _distance().warm_up()


def is_diagram(a: object) -> bool:
    """True if ``a`` looks like a cripser diagram: a float array ``(n, 9)`` (``n`` may be 0)."""
    return (
        isinstance(a, np.ndarray)
        and a.ndim == 2
        and a.shape[1] == len(DIAGRAM_COLUMNS)
        and np.issubdtype(a.dtype, np.floating)
    )


# ----------------------------------------------------------------------------------------------------
# a pool of workers computing diagrams


def _diagram_job(job):
    """Worker: ``(index, (path, source, filtration[, gradient[, engine[, size_normalise]]]))`` -> ``(index,
    diagram or None, error or None)``.

    ``source`` is ``'image'`` (compute the PH of the image file) or ``'npy'`` (load a saved diagram);
    ``gradient`` (default False) takes the PH of the Canny edge map; ``engine`` (default ``'auto'``) as in
    :func:`diagram_of_filtration`.
    Unreadable inputs are reported, not raised, so one bad file does not stop a pool.
    """
    from util.errors import BadImageError
    from util.ph.dgmcheck import check_diagram

    index, (path, source, filtration, *rest) = job
    gradient = bool(rest[0]) if rest else False
    engine = rest[1] if len(rest) > 1 else DEFAULT_ENGINE
    size_normalise = bool(rest[2]) if len(rest) > 2 else False
    try:
        if source == 'npy':
            try:
                dgm = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise BadImageError(f"cannot read diagram {path}: {e}") from None
            if not is_diagram(dgm):
                raise BadImageError(
                    f"{path} is not a persistence diagram (shape {getattr(dgm, 'shape', '?')}, "
                    f"expected (n, 9) float rows as written by PHdict.py)"
                )
            if np.isnan(dgm[:, :3]).any():
                raise BadImageError(
                    f"{path} holds NaN in its dimension/birth/death columns; delete it and "
                    f"compute it again from its image"
                )
            dgm = check_diagram(dgm, path, error=BadImageError)  # homology dimensions 0..2 too
            return index, dgm.astype(np.float64, copy=False), None
        return index, ph_of_file(path, filtration, gradient, engine, size_normalise), None
    except BadImageError as e:
        return index, None, str(e)


def iter_diagrams(
    jobs: list, workers: int = 1, chunksize: int | None = None
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Compute or load the diagrams of ``jobs`` and yield ``(index, diagram, error)`` as they finish.

    ``jobs``: list of ``(path, source, filtration[, gradient[, engine]])`` with ``source`` ``'image'`` or
    ``'npy'``.  Results come in completion order (``index`` = position in ``jobs``); ``diagram`` is ``(n, 9)``
    float64, or ``None`` with ``error`` a one-line message naming the file.  ``workers > 1`` uses a process
    pool (chunked); the union-find engine is loaded in this process first (:func:`warm_up`), so forked
    workers inherit it and spawned ones load numba's on-disk cache instead of compiling.
    """
    engines = {job[4] if len(job) > 4 else DEFAULT_ENGINE for job in jobs if job[1] == 'image'}
    for engine in engines:
        warm_up(engine)
    if workers <= 1 or len(jobs) <= 1:
        for item in enumerate(jobs):
            yield _diagram_job(item)
        return
    from util.io import workpool

    if chunksize is None:
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
    yield from workpool.imap_unordered(
        _diagram_job, list(enumerate(jobs)), workers, chunksize, name_of=lambda item: item[1][0]
    )  # a dead worker: WorkerDied
