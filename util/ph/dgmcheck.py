"""Checks that a persistence-diagram file holds what PHdict.py writes, before any label is made from it.

A diagram is a float array ``(n, 9)``: rows ``dim, birth, death, x1, y1, z1, x2, y2, z2`` (cripser's
``computePH``), ``dim`` a whole number 0, 1 or 2 and birth/death never NaN.  Anything else -- a (3, 4) array
of zeros, an image saved as .npy, a label vector -- would still vectorise into a plausible label, so it is
refused by name instead.
"""

from __future__ import annotations

import numpy as np

from util.errors import UserError

COLUMNS = 9
MAX_DIM = 2


def check_diagram(dgm: np.ndarray, path: str, error: type = UserError) -> np.ndarray:
    """Return ``dgm`` as float64 ``(n, 9)``; raise ``error`` (a :class:`UserError`) naming ``path`` if it is not
    a diagram."""
    hint = "delete it and rerun PHdict.py on its image"
    if not isinstance(dgm, np.ndarray) or dgm.dtype.kind not in 'fiu':
        raise error(
            f"{path} is not a persistence diagram (dtype {getattr(dgm, 'dtype', type(dgm).__name__)}, "
            f"expected float rows); {hint}"
        )
    if dgm.size == 0:
        return np.zeros((0, COLUMNS))
    if dgm.ndim != 2 or dgm.shape[1] != COLUMNS:
        raise error(
            f"{path} is not a persistence diagram (shape {dgm.shape}, expected (n, {COLUMNS}) rows "
            f"dim, birth, death, x1, y1, z1, x2, y2, z2 as PHdict.py writes); {hint}"
        )
    dgm = dgm.astype(np.float64, copy=False)
    dims = dgm[:, 0]
    if not (np.isfinite(dims).all() and (dims == np.round(dims)).all() and dims.min() >= 0 and dims.max() <= MAX_DIM):
        bad = dims[~(np.isfinite(dims) & (dims == np.round(dims)) & (dims >= 0) & (dims <= MAX_DIM))]
        raise error(
            f"{path} is not a persistence diagram (column 0, the homology dimension, holds "
            f"{bad[0]!r}; expected 0, 1 or 2); {hint}"
        )
    if np.isnan(dgm[:, 1:3]).any():
        raise error(f"{path} contains NaN in its birth/death columns; {hint}")
    return dgm
