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


def test_advice_names_only_the_levers_not_in_use():
    bad = {'first_component_share': 0.95, 'counts_r2': 0.9, 'generator_params_r2': 0.9}
    every = ' '.join(diagnostics.degeneracy_warnings(bad))
    for lever in ('split_image', '--size_normalise', '--max_life', '--sigma auto', '--label_norm standard'):
        assert lever in every, lever
    used = dict(
        label_type='split_image',
        auto=['max_life', 'max_birth', 'min_birth', 'sigma'],
        size_normalise=True,
        filtration='signed_distance',
        label_norm='whiten',
    )
    warnings = diagnostics.degeneracy_warnings(bad, used)
    assert len(warnings) == 3
    for lever in ('split_image', '--size_normalise', '--max_life', '--sigma', '--label_norm'):
        assert lever not in ' '.join(warnings), (lever, warnings)
    assert 'already in use' in warnings[0]
    # recorded with the diagnostics (PHdict.py), the settings are what the plot and the summary advise by
    some = dict(used, auto=['max_life'], size_normalise=False, label_type='histogram', label_norm='standard')
    (share,) = diagnostics.degeneracy_warnings(dict(first_component_share=0.9, settings=some))
    assert '--max_birth auto' in share and '--size_normalise' in share and '--max_life' not in share
    assert 'split_image' in share and '--label_norm whiten' in share and 'standard' not in share
    assert '--sigma' not in share  # the histogram has no kernel
    grey = diagnostics.degeneracy_warnings(dict(first_component_share=0.9), dict(some, filtration='none'))
    assert '--size_normalise' not in grey[0]  # not a lever of grey-value filtrations


def test_constant_labels_are_named_with_the_reason():
    d = diagnostics.compute(np.zeros((6, 5)), np.zeros((6, 2), int))
    assert d['constant'] and d['without_pairs'] == 6
    assert 'every label is the same' in diagnostics.summary_line(d)
    (w,) = diagnostics.degeneracy_warnings(d)
    assert 'none of the 6 diagrams has a finite pair' in w and 'all black or all white' in w
    d = diagnostics.compute(np.ones((6, 5)), np.ones((6, 2), int))
    (w,) = diagnostics.degeneracy_warnings(d, {'auto': ['max_life'], 'label_type': 'persistence_image'})
    assert 'ranges miss them' in w and '--max_birth/--min_birth auto, --sigma auto' in w and '--max_life' not in w
    assert 'constant' not in diagnostics.compute(np.eye(6))


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
