"""Label vectorisations (util/ph/vectorise.py) against brute-force loop implementations and persim."""

import argparse
import math

import numpy as np
import pytest

from util.cli.label_flags import add_label_args, vectoriser_from_args
from util.errors import UserError
from util.ph.vectorise import (
    LABEL_TYPES,
    BettiCurveVectoriser,
    HistogramVectoriser,
    LandscapeVectoriser,
    PersistenceImageVectoriser,
    make_vectoriser,
    pixel_grid,
    pixel_masses,
    smoothing_matrix,
)

DBL_MAX = np.finfo(np.float64).max


def random_diagram(rng, n=60, with_infinite=False):
    """A cripser-like diagram (n, 9): H0/H1 (and a few H2) pairs, births in [-60, 60], lifetimes up to ~90."""
    hom = rng.choice([0, 1, 2], size=n, p=[0.5, 0.45, 0.05]).astype(float)
    birth = rng.uniform(-60, 60, n)
    life = rng.exponential(20, n)
    life[rng.random(n) < 0.1] = 0.0
    death = birth + life
    d = np.zeros((n, 9))
    d[:, 0], d[:, 1], d[:, 2] = hom, birth, death
    d[:, 3:] = rng.integers(0, 32, (n, 6))
    if with_infinite:
        d[0, :3] = (0, rng.uniform(-60, 0), DBL_MAX)
        if n > 1:
            d[1, :3] = (1, rng.uniform(-60, 60), np.inf)
    return d


def finite_pairs(diagram, h):
    """List of (birth, death) of the finite pairs of homology dimension h (plain Python)."""
    out = []
    for row in np.asarray(diagram):
        if int(row[0]) == h and math.isfinite(row[2]) and row[2] < 1e300:
            out.append((float(row[1]), float(row[2])))
    return out


# ---------------------------------------------------------------- brute-force references (plain loops)


def bf_bin(x, lo, hi, n):
    if n == 0 or x < lo or x > hi:
        return None
    edges = np.linspace(lo, hi, n + 1).tolist()
    for i in range(n):
        if edges[i] <= x < edges[i + 1]:
            return i
    return n - 1


def bf_hanning(b):
    return [0.5 - 0.5 * math.cos(2 * math.pi * k / (b - 1)) for k in range(b)]


def bf_smooth(y, b):
    """The original construction: reflected padding, 'valid' convolution, central crop (needs len(y) >= b)."""
    y = list(y)
    if b < 4:  # hanning(2) is all zeros, hanning(3) = [0, 1, 0]: both leave y unchanged
        return y
    w = bf_hanning(b)
    s = sum(w)
    w = [v / s for v in w]
    padded = y[b - 1 : 0 : -1] + y + y[-2 : -b - 1 : -1]
    res = []
    for k in range(len(padded) - b + 1):
        res.append(sum(w[m] * padded[k + b - 1 - m] for m in range(b)))
    c = (len(res) - len(y)) // 2
    return res[c : c + len(y)]


def bf_histogram(diagram, nb, max_life, max_birth, bandwidth):
    parts = []
    for h in (0, 1):
        hist = [0.0] * nb[h]
        for b, d in finite_pairs(diagram, h):
            i = bf_bin(min(max(d - b, 0.0), max_life), 0.0, max_life, nb[h])
            if i is not None:
                hist[i] += 1
        factor = np.linspace(0, max_life, nb[h])
        parts.append([v * (1 + f) for v, f in zip(hist, factor)])
    for h, (lo, hi) in ((0, (-max_birth, 0.0)), (1, (-max_birth, max_birth))):
        hist = [0.0] * nb[2 + h]
        for b, d in finite_pairs(diagram, h):
            i = bf_bin(b, lo, hi, nb[2 + h])
            if i is not None:
                hist[i] += max(d - b, 0.0)
        parts.append(hist)
    parts = [bf_smooth(p, bandwidth) for p in parts]
    scale = [1.0, 1.0, 0.01, 1.0]
    return np.array([math.log(v + 1) * s for p, s in zip(parts, scale) for v in p])


