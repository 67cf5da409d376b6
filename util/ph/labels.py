"""The consolidated label-matrix format that PHdict.py --label_type writes and pretraining.py -pc reads.

In a PH folder, ``labels_<type>.npy`` holds a float32 matrix ``[N, D]``, ``labels_<type>.txt`` the N image paths
(relative, one per line, in row order) and ``labels_<type>.json`` the parameters it was made with (written
last, so its presence means the other two are complete).  A sharded run writes ``labels_<type>.shard-K-of-N.*``
and the last shard to finish merges them.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from util.errors import UserError
from util.io.fileio import save_npy, write_json, write_text
from util.io.provenance import changed_sources
from util.ph.vectorise import DERIVED_LABEL_TYPES, LABEL_TYPES


def label_file_re() -> re.Pattern:
    """The names of label-matrix files (whole or shard), which PHdict.py never takes as inputs."""
    return re.compile(
        r'labels_(%s)(\.shard-\d+-of-\d+)?\.npy' % '|'.join(LABEL_TYPES + DERIVED_LABEL_TYPES + ('random',))
    )


def label_names(label_type: str, k: int = 0, n: int = 1) -> tuple[str, str, str]:
    """File names ``(npy, txt, json)`` of the label matrix (of shard ``k`` of ``n`` when ``n > 1``)."""
    base = f'labels_{label_type}' + (f'.shard-{k}-of-{n}' if n > 1 else '')
    return base + '.npy', base + '.txt', base + '.json'


def read_paths(path: str) -> list[str]:
    with open(path, encoding='utf-8') as f:
        return f.read().splitlines()


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def label_matrix_complete(
    out_dir: str, names: tuple[str, str, str], paths: list[str], info: dict, fingerprints: list | None = None
) -> bool:
    """True if the label matrix ``names`` in ``out_dir`` exists for exactly ``paths`` and parameters ``info``
    (and, given ``fingerprints`` of the inputs in the order of ``paths``, was made from them as they are now)."""
    npy, txt, js = (os.path.join(out_dir, x) for x in names)
    if not (os.path.exists(npy) and os.path.exists(txt) and os.path.exists(js)):
        return False
    old = read_json(js)
    if old is None or not same_params(old, info) or read_paths(txt) != list(paths):
        return False
    return fingerprints is None or _same_sources(old.get('sources'), fingerprints)


def _source_entry(fp):
    return None if fp is None else [fp['size'], fp['hash']]


def _same_sources(recorded, fingerprints):
    if not isinstance(recorded, list) or len(recorded) != len(fingerprints):
        return False
    return all(r is not None and _source_entry(fp) == list(r) for r, fp in zip(recorded, fingerprints))


def stale_rows(meta: dict | None, root: str, names: list[str], rel_paths: list[str]) -> list[str] | None:
    """The images of ``rel_paths`` (below ``root``) whose content differs from what the label matrix described
    by ``meta`` (its json; rows named ``names``) was computed from.  None when ``meta`` records no sources
    (a matrix of an older version, or one computed from saved diagrams, ``-it npy``): then nothing can be checked."""
    recorded = (meta or {}).get('sources')
    if meta is None or meta.get('imgtype') == 'npy' or not isinstance(recorded, list) or len(recorded) != len(names):
        return None
    row = {n: i for i, n in enumerate(names)}
    entries = [recorded[row[rel]] if rel in row else None for rel in rel_paths]
    return changed_sources([None if e is None else {'size': e[0], 'hash': e[1]} for e in entries], root, rel_paths)


def same_params(a: dict, b: dict) -> bool:
    keys = ('label_type', 'params', 'filtration', 'imgtype', 'gradient', 'size_normalise')
    return all(json.dumps(a.get(k), sort_keys=True) == json.dumps(b.get(k), sort_keys=True) for k in keys)


def source_entries(fingerprints: list) -> list:
    """What the json keeps of each input's fingerprint (:mod:`util.io.provenance`): ``[size, hash]`` (or None)."""
    return [_source_entry(fp) for fp in fingerprints]


