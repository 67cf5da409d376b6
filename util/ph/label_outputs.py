"""The label matrices of a PHdict run: writing this run's (or shard's) matrix and merging the shards, the random
targets, joining the matrices of several filtrations, the ``--label_norm`` statistics and the label diagnostics
(util/ph/diagnostics.py) recorded in their json."""

from __future__ import annotations

import os
import sys

import numpy as np

from util.errors import UserError
from util.io.fileio import write_json
from util.ph import diagnostics, label_norm
from util.ph.autofit import AUTO_NAMES, values
from util.ph.labels import (
    label_matrix_complete,
    label_names,
    merge_label_shards,
    read_json,
    read_paths,
    same_params,
    source_entries,
    write_label_matrix,
)
from util.ph.outputs import Results, Run
from util.ph.phconfig import PHConfig
from util.ph.random_targets import RANDOM, image_key, random_matrix


def label_stats(cfg: PHConfig, out_dir: str) -> None:
    """--label_norm standard: the statistics of the whole label matrix, into its json."""
    if cfg.label_type and cfg.label_norm == 'standard':
        if label_norm.add_stats_to_json(out_dir, cfg.label_type, cfg.label_norm_floor) is not None:
            print(f"label statistics (--label_norm standard) in {label_names(cfg.label_type)[2]}")
    if cfg.label_type and cfg.label_norm == 'whiten':
        rec = label_norm.add_whiten_to_json(out_dir, cfg.label_type, cfg.label_norm_components, cfg.label_norm_floor)
        if rec is not None:  # its k: the directions kept (at most the rows - 1)
            print(f"label whitening (--label_norm whiten, {rec['k']} directions) in {label_names(cfg.label_type)[2]}")


def random_labels(run: Run) -> int:
    """--label_type random: the random-target matrix of the listed files (no PH is computed)."""
    cfg, files, out_dir, k, n = run.cfg, run.files, run.out_dir, run.k, run.n
    if cfg.compute_hist or cfg.compute_persistence_image or cfg.plot:
        raise UserError(
            "--label_type random computes no persistent homology: drop -ch, -cpi and --plot (run "
            "PHdict.py separately for them)"
        )
    info = dict(
        label_type=RANDOM,
        params={'seed': cfg.seed, 'distribution': 'standard normal', 'key': 'relative path without extension'},
        filtration=None,
        imgtype=cfg.imgtype,
        gradient=False,
    )
    names = label_names(RANDOM, k, n)
    if label_matrix_complete(out_dir, names, files, info):
        print(f"label matrix {names[0]} is complete; kept")
    else:
        keys = [image_key(f) for f in files]
        write_label_matrix(out_dir, names, random_matrix(cfg.seed, keys, cfg.numof_dims), files, info)
        print(f"label matrix {names[0]}: {len(files)} x {cfg.numof_dims} random targets (seed {cfg.seed})")
    if n > 1:
        merge_label_shards(out_dir, RANDOM, n, info, run.all_files)
    label_stats(cfg, out_dir)
    return 0


def write_labels(run: Run, label_info: dict, res: Results) -> None:
    """Write this run's (shard's) label matrix, and merge the shards once all are there."""
    cfg, out_dir, n = run.cfg, run.out_dir, run.n
    if res.failures and not cfg.skip_bad:
        print(
            f"label matrix not written: {len(res.failures)} inputs failed (rerun after fixing them, or give "
            "--skip_bad to leave them out)",
            file=sys.stderr,
        )
        return
    keep = np.flatnonzero(res.ok)
    paths = [run.files[i] for i in keep]
    names = label_names(cfg.label_type, run.k, n)
    entries = source_entries([run.fingerprints[i] for i in keep])
    write_label_matrix(out_dir, names, res.matrix[keep], paths, label_info, entries)
    print(f"label matrix {names[0]}: {len(paths)} x {res.matrix.shape[1]} float32 (paths in {names[1]})")
    if n > 1:
        merged = merge_label_shards(out_dir, cfg.label_type, n, label_info, None if cfg.skip_bad else run.all_files)
        if merged is not None:
            print(f"merged {n} shards into {label_names(cfg.label_type)[0]} ({merged} rows)")
        else:
            print(
                f"other shards not finished yet: {label_names(cfg.label_type)[0]} is written by the shard "
                "that finds all parts present"
            )


