"""util/ph/unionfind.py: the union-find engine gives cripser's diagrams exactly (pairs per dimension, essential
classes included), names pixels of the right values, and works from a read-only install."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from util.errors import UserError
from util.ph import cubical as ph
from util.ph import unionfind as uf
from util.ph.distance import signed_sqedt
from util.ph.generator import GeneratorConfig, generate_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DBL_MAX = np.finfo(np.float64).max


def pairs(diagram):
    """Sorted (dim, birth, death) rows of a diagram."""
    d = np.asarray(diagram, dtype=np.float64)[:, :3]
    return d[np.lexsort((d[:, 2], d[:, 1], d[:, 0]))]


def cripser_v(f):
    return ph.diagram_of_filtration(f, engine='cripser')


def cripser_t(f):
    return ph.cripser.computePH_T(np.ascontiguousarray(f, dtype=np.float64), maxdim=1)


def check_locations(f, dgm):
    """value(creator) = birth, value(destroyer) = death; essential: death DBL_MAX, destroyer (-1, -1, -1)."""
    f = np.asarray(f, dtype=np.float64)
    assert dgm.dtype == np.float64 and dgm.shape[1] == 9
    rc = dgm[:, 3:5].astype(np.int64)
    np.testing.assert_array_equal(f[rc[:, 0], rc[:, 1]], dgm[:, 1])
    ess = dgm[:, 2] == DBL_MAX
    assert ess.sum() == 1 and dgm[ess, 0] == 0  # one essential class: the H0 of everything
    np.testing.assert_array_equal(dgm[ess, 6:9], -1)
    fin = dgm[~ess]
    rc = fin[:, 6:8].astype(np.int64)
    np.testing.assert_array_equal(f[rc[:, 0], rc[:, 1]], fin[:, 2])
    assert (fin[:, 1] < fin[:, 2]).all()  # no zero-length pair
    np.testing.assert_array_equal(dgm[:, [5, 8]][~ess], 0)  # z = 0


def assert_equal_to_cripser(f, t_too=True):
    f = np.asarray(f, dtype=np.float64)
    got = uf.diagram(f)
    np.testing.assert_array_equal(pairs(got), pairs(cripser_v(f)))
    check_locations(f, got)
    np.testing.assert_array_equal(pairs(ph.diagram_of_filtration(f)), pairs(got))  # 'auto' is union-find
    if t_too:
        got_t = uf.diagram(f, 'T')
        np.testing.assert_array_equal(pairs(got_t), pairs(cripser_t(f)))
        check_locations(f, got_t)


# ----------------------------------------------------------------------------------------------------
# equality with cripser


def test_generated_images_through_every_filtration():
    """200 generated images (grey and colour, binary and not) x every filtration x Otsu / Canny edges."""
    cfg = GeneratorConfig(img_size=24, prob_binary=0.5, prob_colour=0.5)
    cfg.validate()
    for i in range(200):
        img = generate_image(cfg, 12, i)
        gradients = (False, True) if i % 4 == 0 else (False,)  # Canny is the slow part: every 4th image
        for gradient in gradients:
            for kind in ph.FILTRATIONS:
                f = ph.compute_filtration(img, kind, gradient=gradient)
                ref = cripser_v(f)
                got = ph.diagram_of_filtration(f, engine='unionfind')
                np.testing.assert_array_equal(pairs(got), pairs(ref), err_msg=f"image {i} {kind} {gradient}")
                check_locations(f, got)
            # the signed-distance route of compute_ph (integer keys, no float filtration) gives the same
            fast = ph.compute_ph(img, gradient=gradient, engine='unionfind')
            np.testing.assert_array_equal(pairs(fast), pairs(ph.compute_ph(img, gradient=gradient, engine='cripser')))


def test_random_images_with_heavy_ties():
    """1200 small integer and float images, few distinct values, V and T constructions."""
    rng = np.random.default_rng(0)
    for t in range(1200):
        h, w = rng.integers(2, 10, 2)
        kind = t % 4
        if kind == 0:
            f = rng.integers(0, 3, (h, w)).astype(np.float64)
        elif kind == 1:
            f = rng.integers(-5, 6, (h, w)).astype(np.float64)
        elif kind == 2:
            f = rng.choice([-0.7, 0.1, 0.1, 2.5, np.pi], (h, w))
        else:
            f = rng.random((h, w)) * 10
        assert_equal_to_cripser(f)


def test_binary_masks():
    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w = rng.integers(2, 14, 2)
        f = (rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.float64)
        assert_equal_to_cripser(f)
        assert_equal_to_cripser(1.0 - f)


def test_edge_cases():
    cases = [
        np.zeros((1, 1)),
        np.full((1, 1), -3.0),
        np.zeros((2, 2)),
        np.array([[1.0, 0], [0, 1]]),
        np.array([[0.0, 1], [1, 0]]),
        np.full((5, 7), 4.0),
        np.array([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]),
        np.array([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]),
        np.array([[1.0, 1, 1], [1, 0, 1], [1, 1, 1]]),
    ]
    rng = np.random.default_rng(2)
    for n in (2, 3, 7, 12):
        cases += [rng.integers(0, 3, (1, n)).astype(float), rng.random((n, 1)), np.arange(n, dtype=float)[None]]
    for f in cases:
        assert_equal_to_cripser(f, t_too=min(f.shape) > 1)
        if min(f.shape) == 1:  # one pixel thick: cripser's T construction takes it as it is
            np.testing.assert_array_equal(pairs(uf.diagram(f, 'T')), pairs(cripser_t(f)))
    # one-pixel-thick rings and lines inside larger images
    ring = np.ones((6, 6))
    ring[1:5, 1] = ring[1:5, 4] = ring[1, 1:5] = ring[4, 1:5] = 0
    diag = 1.0 - np.eye(6)
    for f in (ring, diag, 1 - ring, 1 - diag):
        assert_equal_to_cripser(f)


def test_large_magnitudes():
    rng = np.random.default_rng(3)
    for _ in range(100):
        f = rng.choice([-1e6, -1.0, 0.0, 1e-6, 1e6], rng.integers(2, 9, 2))
        assert_equal_to_cripser(f)
        assert_equal_to_cripser(f + rng.random(f.shape))


def test_signed_sqedt_equals_scipy():
    rng = np.random.default_rng(4)
    for _ in range(200):
        h, w = rng.integers(1, 40, 2)
        bw = rng.random((h, w)) < rng.uniform(0.02, 0.98)
        if bw.all() or not bw.any():
            with pytest.raises(ValueError):
                signed_sqedt(bw)
            continue
        k = signed_sqedt(bw)
        assert k.dtype == np.int64
        ref = distance_transform_edt(bw) - distance_transform_edt(~bw)
        np.testing.assert_array_equal(np.sign(k) * np.sqrt(np.abs(k)), ref)
        np.testing.assert_array_equal(uf.diagram_of_sqkeys(k), uf.diagram(ref))


# ----------------------------------------------------------------------------------------------------
# conventions


def test_ties_name_the_row_major_first_and_last_pixels():
    f = np.array([[2.0, 0.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 2.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    d = uf.diagram(f)
    ess = d[d[:, 2] == DBL_MAX]
    np.testing.assert_array_equal(ess[0], [0, 0, DBL_MAX, 0, 1, 0, -1, -1, -1])  # first minimum, row-major
    h0 = d[(d[:, 0] == 0) & (d[:, 2] < DBL_MAX)]
    # the later minima die where they first touch an earlier component (row-major first joining pixel)
    assert sorted(map(tuple, h0[:, [1, 2, 3, 4, 6, 7]].tolist())) == [
        (0.0, 2.0, 0, 3, 0, 2),
        (0.0, 2.0, 2, 0, 1, 0),
        (1.0, 2.0, 2, 2, 1, 2),
    ]
    assert not (d[:, 0] == 1).any()
    # H1: the ring of 0s encloses 1s around a 5: one class (0, 5).  In the reverse pass (descending value,
    # ties row-major last first) the 5 and the 1s form one complement component, and the first 0 added,
    # (4, 4), joins it to the outside: creator (4, 4); destroyer = that component's first pixel, the 5.
    g = np.array([[0.0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 5, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    h1 = uf.diagram(g)
    h1 = h1[h1[:, 0] == 1]
    np.testing.assert_array_equal(h1, [[1, 0, 5, 4, 4, 0, 2, 2, 0]])


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        uf.diagram(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError):
        uf.diagram(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        uf.diagram(np.zeros((2, 2)), construction='X')
    with pytest.raises(UserError, match='ph_engine'):
        ph.diagram_of_filtration(np.zeros((3, 3)), engine='fast')
    with pytest.raises(UserError, match='2-D'):
        ph.diagram_of_filtration(np.zeros((3, 3, 3)), engine='unionfind')
    assert ph.ENGINES == ('auto', 'unionfind', 'cripser')
    assert ph.resolve_engine('auto', 2) == 'unionfind' and ph.resolve_engine('auto', 3) == 'cripser'


def test_3d_filtration_goes_to_cripser_under_auto():
    f = np.random.default_rng(5).random((4, 4, 3))
    np.testing.assert_array_equal(ph.diagram_of_filtration(f), ph.cripser.computePH(f, maxdim=1))


@pytest.mark.parametrize('workers', [1, 2])
def test_iter_diagrams_engine_in_jobs(tmp_path, workers):
    from PIL import Image

    cfg = GeneratorConfig(img_size=32, prob_binary=0.3, prob_colour=0.0)
    paths = []
    for i in range(4):
        p = tmp_path / f'{i}.png'
        Image.fromarray(generate_image(cfg, 5, i)).save(p)
        paths.append(str(p))
    jobs = [(p, 'image', 'signed_distance', False, engine) for p in paths for engine in ph.ENGINES]
    got = {i: d for i, d, e in ph.iter_diagrams(jobs, workers=workers, chunksize=1)}
    for i in range(0, len(jobs), len(ph.ENGINES)):
        np.testing.assert_array_equal(got[i + 2], ph.ph_of_file(jobs[i][0], engine='cripser'))
        for j in (i, i + 1):
            np.testing.assert_array_equal(pairs(got[j]), pairs(got[i + 2]))


# ----------------------------------------------------------------------------------------------------
# PHdict with either engine


def test_phdict_labels_equal_with_either_engine(tmp_path, run_script):
    from PIL import Image

    cfg = GeneratorConfig(img_size=40, prob_binary=0.5, prob_colour=0.5)
    (tmp_path / 'in').mkdir()
    for i in range(6):
        Image.fromarray(generate_image(cfg, 9, i)).save(tmp_path / 'in' / f'{i}.png')
    out = {}
    for engine in ('unionfind', 'cripser'):
        o = tmp_path / engine
        run_script(
            'PHdict.py',
            tmp_path / 'in',
            '-o',
            o,
            '-it',
            'png',
            '-nw',
            '2',
            '--ph_engine',
            engine,
            '-ch',
            '--label_type',
            'persistence_image',
            '--numof_dims',
            '50',
            check=True,
        )
        out[engine] = o
    u, c = out['unionfind'], out['cripser']
    for i in range(6):
        np.testing.assert_array_equal(pairs(np.load(u / f'{i}.npy')), pairs(np.load(c / f'{i}.npy')))
        np.testing.assert_array_equal(np.load(u / f'{i}hist.npy'), np.load(c / f'{i}hist.npy'))
    # float sums over the pairs run in each engine's row order: equal to rounding
    np.testing.assert_allclose(
        np.load(u / 'labels_persistence_image.npy'), np.load(c / 'labels_persistence_image.npy'), rtol=1e-6, atol=1e-7
    )
    assert (u / 'labels_persistence_image.txt').read_text() == (c / 'labels_persistence_image.txt').read_text()
    # a rerun with the other engine keeps the outputs: they hold the same pairs
    res = run_script('PHdict.py', tmp_path / 'in', '-o', u, '-it', 'png', '--ph_engine', 'cripser', '-ch', check=True)
    assert '0 done, 6 skipped' in res.stdout
    # ... and so does a label matrix: it is accepted as it is, not recomputed
    st = (u / 'labels_persistence_image.npy').stat()
    res = run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        u,
        '-it',
        'png',
        '--ph_engine',
        'cripser',
        '--label_type',
        'persistence_image',
        '--numof_dims',
        '50',
        check=True,
    )
    assert '0 done, 6 skipped' in res.stdout
    assert (u / 'labels_persistence_image.npy').stat().st_mtime_ns == st.st_mtime_ns
    # settings.json records the engines that made the diagrams there, without refusing the mix
    import json

    assert json.loads((u / 'settings.json').read_text())['diagram']['ph_engines'] == ['cripser', 'unionfind']
    assert json.loads((c / 'settings.json').read_text())['diagram']['ph_engines'] == ['cripser']


# ----------------------------------------------------------------------------------------------------
# numba cache in a read-only install


def _read_only_copy(tmp_path):
    """A copy of util/ whose util/ph/__pycache__ (beside the engine) and the home cache cannot be created (files
    in their place, and no write permission: either stops a non-root user, the files stop root too)."""
    pkg = tmp_path / 'install'
    shutil.copytree(os.path.join(ROOT, 'util'), pkg / 'util', ignore=shutil.ignore_patterns('__pycache__'))
    (pkg / 'util' / 'ph' / '__pycache__').write_text('')
    home = tmp_path / 'home'
    home.mkdir()
    (home / '.cache').write_text('')
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    uid = os.getuid() if hasattr(os, 'getuid') else 'user'
    (tmp / f'numba-cache-{uid}').write_text('')
    for d in (pkg / 'util' / 'ph', pkg / 'util', pkg, home, tmp):
        os.chmod(d, 0o555)
    return pkg, home, tmp


@pytest.mark.slow
@pytest.mark.parametrize('where', ['temp_dir', 'in_memory'])
def test_read_only_install_does_not_crash(tmp_path, where):
    pkg, home, tmp = _read_only_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ('NUMBA_CACHE_DIR', 'XDG_CACHE_HOME')}
    env.update(HOME=str(home), PYTHONPATH=str(pkg), PYTHONDONTWRITEBYTECODE='1')
    if where == 'temp_dir':
        writable = tmp_path / 'writable'
        writable.mkdir()
        env['TMPDIR'] = str(writable)  # numba's cache goes to a per-user dir there
    else:
        env['TMPDIR'] = str(tmp)  # nothing writable: compiled in memory, with one warning
    code = (
        "import os, numpy as np, warnings\n"
        "warnings.simplefilter('always')\n"
        "from util.ph import unionfind as uf\n"
        "assert uf.__file__.startswith(%r), uf.__file__\n"
        "d = uf.diagram(np.array([[0., 2, 1], [2, 3, 2], [1, 2, .5]]))\n"
        "print(sorted(map(tuple, d[:, :3].tolist())))\n"
        "from util.ph import jit\n"
        "print('CACHE', os.environ.get('NUMBA_CACHE_DIR'), len(jit.UNCACHED))\n"
    ) % str(pkg)
    try:
        res = subprocess.run(
            [sys.executable, '-c', code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        for d in (pkg / 'util' / 'ph', pkg / 'util', pkg, home, tmp):
            os.chmod(d, 0o755)
    assert res.returncode == 0, res.stderr
    assert (
        '[(0.0, 0.0, %r), (0.0, 0.5, 2.0), (0.0, 1.0, 2.0), (0.0, 1.0, 2.0), (1.0, 2.0, 3.0)]' % float(DBL_MAX)
        in res.stdout
    )
    cache_line = res.stdout.split('CACHE ')[1].split()
    if where == 'temp_dir':
        assert cache_line[0].startswith(str(tmp_path / 'writable')) and cache_line[1] == '0'
        assert os.listdir(cache_line[0])  # the machine code was cached there
    else:
        assert cache_line[1] != '0' and res.stderr.count('RuntimeWarning: numba finds no writable cache dir') == 1


# ----------------------------------------------------------------------------------------------------
# training: --ph_engine reaches every place PH is computed, and either engine gives the same labels


def _training_args(script, argv):
    import importlib

    return importlib.import_module(script).get_args_parser().parse_args(argv)


def _labels(dataset, n):
    return [dataset[i][1] for i in range(n)]


def test_training_on_the_fly_and_cache_labels_equal_with_either_engine(tmp_path):
    """pretraining.py without -t (on the fly, and with --cache_dir): the flag reaches ComputedLabels, and the
    histogram labels are the same, bit for bit, with either engine."""
    from util.cli.build import build_pretraining_sets  # the flags' data sets, as pretraining.py builds them

    got = {}
    for engine in ('unionfind', 'cripser', 'auto'):
        base = [
            '-n',
            '4',
            '-nv',
            '2',
            '--img_size',
            '40',
            '--crop_size',
            '32',
            '-pb',
            '0.5',
            '--seed',
            '3',
            '--label_type',
            'histogram',
            '-nc',
            '40',
        ]
        args = _training_args('pretraining', base + ['--ph_engine', engine])
        assert args.ph_engine == engine
        train, val = build_pretraining_sets(args)
        assert train.computed.engine == engine and val.computed.engine == engine
        cached, _ = build_pretraining_sets(
            _training_args('pretraining', base + ['--ph_engine', engine, '--cache_dir', str(tmp_path / engine)])
        )
        got[engine] = (
            [t.numpy() for t in _labels(train, 4)],
            [t.numpy() for t in _labels(val, 2)],
            [t.numpy() for t in _labels(cached, 4)],
        )
    assert sum(np.abs(x).sum() for x in got['cripser'][0]) > 0
    for engine in ('unionfind', 'auto'):
        for ours, ref in zip(got[engine], got['cripser']):
            for a, b in zip(ours, ref):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.stack(got['cripser'][0]), np.stack(got['cripser'][2]))
    # the diagrams cached by one engine are used by the other (same pairs): cache.json does not name it
    cached, _ = build_pretraining_sets(
        _training_args('pretraining', base + ['--ph_engine', 'unionfind', '--cache_dir', str(tmp_path / 'cripser')])
    )
    for a, b in zip(_labels(cached, 4), got['cripser'][2]):
        np.testing.assert_array_equal(a.numpy(), b)


def _class_folders(root, n=2):
    from PIL import Image

    cfg = GeneratorConfig(img_size=40, prob_binary=0.5, prob_colour=0.5)
    for c in ('a', 'b'):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(generate_image(cfg, 11 if c == 'a' else 12, i)).save(root / c / f'{i}.png')


def test_training_post_and_folder_labels_equal_with_either_engine(tmp_path):
    """-t without -pd, with -ph post (labels of the augmented crop) and -ph pre: same labels either way."""
    import torch

    from util.cli.build import build_pretraining_sets  # the flags' data sets, as pretraining.py builds them

    _class_folders(tmp_path / 'img')
    got = {}
    for engine in ('unionfind', 'cripser'):
        for mode in ('pre', 'post'):
            args = _training_args(
                'pretraining',
                [
                    '-t',
                    str(tmp_path / 'img'),
                    '-ph',
                    mode,
                    '--img_size',
                    '40',
                    '--crop_size',
                    '24',
                    '--label_type',
                    'histogram',
                    '-nc',
                    '40',
                    '--ph_engine',
                    engine,
                ],
            )
            train, _ = build_pretraining_sets(args)
            assert train.computed.engine == engine
            torch.manual_seed(0)  # the same random crops for both engines
            got[engine, mode] = [t.numpy() for t in _labels(train, 4)]
    for mode in ('pre', 'post'):
        for a, b in zip(got['unionfind', mode], got['cripser', mode]):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(got['cripser', 'pre'], got['cripser', 'post']))


def test_two_task_mode_labels_equal_with_either_engine(tmp_path):
    """-lm simultaneous: the flag reaches the PH labels of the training and validation folders."""
    import torch

    from util.cli.build import data_config
    from util.train.sources import build_simultaneous_sets

    _class_folders(tmp_path / 'img')
    got = {}
    for engine in ('unionfind', 'cripser'):
        args = _training_args(
            'finetuning',
            [
                '-lm',
                'simultaneous',
                '-t',
                str(tmp_path / 'img'),
                '-val',
                str(tmp_path / 'img'),
                '--img_size',
                '40',
                '--crop_size',
                '24',
                '--label_type',
                'histogram',
                '-nd',
                '40',
                '--ph_engine',
                engine,
            ],
        )
        train, _, val_ph, _ = build_simultaneous_sets(data_config(args), args.ph_dims)
        assert train.computed.engine == engine and val_ph.computed.engine == engine
        torch.manual_seed(0)
        got[engine] = [train[i][1][1].numpy() for i in range(4)] + [t.numpy() for t in _labels(val_ph, 4)]
    for a, b in zip(got['unionfind'], got['cripser']):
        np.testing.assert_array_equal(a, b)


def test_training_flag_recorded_and_checked(tmp_path):
    from util.cli.flags import get_args_parser

    with pytest.raises(SystemExit):
        get_args_parser('pretraining').parse_args(['--ph_engine', 'fast'])
    assert get_args_parser('pretraining').parse_args([]).ph_engine == 'auto'
    assert '--ph_engine' in get_args_parser('finetuning').format_help()
