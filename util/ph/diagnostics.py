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
    if out['count'] >= 2 and not total > 0:
        out['constant'] = True  # every label the same: nothing to learn (see degeneracy_warnings)
    if counts is not None:
        out['without_pairs'] = int((np.asarray(counts).reshape(out['count'], -1).sum(axis=1) == 0).sum())
    return out


def _fmt(v):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3g}'


def summary_line(diag: dict) -> str:
    """One line: ``label diagnostics: participation ratio 1.27, first component 88.5%, ...``."""
    if diag.get('constant'):
        return f"label diagnostics ({diag.get('count', '?')} labels): every label is the same (no variance)"
    share = diag.get('first_component_share')
    parts = [
        f"participation ratio {_fmt(diag.get('participation_ratio'))}",
        f"first component {'-' if share is None else f'{100 * share:.1f}%'}",
        f"counts R2 {_fmt(diag.get('counts_r2'))}",
    ]
    if 'generator_params_r2' in diag:
        parts.append(f"generator parameters R2 {_fmt(diag.get('generator_params_r2'))}")
    return f"label diagnostics ({diag.get('count', '?')} labels): " + ', '.join(parts)


def _range_levers(settings: dict) -> str:
    """The range flags not yet in use, as advice (``''`` when none is left)."""
    import inspect

    from util.ph.cubical import SIZE_FILTRATIONS
    from util.ph.vectorise import AUTO_PARAMS, VECTORISERS

    cls = VECTORISERS.get(settings.get('label_type'))
    names = set(inspect.signature(cls.__init__).parameters) if cls is not None else set(AUTO_PARAMS)
    auto = set(settings.get('auto') or ())
    ranges = [n for n in ('max_life', 'max_birth', 'min_birth') if n in names and n not in auto]
    levers = [f"{'/'.join('--' + n for n in ranges)} auto"] if ranges else []
    if (
        'sigma' in names
        and 'sigma' not in auto
        and settings.get('label_type') in ('persistence_image', 'split_image', None)
    ):
        levers.append('--sigma auto')
    filtrations = settings.get('filtration')
    filtrations = filtrations if isinstance(filtrations, list) else [filtrations]
    if not settings.get('size_normalise') and all(f is None or f in SIZE_FILTRATIONS for f in filtrations):
        levers.append('--size_normalise')
    return ', '.join(levers[:-1]) + (' or ' if len(levers) > 1 else '') + (levers[-1] if levers else '')


def degeneracy_warnings(diag: dict, settings: dict | None = None) -> list[str]:
    """Advice for a degenerate label (empty list when none applies).  ``settings`` (else ``diag['settings']``, as
    PHdict.py records it): the levers in use -- ``label_type``, ``auto`` (the parameters fitted), ``size_normalise``,
    ``filtration``, ``label_norm`` -- which are then not suggested again; without them every lever is."""
    s = settings if settings is not None else diag.get('settings') or {}
    split = s.get('label_type') == 'split_image'
    norm = s.get('label_norm')
    ranges = _range_levers(s)
    if diag.get('constant'):
        empty, n = diag.get('without_pairs'), diag.get('count')
        if empty is not None and empty == n:
            return [
                f"every label is the same (a constant label matrix): none of the {n} diagrams has a finite pair "
                "(constant images, e.g. all black or all white?); pretraining would regress a constant: use "
                "images with structure"
            ]
        return [
            "every label is the same (a constant label matrix), although the diagrams have pairs: the "
            "vectoriser's ranges miss them; "
            + (
                f"match them to the pairs ({ranges})"
                if ranges
                else "give --max_life/--max_birth/--min_birth that cover the pairs"
            )
        ]
    out = []
    share, counts, params = (diag.get(k) for k in ('first_component_share', 'counts_r2', 'generator_params_r2'))
    if share is not None and share > MAX_SHARE:
        advice = [f"match the vectoriser's ranges to the diagrams ({ranges})"] if ranges else []
        if not split:
            advice.append('try --label_type split_image')
        if norm in (None, 'none'):
            advice.append('pretrain with --label_norm standard/whiten')
        elif norm == 'standard':
            advice.append('pretrain with --label_norm whiten')
        out.append(
            f"the label is nearly one number: its first principal component holds {100 * share:.0f}% of the "
            "variance; "
            + (', '.join(advice[:-1]) + (', or ' if len(advice) > 1 else '') + advice[-1] if advice else _ALL_IN_USE)
        )
    if counts is not None and counts > MAX_COUNTS_R2:
        advice = [] if split else ['separate counts from shape (--label_type split_image)']
        advice.append(f"narrow the ranges to where the pairs are ({ranges})" if ranges else '')
        if norm != 'whiten':
            advice.append('pretrain with --label_norm whiten')
        advice = [a for a in advice if a]
        out.append(
            f"the H0/H1 feature counts explain {100 * counts:.0f}% of the label: it mostly counts features; "
            + (' or '.join(advice) if advice else _ALL_IN_USE)
        )
    if params is not None and params > MAX_PARAMS_R2:
        change = ('' if split else '--label_type split_image, ') + 'other --filtration'
        out.append(
            f"the generator's parameters explain {100 * params:.0f}% of the label: a texture statistic; "
            f"narrow --beta_range (e.g. 1 2) or change the label ({change})"
        )
    return out


_ALL_IN_USE = (
    "the usual levers are already in use: the images may vary in little but this; try other images or another "
    "--filtration"
)


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