def write_label_matrix(
    out_dir: str,
    names: tuple[str, str, str],
    matrix: np.ndarray,
    paths: list[str],
    info: dict,
    sources: list | None = None,
) -> None:
    """Write ``matrix`` float32 ``[N, D]``, its ``N`` paths and ``info`` (json) atomically; json last.

    ``sources`` (:func:`source_entries` of the inputs, in row order) are stored in the json, so that a reader
    can tell when an image changed since."""
    npy, txt, js = (os.path.join(out_dir, x) for x in names)
    save_npy(npy, np.asarray(matrix, dtype=np.float32))
    write_text(txt, ''.join(p + '\n' for p in paths))
    meta = dict(info, count=len(paths), dim=int(matrix.shape[1]))
    if sources is not None:
        meta['sources'] = list(sources)
    write_json(js, meta)


def merge_label_shards(
    out_dir: str, label_type: str, n: int, info: dict, all_files: list[str] | None = None
) -> int | None:
    """Merge ``labels_TYPE.shard-*-of-N`` into ``labels_TYPE.*`` if all N parts exist with equal parameters.

    Rows are put in the sorted order of the union of the parts' paths.  When ``all_files`` is given the
    union must be exactly those files.  Returns the merged count, or None if parts are missing/inconsistent.
    """
    parts = []
    for k in range(n):
        names = label_names(label_type, k, n)
        npy, txt, js = (os.path.join(out_dir, x) for x in names)
        if not (os.path.exists(npy) and os.path.exists(txt) and os.path.exists(js)):
            return None
        meta = read_json(js)
        if meta is None or not same_params(meta, info):
            return None
        sources = meta.get('sources')
        parts.append((np.load(npy), read_paths(txt), sources if isinstance(sources, list) else None))
    paths = [p for _, ps, _ in parts for p in ps]
    matrix = np.concatenate([m for m, _, _ in parts], axis=0)
    sources = None
    if all(src is not None and len(src) == len(ps) for _, ps, src in parts):
        sources = [x for _, _, src in parts for x in src]
    order = sorted(range(len(paths)), key=paths.__getitem__)
    paths = [paths[i] for i in order]
    if len(set(paths)) != len(paths) or (all_files is not None and paths != sorted(all_files)):
        return None
    write_label_matrix(
        out_dir,
        label_names(label_type),
        matrix[order],
        paths,
        dict(info, shards=n),
        None if sources is None else [sources[i] for i in order],
    )
    return len(paths)


# ----------------------------------------------------------------------------------------------------
# settings of the per-file outputs already in the output folder


def find_label_matrix(ph_dir: str, label_type: str) -> tuple[str, str] | None:
    """Locate ``labels_<label_type>.npy`` (+ ``.txt``) in ``ph_dir``; return (npy, txt) or None."""
    npy, txt, _ = (os.path.join(ph_dir, x) for x in label_names(label_type))
    if os.path.isfile(npy) and os.path.isfile(txt):
        return npy, txt
    return None


def load_label_matrix(npy: str, txt: str, expected_dim: int) -> tuple[np.ndarray, list[str]]:
    """Load and check a consolidated label matrix: float, 2-D, finite, D == expected_dim, one name per row (or
    class ids int [N] of ``labels_ph_class``, ids below ``expected_dim``: their one-hot rows,
    :class:`util.ph.ph_class.OneHotRows`)."""
    try:
        matrix = np.load(npy, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read label matrix {npy}: {e}") from None
    with open(txt, encoding='utf-8') as f:
        names = [line.rstrip('\n') for line in f if line.strip()]
    if matrix.ndim == 1 and matrix.dtype.kind in 'iu' and matrix.shape[0] == len(names):  # ph_class: class ids
        from util.ph.ph_class import OneHotRows, check_class_ids

        return OneHotRows(check_class_ids(matrix, expected_dim, npy), expected_dim), names
    if matrix.ndim != 2 or matrix.shape[0] != len(names):
        raise UserError(f"{npy} has shape {matrix.shape} but {txt} lists {len(names)} images; rerun PHdict.py")
    if matrix.shape[1] != expected_dim:
        raise UserError(
            f"labels in {npy} have dimension {matrix.shape[1]} but --numof_classes is {expected_dim}; "
            f"pass --numof_classes {matrix.shape[1]} or recompute the labels"
        )
    bad = np.flatnonzero(~np.isfinite(np.asarray(matrix)).all(axis=1))
    if bad.size:
        raise UserError(f"{npy} has non-finite values in {bad.size} rows (first: {names[bad[0]]}); recompute them")
    return np.asarray(matrix, dtype=np.float32), names
