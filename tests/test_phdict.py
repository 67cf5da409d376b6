"""PHdict.py as a user runs it: outputs, exactness, resume, shards, label matrix, bad inputs."""

import json
import os

import cripser
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from bench.reference import original_ph_of_file as original_diagram  # the original pipeline
from util.ph.vectorise import make_vectoriser


def smooth_noise(rng, n=40, sigma=2.0):
    a = gaussian_filter(rng.random((n, n)), sigma)
    return ((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)


def make_jpegs(folder, names, seed=0, colour=True):
    """JPEGs of smoothed noise at ``folder/name`` (sub-folders created)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.stack([smooth_noise(rng) for _ in range(3)], -1) if colour else smooth_noise(rng)
        Image.fromarray(img).save(path, quality=90)


def pairs(diagram):
    """Sorted (dim, birth, death) rows: what the union-find and cripser engines agree on exactly."""
    d = np.asarray(diagram, dtype=np.float64)[:, :3]
    return d[np.lexsort((d[:, 2], d[:, 1], d[:, 0]))]


def outputs(folder):
    """Relative paths of the files below ``folder``."""
    found = set()
    for dirpath, _, files in os.walk(folder):
        for f in files:
            found.add(os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, '/'))
    return found


FLAT = [f'v{i:08d}.jpg' for i in range(7)]


def test_readme_command_matches_original_bit_for_bit(tmp_path, run_script):
    """The README command gives the original's pairs (union-find engine); --ph_engine cripser its files
    bit for bit."""
    make_jpegs(tmp_path / 'random', FLAT)
    res = run_script('PHdict.py', 'random', '-o', 'PH_random', '-it', 'jpg', cwd=tmp_path, check=True)
    assert '7 done, 0 skipped, 0 failed' in res.stdout
    run_script(
        'PHdict.py', 'random', '-o', 'PH_cripser', '-it', 'jpg', '--ph_engine', 'cripser', cwd=tmp_path, check=True
    )
    out = tmp_path / 'PH_random'
    assert outputs(out) == {n.replace('.jpg', '.npy') for n in FLAT} | {'args.json', 'settings.json', 'sources.jsonl'}
    for name in FLAT:
        got = np.load(out / name.replace('.jpg', '.npy'))
        ref = original_diagram(tmp_path / 'random' / name)
        assert got.dtype == np.float64 and got.shape[1] == 9
        np.testing.assert_array_equal(pairs(got), pairs(ref))
        np.testing.assert_array_equal(np.load(tmp_path / 'PH_cripser' / name.replace('.jpg', '.npy')), ref)
    assert json.loads((tmp_path / 'PH_cripser' / 'args.json').read_text())['ph_engine'] == 'cripser'
    args = json.loads((out / 'args.json').read_text())
    assert args['ph_engine'] == 'auto'
    assert args['num_bins'] == [50, 50, 50, 50] and args['imgtype'] == 'jpg' and args['num_workers'] == 8
    assert args['max_life'] == 50 and args['max_birth'] == 50 and args['sigma'] == 100 and args['bandwidth'] == 1


def test_nested_folders_with_equal_names_do_not_collide(tmp_path, run_script):
    names = ['cat/img001.jpg', 'dog/img001.jpg', 'dog/deep/img001.jpg', 'img001.jpg']
    make_jpegs(tmp_path / 'data', names, seed=1)
    run_script('PHdict.py', tmp_path / 'data', '-o', tmp_path / 'out', '-it', 'jpg', '-nw', '2', check=True)
    expected = {n.replace('.jpg', '.npy') for n in names}
    assert outputs(tmp_path / 'out') == expected | {'args.json', 'settings.json', 'sources.jsonl'}
    diagrams = [np.load(tmp_path / 'out' / n) for n in sorted(expected)]
    for n, d in zip(sorted(expected), diagrams):
        np.testing.assert_array_equal(pairs(d), pairs(original_diagram(tmp_path / 'data' / n.replace('.npy', '.jpg'))))
    assert not np.array_equal(diagrams[0], diagrams[1])  # different images, different diagrams


def test_interrupted_run_resumes_without_recomputing(tmp_path, run_script):
    make_jpegs(tmp_path / 'in', FLAT, seed=2)
    out = tmp_path / 'out'
    run_script('PHdict.py', tmp_path / 'in', '-o', out, '-it', 'jpg', '-nw', '2', check=True)
    before = {n: (out / n).stat() for n in outputs(out) if n.endswith('.npy')}
    content = {n: (out / n).read_bytes() for n in before}
    deleted = ['v00000002.npy', 'v00000005.npy']
    for n in deleted:
        (out / n).unlink()
    (out / ('v00000003.npy.tmp-leftover')).write_bytes(b'half')  # what a killed writer may leave
    res = run_script('PHdict.py', tmp_path / 'in', '-o', out, '-it', 'jpg', '-nw', '2', check=True)
    assert '2 done, 5 skipped, 0 failed' in res.stdout
    for n, st in before.items():
        now = (out / n).stat()
        if n in deleted:
            assert (out / n).read_bytes() == content[n]  # recreated identical
        else:
            assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), n  # untouched


def test_shards_cover_the_folder_exactly_once(tmp_path, run_script):
    names = [f'c{i % 3}/im{i:02d}.jpg' for i in range(10)]
    make_jpegs(tmp_path / 'in', names, seed=3, colour=False)
    seen = []
    for k in range(3):
        run_script(
            'PHdict.py',
            tmp_path / 'in',
            '-o',
            tmp_path / f'out{k}',
            '-it',
            'jpg',
            '--shard',
            f'{k}/3',
            '-nw',
            '1',
            check=True,
        )
        seen.append({n for n in outputs(tmp_path / f'out{k}') if n.endswith('.npy')})
    assert sum(len(s) for s in seen) == len(names)
    assert set().union(*seen) == {n.replace('.jpg', '.npy') for n in names}
    # torchrun's variables select the same shard
    run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        tmp_path / 'env1',
        '-it',
        'jpg',
        '-nw',
        '1',
        env={'RANK': '1', 'WORLD_SIZE': '3'},
        check=True,
    )
    assert {n for n in outputs(tmp_path / 'env1') if n.endswith('.npy')} == seen[1]
    res = run_script('PHdict.py', tmp_path / 'in', '-o', tmp_path / 'x', '-it', 'jpg', '--shard', '3/3', check=False)
    assert res.returncode == 2 and '--shard' in res.stderr


def test_label_matrix_rows_follow_paths_file_and_equal_vectoriser(tmp_path, run_script):
    names = ['b/one.jpg', 'a/two.jpg', 'a/three.png', 'c.jpg', 'd.jpg']
    make_jpegs(tmp_path / 'in', names, seed=4)
    out = tmp_path / 'out'
    run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        out,
        '-it',
        'jpg',
        '--label_type',
        'persistence_image',
        '--numof_dims',
        '72',
        '-s',
        '4',
        '-nw',
        '2',
        check=True,
    )
    matrix = np.load(out / 'labels_persistence_image.npy')
    paths = (out / 'labels_persistence_image.txt').read_text().splitlines()
    info = json.loads((out / 'labels_persistence_image.json').read_text())
    jpgs = sorted(n for n in names if n.endswith('.jpg'))
    assert paths == jpgs
    assert matrix.shape == (4, 72) and matrix.dtype == np.float32
    assert info['count'] == 4 and info['dim'] == 72 and info['filtration'] == 'signed_distance'
    assert info['params']['sigma'] == 4
    vec = make_vectoriser('persistence_image', 72, sigma=4.0)
    diagrams = [np.load(out / p.replace('.jpg', '.npy')) for p in paths]
    for row, d in zip(matrix, diagrams):
        np.testing.assert_allclose(row, vec(d), rtol=1e-6, atol=1e-7)
    assert np.abs(matrix).sum() > 0
    # sharded parts merge into the same matrix
    for k in range(2):
        res = run_script(
            'PHdict.py',
            tmp_path / 'in',
            '-o',
            tmp_path / 'sh',
            '-it',
            'jpg',
            '--label_type',
            'persistence_image',
            '--numof_dims',
            '72',
            '-s',
            '4',
            '--shard',
            f'{k}/2',
            '-nw',
            '1',
            check=True,
        )
    assert 'merged 2 shards' in res.stdout
    assert (tmp_path / 'sh' / 'labels_persistence_image.txt').read_text().splitlines() == paths
    np.testing.assert_allclose(np.load(tmp_path / 'sh' / 'labels_persistence_image.npy'), matrix, rtol=1e-6, atol=1e-7)
    for k in range(2):
        part = (tmp_path / 'sh' / f'labels_persistence_image.shard-{k}-of-2.txt').read_text().splitlines()
        assert part == jpgs[k::2]
    # a complete matrix is kept as it is on a rerun
    st = (out / 'labels_persistence_image.npy').stat()
    res = run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        out,
        '-it',
        'jpg',
        '--label_type',
        'persistence_image',
        '--numof_dims',
        '72',
        '-s',
        '4',
        check=True,
    )
    assert '0 done, 4 skipped' in res.stdout
    assert (out / 'labels_persistence_image.npy').stat().st_mtime_ns == st.st_mtime_ns


def test_corrupt_images_are_named_and_others_processed(tmp_path, run_script):
    make_jpegs(tmp_path / 'in', ['a.jpg', 'b.jpg', 'c.jpg'], seed=5)
    (tmp_path / 'in' / 'zero.jpg').write_bytes(b'')
    (tmp_path / 'in' / 'text.jpg').write_text('this is not an image')
    good = (tmp_path / 'in' / 'a.jpg').read_bytes()
    (tmp_path / 'in' / 'trunc.jpg').write_bytes(good[: len(good) // 3])
    res = run_script('PHdict.py', tmp_path / 'in', '-o', tmp_path / 'out', '-it', 'jpg', '-nw', '2', check=False)
    assert res.returncode == 1
    for bad in ('zero.jpg', 'text.jpg', 'trunc.jpg'):
        assert bad in res.stderr
    assert '3 done, 0 skipped, 3 failed' in res.stdout
    assert {n for n in outputs(tmp_path / 'out') if n.endswith('.npy')} == {'a.npy', 'b.npy', 'c.npy'}
    res = run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        tmp_path / 'out',
        '-it',
        'jpg',
        '--skip_bad',
        '--label_type',
        'betti_curve',
        '--numof_dims',
        '20',
        check=True,
    )
    assert '0 done, 3 skipped, 3 failed' in res.stdout
    assert (tmp_path / 'out' / 'labels_betti_curve.txt').read_text().splitlines() == ['a.jpg', 'b.jpg', 'c.jpg']


def test_hist_and_persistence_image_modes(tmp_path, run_script):
    make_jpegs(tmp_path / 'random', FLAT[:4], seed=6)
    ph_dir = tmp_path / 'PH_random'
    # -ch on images: diagram and <name>hist.npy; histogram = the vectoriser with --num_bins
    run_script(
        'PHdict.py',
        'random',
        '-o',
        'PH_random',
        '-it',
        'jpg',
        '-ch',
        '-n',
        '10',
        '20',
        '30',
        '40',
        cwd=tmp_path,
        check=True,
    )
    vec = make_vectoriser('histogram', 100, num_bins=(10, 20, 30, 40))
    for n in FLAT[:4]:
        stem = n[:-4]
        h = np.load(ph_dir / f'{stem}hist.npy')
        assert h.dtype == np.float32 and h.shape == (100,)
        np.testing.assert_allclose(h, vec(np.load(ph_dir / f'{stem}.npy')), rtol=1e-6)
    assert (ph_dir / 'hist_mean.png').stat().st_size > 0
    # resuming into the folder with other histogram settings is refused
    res = run_script('PHdict.py', 'random', '-o', 'PH_random', '-it', 'jpg', '-ch', cwd=tmp_path, check=False)
    assert res.returncode == 2 and 'num_bins' in res.stderr and 'settings' in res.stderr
    # -ch / -cpi from saved diagrams (-it npy, the original's default)
    res = run_script(
        'PHdict.py', 'PH_random', '-o', 'PH_random', '-ch', '-n', '10', '20', '30', '40', cwd=tmp_path, check=True
    )
    assert '0 done, 4 skipped, 0 failed of 4 files' in res.stdout  # hist files are not taken for diagrams
    res = run_script('PHdict.py', 'PH_random', '-o', 'H2', '-ch', '-b', '5', cwd=tmp_path, check=True)
    assert '4 done' in res.stdout
    vec5 = make_vectoriser('histogram', 200, bandwidth=5)
    np.testing.assert_allclose(
        np.load(tmp_path / 'H2' / 'v00000000hist.npy'), vec5(np.load(ph_dir / 'v00000000.npy')), rtol=1e-6
    )
    run_script('PHdict.py', 'PH_random', '-o', 'PI', '-cpi', cwd=tmp_path, check=True)
    pi = make_vectoriser('persistence_image', 100, sigma=100.0)
    for n in FLAT[:4]:
        p = np.load(tmp_path / 'PI' / n.replace('.jpg', '.npy'))
        assert p.dtype == np.float32 and p.shape == (100,)
        np.testing.assert_allclose(p, pi(np.load(ph_dir / n.replace('.jpg', '.npy'))), rtol=1e-6, atol=1e-7)
    res = run_script('PHdict.py', 'PH_random', '-o', 'PH_random', '-cpi', cwd=tmp_path, check=False)
    assert res.returncode == 2 and 'overwrite' in res.stderr
    # an output folder inside the input folder is not read back as input
    for expect in ('4 done, 0 skipped, 0 failed of 4 files', '0 done, 4 skipped, 0 failed of 4 files'):
        res = run_script('PHdict.py', 'PH_random', '-o', 'PH_random/pi', '-cpi', cwd=tmp_path, check=True)
        assert expect in res.stdout


def test_usage_errors_and_plot(tmp_path, run_script):
    make_jpegs(tmp_path / 'in', ['a.jpg', 'b.jpg'], seed=7)
    res = run_script('PHdict.py', tmp_path / 'in', '-o', tmp_path / 'out', check=False)  # -it npy, nothing asked
    assert res.returncode == 2 and '-it' in res.stderr
    res = run_script('PHdict.py', tmp_path / 'in', '-o', tmp_path / 'out', '-it', 'png', check=False)
    assert res.returncode == 2 and 'no *.png files' in res.stderr
    res = run_script('PHdict.py', tmp_path / 'missing', '-o', tmp_path / 'out', '-it', 'jpg', check=False)
    assert res.returncode == 2 and 'does not exist' in res.stderr
    run_script(
        'PHdict.py',
        tmp_path / 'in',
        '-o',
        tmp_path / 'out',
        '-it',
        'jpg',
        '--plot',
        '1',
        '--filtration',
        'none',
        check=True,
    )
    with Image.open(tmp_path / 'out' / 'plots' / 'a.png') as im:
        assert im.format == 'PNG'
    assert not (tmp_path / 'out' / 'plots' / 'b.png').exists()
    grey = np.array(Image.open(tmp_path / 'in' / 'a.jpg').convert('L'), dtype=np.float64)
    np.testing.assert_array_equal(pairs(np.load(tmp_path / 'out' / 'a.npy')), pairs(cripser.computePH(grey, maxdim=1)))


def test_help_documents_output_files(run_script):
    res = run_script('PHdict.py', '-h', check=True)
    for text in (
        'labels_TYPE.npy',
        'labels_TYPE.txt',
        'labels_TYPE.json',
        'shard-K-of-N',
        '--label_type',
        '-ml',
        '-mb',
        '-cpi',
        '-ch',
        '-nw',
        '--skip_bad',
    ):
        assert text in res.stdout, text
