"""The original's later command line (issue 15): every one of its flags is read into the field with its meaning
there, or refused with one line naming ours -- never silently read as another field; its special values."""

import contextlib
import importlib
import io
import json
import os
import time

import pytest

from util.cli import original_flags

# Every option of the original's later parsers (util/cli/original_flags.py, the one table): (option strings, a
# value in the shape the original took).
ORIG_ALL = original_flags.LATER_TRAINING
ORIG_RANDOM = original_flags.LATER_RANDOM_IMAGE
ORIG_PHDICT = original_flags.LATER_PHDICT
ORIG_PHDICT_POSITIONAL = original_flags.PHDICT_POSITIONAL
ORIG_DOWNLOADER = original_flags.LATER_DOWNLOADER

# What each means here: (dest, value) for a flag we take with the original's meaning, or the text of the
# refusal line (it names what to use instead).
TRAINING_EXPECT = {
    '--output': ('output', 'X'),
    '--img_size': ('img_size', 64),
    '--num_workers': ('num_workers', 3),
    '--train': ('train', 'X'),
    '--val': ('val', 'X'),
    '--train_pt': ('ph_train', 'X'),
    '--val_pt': ('ph_val', 'X'),
    '--path2PHdir': ('path2PHdir', 'X'),
    '--path2weight': ('path2weight', 'X'),
    '--cachedir': ('cache_dir', 'X'),
    '--suffix': 'choose -o',
    '--resume': ('resume', 'X'),
    '--alpha_range': ('alpha_range', [0.5, 1.0]),
    '--beta_range': ('beta_range', [1.0, 2.0]),
    '--n_samples': ('n_samples', 1000),
    '--n_samples_val': ('n_samples_val', 10),
    '--prob_binary': ('prob_binary', 0.3),
    '--prob_colour': ('prob_colour', 0.3),
    '--max_life': ('max_life', 40.0),
    '--max_birth': ('max_birth', 30.0),
    '--min_birth': ('min_birth', -30.0),
    '--affine': ('affine', True),
    '--bandwidth': ('bandwidth', 3),
    '--persImg_sigma': ('sigma', 2.0),
    '--persImg_power': 'no equivalent',
    '--persImg_weight': ('power', 1.5),
    '--num_landscapes': ('num_landscapes', 3),
    '--label_type_pt': ('label_type', 'betti_curve'),
    '--persistence_after_transform': ('persistence', 'post'),
    '--filtration': ('filtration', 'radial'),
    '--gradient': ('gradient', True),
    '--usenet': ('usenet', 'resnet18'),
    '--numof_dims_pt': ('ph_dims', 120),
    '--lr_fine': ('lr_fine', 0.02),
    '--lr_pre': ('lr_pre', 0.2),
    '--lr_drop': '--optimizer',
    '--momentum': ('momentum', 0.8),
    '--weight_decay': ('weight_decay', 0.001),
    '--optimizer': ('optimizer', 'adam'),
    '--freeze_encoder': ('freeze_encoder', True),
    '--learning_mode': ('learning_mode', 'finetuning'),
    '--dist-url': 'torchrun',
    '--dist-backend': ('pidf', 'gloo'),
    '--world_size': ('world_size', 2),
    '--epochs': ('epochs', 7),
    '--start_epoch': ('start_epoch', 2),
    '--batch_size': ('batch_size', 16),
    '--img_size_pt': '--img_size',
    '--crop_size': ('crop_size', 32),
    '--crop_padding': ('crop_padding', 2),
    '--random_scale': ('random_scale', 0.2),
    '--random_rotation': ('random_rotation', 10.0),
    '--aug-plus': ('aug_plus', True),
    '--save_interval': ('save_interval', 5),
    '--log_interval': ('log_interval', 50),
    '--seed': ('seed', 3),
    '--output_training_images': ('output_training_images', 4),
}
# The short names whose meaning changed between the original's versions (refused: see docs/compat.md).
TRAINING_SHORT_EXPECT = {'-lrf': '--lr_fine', '-lrp': '--lr_pre'}
RANDOM_EXPECT = {
    '--output': ('output', 'X'),
    '--img_size': ('img_size', 64),
    '--num_workers': ('num_workers', 3),
    '--alpha_range': ('alpha_range', [0.5, 1.0]),
    '--beta_range': ('beta_range', [1.0, 2.0]),
    '--n_samples': ('n_samples', 100),
    '--n_samples_val': ('n_samples_val', 10),
    '--prob_binary': ('prob_binary', 0.3),
    '--prob_colour': ('prob_colour', 0.3),
}
PHDICT_EXPECT = {
    '--output': ('output', 'X'),
    '--img_size': 'resize the images first',
    '--num_workers': ('num_workers', 3),
    '--max_life': ('max_life', 40.0),
    '--max_birth': ('max_birth', 30.0),
    '--min_birth': ('min_birth', -30.0),
    '--affine': '-aff of the training scripts',
    '--bandwidth': ('bandwidth', 3),
    '--persImg_sigma': ('sigma', 2.0),
    '--persImg_power': 'no equivalent',
    '--persImg_weight': ('power', 1.5),
    '--num_landscapes': ('num_landscapes', 3),
    '--label_type_pt': ('label_type', 'betti_curve'),
    '--persistence_after_transform': '-ph post',
    '--filtration': ('filtration', 'radial'),
    '--gradient': ('gradient', True),
    '--num_bins': ('num_bins', [30, 30, 20, 20]),
    '--save_fig': '--plot',
}
DOWNLOADER_EXPECT = {
    '--dataset': ('dataset', 'CIFAR10'),
    '--raw_file_path': ('raw_file_path', 'X'),
    '--data_file_path': ('data_file_path', 'X'),
    '--validation_ratio': ('validation_ratio', 0.3),
}
# predict.py and visMap.py parsed all of ORIG_ALL; these are the ones they used, the rest are refused.
PREDICT_EXPECT = {
    '--output': ('output', 'X'),
    '--img_size': ('img_size', 64),
    '--num_workers': ('num_workers', 3),
    '--val': ('val', 'X'),
    '--path2weight': ('path2weight', 'X'),
    '--usenet': ('usenet', 'resnet18'),
    '--batch_size': ('batch_size', 16),
    '--crop_size': ('crop_size', 32),
    '--train': 'first argument',
    '--seed': 'deterministic',
}
VISMAP_EXPECT = {'--output': ('output', 'X'), '--path2weight': ('path2weight', 'X'), '--usenet': ('usenet', 'resnet18')}

