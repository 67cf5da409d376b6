"""Label layouts that carry shape (issue 20 item 3): split_image (counts apart from shape), --label_norm whiten."""

import json
import os

import numpy as np
import pytest

from tests.conftest import only_run_dir
from util.ph import diagnostics, label_norm
from util.ph.vectorise import make_vectoriser

TINY = ['-u', 'resnet18', '-e', '1', '--img_size', '24', '--crop_size', '20', '-b', '4', '-nw', '0', '--device', 'cpu']


def _diagram(n0, n1, shift=0.0):
    rows = [[0, -3 + shift + 0.1 * i, 1 + shift] for i in range(n0)] + [
        [1, 1 + shift, 4 + shift + 0.1 * i] for i in range(n1)
    ]
    return np.array(rows, float).reshape(-1, 3)


def test_split_image_separates_counts_from_shape():
    vec = make_vectoriser('split_image', 52, sigma=1.0, max_life=8, max_birth=12, min_birth=-12)
    few, many, moved = vec.transform([_diagram(2, 3), _diagram(20, 30), _diagram(2, 3, shift=4.0)])
    assert few[:2] == pytest.approx(np.log1p([2, 3]))
    assert many[:2] == pytest.approx(np.log1p([20, 30]))
    # each shape half is the square root of a distribution: unit norm, whatever the number of pairs
    for row in (few, many, moved):
        assert np.linalg.norm(row[2:27]) == pytest.approx(1, abs=1e-5)
        assert np.linalg.norm(row[27:]) == pytest.approx(1, abs=1e-5)
    # ten times the pairs at (nearly) the same places: the shape part barely moves, the plain image does
    plain = make_vectoriser('persistence_image', 50, sigma=1.0, max_life=8, max_birth=12, min_birth=-12)
    p_few, p_many = plain.transform([_diagram(2, 3), _diagram(20, 30)])
    assert np.linalg.norm(few[2:] - many[2:]) < 0.5 * np.linalg.norm(p_few - p_many) / np.linalg.norm(p_few)
    assert np.linalg.norm(few[2:] - moved[2:]) > 0.5  # moving the pairs changes the shape part
    assert vec.get_params()['label_type'] == 'split_image' and vec.get_params()['dim'] == 52


def test_whiten_equalises_the_top_directions():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 6)) * np.array([30, 5, 2, 1, 0.5, 0.1])
    m = base @ np.linalg.qr(rng.normal(size=(20, 20)))[0][:6]  # [500, 20], rank 6
    mean, comp, scales = label_norm.compute_whiten(m, k=3, floor=0.0)
    rec = label_norm.whiten_record(mean, comp, scales, 0.0, 'test', 500)
    mu, mapping = label_norm.whiten_from_record(rec, 20, 'test')
    w = (m - mu) @ mapping
    lam = diagnostics.eigenvalues(w)
    assert lam[:3] == pytest.approx([1, 1, 1], rel=1e-3) and lam[3] < 1e-6
    assert diagnostics.first_component_share(m) > 0.9 and diagnostics.first_component_share(w) < 0.34
    with pytest.raises(Exception, match='dimension'):
        label_norm.whiten_from_record(rec, 19, 'x')
    # the floor: no direction amplified beyond 1/floor of the RMS scale
    _, _, floored = label_norm.compute_whiten(m, k=6, floor=0.5)
    assert floored.min() >= 0.5 * np.sqrt(np.mean(np.linalg.svd(m - m.mean(0), compute_uv=False)[:6] ** 2 / 499)) - 1e-9


def test_whiten_stored_by_phdict_and_used_by_pretraining(tmp_path, run_script):
    run_script('util/random_image.py', '-o', tmp_path / 'g', '-n', '16', '-is', '32', '-nw', '1', check=True)
    ph = tmp_path / 'ph'
    common = ['--label_type', 'split_image', '--label_norm', 'whiten', '--label_norm_components', '4']
    res = run_script('PHdict.py', tmp_path / 'g', '-o', ph, '-it', 'jpg', '-nw', '1', '--numof_dims', '16', *common)
    assert res.returncode == 0, res.stderr
    meta = json.loads((ph / 'labels_split_image.json').read_text())
    rec = meta['label_whiten']
    assert rec['k'] == 4 and len(rec['components']) == 4 and len(rec['components'][0]) == 16
    flags = ['-t', tmp_path / 'g', '-pd', ph, '-pc', '-nc', '16', *common]
    run_script('pretraining.py', *flags, '-o', tmp_path / 'a', *TINY, check=True)
    with open(os.path.join(only_run_dir(tmp_path / 'a'), 'args.json'), encoding='utf-8') as f:
        stored = json.load(f)
    assert stored['label_whiten_components'] == [x for row in rec['components'] for x in row]
    assert stored['label_whiten_mean'] == rec['mean'] and stored['label_norm'] == 'whiten'
    # resume: the whitening stored in the run, even though the label json's changed since
    run_a = only_run_dir(tmp_path / 'a')
    meta['label_whiten']['scales'] = [3 * x for x in rec['scales']]
    (ph / 'labels_split_image.json').write_text(json.dumps(meta))
    run_script('pretraining.py', *flags, '--resume', run_a, *TINY, '-e', '2', check=True)
    with open(os.path.join(run_a, 'args_resume_epoch2.json'), encoding='utf-8') as f:
        resumed = json.load(f)
    assert resumed['label_whiten_scales'] == stored['label_whiten_scales']


def test_several_filtrations_concatenate_label_matrices(tmp_path, run_script):
    run_script('util/random_image.py', '-o', tmp_path / 'g', '-n', '8', '-is', '32', '-pb', '0', '-nw', '1', check=True)
    out = tmp_path / 'M'
    flags = ['-it', 'jpg', '-nw', '1', '--label_type', 'betti_curve', '--numof_dims', '20']
    res = run_script(
        'PHdict.py', tmp_path / 'g', '-o', out, *flags, '--filtration', 'signed_distance', 'none', 'none_inv'
    )
    assert res.returncode == 0, res.stderr
    joined = np.load(out / 'labels_betti_curve.npy')
    parts = [
        np.load(out / f'filtration_{f}' / 'labels_betti_curve.npy') for f in ('signed_distance', 'none', 'none_inv')
    ]
    np.testing.assert_array_equal(joined, np.concatenate(parts, axis=1))
    assert joined.shape == (8, 60)
    assert 'pretrain with -nc 60 --filtration signed_distance none none_inv' in res.stdout
    meta = json.loads((out / 'labels_betti_curve.json').read_text())
    assert meta['filtration'] == ['signed_distance', 'none', 'none_inv'] and 'diagnostics' in meta
    # the superlevel sets of grey are the sublevel sets of its negation: not the same label as 'none'
    assert not np.array_equal(parts[1], parts[2])
    run_script('PHdict.py', tmp_path / 'g', '-o', tmp_path / 'one', *flags, '--filtration', 'none_inv')
    np.testing.assert_array_equal(np.load(tmp_path / 'one' / 'labels_betti_curve.npy'), parts[2])
