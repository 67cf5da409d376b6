"""``--label_norm standard``: per-component z-score of the pretraining labels, with a variance floor; ``--label_norm
whiten``: PCA whitening of the top K components (:func:`compute_whiten`), stored and reused the same way.

``z = (y - mean) / max(std, floor)`` with ``floor = FLOOR x RMS(std)`` (``--label_norm_floor``, default 0.1,
relative to the root-mean-square of all components' standard deviations).  Without the floor, components
that hardly vary (persistence-image pixels far from any pair have std ~5e-5 while others have ~1e-2) would be
blown up into unit-variance noise that the MSE then weighs like the informative components; with it, no
component is amplified more than 1 / FLOOR times the typical one.

The statistics are computed once and travel with the run: from the ``label_norm`` entry PHdict.py writes in
``labels_<type>.json`` (``PHdict.py --label_norm standard``), else from the rows of the label matrix the run
uses, else from the labels of a first sample of the training images (generated images: indices 0..n-1 of
epoch 0).  They are recorded in ``args.json`` and the checkpoint (``label_norm_mean`` / ``label_norm_std``)
and reused by ``--resume``.  Numpy only: the PH side (PHdict.py) writes the records, util/train reads them
(its torch side, the z-scored dataset, is :mod:`util.train.label_norm`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from util.errors import UserError

DEFAULT_FLOOR = 0.1  # --label_norm_floor (util.config.NormConfig and both scripts' flags read it here)
JSON_KEY = 'label_norm'
WHITEN_KEY = 'label_whiten'  # the --label_norm whiten record in labels_<type>.json
DEFAULT_COMPONENTS = 16  # --label_norm_components


def compute_stats(matrix: np.ndarray, floor: float = DEFAULT_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std used for division) float64 of a label matrix ``[N, D]``; ``std`` is floored (see above)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2:
        raise UserError(f"--label_norm standard needs at least 2 labels to estimate the statistics (got {m.shape[0]})")
    if not floor >= 0:
        raise UserError(f"--label_norm_floor must be >= 0 (got {floor})")
    mean = m.mean(axis=0)
    std = m.std(axis=0)
    warn_constant(m, 'standard')
    rms = float(np.sqrt(np.mean(std**2)))
    low = max(floor * rms, 1e-12)  # a constant label matrix stays finite: only centred
    return mean, np.maximum(std, low)


def constant_columns(matrix: np.ndarray) -> np.ndarray:
    """Indices of the components of a label matrix ``[N, D]`` that do not vary over its rows (to float32
    precision: labels are float32)."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.flatnonzero(np.ptp(m, axis=0) <= 1e-7 * np.abs(m).max(axis=0))


def constant_message(n_constant: int, dim: int, rows: int | str, mode: str, first: Sequence[int] = ()) -> str | None:
    """One line on the constant components of the labels that --label_norm ``mode`` scales, or None."""
    if not n_constant:
        return None
    if n_constant >= dim:
        return (
            f"--label_norm {mode}: every label component is constant over the {rows} labels (a constant label "
            "matrix): pretraining would regress constants and learn nothing; see PHdict.py's label diagnostics "
            "for why (constant images? ranges that miss the pairs?) and recompute the labels"
        )
    if mode != 'standard':
        return None
    shown = ', '.join(str(int(i)) for i in list(first)[:5]) + (' ...' if n_constant > 5 else '')
    return (
        f"--label_norm standard: {n_constant} of the {dim} label components are constant over the {rows} labels "
        f"({shown}): they are only centred, so their targets are 0"
    )


def warn_constant(matrix: np.ndarray, mode: str, where: str | None = None) -> np.ndarray:
    """Print :func:`constant_message` of ``matrix`` as one ``warning:`` line on stderr (if any)."""
    cols = constant_columns(matrix)
    m = np.shape(matrix)
    message = constant_message(len(cols), m[1], m[0], mode, cols)
    if message is not None:
        print(f"warning: {message}" + (f" ({where})" if where else ''), file=sys.stderr, flush=True)
    return cols


def stats_record(mean: np.ndarray, std: np.ndarray, floor: float, source: str, n: int) -> dict:
    """What the label json, args.json and the checkpoint store (JSON builtins)."""
    return {
        'mean': [float(x) for x in mean],
        'std': [float(x) for x in std],
        'floor': float(floor),
        'source': str(source),
        'count': int(n),
    }


