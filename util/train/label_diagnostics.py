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


def check_first_labels(train: Dataset, n: int = SAMPLE) -> dict:
    """For a generated training set whose labels are computed in the loader (else nothing): fit ``auto``
    parameters, then print the diagnostics of the first ``n`` labels.  Returns the facts to record (a dict,
    empty when nothing applies)."""
    from util.ph import diagnostics

    computed = getattr(train, 'computed', None)
    if computed is None or getattr(train, 'index_labels', None) is not None or not hasattr(train, 'cfg'):
        return {}
    facts = {}
    print(f"label diagnostics: computing the labels of the first {min(n, len(train))} images", flush=True)
    diagrams, features = _first_diagrams(train, n)
    vec = computed.vectoriser
    if vec.auto:
        fitted = vec.auto
        vec.fit(diagrams)
        params = vec.get_params()
        for name in fitted:
            if name in params:
                facts[f'fitted_{name}'] = params[name]
        print(f"fitted on {len(diagrams)} diagrams: " + ', '.join(f"{k} {params[k]}" for k in fitted), flush=True)
    labels = vec.transform(diagrams)
    diag = diagnostics.compute(labels, diagnostics.diagram_counts(diagrams), features)
    for name, value in diag.items():
        facts[f'label_diagnostics_{name}'] = value
    print(diagnostics.summary_line(diag), flush=True)
    for warning in diagnostics.degeneracy_warnings(diag):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return facts
