"""``--label_type ph_class``: K pseudo-classes of the pretraining images, from k-means on their whitened PH label
vectors (a label type ``T``, ``--ph_class_of``), trained with cross-entropy.

PHdict.py computes the label matrix of ``T`` as usual (``labels_T.*``), whitens it (:func:`util.ph.label_norm.
compute_whiten`: the top ``--label_norm_components`` principal directions, each scaled to unit variance with the
``--label_norm_floor`` floor), fits k-means (k-means++ seeding and Lloyd's iterations, :func:`kmeans`, seeded by
``--seed``) in those coordinates and writes

* ``labels_ph_class.npy`` -- int64 ``[N]``, the class id of the image on line ``i`` of ``labels_ph_class.txt``;
* ``labels_ph_class.json`` -- ``params``: ``dim`` (K), ``ph_class_of`` (T), ``base`` (the parameters of T's
  labels, as ``labels_T.json`` records them) and ``classes`` (:func:`fit_record`: the whitening and the
  centroids), so that the loader assigns a fresh image (``-val``) exactly as PHdict.py assigned the pretraining
  images: vectorise -> whiten -> nearest centroid (:func:`assign`).

The training loaders see a class id as its one-hot row (:class:`OneHotRows`), so everything that handles label
matrices (row lookup by path, the shuffled control that permutes rows) handles class ids unchanged.  Numpy only.
The label type itself is :class:`PhClassVectoriser`, registered when this module is imported (by
:mod:`util.ph.vectorise`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np

from util.errors import UserError
from util.ph.vectorise_base import VECTORISERS, Vectoriser, check_dim

PH_CLASS = 'ph_class'
DEFAULT_CLASSES = 100  # PHdict.py --ph_classes
DEFAULT_CLASS_OF = 'persistence_image'  # PHdict.py --ph_class_of: the README quickstart's label
MAX_ITER = 100
_CHUNK = 1 << 22  # float64 elements of one distance block


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[N, K]`` (clipped at 0)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def nearest(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid int64 [N], squared distance to it [N]); ties go to the lower index.
    Computed in row blocks, so ``N x K`` is never held at once."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    step = max(1, _CHUNK // max(1, c.shape[0]))
    ids = np.empty(x.shape[0], dtype=np.int64)
    dist = np.empty(x.shape[0])
    for s in range(0, x.shape[0], step):
        d = _sq_dist(x[s : s + step], c)
        ids[s : s + step] = d.argmin(1)
        dist[s : s + step] = d[np.arange(d.shape[0]), ids[s : s + step]]
    return ids, dist


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first centre uniformly, each next one with probability proportional to the squared
    distance to the nearest centre chosen so far (a point already chosen, or a duplicate, has weight 0)."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    best = _sq_dist(x, centres[:1])[:, 0]
    for j in range(1, k):
        total = best.sum()
        i = int(rng.choice(n, p=best / total)) if total > 0 else int(rng.integers(n))
        centres[j] = x[i]
        best = np.minimum(best, _sq_dist(x, centres[j : j + 1])[:, 0])
    return centres


def kmeans(x: np.ndarray, k: int, seed: int, max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means from a k-means++ seeding (``default_rng([seed, 28])``): ``(centroids [k, d], ids int64 [N],
    inertia)``, deterministic for a seed.  An empty cluster takes the point farthest from its centroid (that
    point's cluster keeps at least one other), farthest-first when several are; stops when no id changes or after
    ``max_iter`` iterations.  The ids returned are the nearest centroid of each point (ties: the lower id), as
    :func:`assign` gives them, so a class can stay empty only when there are fewer distinct points than ``k``."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if not 2 <= k <= n:
        raise UserError(f"k-means needs 2 <= K <= the number of points ({n}), got K = {k}")
    rng = np.random.default_rng([int(seed), 28])
    centres = kmeans_pp(x, k, rng)
    ids = None
    for _ in range(max_iter):
        new, dist = nearest(x, centres)
        counts = np.bincount(new, minlength=k)
        for j in np.flatnonzero(counts == 0):  # refill an empty cluster from the worst-served point, one by one
            movable = counts[new] > 1
            far = int(np.argmax(np.where(movable, dist, -1.0)))
            counts[new[far]] -= 1
            new[far], counts[j] = j, 1
            dist = np.minimum(dist, _sq_dist(x, x[far : far + 1])[:, 0])  # the next refill goes elsewhere
        if ids is not None and np.array_equal(new, ids):
            break
        ids = new
        sums = np.zeros_like(centres)
        np.add.at(sums, ids, x)
        centres = sums / np.bincount(ids, minlength=k)[:, None]
    ids, dist = nearest(x, centres)
    return centres, ids, float(dist.sum())


def whitened(rec: Mapping, matrix: np.ndarray) -> np.ndarray:
    """The whitened coordinates ``[N, k]`` of label rows ``[N, D]`` under the record ``rec`` (:func:`fit_record`)."""
    m = np.asarray(matrix, dtype=np.float64)
    mean = np.asarray(rec['mean'], dtype=np.float64)
    comp = np.asarray(rec['components'], dtype=np.float64)
    scales = np.asarray(rec['scales'], dtype=np.float64)
    if m.ndim != 2 or mean.shape != (m.shape[1],) or comp.shape != (len(scales), m.shape[1]):
        raise UserError(
            f"the ph_class record (whitening of dimension {mean.shape[0]}) does not fit labels of shape {m.shape}; "
            "recompute the classes with PHdict.py --label_type ph_class"
        )
    return (m - mean) @ comp.T / scales


def fit_record(matrix: np.ndarray, k: int, seed: int, whitening: tuple, floor: float) -> tuple[dict, np.ndarray]:
    """Fit ``k`` classes to the label matrix ``[N, D]`` whitened by ``whitening`` = ``(mean, components, scales)``
    (:func:`util.ph.label_norm.compute_whiten` of it, with ``floor``): ``(record, ids int64 [N])``; the record (JSON
    builtins) holds the whitening, the ``centroids`` in whitened coordinates, ``seed``, ``sizes`` (images per
    class) and ``inertia``."""
    mean, comp, scales = (np.asarray(a, dtype=np.float64) for a in whitening)
    rec = {'mean': mean.tolist(), 'components': comp.tolist(), 'scales': scales.tolist()}
    centres, ids, inertia = kmeans(whitened(rec, matrix), int(k), seed)
    rec.update(
        centroids=centres.tolist(),
        seed=int(seed),
        floor=float(floor),
        sizes=np.bincount(ids, minlength=k).tolist(),
        inertia=inertia,
    )
    return rec, ids


def assign(rec: Mapping, matrix: np.ndarray) -> np.ndarray:
    """The class ids (int64 [N]) of label rows ``[N, D]``: whiten, then the nearest centroid."""
    return nearest(whitened(rec, matrix), np.asarray(rec['centroids'], dtype=np.float64))[0]


def one_hot(ids: np.ndarray, k: int) -> np.ndarray:
    """float32 ``[N, k]`` rows with a 1 at each id."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros((ids.shape[0], int(k)), dtype=np.float32)
    out[np.arange(ids.shape[0]), ids] = 1.0
    return out