def join_label_matrices(out_dir: str, parts: list[str], label_type: str) -> tuple[int, int] | None:
    """Concatenate the columns of ``labels_TYPE`` of the folders ``parts`` (same rows, same images as they are
    now) into ``out_dir``; returns ``(rows, columns)``, or None while a part is missing.  Kept when already
    made from these parts."""
    names = label_names(label_type)
    metas, paths = [], None
    for part in parts:
        npy, txt, js = (os.path.join(part, x) for x in names)
        meta = read_json(js)
        if meta is None or not os.path.isfile(npy):
            return None
        rows = read_paths(txt)
        if paths is not None and (rows != paths or meta.get('sources') != metas[0].get('sources')):
            raise UserError(f"{part} holds labels of other images than {parts[0]}; recompute them together")
        paths = rows
        metas.append(meta)
    info = dict(
        label_type=label_type,
        params=[m['params'] for m in metas],
        filtration=[m['filtration'] for m in metas],
        imgtype=metas[0].get('imgtype'),
        gradient=metas[0].get('gradient'),
        size_normalise=metas[0].get('size_normalise'),
        parts=[os.path.basename(p) for p in parts],
        target_dir=metas[0].get('target_dir'),
    )
    old = read_json(os.path.join(out_dir, names[2]))
    if old is not None and same_params(old, info) and old.get('sources') == metas[0].get('sources'):
        return old['count'], old['dim']
    matrix = np.concatenate([np.load(os.path.join(p, names[0])) for p in parts], axis=1)
    write_label_matrix(out_dir, names, matrix, paths, info, metas[0].get('sources'))
    return matrix.shape


def diagram_path(run: Run, rel: str) -> str:
    """Where the diagram of input ``rel`` is: the input itself (-it npy) or the one this script saved."""
    if run.cfg.imgtype == 'npy':
        return os.path.join(run.target_dir, *rel.split('/'))
    return os.path.join(run.diagram_dir or run.out_dir, *os.path.splitext(rel)[0].split('/')) + '.npy'


def diagnose(run: Run) -> None:
    """The label diagnostics (util/ph/diagnostics.py) of the label matrices this run wrote or kept: into their
    json under ``diagnostics``, one line printed, and a warning for a degenerate label."""
    label_type = run.cfg.label_type
    wanted = [label_names(label_type, run.k, run.n)] + ([label_names(label_type)] if run.n > 1 else [])
    for names in wanted:
        npy, txt, js = (os.path.join(run.out_dir, x) for x in names)
        meta = read_json(js)
        if meta is None or not os.path.isfile(npy):
            continue
        diag = meta.get(diagnostics.JSON_KEY)
        settings = levers_in_use(run.cfg)
        if not diag or any(
            diag.get(k) != v
            for k, v in (('rows', meta.get('count')), ('label_norm', run.cfg.label_norm), ('settings', settings))
        ):
            diag = label_diagnostics(run, npy, txt, meta)
            diag['settings'] = settings  # the levers in use: the warnings suggest only the others
            write_json(js, dict(meta, **{diagnostics.JSON_KEY: diag}))
        print(f"{names[0]}: {diagnostics.summary_line(diag)}")
        if diag.get('after_label_norm'):
            print(f"  after --label_norm {run.cfg.label_norm}: {diagnostics.summary_line(diag['after_label_norm'])}")
        for warning in diagnostics.degeneracy_warnings(diag.get('after_label_norm') or diag, settings):  # regressed
            print(f"warning: {warning}", file=sys.stderr)


def levers_in_use(cfg: PHConfig) -> dict:
    """What the degeneracy warnings need to know of this run's label settings (util.ph.diagnostics)."""
    auto = set(cfg.auto_fitted or ())
    auto |= {n for n in AUTO_NAMES if 'auto' in values(getattr(cfg, n, None))}
    return dict(
        label_type=cfg.label_type,
        auto=sorted(auto),
        size_normalise=bool(cfg.size_normalise),
        filtration=cfg.filtration,
        label_norm=cfg.label_norm,
    )


def normalised(run: Run, meta: dict, rows: np.ndarray) -> np.ndarray | None:
    """The label rows as pretraining --label_norm sees them (the statistics in ``meta``), or None."""
    if run.cfg.label_norm == 'standard' and meta.get(label_norm.JSON_KEY):
        rec = meta[label_norm.JSON_KEY]
        return (rows - np.asarray(rec['mean'])) / np.asarray(rec['std'])
    if run.cfg.label_norm == 'whiten' and meta.get(label_norm.WHITEN_KEY):
        mean, mapping = label_norm.whiten_from_record(meta[label_norm.WHITEN_KEY], rows.shape[1], 'label json')
        return (rows - mean) @ mapping
    return None


def label_diagnostics(run: Run, npy: str, txt: str, meta: dict) -> dict:
    """The diagnostics of the label matrix ``npy`` (rows named in ``txt``, json ``meta``), on a sample of rows."""
    matrix = np.load(npy, mmap_mode='r', allow_pickle=False)
    names = read_paths(txt)
    rows = diagnostics.sample_rows(len(names))
    picked = [names[i] for i in rows]
    try:
        counts = diagnostics.diagram_counts([np.load(diagram_path(run, rel)) for rel in picked])
    except (OSError, ValueError):
        counts = None  # a diagram gone since: the count fit is left out
    params = diagnostics.generator_features(picked, run.target_dir) if run.cfg.imgtype != 'npy' else None
    labels = np.asarray(matrix[rows], dtype=np.float64)
    diag = diagnostics.compute(labels, counts, params)
    diag['rows'] = len(names)
    diag['label_norm'] = run.cfg.label_norm
    rows_normalised = normalised(run, meta, labels)
    if rows_normalised is not None:  # what the network regresses under --label_norm
        diag['after_label_norm'] = diagnostics.compute(rows_normalised, counts, params)
    return diag