def bf_phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def bf_image(diagram, h, grid, min_birth, max_birth, max_life, sigma, power):
    nb, nl = grid
    pw, ph = (max_birth - min_birth) / nb, max_life / nl
    sd = math.sqrt(sigma)
    img = np.zeros((nb, nl))
    for b, d in finite_pairs(diagram, h):
        life = min(max(d - b, 0.0), max_life)
        w = life**power
        for i in range(nb):
            x0, x1 = min_birth + i * pw, min_birth + (i + 1) * pw
            mx = bf_phi((x1 - b) / sd) - bf_phi((x0 - b) / sd)
            for j in range(nl):
                y0, y1 = j * ph, (j + 1) * ph
                img[i, j] += w * mx * (bf_phi((y1 - life) / sd) - bf_phi((y0 - life) / sd))
    return img


def bf_betti(diagram, dim, min_birth, max_birth, max_life):
    out = []
    for h, n in ((0, dim // 2), (1, dim - dim // 2)):
        pairs = finite_pairs(diagram, h)
        for t in np.linspace(min_birth, max_birth, n):
            s = 0.0
            for b, d in pairs:
                if b < t < d:
                    s += min(max(d - b, 0.0), max_life)
            out.append(math.sqrt(s))
    return np.array(out)


def bf_landscape(diagram, dim, min_birth, max_birth, num):
    out = []
    for h, size in ((0, dim // 2), (1, dim - dim // 2)):
        k = min(num, size)
        r = size // k
        pairs = finite_pairs(diagram, h)
        values = [[0.0] * r for _ in range(k)]
        for j, t in enumerate(np.linspace(min_birth, max_birth, r)):
            tents = sorted((max(0.0, min(t - b, d - t)) for b, d in pairs), reverse=True)
            for i in range(min(k, len(tents))):
                values[i][j] = tents[i]
        for row in values:
            out.extend(math.sqrt(v) for v in row)
        out.extend([0.0] * (size - k * r))
    return np.array(out)


# ---------------------------------------------------------------- tests against the references


@pytest.fixture
def diagrams():
    rng = np.random.default_rng(1234)
    return [random_diagram(rng, n, with_infinite=(n % 2 == 0)) for n in (1, 7, 40, 60, 83)]


@pytest.mark.parametrize('dim,bandwidth', [(200, 1), (43, 0), (120, 4), (120, 5), (203, 7), (80, 3), (80, 2)])
def test_histogram_matches_brute_force(diagrams, dim, bandwidth):
    v = HistogramVectoriser(dim, max_life=40.0, max_birth=45.0, bandwidth=bandwidth)
    q = dim // 4
    assert v.num_bins == (q, q, q, dim - 3 * q)
    got = v.transform(diagrams)
    for g, d in zip(got, diagrams):
        np.testing.assert_allclose(g, bf_histogram(d, v.num_bins, 40.0, 45.0, bandwidth), rtol=1e-5, atol=1e-6)


def test_histogram_smoothing_changes_values(diagrams):
    raw = HistogramVectoriser(120, bandwidth=1).transform(diagrams)
    smooth = HistogramVectoriser(120, bandwidth=6).transform(diagrams)
    assert not np.allclose(raw, smooth)
    for b in (0, 1, 2, 3):
        np.testing.assert_array_equal(smoothing_matrix(10, b), np.eye(10))
    # smoothing preserves constants, including at the reflected edges
    np.testing.assert_allclose(smoothing_matrix(12, 7) @ np.ones(12), np.ones(12))


def test_histogram_num_bins_override(diagrams):
    v = make_vectoriser('histogram', 30, num_bins=(5, 10, 7, 8), bandwidth=4)
    assert v.dim == 30 and v.num_bins == (5, 10, 7, 8)
    for g, d in zip(v.transform(diagrams), diagrams):
        np.testing.assert_allclose(g, bf_histogram(d, (5, 10, 7, 8), 50.0, 50.0, 4), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match='sum'):
        make_vectoriser('histogram', 31, num_bins=(5, 10, 7, 8))


@pytest.mark.parametrize(
    'dim,min_birth,max_birth,max_life,sigma,power',
    [
        (100, None, 50.0, 50.0, 100.0, 1.0),
        (24, -30.0, 30.0, 20.0, 30.0, 2.0),
        (37, -10.0, 70.0, 35.0, 7.0, 0.5),
    ],
)
def test_persistence_image_matches_brute_force(diagrams, dim, min_birth, max_birth, max_life, sigma, power):
    v = PersistenceImageVectoriser(
        dim, max_life=max_life, max_birth=max_birth, min_birth=min_birth, sigma=sigma, power=power
    )
    lo = -max_birth if min_birth is None else min_birth
    assert [a * b for a, b in v.grids] == [dim // 2, dim - dim // 2]
    imgs = v.images(diagrams)
    got = v.transform(diagrams)
    for n, d in enumerate(diagrams):
        want = [bf_image(d, h, v.grids[h], lo, max_birth, max_life, sigma, power) for h in (0, 1)]
        for h in (0, 1):
            scale = max(want[h].max(), 1e-300)
            np.testing.assert_allclose(imgs[h][n], want[h], rtol=1e-6, atol=1e-10 * scale)
        flat = np.concatenate([np.sqrt(w.ravel()) for w in want])
        np.testing.assert_allclose(got[n], flat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    'dim,min_birth,max_birth,max_life,sigma,power,discrete',
    [
        (100, -50.0, 50.0, 50.0, 100.0, 1.0, False),  # the defaults: 10 x 5 pixels of 10 x 10
        (100, -50.0, 50.0, 50.0, 100.0, 1.0, True),  # same, values on a lattice (as image filtrations are)
        (24, -30.0, 30.0, 20.0, 30.0, 2.0, True),  # 6 x 2 pixels of 10 x 10
        (2 * 32, 0.0, 8.0, 4.0, 0.7, 1.5, False),  # 8 x 4 pixels of 1 x 1
    ],
)
def test_persistence_image_matches_persim(dim, min_birth, max_birth, max_life, sigma, power, discrete):
    persim = pytest.importorskip('persim')
    rng = np.random.default_rng(7)
    scale = (max_birth - min_birth) / 120.0
    ds = [random_diagram(rng, n) for n in (5, 50, 120)]
    for d in ds:
        if discrete:  # few distinct values: exercises the per-(diagram, value) aggregation
            d[:, 1:3] = np.round(d[:, 1:3] / 4.0) * 4.0
        d[:, 1:3] = (d[:, 1:3] + 60.0) * scale + min_birth
    v = make_vectoriser(
        'persistence_image', dim, max_life=max_life, max_birth=max_birth, min_birth=min_birth, sigma=sigma, power=power
    )
    pixel = (max_birth - min_birth) / v.grids[0][0]
    assert all(math.isclose((max_birth - min_birth) / nb, max_life / nl) for nb, nl in v.grids)
    imgs = v.images(ds)
    got = v.transform(ds)
    for h in (0, 1):
        imager = persim.PersistenceImager(
            birth_range=(min_birth, max_birth),
            pers_range=(0.0, max_life),
            pixel_size=pixel,
            weight_params={'n': power},
            kernel_params={'sigma': [[sigma, 0.0], [0.0, sigma]]},
        )
        assert tuple(imager.resolution) == v.grids[h]
        for n, d in enumerate(ds):
            p = d[d[:, 0] == h, 1:3].copy()
            p[:, 1] = np.clip(p[:, 1] - p[:, 0], 0, max_life)
            want = imager.transform(p, skew=False)
            # relative agreement; persim's inclusion-exclusion of CDFs leaves ~1e-16 absolute noise in far tails
            np.testing.assert_allclose(imgs[h][n], want, rtol=1e-6, atol=1e-12 * want.max())
            off = 0 if h == 0 else dim // 2
            np.testing.assert_allclose(got[n, off : off + want.size], np.sqrt(want.ravel()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dim,min_birth,max_birth,max_life', [(200, None, 50.0, 50.0), (31, -20.0, 35.0, 12.0)])
def test_betti_curve_matches_brute_force(diagrams, dim, min_birth, max_birth, max_life):
    v = BettiCurveVectoriser(dim, max_life=max_life, max_birth=max_birth, min_birth=min_birth)
    lo = -max_birth if min_birth is None else min_birth
    got = v.transform(diagrams)
    for g, d in zip(got, diagrams):
        want = bf_betti(d, dim, lo, max_birth, max_life)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(g[want == 0], 0.0)  # no rounding residue where no pair is alive


@pytest.mark.parametrize('dim,num', [(200, 2), (51, 3), (7, 5), (64, 1)])
def test_landscape_matches_brute_force(diagrams, dim, num):
    v = LandscapeVectoriser(dim, max_birth=55.0, min_birth=-40.0, num_landscapes=num)
    got = v.transform(diagrams)
    for g, d in zip(got, diagrams):
        np.testing.assert_allclose(g, bf_landscape(d, dim, -40.0, 55.0, num), rtol=1e-5, atol=1e-6)


def test_values_exactly_on_bin_edges_and_thresholds():
    """Births/deaths on grid points: strict inequalities of the Betti curve, closed last histogram bin."""
    rng = np.random.default_rng(2)
    d = np.zeros((80, 3))
    d[:, 0] = rng.integers(0, 2, 80)
    d[:, 1] = rng.integers(-5, 6, 80) * 10.0
    d[:, 2] = d[:, 1] + rng.integers(0, 8, 80) * 10.0
    d[:2, 1:] = [(-50.0, 0.0), (50.0, 60.0)]
    np.testing.assert_allclose(BettiCurveVectoriser(22)(d), bf_betti(d, 22, -50.0, 50.0, 50.0), atol=1e-6)
    np.testing.assert_allclose(LandscapeVectoriser(22)(d), bf_landscape(d, 22, -50.0, 50.0, 2), atol=1e-6)
    h = HistogramVectoriser(40)
    np.testing.assert_allclose(h(d), bf_histogram(d, h.num_bins, 50.0, 50.0, 1), rtol=1e-6, atol=1e-7)
    # a batch with many repeated values (aggregated persistence-image path), landscape ties
    batch = [d, d[::2], d[1::3] + 10.0, d[:0]]
    for dim in (24, 37):
        v = PersistenceImageVectoriser(dim, sigma=40.0)
        imgs = v.images(batch)
        for n, dd in enumerate(batch):
            for k in (0, 1):
                want = bf_image(dd, k, v.grids[k], -50.0, 50.0, 50.0, 40.0, 1.0)
                np.testing.assert_allclose(imgs[k][n], want, rtol=1e-6, atol=1e-10 * max(want.max(), 1e-300))
    for n, dd in enumerate(batch):
        np.testing.assert_allclose(
            LandscapeVectoriser(30, num_landscapes=4).transform(batch)[n],
            bf_landscape(dd, 30, -50.0, 50.0, 4),
            atol=1e-6,
        )


def test_cripser_diagrams_match_brute_force():
    cripser = pytest.importorskip('cripser')
    rng = np.random.default_rng(3)
    ds = [cripser.computePH(rng.uniform(-40, 40, (16, 16))) for _ in range(3)]
    assert any(np.any(d[:, 2] > 1e300) for d in ds)
    h = HistogramVectoriser(80, bandwidth=5)
    for g, d in zip(h.transform(ds), ds):
        np.testing.assert_allclose(g, bf_histogram(d, h.num_bins, 50.0, 50.0, 5), rtol=1e-5, atol=1e-6)
    for g, d in zip(BettiCurveVectoriser(40).transform(ds), ds):
        np.testing.assert_allclose(g, bf_betti(d, 40, -50.0, 50.0, 50.0), rtol=1e-5, atol=1e-5)
    for g, d in zip(LandscapeVectoriser(40).transform(ds), ds):
        np.testing.assert_allclose(g, bf_landscape(d, 40, -50.0, 50.0, 2), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- robustness and consistency


def all_vectorisers(dim):
    return [make_vectoriser(t, dim) for t in LABEL_TYPES]


@pytest.mark.parametrize('dim', [1, 2, 3, 5, 9, 101, 255])
def test_dimension_is_respected(dim, diagrams):
    for v in all_vectorisers(dim):
        assert v.dim == dim
        out = v.transform(diagrams)
        assert out.shape == (len(diagrams), dim) and out.dtype == np.float32
        assert np.isfinite(out).all()


def test_empty_and_infinite_only_diagrams():
    empties = [
        np.zeros((0, 9)),
        np.zeros((0, 3)),
        np.array([]),
        np.array([[0, -3.0, DBL_MAX, 0, 0, 0, 0, 0, 0], [0, 1.0, np.inf, 0, 0, 0, 0, 0, 0]]),
    ]
    for v in all_vectorisers(64):
        out = v.transform(empties)
        assert out.shape == (4, 64) and out.dtype == np.float32
        np.testing.assert_array_equal(out, 0.0)
        single = v(np.zeros((0, 9)))
        assert single.shape == (64,) and single.dtype == np.float32
        assert v.transform([]).shape == (0, 64)


def test_infinite_deaths_are_ignored():
    rng = np.random.default_rng(11)
    base = random_diagram(rng, 50)
    extra = np.zeros((3, 9))
    extra[:, :3] = [(0, -20.0, DBL_MAX), (1, 5.0, np.inf), (0, -49.0, DBL_MAX)]
    with_inf = np.concatenate([extra[:1], base, extra[1:]])
    for v in all_vectorisers(96):
        np.testing.assert_array_equal(v(with_inf), v(base))
        assert np.any(v(base) != 0)


def test_extreme_values_stay_finite():
    d = np.array(
        [
            [0, -1e200, 1e200, 0, 0, 0, 0, 0, 0],
            [1, -1e300, 1e300, 0, 0, 0, 0, 0, 0],
            [1, 3.0, 2.0, 0, 0, 0, 0, 0, 0],
            [0, np.nan, 1.0, 0, 0, 0, 0, 0, 0],
        ]
    )
    for v in all_vectorisers(40):
        out = v(d)
        assert out.dtype == np.float32 and np.isfinite(out).all()


def test_batched_equals_single(diagrams):
    for dim in (20, 101):
        for v in all_vectorisers(dim):
            batch = v.transform(diagrams)
            np.testing.assert_allclose(batch, np.stack([v(d) for d in diagrams]), rtol=1e-6, atol=1e-7)


def test_large_batch_is_chunked_consistently(monkeypatch):
    import util.ph.vectorise_base as vec

    rng = np.random.default_rng(5)
    ds = [random_diagram(rng, int(n)) for n in rng.integers(0, 90, 40)]
    v_pi, v_ls = make_vectoriser('persistence_image', 60), make_vectoriser('landscape', 60)
    whole = v_pi.transform(ds), v_ls.transform(ds)
    monkeypatch.setattr(vec, 'CHUNK_ELEMENTS', 500)  # forces one diagram per chunk
    np.testing.assert_allclose(v_pi.transform(ds), whole[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v_ls.transform(ds), whole[1], rtol=1e-6, atol=1e-7)


def test_pixel_masses_accurate_in_both_tails():
    edges = np.array([-12.0, -9.0, -8.0, -1.0, 0.0, 0.5, 8.0, 9.0, 12.0])
    got = pixel_masses(edges * 3.0, np.array([0.0]), 3.0)[0]
    upper = [0.5 * math.erfc(e / math.sqrt(2)) for e in edges]  # P(X > e), accurate for e > 0
    lower = [0.5 * math.erfc(-e / math.sqrt(2)) for e in edges]  # P(X < e), accurate for e < 0
    want = [lower[i + 1] - lower[i] if edges[i + 1] <= 0 else upper[i] - upper[i + 1] for i in range(len(edges) - 1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] > 0 and math.isclose(got[0], got[-1], rel_tol=1e-12)  # symmetric tails, both resolved
    np.testing.assert_allclose(pixel_masses(np.linspace(-60, 60, 7), np.array([-3.0, 0.0, 7.5]), 2.0).sum(1), 1.0)


def test_pixel_grid():
    assert pixel_grid(50, 100.0, 50.0) == (10, 5)
    assert pixel_grid(12, 60.0, 20.0) == (6, 2)
    assert pixel_grid(16, 1.0, 1.0) == (4, 4)
    assert pixel_grid(7, 100.0, 50.0) == (7, 1)
    assert pixel_grid(0, 1.0, 1.0) == (0, 0)


def test_invalid_parameters_raise_user_error():
    with pytest.raises(UserError, match='label_type'):
        make_vectoriser('wavelet', 10)
    with pytest.raises(UserError, match='positive integer'):
        make_vectoriser('histogram', 0)
    with pytest.raises(UserError, match='min_birth'):
        make_vectoriser('betti_curve', 10, min_birth=5.0, max_birth=5.0)
    with pytest.raises(UserError, match='sigma'):
        make_vectoriser('persistence_image', 10, sigma=0)
    with pytest.raises(UserError, match='num_landscapes'):
        make_vectoriser('landscape', 10, num_landscapes=0)
    with pytest.raises(UserError, match='max_life'):
        make_vectoriser('histogram', 10, max_life=-1)
    with pytest.raises(UserError, match='shape'):
        make_vectoriser('histogram', 10)(np.zeros((4, 2)))
    with pytest.raises(UserError, match='sequence of diagrams'):
        make_vectoriser('histogram', 10).transform(np.zeros((4, 9)))


# ---------------------------------------------------------------- command-line flags


def test_label_args_round_trip(diagrams):
    p = argparse.ArgumentParser()
    add_label_args(p, max_life='-ml', max_birth='-mb', bandwidth='-b', sigma='-s')
    help_text = p.format_help()
    for flag in (
        '--label_type',
        '--max_life',
        '--max_birth',
        '--min_birth',
        '--bandwidth',
        '--sigma',
        '--power',
        '--num_landscapes',
        '-ml',
        '-mb',
        '-b',
        '-s',
    ):
        assert flag in help_text
    defaults = p.parse_args([])
    assert defaults.label_type == 'histogram' and defaults.max_life == 50.0 and defaults.bandwidth == 1
    v = vectoriser_from_args(defaults, 40)
    assert isinstance(v, HistogramVectoriser) and v.get_params()['bandwidth'] == 1

    args = p.parse_args(
        ['--label_type', 'persistence_image', '-ml', '30', '-mb', '40', '--min_birth', '-20', '-s', '9', '--power', '2']
    )
    v = vectoriser_from_args(args, 50)
    assert isinstance(v, PersistenceImageVectoriser) and v.dim == 50
    assert (v.max_life, v.min_birth, v.max_birth, v.sigma, v.power) == (30.0, -20.0, 40.0, 9.0, 2.0)
    direct = make_vectoriser('persistence_image', 50, max_life=30, max_birth=40, min_birth=-20, sigma=9, power=2)
    np.testing.assert_array_equal(v.transform(diagrams), direct.transform(diagrams))

    args = p.parse_args(['--label_type', 'landscape', '--num_landscapes', '3', '-b', '5'])
    v = vectoriser_from_args(args, 33)
    assert isinstance(v, LandscapeVectoriser) and v.num_landscapes == 3 and v.dim == 33
    assert isinstance(vectoriser_from_args(argparse.Namespace(label_type='betti_curve'), 9), BettiCurveVectoriser)


def test_label_args_add_no_short_names_unless_asked():
    p = argparse.ArgumentParser()
    add_label_args(p)
    p.add_argument('-s', '--seed', type=int)  # a script's own short flag must not clash
    assert p.parse_args(['-s', '3']).seed == 3
    with pytest.raises(SystemExit):
        p.parse_args(['--label_type', 'nonsense'])
    with pytest.raises(TypeError):
        add_label_args(argparse.ArgumentParser(), seed='-x')


# ---------------------------------------------------------------- benchmark script


def test_bench_script_runs(run_script, tmp_path):
    pytest.importorskip('persim')
    pytest.importorskip('cripser')
    out = tmp_path / 'bench.json'
    res = run_script(
        'bench/vectorise_bench.py', '-n', 12, '--persim_diagrams', 3, '--repeats', 1, '--json', out, check=True
    )
    assert 'speed-up' in res.stdout
    import json

    result = json.loads(out.read_text())
    assert set(result['label_types']) == set(LABEL_TYPES)
    assert result['n_diagrams'] == 12 and result['mean_pairs'] > 20
    assert result['persim_max_rel_diff'] < 1e-9 and result['persim_speedup'] > 1
    bad = run_script('bench/vectorise_bench.py', '--dim', 14, '-n', 2, '--persim_diagrams', 1, check=False)
    assert bad.returncode == 2 and 'square pixels' in bad.stderr
