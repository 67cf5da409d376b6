"""How much a label matrix says beyond one number: diagnostics of ``[N, D]`` pretraining labels (numpy only).

* ``participation_ratio`` -- ``(sum l)^2 / sum l^2`` over the eigenvalues ``l`` of the labels' covariance: the
  effective number of dimensions the labels vary in (1 = one direction, D = all equally).
* ``first_component_share`` -- ``l_1 / sum l``: the share of the variance in the first principal component.
* ``counts_r2`` -- the share of the labels' total variance explained by a least-squares fit (with intercept) on
  the numbers of finite H0 and H1 pairs of each image's diagram: how much of the label is a feature count.
* ``generator_params_r2`` -- the same for the generator's own parameters of each generated image
  (:func:`util.ph.generator.params_features`: colour; per channel alpha, beta, beta^2, binarised, inverted):
  how much of the label is a statistic of the image model, i.e. texture rather than shape.

Variance explained is pooled over the components: ``1 - sum(residual^2) / sum((Y - mean)^2)``, so the
components weigh by their variance, as an MSE loss weighs them.  Fits are in-sample; with fewer than
``3 x`` as many labels as regressors the value is None (too few to say).

:func:`degeneracy_warnings` turns the numbers into advice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NAMES = ('participation_ratio', 'first_component_share', 'counts_r2', 'generator_params_r2')
JSON_KEY = 'diagnostics'
MAX_SHARE = 0.8  # a first component above this share: the label is nearly one number
MAX_COUNTS_R2 = 0.8  # counts explaining more than this: the label is mostly a feature count
MAX_PARAMS_R2 = 0.8  # the generator's parameters explaining more than this: a texture statistic


def _centred(labels):
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be a matrix [N, D], got shape {y.shape}")
    return y - y.mean(axis=0)


def eigenvalues(labels: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of the covariance of ``labels`` ``[N, D]``."""
    y = _centred(labels)
    if y.shape[0] < 2:
        return np.zeros(0)
    s = np.linalg.svd(y, compute_uv=False)
    return np.sort(s**2 / (y.shape[0] - 1))[::-1]


def participation_ratio(labels: np.ndarray) -> float | None:
    lam = eigenvalues(labels)
    total = float(lam.sum())
    return float(total**2 / float((lam**2).sum())) if total > 0 else None


def first_component_share(labels: np.ndarray) -> float | None:
    lam = eigenvalues(labels)
    total = float(lam.sum())
    return float(lam[0] / total) if total > 0 else None


def explained_variance(labels: np.ndarray, regressors: np.ndarray) -> float | None:
    """Share of the total variance of ``labels`` ``[N, D]`` explained by a least-squares fit with intercept on
    ``regressors`` ``[N, P]``; None when ``N < 3 (P + 1)`` or the labels are constant."""
    y = _centred(labels)
    x = np.asarray(regressors, dtype=np.float64).reshape(y.shape[0], -1)
    if y.shape[0] < 3 * (x.shape[1] + 1):
        return None
    total = float((y**2).sum())
    if not total > 0:
        return None
    x = x - x.mean(axis=0)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    return float(max(0.0, 1.0 - float((residual**2).sum()) / total))


def diagram_counts(diagrams: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, 2]`` numbers of finite H0 and H1 pairs of each diagram (as the vectorisers count them)."""
    from util.ph.vectorise_base import Pairs

    pairs = Pairs(diagrams)
    return np.stack([np.bincount(pairs.by_dim[h][0], minlength=pairs.count) for h in (0, 1)], axis=1)


def compute(labels: np.ndarray, counts: np.ndarray | None = None, generator_params: np.ndarray | None = None) -> dict:
    """The diagnostics of a label matrix as a dict of :data:`NAMES` (``generator_params_r2`` only when
    ``generator_params`` ``[N, P]`` is given; ``counts_r2`` is None without ``counts`` ``[N, 2]``)."""
    lam = eigenvalues(labels)
    total = float(lam.sum())
    out = {
        'participation_ratio': float(total**2 / float((lam**2).sum())) if total > 0 else None,
        'first_component_share': float(lam[0] / total) if total > 0 else None,
        'counts_r2': explained_variance(labels, counts) if counts is not None else None,
    }
    if generator_params is not None:
        out['generator_params_r2'] = explained_variance(labels, generator_params)
    out['count'] = int(np.shape(labels)[0])
    return out


def _fmt(v):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3g}'


def summary_line(diag: dict) -> str:
    """One line: ``label diagnostics: participation ratio 1.27, first component 88.5%, ...``."""
    share = diag.get('first_component_share')
    parts = [
        f"participation ratio {_fmt(diag.get('participation_ratio'))}",
        f"first component {'-' if share is None else f'{100 * share:.1f}%'}",
        f"counts R2 {_fmt(diag.get('counts_r2'))}",
    ]
    if 'generator_params_r2' in diag:
        parts.append(f"generator parameters R2 {_fmt(diag.get('generator_params_r2'))}")
    return f"label diagnostics ({diag.get('count', '?')} labels): " + ', '.join(parts)


def degeneracy_warnings(diag: dict) -> list[str]:
    """Advice for a degenerate label (empty list when none applies)."""
    out = []
    share, counts, params = (diag.get(k) for k in ('first_component_share', 'counts_r2', 'generator_params_r2'))
    if share is not None and share > MAX_SHARE:
        out.append(
            f"the label is nearly one number: its first principal component holds {100 * share:.0f}% of the "
            "variance; match the vectoriser's ranges to the diagrams (--max_life/--max_birth/--min_birth auto, "
            "--sigma auto, or --size_normalise), try --label_type split_image, or pretrain with "
            "--label_norm standard/whiten"
        )
    if counts is not None and counts > MAX_COUNTS_R2:
        out.append(
            f"the H0/H1 feature counts explain {100 * counts:.0f}% of the label: it mostly counts features; "
            "separate counts from shape (--label_type split_image) or narrow the ranges to where the pairs are"
        )
    if params is not None and params > MAX_PARAMS_R2:
        out.append(
            f"the generator's parameters explain {100 * params:.0f}% of the label: a texture statistic; "
            "narrow --beta_range (e.g. 1 2) or change the label (--label_type split_image, other --filtration)"
        )
    return out


MAX_ROWS = 4000  # rows a label matrix is diagnosed on (evenly spaced), so that large ones take seconds


def sample_rows(n: int, limit: int = MAX_ROWS) -> np.ndarray:
    """Indices of at most ``limit`` rows of ``n``, evenly spaced (all of them when ``n <= limit``)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.intp))


def generator_features(names: Sequence[str], folder: str) -> np.ndarray | None:
    """``[N, P]`` :func:`util.ph.generator.params_features` of the images ``names`` (paths relative to
    ``folder``) when ``folder`` was written by ``util/random_image.py`` and every name is one of its images;
    else None."""
    from util.ph import generator

    made = generator.folder_generator(folder)
    if made is None or not names:
        return None
    cfg, seed, stream, prefix, fmt = made
    index = [None if '/' in rel else generator.generated_image_index(rel, prefix, fmt) for rel in names]
    if any(i is None for i in index):
        return None
    return np.stack([generator.params_features(generator.image_params(cfg, seed, i, stream)) for i in index])
