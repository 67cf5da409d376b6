"""--label_type ph_class (issue 28, 2a): k-means of the whitened PH labels, fitted and stored by PHdict.py, assigned
the same way by the loader, trained with cross-entropy; its shuffled control."""

import importlib
import json
import shutil

import numpy as np
import pytest

from tests.faultlib import TINY, expect_ok, run
from util.ph import ph_class


def test_kmeans_is_deterministic_and_as_good_as_sklearn_on_blobs():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    x, truth = make_blobs(n_samples=400, centers=6, n_features=5, cluster_std=0.6, random_state=3)
    c1, ids1, inertia1 = ph_class.kmeans(x, 6, seed=7)
    c2, ids2, inertia2 = ph_class.kmeans(x, 6, seed=7)
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_array_equal(c1, c2)
    ref = KMeans(6, n_init=10, random_state=0).fit(x)
    assert inertia1 <= 1.01 * ref.inertia_, (inertia1, ref.inertia_)
    assert adjusted_rand_score(truth, ids1) == pytest.approx(1.0)
    # the inertia is that of the returned ids and centroids
    assert inertia1 == pytest.approx(((x - c1[ids1]) ** 2).sum())


def test_kmeans_refills_empty_clusters(monkeypatch):
    """A seeding that leaves clusters empty (all centres on one point) ends with every cluster used, well below
    the one-cluster inertia; with fewer distinct points than K the ids stay the nearest centroid's (as the
    loader assigns)."""
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=200, centers=4, n_features=3, cluster_std=0.3, random_state=1)
    one = ((x - x.mean(0)) ** 2).sum()
    monkeypatch.setattr(ph_class, 'kmeans_pp', lambda x, k, rng: np.repeat(x[:1], k, axis=0))
    c, ids, inertia = ph_class.kmeans(x, 4, seed=0)
    assert np.bincount(ids, minlength=4).min() >= 1 and inertia < 0.5 * one
    monkeypatch.undo()
    dup = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]]), 10, axis=0)  # 3 distinct points, K = 5
    c, ids, _ = ph_class.kmeans(dup, 5, seed=0)
    np.testing.assert_array_equal(ids, ph_class.nearest(dup, c)[0])
    assert len(np.unique(ids)) == 3
    with pytest.raises(Exception, match='K <= the number of points'):
        ph_class.kmeans(dup[:3], 4, seed=0)


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """16 generated images and PHdict.py --label_type ph_class --ph_classes 4 on them."""
    root = tmp_path_factory.mktemp('ph_class')
    gen, ph = root / 'gen', root / 'ph'
    expect_ok(run('random_image', '-o', gen, '-n', 16, '-is', 48, '-pb', 0.5, '-pc', 0.5, '-nw', 1, '--preview', 0))
    argv = [gen, '-o', ph, '-it', 'jpg', '-nw', 1, '--label_type', 'ph_class', '--ph_classes', 4, '--numof_dims', 20]
    res = expect_ok(run('PHdict', *argv))
    return root, gen, ph, argv, res


def _stored(ph):
    ids = np.load(ph / 'labels_ph_class.npy')
    names = (ph / 'labels_ph_class.txt').read_text().splitlines()
    return ids, names, json.loads((ph / 'labels_ph_class.json').read_text())


def test_phdict_writes_class_ids_and_the_record_that_made_them(made):
    root, gen, ph, argv, res = made
    ids, names, meta = _stored(ph)
    assert ids.dtype == np.int64 and ids.shape == (16,) and len(names) == 16
    assert names == (ph / 'labels_persistence_image.txt').read_text().splitlines()
    sizes = np.bincount(ids, minlength=4)
    assert sizes.min() >= 1 and meta['params']['classes']['sizes'] == sizes.tolist()
    assert f'smallest {sizes.min()}' in res.out and f'largest {sizes.max()}' in res.out, res
    # the stored record reproduces the stored ids from the stored base matrix
    base = np.load(ph / 'labels_persistence_image.npy')
    np.testing.assert_array_equal(ph_class.assign(meta['params']['classes'], base), ids)
    assert meta['dim'] == 4 and meta['params']['ph_class_of'] == 'persistence_image'


