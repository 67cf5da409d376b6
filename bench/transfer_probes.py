"""bench/transfer.py's frozen-feature probes (bench/probe.py on every init x pretraining seed x level x subset)
and the pretrainings' held-out R^2 on fresh generated images."""

import json
import os
import time

import numpy as np

from bench.transfer_data import _eval_tensor, probe_pool
from bench.transfer_presets import INIT_NAMES, MARGINS, PROBE_NAMES
from bench.transfer_report import r2_text
from bench.transfer_runner import _finished, _gen_flags, _hash, _nw, _ph_flags, _ph_key
from bench.transfer_timing import probe_units
from util.io import fileio


def _load_net(cfg, init, rec, p):
    """The network of ``init``'s pretraining seed ``p`` (scratch: an untrained one, torch seed p)."""
    import torch

    import models

    if init == 'scratch':
        torch.manual_seed(p)
        model, _ = models.load_for(cfg['arch'], None, 10)
    else:
        model, _ = models.load_for(cfg['arch'], rec['weights'])
    return model


def run_probe(cfg, pre_by_seed, inits, log, runner=None):
    """Logistic regression and kNN on frozen pooled features, for every init x pretraining seed x labels level x
    subset; returns the probe record (accuracies, per-level statistics and paired margins).  With ``runner``,
    each network's probe is timed into its work folder and counted by its progress line."""
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # one run's threads (OpenMP/BLAS threads spinning against other processes on shared cores are many times
    # slower than one thread)
    torch.set_num_threads(cfg['threads'])
    with threadpool_limits(cfg['threads']):
        return _run_probe(cfg, pre_by_seed, inits, log, runner)


def _run_probe(cfg, pre_by_seed, inits, log, runner):
    from bench import probe

    x, targets, fixed, desc = probe_pool(cfg)
    P, J = cfg['pre_seeds'], cfg['subsets']
    levels = cfg['labels']
    splits = {
        (k, p, j): probe.probe_split(targets, 0 if k == 'all' else int(k), p, j, cfg['val_fraction'], fixed)
        for k in levels
        for p in range(P)
        for j in range(J)
    }
    acc = {i: {k: {c: [[0.0] * J for _ in range(P)] for c in probe.CLASSIFIERS} for k in levels} for i in inits}
    t0 = time.time()
    for init in inits:
        for p in range(P):
            t_net = time.time()
            model = _load_net(cfg, init, None if init == 'scratch' else pre_by_seed[init][p], p)
            feats = probe.pooled_features(model, x)
            for k in levels:
                for j in range(J):
                    train, test = splits[(k, p, j)]
                    for c, v in probe.probe_accuracy(feats, targets, train, test).items():
                        acc[init][k][c][p][j] = v
            log(
                f"probe {PROBE_NAMES[init]:>18} seed {p}: "
                + '  '.join(
                    f"k={k} logreg {np.mean(acc[init][k]['logreg'][p]):.1f} knn {np.mean(acc[init][k]['knn'][p]):.1f}"
                    for k in levels
                )
            )
            if runner is not None:
                _finished(runner, cfg, 'probe', f"{PROBE_NAMES[init]}, seed {p}", time.time() - t_net, probe_units(cfg))
    table = {}
    for c in probe.CLASSIFIERS:
        table[c] = {}
        for k in levels:
            cell = {'inits': {i: probe.level_stats(acc[i][k][c]) for i in inits}, 'margins': {}}
            for a, b in MARGINS:
                if a in inits and b in inits:
                    cell['margins'][f'{a}-{b}'] = probe.paired_margin(acc[a][k][c], acc[b][k][c])
            table[c][k] = cell
    n_test = {k: int(len(splits[(k, 0, 0)][1])) for k in levels}
    return {
        'pool': desc,
        'features': 'global-average-pooled outputs of the last two stages (ResNets: layer3, layer4), concatenated',
        'classifiers': {
            'logreg': 'sklearn LogisticRegression(C=1, lbfgs) on features standardised with the subset\'s statistics',
            'knn': f'sklearn KNeighborsClassifier(k={probe.KNN_K}, cosine) on the same standardised features',
        },
        'subsets': 'unit p, subset j: per class a random test share --val_fraction and K training images, '
        'numpy default_rng([p, j, 17]); identical for every init',
        'pre_seeds': P,
        'subsets_per_seed': J,
        'test_images': n_test,
        'se_formula': probe.SE_FORMULA,
        'seconds': time.time() - t0,
        'acc': acc,
        'table': table,
    }


