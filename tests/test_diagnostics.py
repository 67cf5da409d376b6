"""Label diagnostics (util/ph/diagnostics.py), the generator's parameters by index, and PHdict's record of them."""

import json

import numpy as np

from util.ph import diagnostics, generator


def test_spectrum_numbers_of_known_matrices():
    rng = np.random.default_rng(0)
    one_number = rng.normal(size=(300, 1)) * rng.normal(size=(1, 20))  # rank one
    d = diagnostics.compute(one_number)
    assert abs(d['first_component_share'] - 1) < 1e-9 and abs(d['participation_ratio'] - 1) < 1e-6
    iso = rng.normal(size=(5000, 10))
    d = diagnostics.compute(iso)
    assert 9 < d['participation_ratio'] <= 10 and d['first_component_share'] < 0.15
    assert set(diagnostics.NAMES[:3]) <= set(d) and 'generator_params_r2' not in d


def test_counts_r2_measures_how_much_is_a_count():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 100, size=(400, 2)).astype(float)
    mixing = rng.normal(size=(2, 30))
    counted = counts @ mixing + 5
    assert diagnostics.compute(counted, counts)['counts_r2'] > 0.999
    unrelated = rng.normal(size=(400, 30))
    assert diagnostics.compute(unrelated, counts)['counts_r2'] < 0.05
    scale = lambda y: (y - y.mean(axis=0)) / np.sqrt(((y - y.mean(axis=0)) ** 2).sum())  # noqa: E731
    half = scale(counted) + scale(unrelated)  # equal total variances
    assert 0.3 < diagnostics.compute(half, counts)['counts_r2'] < 0.7
    assert diagnostics.compute(unrelated[:5], counts[:5])['counts_r2'] is None  # too few to say


def test_diagram_counts_count_finite_pairs_per_dimension():
    d1 = np.array([[0, -1, 2], [0, 0, np.inf], [1, 0, 3], [1, 1, 2], [1, -2, 5]], float)
    d2 = np.zeros((0, 9))
    assert diagnostics.diagram_counts([d1, d2]).tolist() == [[1, 3], [0, 0]]


def test_degenerate_label_gets_advice():
    warn = diagnostics.degeneracy_warnings({'first_component_share': 0.9, 'counts_r2': 0.85})
    assert len(warn) == 2 and 'split_image' in warn[1] and '--max_life' in warn[0]
    assert diagnostics.degeneracy_warnings({'first_component_share': 0.3, 'counts_r2': 0.2}) == []


def test_image_params_are_those_the_image_was_made_with(monkeypatch):
    cfg = generator.GeneratorConfig(img_size=24, prob_binary=0.5, prob_colour=0.5)
    used = []
    real = generator._symmetric_filter

    def spy(ws, alpha, beta, out):
        used.append((alpha, beta))
        return real(ws, alpha, beta, out)

    colours = set()
    for index in range(12):
        params = generator.image_params(cfg, 3, index, generator.VAL_STREAM)
        used.clear()
        monkeypatch.setattr(generator, '_symmetric_filter', spy)
        image = generator.generate_image(cfg, 3, index, generator.VAL_STREAM)
        monkeypatch.setattr(generator, '_symmetric_filter', real)
        assert list(zip(params['alpha'], params['beta'])) == used
        channels = image.reshape(24, 24, -1)
        assert params['colour'] == (image.ndim == 3)
        colours.add(params['colour'])
        for c, binarised in enumerate(params['binarised']):
            assert binarised == (set(np.unique(channels[:, :, c])) <= {0, 255})
        assert len(generator.params_features(params)) == 16
    assert colours == {True, False}


def test_generated_names_map_to_indices():
    assert generator.generated_image_index('v00000012.jpg', 'v', 'jpg') == 12
    assert generator.generated_image_index('v00000012.png', 'v', 'jpg') is None
    assert generator.generated_image_index('x12.jpg', 'v', 'jpg') is None


def test_phdict_records_diagnostics_and_warns(tmp_path, run_script):
    run_script('util/random_image.py', '-o', tmp_path / 'g', '-n', '60', '-is', '32', '-nw', '1', check=True)
    res = run_script(
        'PHdict.py',
        tmp_path / 'g',
        '-o',
        tmp_path / 'P',
        '-it',
        'jpg',
        '--label_type',
        'persistence_image',
        '-nw',
        '1',
        '--plot',
        '1',
        check=True,
    )
    meta = json.loads((tmp_path / 'P' / 'labels_persistence_image.json').read_text())
    diag = meta['diagnostics']
    matrix = np.load(tmp_path / 'P' / 'labels_persistence_image.npy')
    assert set(diagnostics.NAMES) <= set(diag)
    assert abs(diag['first_component_share'] - diagnostics.first_component_share(matrix)) < 1e-9
    assert 0 <= diag['counts_r2'] <= 1 and 0 <= diag['generator_params_r2'] <= 1
    assert 'label diagnostics (60 labels): participation ratio' in res.stdout
    assert (diag['first_component_share'] > 0.8) == ('nearly one number' in res.stderr)
    assert (tmp_path / 'P' / 'plots' / 'diagnostics.png').exists()
    from util.plot.summary import label_diagnostics

    numbers = {}
    lines = label_diagnostics(tmp_path / 'P', numbers)
    assert lines[0].startswith('labels_persistence_image: participation ratio')
    assert numbers['label_diagnostics']['labels_persistence_image']['counts_r2'] == diag['counts_r2']


def test_pretraining_on_generated_images_records_diagnostics_and_fits_auto(tmp_path, run_script):
    from tests.conftest import only_run_dir

    tiny = ['-u', 'resnet18', '-e', '1', '--img_size', '24', '--crop_size', '20', '-b', '4', '-nw', '0']
    res = run_script(
        'pretraining.py',
        '-n',
        '12',
        '-nv',
        '4',
        '-nc',
        '20',
        '--label_type',
        'persistence_image',
        '--max_life',
        'auto',
        '-o',
        tmp_path / 'w',
        *tiny,
        '--device',
        'cpu',
        check=True,
    )
    assert 'label diagnostics (12 labels): participation ratio' in res.stdout and 'fitted on 12 diagrams' in res.stdout
    args = json.loads((tmp_path / 'w' / only_run_dir(tmp_path / 'w') / 'args.json').read_text())
    assert 0 < args['label_diagnostics_first_component_share'] <= 1 and args['label_diagnostics_count'] == 12
    assert args['max_life'] == 'auto' and all(v > 0 for v in np.atleast_1d(args['fitted_max_life']))
