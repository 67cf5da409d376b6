"""util/ph/cubical.py: grey conversion, the fast exact Otsu mask, filtrations, diagrams of known shapes, worker pool."""

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter
from skimage.filters import threshold_otsu

from bench.reference import signed_distance as reference_signed_distance  # the original's filtration
from util.errors import UserError
from util.ph import cubical as ph
from util.ph.otsu import otsu_threshold_from_counts
from util.plot.ph_plot import plot_ph

INF_DEATH = 0.5 * np.finfo(np.float64).max


def smooth_noise(rng, shape, sigma=2.0):
    a = gaussian_filter(rng.random(shape), sigma)
    return ((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)


def pairs(diagram):
    """The diagram as a sorted multiset of (dim, birth, death) rows: what both engines must agree on."""
    d = np.asarray(diagram, dtype=np.float64)[:, :3]
    return d[np.lexsort((d[:, 2], d[:, 1], d[:, 0]))]


def assert_same_diagram(out, ref):
    """``out`` (default engine) holds exactly the pairs of the cripser diagram ``ref``."""
    assert out.dtype == np.float64 and out.shape[1] == 9
    np.testing.assert_array_equal(pairs(out), pairs(ref))


def bars(diagram, dim, min_life=2.0):
    """Rows of homology dimension ``dim`` whose lifetime exceeds ``min_life`` (essential ones included)."""
    d = diagram[diagram[:, 0] == dim]
    return d[(d[:, 2] - d[:, 1]) > min_life]


def canvas(n=48):
    yy, xx = np.mgrid[:n, :n]
    return yy, xx, np.full((n, n), 230, np.uint8)


# ----------------------------------------------------------------------------------------------------
# Otsu and the signed distance are bit for bit the original's


def _varied_uint8_images(rng, count):
    for t in range(count):
        n, m = rng.integers(4, 60), rng.integers(4, 60)
        kind = t % 5
        if kind == 0:
            yield rng.integers(0, 256, (n, m)).astype(np.uint8)
        elif kind == 1:
            lo = rng.integers(0, 255)
            yield rng.integers(lo, 256, (n, m)).astype(np.uint8)  # narrow value range
        elif kind == 2:
            yield ((rng.random((n, m)) < 0.3) * rng.integers(1, 256)).astype(np.uint8)  # two values
        elif kind == 3:
            yield np.clip(rng.normal(128, rng.uniform(0.5, 60), (n, m)), 0, 255).astype(np.uint8)
        else:
            yield smooth_noise(rng, (n, m))


def test_fast_otsu_mask_equals_skimage_on_float_image():
    rng = np.random.default_rng(0)
    for u8 in _varied_uint8_images(rng, 400):
        g = u8.astype(np.float64)
        mask = ph.otsu_mask(u8)
        if g.min() == g.max():
            assert mask is None
        else:
            np.testing.assert_array_equal(mask, g >= threshold_otsu(g))
            np.testing.assert_array_equal(ph.otsu_mask(g), mask)  # float route agrees


def test_threshold_from_counts_equals_skimage_value():
    rng = np.random.default_rng(12)
    for u8 in _varied_uint8_images(rng, 200):
        g = u8.astype(np.float64)
        t = otsu_threshold_from_counts(np.bincount(u8.ravel(), minlength=256))
        assert (t is None) == (g.min() == g.max())
        if t is not None:
            assert t == threshold_otsu(g)


def test_signed_distance_filtration_is_bit_identical_to_original():
    rng = np.random.default_rng(1)
    for u8 in _varied_uint8_images(rng, 150):
        ref = reference_signed_distance(u8.astype(np.float64))
        out = ph.compute_filtration(u8)
        assert out.dtype == np.float64 and out.shape == u8.shape
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(ph.compute_filtration(Image.fromarray(u8)), ref)  # PIL-counted route


def test_scipy_route_matches_with_numba_edt_off(monkeypatch):
    """The scipy route (two feature transforms) gives the same filtration when the numba EDT is switched off."""
    monkeypatch.setattr(ph, 'NUMBA_EDT', False)
    rng = np.random.default_rng(2)
    for u8 in _varied_uint8_images(rng, 40):
        np.testing.assert_array_equal(ph.compute_filtration(u8), reference_signed_distance(u8.astype(np.float64)))


def test_numba_edt_route_equals_scipy():
    assert ph.NUMBA_EDT
    rng = np.random.default_rng(3)
    for u8 in _varied_uint8_images(rng, 100):
        bw = ph.otsu_mask(u8)
        if bw is None:
            continue
        np.testing.assert_array_equal(ph._signed_distance(bw), distance_transform_edt(bw) - distance_transform_edt(~bw))


def test_signed_distance_equals_cripser_library_transform():
    rng = np.random.default_rng(4)
    u8 = smooth_noise(rng, (40, 50))
    lib = ph.cripser.apply_transform(u8.astype(np.float64), 'signed_distance')
    np.testing.assert_array_equal(ph.compute_filtration(u8), lib)


def test_compute_ph_equals_direct_cripser():
    rng = np.random.default_rng(5)
    for _ in range(5):
        u8 = smooth_noise(rng, (48, 40))
        ref = ph.cripser.computePH(reference_signed_distance(u8.astype(np.float64)))
        out = ph.compute_ph(u8, engine='cripser')
        assert out.dtype == np.float64 and out.shape[1] == 9
        np.testing.assert_array_equal(out, ref)
        assert_same_diagram(ph.compute_ph(u8), ref)
        assert_same_diagram(ph.compute_ph(u8, engine='unionfind'), ref)


# ----------------------------------------------------------------------------------------------------
# grey conversion


def test_to_grey_pil_array_and_file(tmp_path):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    pil = Image.fromarray(rgb)
    np.testing.assert_array_equal(ph.to_grey(pil), np.asarray(pil.convert('L'), dtype=np.float64))
    np.testing.assert_allclose(ph.to_grey(rgb), rgb @ np.array([0.2989, 0.5870, 0.1140]))
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(ph.to_grey(rgba), ph.to_grey(rgb))
    path = tmp_path / 'x.png'
    pil.save(path)
    g = ph.to_grey(path)
    assert g.dtype == np.float64 and g.shape == (20, 30)
    np.testing.assert_array_equal(g, np.asarray(pil.convert('L'), dtype=np.float64))
    with pytest.raises(UserError):
        ph.to_grey(np.zeros((2, 3, 4, 5)))


def test_colour_array_uses_luma_then_original_pipeline():
    rng = np.random.default_rng(7)
    rgb = np.stack([smooth_noise(rng, (36, 36)) for _ in range(3)], axis=-1)
    grey = np.dot(rgb[..., :3], [0.2989, 0.5870, 0.1140])
    ref = ph.cripser.computePH(reference_signed_distance(grey))
    np.testing.assert_array_equal(ph.compute_ph(rgb, engine='cripser'), ref)
    assert_same_diagram(ph.compute_ph(rgb), ref)


# ----------------------------------------------------------------------------------------------------
# filtrations


def test_constant_image_gives_zero_filtration():
    for value in (0, 128, 255):
        img = np.full((32, 32), value, np.uint8)
        for kind in ph.FILTRATIONS:
            f = ph.compute_filtration(img, kind)
            assert f.shape == (32, 32) and f.dtype == np.float64
            if kind == 'none':
                assert np.all(f == value)
            elif kind == 'none_inv':  # superlevel sets of grey (issue 20)
                assert np.all(f == -value)
            else:
                assert np.all(f == 0), kind
        dgm = ph.compute_ph(img)
        assert bars(dgm, 0, min_life=-1).shape[0] == 1  # a single class, born at 0, essential
        assert dgm[0, 1] == 0 and dgm[0, 2] >= INF_DEATH
    assert np.all(ph.compute_filtration(np.full((8, 8), 3.5)) == 0)  # float constant, Otsu not called


def test_every_filtration_matches_cripser_transform_of_otsu_mask():
    rng = np.random.default_rng(8)
    u8 = smooth_noise(rng, (30, 34))
    g = u8.astype(np.float64)
    bw = g >= threshold_otsu(g)
    for kind in ph.FILTRATIONS:
        f = ph.compute_filtration(u8, kind)
        assert f.dtype == np.float64 and f.shape == u8.shape and f.flags.c_contiguous
        if kind == 'none':
            np.testing.assert_array_equal(f, g)
        elif kind == 'none_inv':  # superlevel sets of grey (issue 20)
            np.testing.assert_array_equal(f, -g)
        else:
            lib = ph.cripser.apply_transform(bw.astype(np.float64), kind, threshold=0.5)
            np.testing.assert_array_equal(f, lib.astype(np.float64), kind)
        assert ph.compute_ph(u8, kind).shape[1] == 9
    with pytest.raises(UserError, match='filtration'):
        ph.compute_filtration(u8, 'geodesic')


# ----------------------------------------------------------------------------------------------------
# known topology (dark shapes on a bright background: the shapes enter the sublevel filtration first)


def test_one_disk_has_one_long_h0_bar():
    yy, xx, img = canvas()
    img[(yy - 24) ** 2 + (xx - 24) ** 2 <= 10**2] = 20
    dgm = ph.compute_ph(img)
    h0 = bars(dgm, 0)
    assert h0.shape[0] == 1 and h0[0, 2] >= INF_DEATH  # the essential class
    assert h0[0, 1] == pytest.approx(-10, abs=1)  # born at the disk's centre, depth = radius
    assert bars(dgm, 1).shape[0] == 0


def test_two_disks_have_two_long_h0_bars():
    yy, xx, img = canvas()
    img[(yy - 24) ** 2 + (xx - 12) ** 2 <= 7**2] = 20
    img[(yy - 24) ** 2 + (xx - 36) ** 2 <= 7**2] = 20
    dgm = ph.compute_ph(img)
    h0 = bars(dgm, 0)
    assert h0.shape[0] == 2
    assert (h0[:, 2] >= INF_DEATH).sum() == 1
    finite = h0[h0[:, 2] < INF_DEATH][0]
    assert finite[1] == pytest.approx(-7, abs=1)  # born at the other disk's centre
    assert 0 < finite[2] < 12  # dies when the grown disks meet in the gap
    assert bars(dgm, 1).shape[0] == 0


def test_annulus_has_one_h1_bar():
    yy, xx, img = canvas()
    r2 = (yy - 24) ** 2 + (xx - 24) ** 2
    img[(r2 <= 16**2) & (r2 >= 9**2)] = 20
    dgm = ph.compute_ph(img)
    h1 = bars(dgm, 1)
    assert h1.shape[0] == 1
    birth, death = h1[0, 1], h1[0, 2]
    assert birth < 0 < death  # the ring closes below 0, the hole fills above
    assert death == pytest.approx(9, abs=1.5)  # the hole's centre is ~9 pixels from the ring
    assert bars(dgm, 0).shape[0] == 1


# ----------------------------------------------------------------------------------------------------
# files, pool, plot


def _write_jpegs(folder, count, rng):
    paths = []
    for i in range(count):
        p = folder / f'im{i}.jpg'
        Image.fromarray(smooth_noise(rng, (40, 40))).convert('RGB').save(p)
        paths.append(str(p))
    return paths


def test_ph_of_file_equals_original_pipeline(tmp_path):
    rng = np.random.default_rng(9)
    (path,) = _write_jpegs(tmp_path, 1, rng)
    grey = np.array(Image.open(path).convert('L'), dtype=np.float64)
    ref = ph.cripser.computePH(reference_signed_distance(grey))
    np.testing.assert_array_equal(ph.ph_of_file(path, engine='cripser'), ref)
    assert_same_diagram(ph.ph_of_file(path), ref)


@pytest.mark.parametrize('workers', [1, 2])
def test_iter_diagrams_reports_bad_files_and_loads_saved(tmp_path, workers):
    rng = np.random.default_rng(10)
    paths = _write_jpegs(tmp_path, 4, rng)
    (tmp_path / 'empty.jpg').write_bytes(b'')
    np.save(tmp_path / 'saved.npy', ph.ph_of_file(paths[0]))
    np.save(tmp_path / 'vector.npy', np.zeros(5))
    jobs = [(p, 'image', 'signed_distance') for p in paths]
    jobs += [
        (str(tmp_path / 'empty.jpg'), 'image', 'signed_distance'),
        (str(tmp_path / 'saved.npy'), 'npy', 'signed_distance'),
        (str(tmp_path / 'vector.npy'), 'npy', 'signed_distance'),
    ]
    results = {i: (d, e) for i, d, e in ph.iter_diagrams(jobs, workers=workers, chunksize=1)}
    assert sorted(results) == list(range(len(jobs)))
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(results[i][0], ph.ph_of_file(p))
        assert results[i][1] is None
    assert results[4][0] is None and 'empty.jpg' in results[4][1]
    np.testing.assert_array_equal(results[5][0], results[0][0])
    assert results[6][0] is None
    assert 'vector.npy' in results[6][1] and 'not a persistence diagram' in results[6][1]


def test_plot_ph_writes_png(tmp_path):
    rng = np.random.default_rng(11)
    img = smooth_noise(rng, (40, 40))
    f = ph.compute_filtration(img)
    dgm = ph.diagram_of_filtration(f)
    out = tmp_path / 'p.png'
    plot_ph(str(out), img, f, dgm, np.linspace(0, 1, 20), title='x')
    with Image.open(out) as im:
        assert im.format == 'PNG' and im.size[0] > 3 * im.size[1]
    plot_ph(str(tmp_path / 'q.png'), img, f, np.zeros((0, 9)))  # empty diagram, no vector
    assert (tmp_path / 'q.png').stat().st_size > 0