SCRIPTS = {  # name: (module, original flags, expectations, fallback refusal text, argv needed around)
    'pretraining': ('pretraining', ORIG_ALL, TRAINING_EXPECT, None, []),
    'finetuning': ('finetuning', ORIG_ALL, TRAINING_EXPECT, None, []),
    'random_image': ('util.random_image', ORIG_RANDOM, RANDOM_EXPECT, None, []),
    'PHdict': ('PHdict', ORIG_PHDICT, PHDICT_EXPECT, None, ['folder']),
    'downloader': ('util.ImageDatasetsDownloader', ORIG_DOWNLOADER, DOWNLOADER_EXPECT, None, ['-d', 'MNIST']),
    'predict': ('predict', ORIG_ALL, PREDICT_EXPECT, 'predict.py does not use it', ['-pw', 'W']),
    'visMap': ('visMap', ORIG_ALL, VISMAP_EXPECT, 'visMap.py does not use it', ['-pw', 'W']),
}


def parser_of(name):
    return importlib.import_module(SCRIPTS[name][0]).get_args_parser()


def parse(name, argv):
    """(namespace or None, exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser_of(name).parse_args([str(a) for a in argv]), 0, err.getvalue()
        except SystemExit as e:
            return None, e.code, err.getvalue()


def test_the_lists_are_the_originals_parsers():
    """The counts of the original's parsers (57 training, 9 generator, 19 PHdict, 4 downloader flags)."""
    assert len(ORIG_ALL) == 57 and len(ORIG_RANDOM) == 9 and len(ORIG_PHDICT) + 1 == 19 and len(ORIG_DOWNLOADER) == 4
    for flags, expect in (
        (ORIG_ALL, TRAINING_EXPECT),
        (ORIG_RANDOM, RANDOM_EXPECT),
        (ORIG_PHDICT, PHDICT_EXPECT),
        (ORIG_DOWNLOADER, DOWNLOADER_EXPECT),
    ):
        assert [f[0][0] for f in flags] == list(expect)