def run_r2(runner, cfg, pre_by_seed, files, log):
    """Held-out R^2 of each pretraining (seed) on fresh images (util/random_image.py --seed 1, the same settings),
    in the space it was trained in (z-scored when --label_norm standard), overall and beyond the first
    principal component of its training labels.  ph and shuffled (and the PH heads of contrastive_ph and
    contrastive_shuffled) are scored against the fresh images' real PH labels, random against their random
    targets, genparams against their generator parameters; contrastive alone has no target."""
    import torch

    from bench import probe
    from util.ph.labels import find_label_matrix, load_label_matrix

    n = cfg['r2_images']
    with_ph = ('ph', 'shuffled', 'contrastive_ph', 'contrastive_shuffled')
    inits = [i for i in with_ph + ('random', 'genparams') if i in pre_by_seed]
    if not n or not inits:
        return None
    gen = _gen_flags(cfg, n, 1)
    fresh = os.path.join(runner.work, 'images_fresh', _hash(gen))
    runner.run('util/random_image.py', ['-o', fresh] + gen, 'random_image.py (fresh images)')
    names = fileio.list_images(fresh)
    lt, dims = cfg['label_type'], cfg['dims']
    targets, train_labels = {}, {}
    if any(i in inits for i in with_ph):
        fresh_ph = os.path.join(runner.work, 'ph_fresh', _ph_key(fresh, cfg))
        runner.run(
            'PHdict.py', [fresh, '-o', fresh_ph, '-it', 'png', '-nw', _nw(cfg, 2)] + _ph_flags(cfg), 'PHdict.py (fresh)'
        )
        m, nm = load_label_matrix(*find_label_matrix(fresh_ph, lt), expected_dim=dims)
        row = {x: r for r, x in enumerate(nm)}
        tm, _ = load_label_matrix(*find_label_matrix(files['ph_dir'], lt), expected_dim=dims)
        for i in with_ph:
            targets[i], train_labels[i] = np.asarray(m)[[row[x] for x in names]], np.asarray(tm)
    if 'genparams' in inits:
        with open(os.path.join(files['genparams_dir'], 'labels_random.json'), encoding='utf-8') as f:
            g = json.load(f)['genparams']
        _, raw = probe.genparams_matrix(fresh)
        targets['genparams'], _, _ = probe.standardise_columns(raw, np.asarray(g['mean']), np.asarray(g['std']))
        gm, _ = load_label_matrix(
            *find_label_matrix(files['genparams_dir'], 'random'), expected_dim=len(probe.GENPARAM_NAMES)
        )
        train_labels['genparams'] = np.asarray(gm)
    x = _eval_tensor([fileio.load_image(os.path.join(fresh, q), 'RGB') for q in names], cfg['pre_crop'], True)
    torch.set_num_threads(cfg['threads'])
    out = {'images': fresh, 'n': len(names), 'inits': {}}
    for init in inits:
        per = []
        for p, rec in enumerate(pre_by_seed[init]):
            if init == 'random':
                from util.ph import random_targets

                keys = [random_targets.image_key(q) for q in names]
                y = random_targets.random_matrix(p, keys, dims)
                tl, _ = load_label_matrix(*find_label_matrix(files['random_dirs'][p], 'random'), expected_dim=dims)
                tl = np.asarray(tl)
            else:
                y, tl = targets[init], train_labels[init]
            with open(os.path.join(rec['run_dir'], 'args.json'), encoding='utf-8') as f:
                a = json.load(f)
            if a.get('label_norm') == 'standard' and a.get('label_norm_mean'):
                mean, std = np.asarray(a['label_norm_mean']), np.asarray(a['label_norm_std'])
                y, tl = (y - mean) / std, (tl - mean) / std
            pred = probe.outputs(_load_net(cfg, init, rec, p), x)
            per.append(probe.heldout_r2(pred, y, tl))
        out['inits'][init] = {
            'per_seed': per,
            'r2': float(np.mean([r['r2'] for r in per])),
            'r2_beyond_pc1': float(np.mean([r.get('r2_beyond_pc1', float('nan')) for r in per])),
        }
        log(
            f"held-out R^2 ({INIT_NAMES[init]}, {len(names)} fresh images): "
            + ', '.join(f"{r2_text(r['r2'])} / {r2_text(r.get('r2_beyond_pc1'))}" for r in per)
            + ' (overall / beyond PC1, per seed)'
        )
    return out
