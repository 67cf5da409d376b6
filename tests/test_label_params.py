"""Scale-aware label parameters (issue 20 item 2): per-dimension ranges, auto ranges and sigma, size-normalised
filtration values."""

import json

import numpy as np
import pytest

from util.errors import UserError
from util.ph import cubical
from util.ph.vectorise import make_vectoriser, vectoriser_from_params


def diagrams(n=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = []
        for h, (lo, hi, life) in ((0, (-9, -1, 6.0)), (1, (-3, 8, 2.5))):
            k = rng.integers(1, 12)
            b = rng.uniform(lo, hi, k)
            rows += [[h, x, x + rng.exponential(life)] for x in b]
        rows.append([0, -10, np.inf])
        out.append(np.array(rows))
    return out


@pytest.mark.parametrize(
    'label_type,extra',
    [('persistence_image', dict(sigma=1.0, max_birth=12, min_birth=-12)), ('histogram', {}), ('betti_curve', {})],
)
def test_two_lifetime_ranges_are_h0_then_h1(label_type, extra):
    dgms = diagrams()
    both = make_vectoriser(label_type, 200, max_life=[8.0, 4.0], **extra).transform(dgms)
    h0 = make_vectoriser(label_type, 200, max_life=8.0, **extra).transform(dgms)
    h1 = make_vectoriser(label_type, 200, max_life=4.0, **extra).transform(dgms)
    if label_type == 'histogram':  # parts: H0 life, H1 life, H0 birth, H1 birth (births weigh unclipped lives)
        np.testing.assert_array_equal(both[:, :50], h0[:, :50])
        np.testing.assert_array_equal(both[:, 50:100], h1[:, 50:100])
    else:
        np.testing.assert_array_equal(both[:, :100], h0[:, :100])
        np.testing.assert_array_equal(both[:, 100:], h1[:, 100:])
    assert not np.array_equal(h0, h1)


def test_equal_ranges_keep_the_original_params_record():
    vec = make_vectoriser('persistence_image', 200, max_life=[50.0, 50.0])
    assert vec.get_params() == make_vectoriser('persistence_image', 200).get_params()
    assert vec.get_params()['max_life'] == 50.0
    assert make_vectoriser('landscape', 200, max_birth=[5, 9]).get_params()['max_birth'] == [5.0, 9.0]


def test_auto_fits_per_dimension_quantiles_and_refuses_to_run_unfitted():
    dgms = diagrams()
    vec = vectoriser_from_params({'label_type': 'persistence_image', 'max_life': 'auto', 'sigma': 'auto'}, 200)
    assert set(vec.auto) == {'max_life', 'sigma'}
    with pytest.raises(UserError, match='auto'):
        vec.transform(dgms)
    vec.fit(dgms)
    p = vec.get_params()
    lives = [np.concatenate([d[d[:, 0] == h][:, 2] - d[d[:, 0] == h][:, 1] for d in dgms]) for h in (0, 1)]
    lives = [x[np.isfinite(x)] for x in lives]
    assert p['max_life'] == pytest.approx([np.quantile(x, 0.99) for x in lives])
    assert p['max_birth'] == 50.0 and p['sigma'] < 100  # ranges not asked for stay; sigma from the pixels
    side = np.mean([100.0 / g[0] for g in p['grids']])  # birth range -50..50 over the birth pixels
    assert p['sigma'] == pytest.approx((side / 2) ** 2)
    assert vec.transform(dgms).shape == (30, 200) and vec.auto == ()
    vec = vectoriser_from_params({'label_type': 'betti_curve', 'max_birth': 'auto'}, 200).fit(dgms)
    lo, hi = vec.get_params()['min_birth'], vec.get_params()['max_birth']
    assert -9 <= lo[0] < hi[0] <= -1 and -3 <= lo[1] < hi[1] <= 8  # births drawn in those ranges
    with pytest.raises(UserError, match='persistence image'):
        vectoriser_from_params({'label_type': 'histogram', 'sigma': 'auto'}, 200).fit(dgms)


def test_size_normalise_scales_finite_values_only():
    rng = np.random.default_rng(0)
    img = (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255
    dgm = cubical.compute_ph(img)
    scaled = cubical.normalise_size(dgm, 32)
    finite = dgm[:, 2] < cubical.INFINITE_DEATH
    np.testing.assert_allclose(scaled[finite, 1:3], dgm[finite, 1:3] * 8)
    assert (scaled[~finite, 2] == dgm[~finite, 2]).all() and (~finite).any()


def test_phdict_takes_two_ranges_auto_and_size_normalise(tmp_path, run_script):
    run_script('util/random_image.py', '-o', tmp_path / 'g', '-n', '12', '-is', '32', '-nw', '1', check=True)
    common = [tmp_path / 'g', '-it', 'jpg', '--label_type', 'persistence_image', '-nw', '1']
    run_script('PHdict.py', *common, '-o', tmp_path / 'a', '--max_life', '8', '4', check=True)
    meta = json.loads((tmp_path / 'a' / 'labels_persistence_image.json').read_text())
    assert meta['params']['max_life'] == [8.0, 4.0]
    res = run_script(
        'PHdict.py',
        *common,
        '-o',
        tmp_path / 'b',
        '--max_life',
        'auto',
        '--sigma',
        'auto',
        '--size_normalise',
        check=True,
    )
    assert 'fitted on 12 diagrams' in res.stdout
    meta = json.loads((tmp_path / 'b' / 'labels_persistence_image.json').read_text())
    args = json.loads((tmp_path / 'b' / 'args.json').read_text())
    assert meta['auto']['fitted'] == ['max_life', 'sigma'] and meta['size_normalise'] == 256
    assert args['max_life'] == meta['params']['max_life'] and args['sigma'] == meta['params']['sigma'] != 'auto'
    # the fitted vectoriser is the one the matrix was made with: rows equal it on the saved (scaled) diagrams
    vec = make_vectoriser('persistence_image', 200, **{k: meta['params'][k] for k in ('max_life', 'sigma')})
    paths = (tmp_path / 'b' / 'labels_persistence_image.txt').read_text().split()
    dgms = [np.load(tmp_path / 'b' / p.replace('.jpg', '.npy')) for p in paths]
    unscaled = np.load(tmp_path / 'a' / paths[0].replace('.jpg', '.npy'))
    fin = unscaled[:, 2] < cubical.INFINITE_DEATH
    np.testing.assert_allclose(dgms[0][fin, 1:3], unscaled[fin, 1:3] * 8)
    np.testing.assert_allclose(np.load(tmp_path / 'b' / 'labels_persistence_image.npy'), vec.transform(dgms), atol=1e-6)
    res = run_script('PHdict.py', *common, '-o', tmp_path / 'b', '--max_life', 'auto', '--sigma', 'auto', check=False)
    assert res.returncode != 0  # diagrams there were made --size_normalise: refused, not mixed
    res = run_script('PHdict.py', *common, '-o', tmp_path / 'c', '-ch', '--max_life', 'auto', check=False)
    assert res.returncode != 0 and '-ch' in res.stderr


def test_auto_shards_fit_the_same_sample_and_merge(tmp_path, run_script):
    run_script('util/random_image.py', '-o', tmp_path / 'g', '-n', '10', '-is', '32', '-nw', '1', check=True)
    flags = [tmp_path / 'g', '-it', 'jpg', '--label_type', 'landscape', '--max_birth', 'auto', '-nw', '1']
    for k in range(2):
        res = run_script('PHdict.py', *flags, '-o', tmp_path / 'sh', '--shard', f'{k}/2', check=True)
    assert 'merged 2 shards' in res.stdout  # equal fitted parameters in both parts
    whole = run_script('PHdict.py', *flags, '-o', tmp_path / 'one', check=True)
    assert whole.returncode == 0
    a = json.loads((tmp_path / 'sh' / 'labels_landscape.json').read_text())
    b = json.loads((tmp_path / 'one' / 'labels_landscape.json').read_text())
    assert a['params'] == b['params'] and isinstance(a['params']['max_birth'], list)
    np.testing.assert_array_equal(
        np.load(tmp_path / 'sh' / 'labels_landscape.npy'), np.load(tmp_path / 'one' / 'labels_landscape.npy')
    )