def test_docs_name_every_original_flag():
    """docs/compat.md, the users' page of the table, names every option string of the original's later
    parsers and every one refused by the training scripts and PHdict.py."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'compat.md')) as f:
        text = f.read()
    named = set()
    for cell in text.split('`'):
        named.update(part.strip() for part in cell.replace(',', '/').split('/'))
    flags = {
        s
        for later in (ORIG_ALL, ORIG_RANDOM, ORIG_PHDICT, ORIG_DOWNLOADER)
        for s in original_flags.option_strings(later)
    }
    flags |= set(original_flags.refused(original_flags.TRAINING)) | set(original_flags.refused(original_flags.PHDICT))
    missing = sorted(f for f in flags if f not in named and f.lstrip('-') not in named)
    assert not missing, f"docs/compat.md does not name {missing}"


def _cases():
    for name, (_, flags, expect, fallback, _) in SCRIPTS.items():
        for strings, value in flags:
            for flag in strings:
                want = TRAINING_SHORT_EXPECT.get(flag) if name in ('pretraining', 'finetuning') else None
                yield name, flag, value, want or expect.get(strings[0], fallback)


@pytest.mark.parametrize('name,flag,value,want', list(_cases()), ids=lambda v: v if isinstance(v, str) else None)
def test_every_original_flag(name, flag, value, want):
    """Read into the field with the original's meaning, or refused with one line naming ours."""
    assert want is not None, f"{name}: no expectation for the original's {flag}"
    before = SCRIPTS[name][4]
    ns, rc, err = parse(name, before + [flag] + value)
    if isinstance(want, tuple):
        dest, expected = want
        assert rc == 0, (flag, err)
        assert getattr(ns, dest) == (pytest.approx(expected) if isinstance(expected, (float, list)) else expected)
        action = parser_of(name)._option_string_actions[flag]
        assert action.dest == dest or flag == '-pc', (flag, action.dest)  # no other field takes it
    else:
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (flag, err)
        assert lines[0].startswith(f'error: {flag} ') and want in lines[0], lines[0]


def test_positional_target_dir_of_phdict():
    ns, rc, err = parse('PHdict', ['some/folder'])
    assert rc == 0 and ns.target_dir == 'some/folder'


# -------------------------------------------------------------------------------- value shapes and -pc


@pytest.mark.parametrize('flag,dest', [('-ml', 'max_life'), ('--max_birth', 'max_birth'), ('-minb', 'min_birth')])
def test_one_value_means_both_two_are_h0_then_h1(flag, dest):
    ns, rc, _ = parse('pretraining', [flag, '25'])
    assert rc == 0 and getattr(ns, dest) == 25.0
    ns, rc, _ = parse('pretraining', [flag, '25', '25'])
    assert rc == 0 and getattr(ns, dest) == 25.0
    # issue 20: the original's later README runs --max_life 80 60 (H0 then H1); it was refused before
    ns, rc, err = parse('pretraining', [flag, '25', '30'])
    assert rc == 0 and getattr(ns, dest) == [25.0, 30.0]
    ns, rc, err = parse('PHdict', ['folder', flag, 'auto'])
    assert rc == 0 and getattr(ns, dest) == 'auto'
    ns, rc, err = parse('PHdict', ['folder', flag, '25', '25', '25'])
    assert rc == 2 and 'two (H0 then H1)' in err