def from_record(rec: dict, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 of a stored record, checked against the label dimension.  A record that counts
    constant components (PHdict.py --label_norm standard writes ``constant``) says so on stderr, as
    :func:`compute_stats` does."""
    mean = np.asarray(rec.get('mean', []), dtype=np.float32)
    std = np.asarray(rec.get('std', []), dtype=np.float32)
    if mean.shape != (dim,) or std.shape != (dim,) or not np.all(std > 0) or not np.all(np.isfinite(mean)):
        raise UserError(
            f"the label statistics stored in {where} do not fit labels of dimension {dim}; "
            f"recompute them (rerun PHdict.py --label_norm standard, or start a fresh run)"
        )
    constant = rec.get('constant') or []
    message = constant_message(len(constant), dim, rec.get('count', '?'), 'standard', constant)
    if message is not None:
        print(f"warning: {message} (recorded in {where})", file=sys.stderr, flush=True)
    return mean, std


def compute_whiten(
    matrix: np.ndarray, k: int = DEFAULT_COMPONENTS, floor: float = DEFAULT_FLOOR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``--label_norm whiten``: ``(mean [D], components [K, D], scales [K])`` float64 of a label matrix
    ``[N, D]``: its top ``K`` principal directions and the standard deviation along each, floored at
    ``floor x`` their RMS (so that no direction is amplified more than ``1 / floor`` times the typical one).

    The whitened label keeps the length ``D``: ``(y - mean) @ C.T / scales @ C`` -- the top-K part of the label
    with equal variance in each of its directions, the rest dropped.  Its squared norm is that of the ``K``
    whitened coordinates, so the MSE weighs the K directions equally: the first component (often the
    feature count) no longer outweighs the others."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2:
        raise UserError(f"--label_norm whiten needs at least 2 labels to estimate the statistics (got {m.shape[0]})")
    if not floor >= 0:
        raise UserError(f"--label_norm_floor must be >= 0 (got {floor})")
    if int(k) != k or k < 1:
        raise UserError(f"--label_norm_components must be a positive integer (got {k})")
    most = min(m.shape[1], m.shape[0] - 1)
    if k > most:
        print(
            f"note: --label_norm_components {k}: {m.shape[0]} labels of dimension {m.shape[1]} have at most {most} "
            f"principal directions; keeping {most}",
            file=sys.stderr,
            flush=True,
        )
    k = min(int(k), most)
    warn_constant(m, 'whiten')
    mean = m.mean(axis=0)
    _, sv, vt = np.linalg.svd(m - mean, full_matrices=False)
    std = sv[:k] / np.sqrt(m.shape[0] - 1)
    rms = float(np.sqrt(np.mean(std**2)))
    return mean, vt[:k], np.maximum(std, max(floor * rms, 1e-12))


def whiten_record(
    mean: np.ndarray, components: np.ndarray, scales: np.ndarray, floor: float, source: str, n: int
) -> dict:
    """What the label json, args.json and the checkpoint store of --label_norm whiten (JSON builtins)."""
    return {
        'mean': [float(x) for x in mean],
        'components': [[float(x) for x in row] for row in components],
        'scales': [float(x) for x in scales],
        'floor': float(floor),
        'source': str(source),
        'count': int(n),
    }


def whiten_from_record(rec: dict, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], map [D, D]) float32 of a stored whiten record: ``whitened = (y - mean) @ map``."""
    mean = np.asarray(rec.get('mean', []), dtype=np.float64)
    comp = np.asarray(rec.get('components', []), dtype=np.float64)
    scales = np.asarray(rec.get('scales', []), dtype=np.float64)
    if mean.shape != (dim,) or comp.ndim != 2 or comp.shape[1:] != (dim,) or scales.shape != comp.shape[:1]:
        raise UserError(
            f"the label whitening stored in {where} does not fit labels of dimension {dim}; recompute it "
            "(rerun PHdict.py --label_norm whiten, or start a fresh run)"
        )
    if not np.all(scales > 0):
        raise UserError(f"the label whitening stored in {where} has non-positive scales; recompute it")
    return mean.astype(np.float32), ((comp.T / scales) @ comp).astype(np.float32)


def json_stats(matrix_json: str | None) -> dict | None:
    """The ``label_norm`` record of a label json written by PHdict.py, or None."""
    from util.ph.labels import read_json

    meta = read_json(matrix_json) if matrix_json and os.path.isfile(matrix_json) else None
    return (meta or {}).get(JSON_KEY)


def _matrix_and_meta(out_dir, label_type):
    """``(npy path, json path, label matrix, its json)`` of ``labels_<type>`` in ``out_dir``, or None while either
    file is missing (e.g. a shard still to come)."""
    from util.ph.labels import label_names, read_json

    npy, _, js = (os.path.join(out_dir, x) for x in label_names(label_type))
    meta = read_json(js)
    if meta is None or not os.path.isfile(npy):
        return None
    return npy, js, np.load(npy, allow_pickle=False), meta


def add_whiten_to_json(
    out_dir: str, label_type: str, k: int = DEFAULT_COMPONENTS, floor: float = DEFAULT_FLOOR
) -> dict | None:
    """PHdict.py --label_norm whiten: the top-``k`` whitening of ``labels_<type>.npy`` into its json under
    ``label_whiten`` (kept when already there for this k, floor and row count).  The record's ``k`` is the number
    of directions kept (at most ``rows - 1`` and the dimension), ``asked`` the ``k`` asked for.  Returns the
    record or None."""
    from util.io.fileio import write_json

    found = _matrix_and_meta(out_dir, label_type)
    if found is None:
        return None
    npy, js, matrix, meta = found
    old = meta.get(WHITEN_KEY)
    asked = old and old.get('asked', old.get('k'))
    if old and old.get('floor') == float(floor) and old.get('count') == matrix.shape[0] and asked == k:
        return old
    mean, comp, scales = compute_whiten(matrix, k, floor)
    rec = whiten_record(mean, comp, scales, floor, os.path.basename(npy), matrix.shape[0])
    meta[WHITEN_KEY] = dict(rec, k=len(scales), asked=k)
    write_json(js, meta)
    return meta[WHITEN_KEY]


def add_stats_to_json(out_dir: str, label_type: str, floor: float = DEFAULT_FLOOR) -> dict | None:
    """PHdict.py --label_norm standard: write the statistics of ``labels_<type>.npy`` into its json (kept as
    they are when the json already holds them for this floor and row count). Returns the record or None
    when the whole matrix is not there (e.g. a shard still missing)."""
    from util.io.fileio import write_json

    found = _matrix_and_meta(out_dir, label_type)
    if found is None:
        return None
    npy, js, matrix, meta = found
    old = meta.get(JSON_KEY)
    if old and old.get('floor') == float(floor) and old.get('count') == matrix.shape[0]:
        return old
    mean, std = compute_stats(matrix, floor)  # warns of constant components
    constant = constant_columns(matrix)
    meta[JSON_KEY] = dict(
        stats_record(mean, std, floor, os.path.basename(npy), matrix.shape[0]), constant=[int(i) for i in constant]
    )
    write_json(js, meta)
    return meta[JSON_KEY]