class OneHotRows:
    """A stored class-id vector ``[N]`` seen as the label matrix ``[N, K]`` of its one-hot rows (``m[i]`` is row
    ``i``), without holding ``N x K`` numbers."""

    def __init__(self, ids: np.ndarray, k: int):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.shape = (self.ids.shape[0], int(k))
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        ids = self.ids[index]
        rows = one_hot(np.atleast_1d(ids), self.shape[1])
        return rows[0] if np.ndim(ids) == 0 else rows


def check_class_ids(ids: np.ndarray, k: int, where: str) -> np.ndarray:
    """Refuse a class-id vector that is not int [N] with ids in ``[0, k)``; returns it as int64."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in 'iu':
        raise UserError(f"{where} holds {ids.dtype} {ids.shape}, not class ids int [N]; rerun PHdict.py")
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise UserError(
            f"{where} holds class ids up to {int(ids.max())} but --numof_classes is {k}; pass --numof_classes "
            "with the number of classes PHdict.py fitted (--ph_classes), or recompute the labels"
        )
    return ids.astype(np.int64)


# ---- the label type (registered in util.ph.vectorise_base.DERIVED_VECTORISERS when this module is imported)
class PhClassVectoriser(Vectoriser):
    """``ph_class``: the one-hot class (``dim`` = K classes) of the diagram's ``ph_class_of`` label vector,
    whitened and assigned to the nearest of the centroids PHdict.py fitted (:func:`assign`).

    ``base``: the parameters of the ``ph_class_of`` labels (``dim`` among them, as ``labels_T.json`` records
    them); ``classes``: the record of the whitening and the centroids.  Both come from ``labels_ph_class.json``;
    without them (built from flags alone) it cannot label anything, and says so."""

    label_type = 'ph_class'
    derived = True

    def __init__(self, dim=DEFAULT_CLASSES, *, ph_class_of=DEFAULT_CLASS_OF, base=None, classes=None):
        self.dim = check_dim(dim)
        self.ph_class_of = ph_class_of
        self.base = dict(base) if base is not None else None
        self.classes = classes
        self._base_vec = None

    def get_params(self, deep=True):
        return dict(dim=self.dim, ph_class_of=self.ph_class_of, base=self.base, classes=self.classes)

    def base_vectoriser(self):
        if self.base is None or self.classes is None:
            raise UserError(
                "--label_type ph_class: the classes are the ones PHdict.py --label_type ph_class fitted; give its "
                "folder with -pd PHDIR -pc"
            )
        if self._base_vec is None:  # the recorded parameters (fitted values, never 'auto') that its __init__ takes
            from util.ph import vectorise_types  # noqa: F401 (registers the label types ph_class_of names)

            cls = VECTORISERS.get(self.ph_class_of)
            if cls is None:
                raise UserError(f"ph_class: unknown --ph_class_of {self.ph_class_of!r} in its record; rerun PHdict.py")
            takes = inspect.signature(cls.__init__).parameters
            kwargs = {k: v for k, v in self.base.items() if k in takes and k not in ('self', 'dim')}
            self._base_vec = cls(int(self.base['dim']), **kwargs)
        return self._base_vec

    def transform(self, diagrams):
        vec = self.base_vectoriser()
        return one_hot(assign(self.classes, vec.transform(diagrams)), self.dim)