def test_pc_alone_is_precomputed_with_a_number_prob_colour():
    ns, rc, _ = parse('pretraining', ['-pc', '-t', 'X'])
    assert rc == 0 and ns.precomputed is True and ns.prob_colour == 0.5 and ns.train == 'X'
    ns, rc, _ = parse('pretraining', ['-pc', '0.25'])
    assert rc == 0 and ns.precomputed is False and ns.prob_colour == 0.25
    ns, rc, _ = parse('pretraining', ['--precomputed'])
    assert rc == 0 and ns.precomputed is True
    ns, rc, err = parse('pretraining', ['-pc', 'maybe'])
    assert rc == 2 and '--precomputed' in err and '--prob_colour' in err


@pytest.mark.parametrize('value', ['raw', 'grid'])
def test_raw_and_grid_label_types_refused_with_a_reason(value):
    for name, before in (('pretraining', []), ('PHdict', ['folder'])):
        ns, rc, err = parse(name, before + ['-lt', value])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and f"'{value}' is not supported" in err


def test_phdict_one_bin_count_for_all_four():
    ns, rc, _ = parse('PHdict', ['folder', '-n', '30'])
    assert rc == 0 and ns.num_bins == [30, 30, 30, 30]
    ns, rc, err = parse('PHdict', ['folder', '-n', '30', '30'])
    assert rc == 2 and 'four counts' in err


# ----------------------------------------------------------------------------------------- special values


def _resolve(argv, tmp_path=None):
    from util.cli.compat import resolve_special_values

    ns, rc, err = parse('pretraining', argv)
    assert rc == 0, err
    logged = []
    return resolve_special_values(ns, log=logged.append), logged


def test_pd_on_the_fly_and_t2_generate():
    ns, logged = _resolve(['-pd', 'on_the_fly', '-t', 'nowhere'])
    assert ns.path2PHdir == '' and any('on_the_fly' in m for m in logged)
    ns, logged = _resolve(['-lm', 'combined', '-t2', 'generate', '-v2', 'generate'])
    assert ns.ph_train is None and ns.ph_val is None and len(logged) == 2


def test_pw_folder_is_its_newest_weights_file(tmp_path):
    for i, name in enumerate(['b_epoch2.pth', 'a_epoch9.pth', 'c.pth']):
        (tmp_path / name).write_bytes(b'x')
        os.utime(tmp_path / name, (time.time() - 100 + 10 * i,) * 2)
    (tmp_path / 'notes.txt').write_text('newer, not weights')
    ns, logged = _resolve(['-pw', str(tmp_path)])
    assert ns.path2weight == str(tmp_path / 'c.pth') and 'c.pth' in logged[-1]
    from util.errors import UserError

    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='without any .pth'):
        _resolve(['-pw', str(tmp_path / 'empty')])


def _ph_folder(path, filtration='signed_distance', gradient=False):
    path.mkdir(parents=True)
    diagram = {'filtration': filtration}
    if gradient:
        diagram['gradient'] = True
    (path / 'settings.json').write_text(json.dumps({'diagram': diagram}))
    return path


def test_pd_omitted_finds_the_originals_ph_folder(tmp_path):
    from util.errors import UserError

    images = tmp_path / 'random'
    images.mkdir()
    ns, logged = _resolve(['-t', str(images)])
    assert ns.path2PHdir == '' and not logged  # none there: PH on the fly, as before
    found = _ph_folder(tmp_path / 'PH_signed_distance_random')
    ns, logged = _resolve(['-t', str(images)])
    assert ns.path2PHdir == str(found) and str(found) in logged[-1]
    ns, logged = _resolve(['-t', str(images), '-g'])  # another setting: another name, not found
    assert ns.path2PHdir == ''
    ns, logged = _resolve(['-t', str(images), '-pd', 'on_the_fly'])
    assert ns.path2PHdir == ''
    _ph_folder(tmp_path / 'PHgrad_signed_distance_random', filtration='distance')  # that name, made otherwise
    with pytest.raises(UserError, match='filtration distance'):
        _resolve(['-t', str(images), '-g'])


