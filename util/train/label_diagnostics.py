"""Pretraining on labels computed in the loader (generated images): before the first batch, the label
diagnostics of :mod:`util.ph.diagnostics` on the labels of the first ``SAMPLE`` training images, printed and
returned as facts the run records (``label_diagnostics_<name>`` in args.json and the checkpoint), and the fit
of ``--max_life/--max_birth/--min_birth/--sigma auto`` on the same images' diagrams (the fitted values are
recorded as ``fitted_<flag>``; a resumed or repeated run fits the same images, hence the same values).

PHdict.py does the same for label matrices; this covers the runs that never write one.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch.utils.data import Dataset

SAMPLE = 128  # the images 0..SAMPLE-1 of the training stream (those of the first batches of epoch 0)


def _first_diagrams(train, n):
    """Diagrams and generator features of the first ``n`` images of a generated training set (computed once
    more here, as the loader computes them)."""
    from PIL import Image

    from util.ph import generator

    diagrams, features = [], []
    for i in range(min(n, len(train))):
        arr = generator.generate_image(train.cfg, train.seed, i, train.stream)
        diagrams.append(train.computed.diagram(Image.fromarray(arr).convert('RGB')))
        features.append(generator.params_features(generator.image_params(train.cfg, train.seed, i, train.stream)))
    return diagrams, np.stack(features)


def check_first_labels(train: Dataset, n: int = SAMPLE, label_norm: str | None = None) -> dict:
    """For a generated training set whose labels are computed in the loader (else nothing): fit ``auto``
    parameters, then print the diagnostics of the first ``n`` labels (their warnings suggest only the levers
    not in use; ``label_norm``: the run's --label_norm, when the caller knows it).  Returns the facts to record
    (a dict, empty when nothing applies)."""
    from util.ph import diagnostics

    computed = getattr(train, 'computed', None)
    if computed is None or getattr(train, 'index_labels', None) is not None or not hasattr(train, 'cfg'):
        return {}
    facts = {}
    print(f"label diagnostics: computing the labels of the first {min(n, len(train))} images", flush=True)
    diagrams, features = _first_diagrams(train, n)
    vec = computed.vectoriser
    fitted = tuple(vec.auto)
    if fitted:
        vec.fit(diagrams)
        params = vec.get_params()
        for name in fitted:
            if name in params:
                facts[f'fitted_{name}'] = params[name]
        warning = vec.fit_warning()  # a homology dimension (or all) without pairs to fit on
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if len(vec.without_pairs) < 2:
            print(f"fitted on {len(diagrams)} diagrams: " + ', '.join(f"{k} {params[k]}" for k in fitted), flush=True)
    labels = vec.transform(diagrams)
    diag = diagnostics.compute(labels, diagnostics.diagram_counts(diagrams), features)
    for name in (*diagnostics.NAMES, 'count'):
        if name in diag:
            facts[f'label_diagnostics_{name}'] = diag[name]
    print(diagnostics.summary_line(diag), flush=True)
    settings = dict(
        label_type=vec.label_type,
        auto=list(fitted),
        size_normalise=bool(getattr(computed, 'size_normalise', False)),
        filtration=computed.filtration,
        label_norm=label_norm,
    )
    for warning in diagnostics.degeneracy_warnings(diag, settings):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return facts