def check_ph_class(cfg: PHConfig) -> None:
    """--label_type ph_class: refuse what cannot make K classes, before any folder exists or any work is done."""
    from util.io.fileio import require_dir
    from util.ph.outputs import list_inputs

    k = cfg.ph_classes
    if k < 2:
        raise UserError(f"--ph_classes must be at least 2 (a class per image set needs two or more), got {k}")
    if isinstance(cfg.filtration, list):
        raise UserError(
            f"--label_type ph_class clusters the labels of one filtration; give one --filtration, not "
            f"{' '.join(cfg.filtration)}"
        )
    if cfg.label_norm_components < 1:
        raise UserError(f"--label_norm_components must be at least 1, got {cfg.label_norm_components}")
    if not cfg.label_norm_floor >= 0:
        raise UserError(f"--label_norm_floor must be >= 0, got {cfg.label_norm_floor}")
    target = require_dir(cfg.target_dir, 'target folder', flag='TARGET_DIR')
    n = len(list_inputs(target, cfg.imgtype.lower().lstrip('.'), cfg.output))
    if k > n:
        raise UserError(f"--ph_classes {k} is more than the {n} images under {target}: give at most {n}")


def write_ph_classes(cfg: PHConfig) -> dict | None:
    """--label_type ph_class, after labels_<--ph_class_of> is complete: fit (or keep) the classes and write
    ``labels_ph_class.{npy,txt,json}`` (:mod:`util.ph.ph_class`); prints the class sizes.  Returns the json, or
    None while the base matrix is not complete (shards still running)."""
    from util.io.fileio import save_npy, write_text
    from util.io.provenance import fingerprint
    from util.ph.ph_class import PH_CLASS, fit_record

    out_dir, base_type, k = cfg.output, cfg.ph_class_of, cfg.ph_classes
    bnpy, btxt, bjs = (os.path.join(out_dir, x) for x in label_names(base_type))
    base_meta = read_json(bjs)
    if base_meta is None or not (os.path.isfile(bnpy) and os.path.isfile(btxt)):
        print(f"{label_names(PH_CLASS)[0]}: waiting for {label_names(base_type)[0]} (its shards are not all done)")
        return None
    npy, txt, js = (os.path.join(out_dir, x) for x in label_names(PH_CLASS))
    fit = dict(
        k=int(k),
        seed=int(cfg.seed),
        components=int(cfg.label_norm_components),
        floor=float(cfg.label_norm_floor),
        base_matrix=f"{os.path.basename(bnpy)} blake2b {fingerprint(bnpy)['hash']}",
    )
    old = read_json(js)
    if old is not None and os.path.isfile(npy) and os.path.isfile(txt) and (old.get('params') or {}).get('fit') == fit:
        meta, kept = old, True
    else:
        matrix = np.load(bnpy, allow_pickle=False)
        whitening = label_norm.compute_whiten(matrix, cfg.label_norm_components, cfg.label_norm_floor)
        rec, ids = fit_record(matrix, k, cfg.seed, whitening, cfg.label_norm_floor)
        base = dict(base_meta['params'], dim=int(base_meta['dim']))
        keep = ('filtration', 'imgtype', 'gradient', 'size_normalise', 'target_dir', 'ph_engine', 'sources')
        meta = dict(
            label_type=PH_CLASS,
            params=dict(dim=int(k), ph_class_of=base_type, base=base, fit=fit, classes=rec),
            **{key: base_meta[key] for key in keep if key in base_meta},
            count=int(matrix.shape[0]),
            dim=int(k),
        )
        save_npy(npy, ids.astype(np.int64))
        write_text(txt, ''.join(p + '\n' for p in read_paths(btxt)))
        write_json(js, meta)  # last: its presence means the other two are complete
        kept = False
    sizes = np.asarray(meta['params']['classes']['sizes'])
    if sizes.min() == 0:
        print(
            f"warning: {int((sizes == 0).sum())} of the {k} classes are empty: the {meta['count']} labels have fewer "
            f"distinct vectors than --ph_classes {k} (identical images?); give fewer classes",
            file=sys.stderr,
        )
    print(
        f"{label_names(PH_CLASS)[0]}: {meta['count']} images in {k} classes (k-means of the whitened "
        f"{label_names(base_type)[0]}, seed {cfg.seed}){'; kept' if kept else ''}; class sizes: smallest "
        f"{sizes.min()}, median {int(np.median(sizes))}, largest {sizes.max()}"
    )
    return meta