def test_rerun_keeps_the_stored_classes_and_another_seed_refits(made):
    root, gen, ph, argv, _ = made
    before = (ph / 'labels_ph_class.npy').read_bytes(), (ph / 'labels_ph_class.json').read_bytes()
    res = expect_ok(run('PHdict', *argv))
    assert 'seed 1); kept; class sizes' in res.out and '0 done, 16 skipped' in res.out, res
    assert ((ph / 'labels_ph_class.npy').read_bytes(), (ph / 'labels_ph_class.json').read_bytes()) == before
    other = root / 'ph_seed2'
    shutil.copytree(ph, other)
    res = expect_ok(run('PHdict', *[other if a == ph else a for a in argv], '--seed', 2))
    assert 'seed 2); class sizes' in res.out, res
    assert _stored(other)[2]['params']['fit']['seed'] == 2


def _args(argv):
    return importlib.import_module('pretraining').get_args_parser().parse_args([str(a) for a in argv])


def test_loader_assigns_fresh_images_the_class_phdict_stored(made, tmp_path):
    """-val images the matrix has no rows for get their class computed in the loader (vectorise -> whiten ->
    nearest centroid from labels_ph_class.json): the same as PHdict.py's for the same picture."""
    from util.cli.build import build_pretraining_sets

    root, gen, ph, _, _ = made
    ids, names, _ = _stored(ph)
    val = tmp_path / 'val'
    shutil.copytree(gen, val / 'copy')  # the same pictures under other names: no row in the matrix
    args = _args(['-t', gen, '-val', val, '-pd', ph, '-pc', '--label_type', 'ph_class', '-nc', 4, *TINY])
    train, val_set = build_pretraining_sets(args)
    got = {n: int(train[i][1].numpy().argmax()) for i, n in enumerate(train.rel_paths)}
    assert got == dict(zip(names, ids.tolist()))
    fresh = {n.split('/', 1)[1]: val_set[i][1].numpy() for i, n in enumerate(val_set.rel_paths)}
    for n, i in zip(names, ids):
        assert fresh[n].sum() == 1 and int(fresh[n].argmax()) == i, n


def test_pretraining_trains_the_classes_with_cross_entropy(made, tmp_path):
    root, gen, ph, _, _ = made
    out = tmp_path / 'out'
    res = expect_ok(
        run(
            'pretraining',
            '-t',
            gen,
            '-pd',
            ph,
            '-pc',
            '--label_type',
            'ph_class',
            '-nc',
            4,
            '-o',
            out,
            '-e',
            1,
            '-b',
            8,
            *TINY,
        )
    )
    log = [json.loads(x) for x in next(out.glob('*/log.jsonl')).read_text().splitlines() if x.strip()]
    loss = [r['train_loss'] for r in log if 'train_loss' in r]
    assert loss and all(np.isfinite(loss)), res
    args = json.loads(next(out.glob('*/args.json')).read_text())
    assert args['label_type'] == 'ph_class'


def test_shuffled_control_permutes_the_class_ids_across_images(made, tmp_path):
    """bench/probe.shuffled_copy (the shuffled control) on labels_ph_class: the same class sizes, the ids
    permuted across images, read by pretraining as such."""
    from bench.probe import shuffled_copy
    from util.cli.build import build_pretraining_sets

    root, gen, ph, _, _ = made
    ids, names, _ = _stored(ph)
    shuffled = tmp_path / 'shuffled'
    perm = shuffled_copy(str(ph), 'ph_class', str(shuffled), 0)
    got = np.load(shuffled / 'labels_ph_class.npy')
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ids[perm])
    assert np.array_equal(np.bincount(got, minlength=4), np.bincount(ids, minlength=4)) and not np.array_equal(got, ids)
    args = _args(['-t', gen, '-pd', shuffled, '-pc', '--label_type', 'ph_class', '-nc', 4, *TINY])
    train, _ = build_pretraining_sets(args)
    seen = {n: int(train[i][1].numpy().argmax()) for i, n in enumerate(train.rel_paths)}
    assert seen == dict(zip(names, got.tolist()))
