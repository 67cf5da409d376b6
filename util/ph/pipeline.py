"""PHdict.py's pipeline: check the configuration, list (and shard) the inputs, plan what is still to do, compute
the diagrams, write the per-file outputs and the label matrix, then the closing outputs and report.

:func:`run_phdict` takes a :class:`util.ph.phconfig.PHConfig` (built once from the flags by :mod:`util.cli.ph_build`)
and a ``pictures`` object that draws the PNGs (``hist_mean``, ``inputs``, ``label_diagnostics``; util/plot does
the drawing, one layer above, so the caller hands it in); it returns the exit status.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Protocol

import numpy as np
from tqdm import tqdm

from util.errors import UserError
from util.io.fileio import (
    ensure_dir,
    load_image,
    refuse_output_inside,
    require_dir,
    save_npy,
    set_max_pixels,
    write_json,
)
from util.io.provenance import SOURCES_FILE, SourceLog, describe, fingerprint_below
from util.ph import cubical as ph
from util.ph import diagnostics
from util.ph.autofit import AUTO_NAMES, Vectorisers, histogram_vectoriser, label_vectoriser, values, vectorisers
from util.ph.label_outputs import (
    check_ph_class,
    diagnose,
    join_label_matrices,
    label_stats,
    random_labels,
    write_labels,
    write_ph_classes,
)
from util.ph.labels import label_matrix_complete, label_names, merge_label_shards, read_json
from util.ph.outputs import (
    Outputs,
    Results,
    Run,
    list_inputs,
    parse_shard,
    refuse_mixed_folder,
    refuse_shared_stems,
    shard_of,
)
from util.ph.ph_class import PH_CLASS
from util.ph.phconfig import PHConfig, record
from util.ph.random_targets import RANDOM
from util.ph.settings import check_settings, output_settings
from util.ph.vectorise import check_label_dim

FLUSH_EVERY = 64  # diagrams vectorised together


class Pictures(Protocol):
    """What draws the run's PNGs (util/plot's functions, handed in by the caller)."""

    def hist_mean(self, path: str, curves: list, count: int) -> None: ...

    def inputs(
        self,
        path: str,
        image: np.ndarray,
        filtration: np.ndarray,
        diagram: np.ndarray,
        vector: np.ndarray,
        title: str,
        vector_label: str,
    ) -> None: ...

    def label_diagnostics(self, path: str, matrix: np.ndarray, diag: dict, title: str) -> None: ...


def run_phdict(cfg: PHConfig, pictures: Pictures) -> int:
    """One PHdict run (or one part of several filtrations); returns the exit status."""
    if cfg.label_type == PH_CLASS:
        return ph_class_run(cfg, pictures)
    if isinstance(cfg.filtration, list):
        return several_filtrations(cfg, pictures)
    cfg = check_config(cfg)
    set_max_pixels(cfg.max_pixels)
    run = open_run(cfg)
    if cfg.label_type == RANDOM:
        return random_labels(run)
    check_settings(run.out_dir, output_settings(cfg))
    vecs = vectorisers(cfg, run)  # fits 'auto' parameters: run.cfg holds the fitted values
    write_json(os.path.join(run.out_dir, 'args.json'), record(run.cfg))
    run.fingerprints = fingerprints(run.target_dir, run.files)
    if vecs.label is not None and label_matrix_complete(
        run.out_dir, label_names(cfg.label_type, run.k, run.n), run.files, vecs.label_info, run.fingerprints
    ):
        vecs.label = None  # already written for exactly these files as they are now: nothing to redo
    results = compute(run, vecs)
    finish(run, vecs, results, pictures)
    return report(run, results)


def ph_class_run(cfg: PHConfig, pictures: Pictures) -> int:
    """--label_type ph_class: the run of its --ph_class_of labels (labels_T.*, resumable, sharded as any), then the
    classes fitted on the whole matrix (util.ph.ph_class), written beside it."""
    check_ph_class(cfg)
    status = run_phdict(dataclasses.replace(cfg, label_type=cfg.ph_class_of), pictures)
    if status == 0 or cfg.skip_bad:
        write_ph_classes(cfg)
    return status


def several_filtrations(cfg: PHConfig, pictures: Pictures) -> int:
    """--filtration A B ...: one run per filtration into -o/filtration_NAME, then their label matrices
    concatenated (columns: A's, then B's ...) into -o/labels_TYPE.* once every part is complete."""
    if not cfg.label_type or cfg.label_type == RANDOM:
        raise UserError("several --filtration values make one concatenated PH label matrix: add --label_type TYPE")
    if cfg.imgtype == 'npy' or cfg.compute_hist or cfg.compute_persistence_image:
        raise UserError("several --filtration values need image inputs (-it jpg ...) and no -ch/-cpi")
    for name in cfg.filtration:  # every part's flags, before any folder is made or any PH computed
        check_config(dataclasses.replace(cfg, filtration=name))
    cfg = check_config(cfg)
    target_dir = require_dir(cfg.target_dir, 'target folder', flag='TARGET_DIR')
    refuse_output_inside(cfg.output, [('TARGET_DIR', target_dir)])
    parse_shard(cfg.shard)
    refuse_mixed_folder(cfg.output, several=True)
    out_dir = ensure_dir(cfg.output, 'output folder')
    status, parts = 0, []
    for name in cfg.filtration:
        part = dataclasses.replace(cfg, filtration=name, output=os.path.join(out_dir, f'filtration_{name}'))
        print(f"--- filtration {name} -> {part.output}", flush=True)
        status = max(status, run_phdict(part, pictures))
        parts.append(part.output)
    joined = join_label_matrices(out_dir, parts, cfg.label_type)
    if joined is None:
        print("not all parts are complete yet (other shards?): labels not concatenated", flush=True)
        return status
    print(
        f"label matrix {label_names(cfg.label_type)[0]}: {joined[0]} x {joined[1]} float32, the columns of "
        f"{len(parts)} filtrations ({', '.join(cfg.filtration)}); pretrain with -nc {joined[1]} --filtration "
        f"{' '.join(cfg.filtration)}{' --size_normalise' if cfg.size_normalise else ''}"
    )
    write_json(os.path.join(out_dir, 'args.json'), record(cfg))
    whole = Run(cfg, target_dir, out_dir, 0, 1, [], [], diagram_dir=parts[0])
    label_stats(cfg, out_dir)
    diagnose(whole)
    return status


def check_config(cfg: PHConfig) -> PHConfig:
    """Refuse bad settings before anything is read or written; returns ``cfg`` with ``imgtype`` normalised
    (lower case, no dot)."""
    cfg = dataclasses.replace(cfg, imgtype=cfg.imgtype.lower().lstrip('.'))
    if not cfg.imgtype:
        raise UserError("--imgtype is empty; give an extension such as jpg, png or npy")
    if cfg.imgtype == 'npy' and not (cfg.compute_hist or cfg.compute_persistence_image or cfg.label_type or cfg.plot):
        raise UserError(
            "-it npy reads saved diagrams, but nothing was asked of them: add -ch, -cpi or "
            "--label_type, or give the image type (e.g. -it jpg) to compute diagrams"
        )
    if cfg.num_workers < 0:
        raise UserError(f"--num_workers must be 0 (this process only) or more, got {cfg.num_workers}")
    if cfg.numof_dims < 1:
        raise UserError(f"--numof_dims must be at least 1, got {cfg.numof_dims}")
    if cfg.label_type:
        check_label_dim(cfg.label_type, cfg.numof_dims, '--numof_dims', cfg.num_landscapes)
    grey = [f for f in values(cfg.filtration) if f not in ph.SIZE_FILTRATIONS]
    if cfg.size_normalise and (cfg.imgtype == 'npy' or grey):
        raise UserError(
            "--size_normalise scales filtration values in pixels of images: it needs image inputs (-it jpg ...) "
            f"and a filtration among {', '.join(ph.SIZE_FILTRATIONS)}"
            + (f" (not --filtration {' '.join(grey)})" if grey else '')
        )
    autos = [n for n in AUTO_NAMES if 'auto' in values(getattr(cfg, n))]
    if 'sigma' in autos and cfg.label_type not in ('persistence_image', 'split_image'):
        raise UserError("--sigma auto applies to the labels with a kernel: persistence_image, split_image")
    if autos and (cfg.compute_hist or cfg.compute_persistence_image or not cfg.label_type):
        raise UserError(
            f"--{autos[0]} auto is fitted for the --label_type matrix only; give -ch / -cpi numbers "
            "(run them separately), or add --label_type"
        )
    if cfg.plot < 0:
        raise UserError(f"--plot must be 0 or more, got {cfg.plot}")
    if min(cfg.num_bins) < 0 or sum(cfg.num_bins) < 1:
        raise UserError(f"--num_bins {cfg.num_bins} must be four non-negative counts, not all zero")
    if cfg.label_type and cfg.label_norm == 'whiten' and cfg.label_norm_components < 1:
        raise UserError(f"--label_norm_components must be at least 1, got {cfg.label_norm_components}")
    if cfg.label_type and cfg.label_norm != 'none' and not cfg.label_norm_floor >= 0:
        raise UserError(f"--label_norm_floor must be >= 0, got {cfg.label_norm_floor}")
    vectorisers(cfg)  # the vectorisers' parameters (--max_life -5 ...) are checked before any folder exists
    return cfg


def open_run(cfg: PHConfig) -> Run:
    """Check the folders, list and shard the inputs."""
    target_dir = require_dir(cfg.target_dir, 'target folder', flag='TARGET_DIR')
    if cfg.imgtype != 'npy':  # (from saved diagrams, -o TARGET_DIR is the original's way to add -ch outputs)
        refuse_output_inside(cfg.output, [('TARGET_DIR', target_dir)])
    k, n = parse_shard(cfg.shard)
    if cfg.label_type != RANDOM:
        refuse_mixed_folder(cfg.output, several=False)
    out_dir = ensure_dir(cfg.output, 'output folder')
    if (
        cfg.compute_persistence_image
        and cfg.imgtype == 'npy'
        and os.path.realpath(out_dir) == os.path.realpath(target_dir)
    ):
        raise UserError(
            "-cpi with -it npy writes persistence images as <stem>.npy, which would overwrite the "
            f"diagrams in {target_dir}; choose another output folder with -o"
        )
    all_files = list_inputs(target_dir, cfg.imgtype, out_dir)
    if not all_files:
        raise UserError(
            f"no *.{cfg.imgtype} files under {target_dir}; set --imgtype/-it to the extension "
            "of your images (e.g. -it jpg)"
        )
    refuse_shared_stems(all_files)
    return Run(cfg, target_dir, out_dir, k, n, all_files, shard_of(all_files, k, n))


def plan(run: Run, need_all: bool) -> tuple:
    """Decide the work per input of ``run`` (its ``outs`` and ``log`` set).

    An existing output counts as done only when ``run.log`` (sources.jsonl) records it as computed from the input
    as it is now (same path, size and content hash): an image changed, swapped or regenerated since has its
    outputs recomputed.  Returns ``(jobs, job_files, complete, earlier_hist, todo)``: ``jobs`` for
    :func:`util.ph.cubical.iter_diagrams` (a saved, still valid diagram is loaded instead of recomputed),
    ``job_files[j]`` = index into ``files`` of job ``j``, ``complete`` = indices with nothing to (re)write
    (jobs only if ``need_all``, i.e. their diagram is needed for the label matrix), ``earlier_hist`` = indices
    whose valid -ch histogram already exists, ``todo[i]`` = the kinds of output to (re)write for index ``i``.
    """
    cfg, files, outs, target_dir, fingerprints, log = (
        run.cfg,
        run.files,
        run.outs,
        run.target_dir,
        run.fingerprints,
        run.log,
    )
    jobs, job_files, complete, earlier_hist, todo = [], [], set(), [], {}
    diagram_log = SourceLog(target_dir) if outs.from_npy else None  # what the input diagrams came from
    gradient = cfg.gradient
    engine = cfg.ph_engine
    for i, rel in enumerate(files):
        kinds = outs.kinds(rel)
        # from saved diagrams: an output made beside the diagram from the same image content is as good
        made_with = diagram_log.records.get(rel) if diagram_log is not None else None
        valid = {
            k
            for k, path in kinds.items()
            if os.path.exists(path)
            and (
                log.fresh(outs.key(path), rel, fingerprints[i])
                or (made_with is not None and log.fresh(outs.key(path), made_with.get('source'), made_with))
            )
        }
        todo[i] = set(kinds) - valid
        if not todo[i]:
            complete.add(i)
        if 'hist' in valid:
            earlier_hist.append(i)
        if todo[i] or need_all:
            if 'diagram' in valid:
                jobs.append((kinds['diagram'], 'npy', cfg.filtration, gradient, engine))  # resume: saved one
            else:
                src = os.path.join(target_dir, *rel.split('/'))
                source = 'npy' if outs.from_npy else 'image'
                jobs.append((src, source, cfg.filtration, gradient, engine, cfg.size_normalise))
            job_files.append(i)
    changed = [rel for i, rel in enumerate(files) if any(os.path.exists(outs.kinds(rel)[k]) for k in todo[i])]
    if changed:
        tqdm.write(
            f"{describe(changed, len(files))} inputs have outputs that were not made from them as they are "
            f"now (changed, replaced or never recorded in {SOURCES_FILE}): recomputing those",
            file=sys.stderr,
        )
    return jobs, job_files, complete, earlier_hist, todo


def fingerprints(target_dir: str, files: list[str]) -> list:
    """The content fingerprint of each input (None for one that cannot be read: it fails as a bad input)."""
    return [
        fingerprint_below(target_dir, rel)
        for rel in tqdm(files, desc='checking inputs', unit='file', file=sys.stderr, disable=len(files) < 5000)
    ]


def compute(run: Run, vecs: Vectorisers) -> Results:
    """Compute (or load) the diagrams still needed, write the per-file outputs, fill the label matrix."""
    cfg, files = run.cfg, run.files
    run.outs = Outputs(cfg, run.target_dir, run.out_dir)
    run.log = SourceLog(run.out_dir)
    jobs, job_files, complete, earlier_hist, todo = plan(run, vecs.label is not None)
    res = Results(ok=np.zeros(len(files), dtype=bool), complete=complete, earlier_hist=earlier_hist)
    res.ok[list(complete)] = True
    if vecs.label is not None:
        res.matrix = np.zeros((len(files), vecs.label.dim), np.float32)
    if vecs.hist is not None:
        res.hist_sum = np.zeros(vecs.hist.dim)
    pending = []  # (file index, diagram) waiting to be vectorised
    with tqdm(total=len(jobs), desc='PH', unit='file', file=sys.stderr, disable=not jobs) as bar:
        for j, dgm, err in ph.iter_diagrams(jobs, workers=min(cfg.num_workers, len(jobs) or 1)):
            i = job_files[j]
            bar.update(1)
            if err is not None:
                res.failures.append(files[i])
                res.ok[i] = False
                tqdm.write(f"bad input: {err}", file=sys.stderr)
                continue
            res.ok[i] = True
            path = run.outs.diagram(files[i])
            if path is not None and 'diagram' in todo[i]:
                run.outs.makedirs(path)
                save_npy(path, dgm)
                run.log.record(run.outs.key(path), files[i], run.fingerprints[i])  # only once the file is in place
            pending.append((i, dgm))
            if len(pending) >= FLUSH_EVERY:
                flush(run, vecs, res, pending, todo)
        flush(run, vecs, res, pending, todo)
    run.log.close()
    return res


def flush(run: Run, vecs: Vectorisers, res: Results, pending: list, todo: dict) -> None:
    """Vectorise the ``pending`` (file index, diagram) pairs: per-file outputs and label matrix rows."""
    if not pending:
        return
    idx = [i for i, _ in pending]
    dgms = [d for _, d in pending]
    outs, files = run.outs, run.files
    for vec, path_of, kind in ((vecs.hist, outs.hist, 'hist'), (vecs.pimg, outs.pimg, 'persistence_image')):
        if vec is None:
            continue
        redo = [j for j, i in enumerate(idx) if kind in todo[i]]
        if redo:
            for row, j in zip(vec.transform([dgms[j] for j in redo]), redo):
                path = path_of(files[idx[j]])
                outs.makedirs(path)
                save_npy(path, row)
                run.log.record(outs.key(path), files[idx[j]], run.fingerprints[idx[j]])  # after the rename
                if vec is vecs.hist:
                    res.hist_sum += row
                    res.hist_count += 1
    if res.matrix is not None:
        res.matrix[idx] = vecs.label.transform(dgms)
    pending.clear()


def finish(run: Run, vecs: Vectorisers, res: Results, pictures: Pictures) -> None:
    """The outputs made of the whole run: mean histogram, label matrix (merged shards), plots, statistics."""
    cfg = run.cfg
    if vecs.hist is not None:
        hist_summary(run, res, pictures)
    if res.matrix is not None:
        write_labels(run, vecs.label_info, res)
    elif vecs.label_info is not None:
        print(f"label matrix {label_names(cfg.label_type, run.k, run.n)[0]} is complete; kept")
        if run.n > 1 and merge_label_shards(run.out_dir, cfg.label_type, run.n, vecs.label_info, run.all_files):
            print(f"merged {run.n} shards into {label_names(cfg.label_type)[0]}")
    label_stats(cfg, run.out_dir)
    if cfg.label_type:
        diagnose(run)
    if cfg.plot:
        plots(run, res.ok, vecs.hist or vecs.pimg, pictures)


def report(run: Run, res: Results) -> int:
    """The closing line (and the failed inputs); the exit status."""
    skipped = sum(1 for i in res.complete if res.ok[i])
    done = int(res.ok.sum()) - skipped
    print(
        f"PHdict: {done} done, {skipped} skipped, {len(res.failures)} failed of {len(run.files)} files"
        f"{run.shard_note} -> {run.out_dir}",
        flush=True,
    )
    if res.failures:
        failures = res.failures
        print(
            f"failed inputs ({len(failures)}): " + ', '.join(failures[:20]) + (' ...' if len(failures) > 20 else ''),
            file=sys.stderr,
        )
        if not run.cfg.skip_bad:
            return 1
    return 0


def hist_summary(run: Run, res: Results, pictures: Pictures) -> None:
    """Print the maxima of the mean histogram and save its four curves as ``hist_mean.png``: the histograms
    written by this run (``res.hist_sum`` / ``res.hist_count``) and those an earlier run wrote (read back)."""
    cfg, files, out_dir, k, n = run.cfg, run.files, run.out_dir, run.k, run.n
    total, count = res.hist_sum.copy(), res.hist_count
    for i in res.earlier_hist:
        if res.ok[i]:
            total += np.load(run.outs.hist(files[i]))
            count += 1
    if count == 0:
        return
    mean = total / count
    nb = np.cumsum([0] + list(cfg.num_bins))
    curves = [mean[nb[j] : nb[j + 1]] for j in range(4)]
    print(
        "mean histogram maxima (H0 life, H1 life, H0 birth, H1 birth): "
        + ', '.join(f'{c.max():.4g}' if c.size else '-' for c in curves)
    )
    name = 'hist_mean.png' if n == 1 else f'hist_mean.shard-{k}-of-{n}.png'
    pictures.hist_mean(os.path.join(out_dir, name), curves, count)


def plots(run: Run, ok: np.ndarray, fallback_vec: object, pictures: Pictures) -> None:
    """``plots/<stem>.png`` for the first ``--plot`` inputs that were read successfully."""
    cfg, files, outs, target_dir, out_dir = run.cfg, run.files, run.outs, run.target_dir, run.out_dir
    vec = label_vectoriser(cfg) if cfg.label_type else fallback_vec
    if vec is None:
        vec = histogram_vectoriser(cfg)
    plot_dir = os.path.join(out_dir, 'plots')
    for i, rel in enumerate(files[: cfg.plot]):
        if not ok[i]:
            continue
        src = os.path.join(target_dir, *rel.split('/'))
        path = os.path.join(plot_dir, *os.path.splitext(rel)[0].split('/')) + '.png'
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if outs.from_npy:
            dgm = np.load(src)
            image = filtration = np.zeros((2, 2))
            title = rel + ' (diagram only)'
        else:
            im = load_image(src, 'RGB')
            filtration = ph.compute_filtration(im, cfg.filtration, gradient=cfg.gradient)
            dgm_path = outs.diagram(rel)
            dgm = np.load(dgm_path) if os.path.exists(dgm_path) else ph.diagram_of_filtration(filtration, cfg.ph_engine)
            image, title = np.asarray(im), rel
        pictures.inputs(path, image, filtration, dgm, vec(dgm), title, f'{vec.label_type} ({vec.dim})')
    print(f"plots of the first {min(cfg.plot, len(files))} inputs in {plot_dir}")
    if cfg.label_type:
        diagnostics_plot(run, plot_dir, pictures)


def diagnostics_plot(run: Run, plot_dir: str, pictures: Pictures) -> None:
    """``plots/diagnostics.png``: the variance spectrum and diagnostics of the label matrix (whole or shard)."""
    for names in (label_names(run.cfg.label_type), label_names(run.cfg.label_type, run.k, run.n)):
        npy, _, js = (os.path.join(run.out_dir, x) for x in names)
        diag = (read_json(js) or {}).get(diagnostics.JSON_KEY)
        if diag and os.path.isfile(npy):
            matrix = np.load(npy, mmap_mode='r', allow_pickle=False)
            rows = diagnostics.sample_rows(matrix.shape[0])
            pictures.label_diagnostics(os.path.join(plot_dir, 'diagnostics.png'), matrix[rows], diag, names[0])
            print(f"label diagnostics plot: {os.path.join(plot_dir, 'diagnostics.png')}")
            return
