"""Frozen-feature probes and the label controls of ``bench/transfer.py --probe``.

* :func:`pooled_features`: a network's last two stages (ResNets: ``layer3``, ``layer4``), each global-average
  pooled, concatenated; computed once per checkpoint for the whole labelled pool.
* :func:`probe_accuracy`: logistic regression (standardised features) and kNN (cosine, k = 10) fitted on a
  labelled subset, scored on the held-out test split (top-1, %).
* :func:`probe_split`: the subsets: unit ``p`` (pretraining seed) and subset ``j`` draw their own test split and
  their own K per class, from ``numpy.random.default_rng([p, j, 17])``, identical for every initialisation
  (so differences are paired).
* :func:`paired_margin`: the margin of one initialisation over another and its standard error with the
  pretraining seed as the unit (see :data:`SE_FORMULA`).
* :func:`shuffled_copy`: the "shuffled" control, a copy of a label matrix with its rows permuted across images
  (same marginals, no image-label link), with its own record of what it was made from.
* :func:`generator_params` / :func:`genparams_matrix`: the "genparams" control, the generator's own draws per
  image (util.ph.generator.image_params: colour; per channel alpha, beta and how it was binarised), the
  texture-statistic null.
* :func:`heldout_r2`: how well a pretrained network predicts its targets on fresh images, overall and beyond
  the first principal component of the training labels.
"""

import json
import math
import os
import re

import numpy as np

from util.errors import UserError
from util.io import fileio
from util.train.metrics import r_squared, r_squared_of_sums

SE_FORMULA = (
    's.e. = sd_p(d_p) / sqrt(P), d_p = mean over the J subsets of pretraining seed p of the paired difference '
    '(same subset, same test split); P pretraining seeds are the unit, subsets are nested in them'
)
KNN_K = 10
CLASSIFIERS = ('logreg', 'knn')


# ------------------------------------------------------------------------------------------ features
def _stages(model):
    """The modules whose pooled outputs make the features: ``layer3`` and ``layer4`` when the model has them
    (torchvision ResNets), else the last two top-level children (or children of ``features``) that have
    parameters and are not the classifier head."""
    from models.heads import head_paths

    if hasattr(model, 'layer3') and hasattr(model, 'layer4'):
        return [model.layer3, model.layer4]
    heads = set(head_paths(model))
    parent = getattr(model, 'features', None) or model
    kids = [(n, m) for n, m in parent.named_children() if any(True for _ in m.parameters()) and n not in heads]
    if len(kids) < 2:
        raise UserError(f"cannot find two feature stages in {type(model).__name__}")
    return [m for _, m in kids[-2:]]


