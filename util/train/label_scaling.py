"""``--label_norm standard`` / ``whiten`` around a run's pretraining sets: the statistics a run uses (those of
the run it resumes, else the label json PHdict.py wrote, else the rows of the label matrix the run reads, else a
first sample of its labels), and the sets wrapped in them.  :func:`util.train.sources.pretraining_sets` applies
them; the maths is :mod:`util.ph.label_norm`'s."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from util.errors import UserError

if TYPE_CHECKING:
    from util.config import DataConfig


def standard_stats(data: DataConfig, resume: str, train: Any, mode: str | None = None) -> tuple:
    """(mean, std, record) for --label_norm standard: the resumed run's (``resume``: --resume, a checkpoint of
    the learning mode ``mode``), else the label json's (PHdict.py), else the label matrix's, else a first
    sample's."""
    from util.ph import label_norm
    from util.train.label_norm import sample_labels

    dim = train.dim
    if resume:
        from util.train import runs

        path = runs.resolve_resume(resume)
        checkpoint = runs.load_checkpoint(path)
        if mode is not None and checkpoint.get('mode') not in (None, mode):  # the mode first: it decides the rest
            raise UserError(f"--resume {resume}: that run used -lm {checkpoint['mode']}, not -lm {mode}")
        stored = checkpoint.get('args', {})
        if stored.get('label_norm') != 'standard' or not stored.get('label_norm_mean'):
            raise UserError(
                f"--resume {resume}: that run did not use --label_norm standard; resume it "
                f"with --label_norm {stored.get('label_norm', 'none')}"
            )
        rec = {
            'mean': stored['label_norm_mean'],
            'std': stored['label_norm_std'],
            'floor': stored.get('label_norm_floor'),
            'source': stored.get('label_norm_source', path),
            'count': stored.get('label_norm_count', 0),
        }
        return (*label_norm.from_record(rec, dim, path), rec)
    labels = getattr(train, 'labels', None)
    matrix = getattr(labels, 'matrix', None)
    floor = data.norm.floor
    if matrix is not None and data.ph_dir:
        js = os.path.join(data.ph_dir, f'labels_{data.label.label_type}.json')
        rec = label_norm.json_stats(js)
        if rec is not None:
            if rec.get('floor') != floor:
                print(
                    f"note: {js} holds label statistics with floor {rec.get('floor')}; using them "
                    f"(--label_norm_floor {floor} applies when they are computed here)",
                    flush=True,
                )
            return (*label_norm.from_record(rec, dim, js), rec)
        rows = np.asarray(matrix)[labels.rows]
        source = f'rows of {js[:-5]}.npy used by this run'
    else:
        rows = sample_labels(train)
        source = f'labels of the first {len(rows)} training images'
    mean, std = label_norm.compute_stats(rows, floor)
    return mean, std, label_norm.stats_record(mean, std, floor, source, len(rows))


def whitened(data: DataConfig, resume: str, train: Any, val: Any, facts: dict) -> tuple:
    """--label_norm whiten: the statistics of the resumed run, else of the label json (PHdict.py --label_norm
    whiten, same K and floor), else of the rows the run uses, else of a first sample; ``facts`` gain
    ``label_whiten_*`` (flat lists: args.json and the checkpoint keep lists of numbers)."""
    from util.ph import label_norm
    from util.ph.labels import read_json
    from util.train.label_norm import Standardised, sample_labels

    dim, k, floor, rec, where = train.dim, data.norm.components, data.norm.floor, None, None
    if resume:
        from util.train import runs

        where = runs.resolve_resume(resume)
        stored = runs.load_checkpoint(where).get('args', {})
        if stored.get('label_norm') != 'whiten' or not stored.get('label_whiten_mean'):
            raise UserError(f"--resume {resume}: that run did not use --label_norm whiten; resume it as it ran")
        flat, n = stored['label_whiten_components'], len(stored['label_whiten_mean'])
        rec = {
            'mean': stored['label_whiten_mean'],
            'components': [flat[i : i + n] for i in range(0, len(flat), n)],
            'scales': stored['label_whiten_scales'],
            'source': stored.get('label_whiten_source', where),
            'count': stored.get('label_whiten_count', 0),
        }
    labels = getattr(train, 'labels', None)
    matrix = getattr(labels, 'matrix', None)
    if rec is None and matrix is not None and data.ph_dir:
        where = os.path.join(data.ph_dir, f'labels_{data.label.label_type}.json')
        rec = (read_json(where) or {}).get(label_norm.WHITEN_KEY)
        if rec is not None and (rec.get('asked', rec.get('k')) != k or rec.get('floor') != floor):
            rec = None  # another K or floor: computed here from the rows
    if rec is None:
        if matrix is not None:
            rows, source = np.asarray(matrix)[labels.rows], 'rows of the label matrix used by this run'
        else:
            rows = sample_labels(train)
            source = f'labels of the first {len(rows)} training images'
        mean, comp, scales = label_norm.compute_whiten(rows, k, floor)
        rec = label_norm.whiten_record(mean, comp, scales, floor, source, len(rows))
        where = source
    mean, mapping = label_norm.whiten_from_record(rec, dim, where)
    facts = {
        **facts,
        'label_whiten_mean': rec['mean'],
        'label_whiten_scales': rec['scales'],
        'label_whiten_components': [x for row in rec['components'] for x in row],
        'label_whiten_source': rec['source'],
        'label_whiten_count': rec['count'],
    }
    print(f"labels whitened: top {len(rec['scales'])} principal directions ({rec['source']})", flush=True)
    ones = np.ones(dim, np.float32)
    wrap = lambda s: Standardised(s, mean, ones, mapping)  # noqa: E731
    return wrap(train), (wrap(val) if val is not None else None), facts