def test_pd_omitted_main_py_rule_and_ambiguity(tmp_path):
    from util.errors import UserError

    train = tmp_path / 'data' / 'C10' / 'train'
    train.mkdir(parents=True)
    found = _ph_folder(tmp_path / 'data' / 'PH_radial_C10', filtration='radial')
    ns, logged = _resolve(['-t', str(train), '--filtration', 'radial'])
    assert ns.path2PHdir == str(found)
    _ph_folder(tmp_path / 'data' / 'C10' / 'PH_radial_train', filtration='radial')
    with pytest.raises(UserError, match='two PH folders'):
        _resolve(['-t', str(train), '--filtration', 'radial'])
    (tmp_path / 'x').mkdir()
    (tmp_path / 'PH_signed_distance_x').mkdir()  # no settings.json: cannot be checked
    with pytest.raises(UserError, match='settings'):
        _resolve(['-t', str(tmp_path / 'x')])


def test_val_test_folder_of_the_original_downloader(tmp_path):
    (tmp_path / 'C10' / 'val').mkdir(parents=True)
    ns, logged = _resolve(['-val', str(tmp_path / 'C10' / 'test')])
    assert ns.val == str(tmp_path / 'C10' / 'val') and 'val/' in logged[-1]
    (tmp_path / 'C10' / 'test').mkdir()
    ns, logged = _resolve(['-val', str(tmp_path / 'C10' / 'test')])
    assert ns.val == str(tmp_path / 'C10' / 'test')


# ------------------------------------------------------------------------------------------ downloader


@pytest.mark.slow
def test_animal_from_local_files(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from util.errors import UserError
    from util.ImageDatasetsDownloader import get_args_parser, main

    raw = tmp_path / 'raw'
    args = get_args_parser().parse_args(
        ['-d', 'animal', '--raw_file_path', str(raw), '-o', str(tmp_path / 'data'), '--no_progress']
    )
    with pytest.raises(UserError, match='not downloadable.*non_rigid_shape_A'):
        main(args)
    rng = np.random.default_rng(0)
    for s, cls in (('non_rigid_shape_A', 'cat'), ('non_rigid_shape_B', 'cat'), ('non_rigid_shape_B', 'dog')):
        (raw / s / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(raw / s / cls / f'{s[-1]}{i}.png')
    assert main(args) == 0
    out = tmp_path / 'data' / 'animal'
    counts = {s: {c: len(os.listdir(out / s / c)) for c in ('cat', 'dog')} for s in ('train', 'val')}
    assert counts == {'train': {'cat': 8, 'dog': 4}, 'val': {'cat': 2, 'dog': 1}}


def test_training_main_applies_the_special_values(tmp_path, monkeypatch, capsys):
    """pretraining.py/finetuning.py resolve them before anything runs (and log each one)."""
    from util.cli import flags as cli

    seen = {}
    monkeypatch.setattr(cli, 'launch', lambda args, cfg: seen.setdefault('args', args) and 0)
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / 'resnet18_epoch3.pth').write_bytes(b'x')
    args = cli.get_args_parser('finetuning').parse_args(
        ['-pw', str(tmp_path / 'w'), '-pd', 'on_the_fly', '-o', str(tmp_path / 'out'), '-lm', 'finetuning']
    )
    cli.main(args)
    assert seen['args'].path2weight == str(tmp_path / 'w' / 'resnet18_epoch3.pth')
    assert seen['args'].path2PHdir == ''
    err = capsys.readouterr().err
    assert 'resnet18_epoch3.pth' in err and 'on_the_fly' in err