def pooled_features(model, images, batch=256):
    """float32 [N, C3 + C4]: ``images`` (a float tensor [N, 3, H, W], normalised) through ``model`` in eval
    mode; each of the two last stages' outputs averaged over space, concatenated."""
    import torch

    grabbed = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: grabbed.append(out.mean(dim=(2, 3)))) for s in _stages(model)]
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                grabbed.clear()
                model(images[i : i + batch])
                rows.append(torch.cat(grabbed, dim=1).float().cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(rows, axis=0)


def outputs(model, images, batch=256):
    """float64 [N, D]: the model's (head's) outputs."""
    import torch

    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            rows.append(model(images[i : i + batch]).double().cpu().numpy())
    return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------------------------------ probes
def probe_split(targets, k, p, j, val_fraction, fixed_test=None):
    """(train indices, test indices) of subset ``j`` of unit ``p``: per class, a random test share
    ``val_fraction`` (unless ``fixed_test`` gives the test indices) and K training images of the rest
    (k = 0: all of them)."""
    rng = np.random.default_rng([int(p), int(j), 17])
    targets = np.asarray(targets)
    pool = np.arange(len(targets))
    if fixed_test is not None:
        pool = np.setdiff1d(pool, fixed_test)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(pool[targets[pool] == c])
        if fixed_test is None:
            n_test = int(round(len(idx) * val_fraction))
            test.extend(idx[:n_test].tolist())
            idx = idx[n_test:]
        if k:
            if k > len(idx):
                raise UserError(f"--labels {k}: class {c} has only {len(idx)} images left for training")
            idx = idx[:k]
        train.extend(idx.tolist())
    test = np.asarray(sorted(test) if fixed_test is None else fixed_test, dtype=np.int64)
    return np.asarray(sorted(train), dtype=np.int64), test


def probe_accuracy(features, targets, train, test):
    """{'logreg': top-1 %, 'knn': top-1 %} of the two probes fitted on ``train`` rows, scored on ``test``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    x_tr, x_te = features[train].astype(np.float64), features[test].astype(np.float64)
    y_tr, y_te = targets[train], targets[test]
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std < 1e-8] = 1.0
    z_tr, z_te = (x_tr - mean) / std, (x_te - mean) / std
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(z_tr, y_tr)
    acc = {'logreg': 100.0 * float(np.mean(lr.predict(z_te) == y_te))}
    knn = KNeighborsClassifier(n_neighbors=min(KNN_K, len(train)), metric='cosine').fit(z_tr, y_tr)
    acc['knn'] = 100.0 * float(np.mean(knn.predict(z_te) == y_te))
    return acc


def paired_margin(acc_a, acc_b):
    """Margin of a over b from accuracies ``[P][J]`` (pretraining seed p, subset j; the same subsets for both):
    the mean over p of the per-seed mean differences, and its standard error over p (:data:`SE_FORMULA`)."""
    a, b = np.asarray(acc_a, np.float64), np.asarray(acc_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired accuracies must have one shape [P, J], got {a.shape} and {b.shape}")
    d = (a - b).mean(axis=1)
    m = float(d.mean())
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float('nan')
    return {
        'mean': m,
        'se': se,
        'n_units': len(d),
        'unit_diffs': d.tolist(),
        'beyond_2se': bool(len(d) > 1 and m > 2 * se),
    }


def level_stats(acc):
    """{'mean', 'sd_units', 'n_units', 'n_subsets'} of accuracies ``[P][J]``: the mean over everything and the
    standard deviation over pretraining seeds of the per-seed means."""
    a = np.asarray(acc, np.float64)
    unit = a.mean(axis=1)
    return {
        'mean': float(a.mean()),
        'sd_units': float(np.std(unit, ddof=1)) if len(unit) > 1 else 0.0,
        'n_units': int(a.shape[0]),
        'n_subsets': int(a.shape[1]),
    }


# ------------------------------------------------------------------------------------------ controls
def shuffled_copy(src_dir, label_type, out_dir, seed):
    """Write ``out_dir/labels_<type>.{npy,txt,json}``: the matrix of ``src_dir`` with its rows permuted across
    images (``default_rng([seed, 29])``), the same names and per-image source records (the images are unchanged,
    so the product's staleness check still holds), and a ``shuffled`` record of the source and permutation.
    Returns the permutation (row i of the copy is row perm[i] of the source)."""
    from util.ph.labels import label_names, read_json, read_paths

    npy, txt, js = (os.path.join(src_dir, x) for x in label_names(label_type))
    matrix = np.load(npy, allow_pickle=False)
    names = read_paths(txt)
    meta = read_json(js) or {}
    perm = np.random.default_rng([int(seed), 29]).permutation(len(names))
    if len(names) > 1:
        while np.all(perm == np.arange(len(names))):
            perm = np.random.default_rng([int(seed), 29, int(perm[0]) + 1]).permutation(len(names))
    fileio.ensure_dir(out_dir)
    onpy, otxt, ojs = (os.path.join(out_dir, x) for x in label_names(label_type))
    with fileio.atomic_open(onpy, 'wb') as f:
        np.save(f, matrix[perm])
    fileio.write_text(otxt, ''.join(n + '\n' for n in names))
    meta = dict(meta)
    meta['shuffled'] = {
        'from': os.path.abspath(npy),
        'seed': int(seed),
        'rule': 'row i = source row perm[i], perm = numpy.random.default_rng([seed, 29]).permutation(N)',
        'note': 'labels permuted across images: same marginals, no image-label link (bench/transfer.py control)',
    }
    fileio.write_json(ojs, meta)
    return perm


GENPARAM_NAMES = ['colour'] + [f'{n}{c}' for c in range(3) for n in ('alpha', 'beta', 'bin_ge', 'bin_lt')]


def generator_params(cfg, seed, index, stream=0):
    """float64 [13]: image ``index``'s own draws under ``cfg`` (util.ph.generator.image_params): colour (0/1),
    then per channel alpha, beta, binarised as ``>= otsu`` (0/1), binarised as ``< otsu`` (0/1); a grey image
    repeats its one channel."""
    from util.ph.generator import image_params

    p = image_params(cfg, seed, index, stream)
    rows = [
        [p['alpha'][c], p['beta'][c], float(p['binarised'][c] and not p['inverted'][c]), float(p['inverted'][c])]
        for c in range(len(p['alpha']))
    ]
    while len(rows) < 3:
        rows.append(rows[0])
    return np.asarray([float(p['colour'])] + [v for r in rows for v in r], dtype=np.float64)


_INDEX = re.compile(r'(\d+)\.[A-Za-z]+$')


def genparams_matrix(images_dir):
    """(names, raw [N, 13]) for a folder written by util/random_image.py (its args.json gives the settings;
    the index is the number in each file name)."""
    from util.ph.generator import GeneratorConfig

    with open(os.path.join(images_dir, 'args.json'), encoding='utf-8') as f:
        a = json.load(f)
    cfg = GeneratorConfig(
        img_size=a['img_size'],
        alpha_range=tuple(a['alpha_range']),
        beta_range=tuple(a['beta_range']),
        prob_binary=a['prob_binary'],
        prob_colour=a['prob_colour'],
        spectrum=a.get('spectrum', 'original'),  # folders made before --spectrum: the original's
    )
    names = fileio.list_images(images_dir)
    rows = []
    for n in names:
        m = _INDEX.search(n)
        if not m:
            raise UserError(f"{n} in {images_dir} has no image index in its name")
        rows.append(generator_params(cfg, int(a['seed']), int(m.group(1)), int(a.get('stream', 0))))
    return names, np.stack(rows)


def standardise_columns(raw, mean=None, std=None):
    """(z, mean, std): columns z-scored (constant columns only centred)."""
    mean = raw.mean(axis=0) if mean is None else mean
    std = raw.std(axis=0) if std is None else std
    std = np.where(std > 1e-12, std, 1.0)
    return (raw - mean) / std, mean, std


def write_genparams(images_dir, out_dir):
    """Write the generator parameters of ``images_dir``, z-scored per column, as ``labels_random.{npy,txt,json}``
    in ``out_dir`` (pretraining.py ``-pd out_dir -pc --label_type random`` reads any such matrix row by image
    name).  Returns (dim, mean, std) of the raw parameters."""
    from util.ph.labels import label_names

    names, raw = genparams_matrix(images_dir)
    z, mean, std = standardise_columns(raw)
    fileio.ensure_dir(out_dir)
    npy, txt, js = (os.path.join(out_dir, x) for x in label_names('random'))
    with fileio.atomic_open(npy, 'wb') as f:
        np.save(f, z.astype(np.float32))
    fileio.write_text(txt, ''.join(n + '\n' for n in names))
    fileio.write_json(
        js,
        {
            'genparams': {
                'images': os.path.abspath(images_dir),
                'columns': GENPARAM_NAMES,
                'mean': mean.tolist(),
                'std': std.tolist(),
                'note': 'the generator\'s own draws per image, z-scored per column (bench/transfer.py control); '
                'stored under the name labels_random so pretraining.py -pc --label_type random reads it',
            }
        },
    )
    return z.shape[1], mean, std


# ------------------------------------------------------------------------------------------ held-out R^2
def heldout_r2(pred, target, train_labels):
    """{'r2': overall, 'r2_beyond_pc1': on the complement of the training labels' first principal component}.

    ``pred``/``target`` [N, D] in the space the network was trained in; R^2 is util.train.metrics.r_squared (1 -
    sum of squared errors / sum of squares of ``target`` about its own mean, summed over components; NaN when
    the targets never vary).  Beyond PC1: the same after projecting both residuals and centred targets onto the
    complement of PC1 of ``train_labels``."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    resid = target - pred
    centred = target - target.mean(axis=0)
    out = {'r2': r_squared(pred, target)}
    tl = np.asarray(train_labels, np.float64)
    tl = tl - tl.mean(axis=0)
    if tl.shape[1] > 1:
        _, _, vt = np.linalg.svd(tl, full_matrices=False)
        v = vt[0]
        r_perp = resid - np.outer(resid @ v, v)
        c_perp = centred - np.outer(centred @ v, v)
        out['r2_beyond_pc1'] = r_squared_of_sums(np.sum(r_perp**2), np.sum(c_perp**2))
        out['train_pc1_share'] = float(np.linalg.norm(tl @ v) ** 2 / max(np.sum(tl**2), 1e-300))
    return out
