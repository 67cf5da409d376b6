"""--label_type random (the random-target control), --label_norm standard (statistics stored and reused) and
the --hflip switch, at tiny sizes."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import only_run_dir
from util.ph import label_norm, random_targets
from util.train import sources

TINY = ['-u', 'resnet18', '-e', '1', '--img_size', '24', '--crop_size', '20', '-b', '4', '-nw', '0', '--device', 'cpu']


def _images(folder, n=6, seed=0, size=24):
    rng = np.random.default_rng(seed)
    os.makedirs(folder / 'sub', exist_ok=True)
    for i in range(n):
        path = folder / ('sub' if i % 2 else '.') / f'im{i}.png'
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return folder


def _args(run_dir, name='args.json'):
    with open(os.path.join(run_dir, name), encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return _images(tmp_path_factory.mktemp('imgs') / 'img')


# ------------------------------------------------------------------------------------------ random targets
def test_random_targets_reproducible_and_independent_of_content(tmp_path):
    from util.config import AugmentConfig
    from util.io.fileio import list_images
    from util.train.datasets import FolderPH, pretrain_transforms

    a, b = _images(tmp_path / 'a', seed=1), _images(tmp_path / 'b', seed=2)  # same names, other pixels
    rel = list_images(a)
    assert rel == list_images(b)
    sp, tt = pretrain_transforms(AugmentConfig(img_size=24, crop_size=20))

    def labels(root, seed):
        ds = FolderPH(str(root), rel, sources.RandomLabels(rel, 16, seed), sp, tt, 'pre')
        return np.stack([ds[i][1].numpy() for i in range(len(ds))])

    la = labels(a, 3)
    np.testing.assert_array_equal(la, labels(b, 3))  # content does not matter
    np.testing.assert_array_equal(la, labels(a, 3))  # reproducible
    assert not np.allclose(la, labels(a, 4))  # the seed does
    assert len({row.tobytes() for row in la}) == len(rel)  # one vector per image
    # a row depends on the image's identity only, not on its position among the others
    np.testing.assert_array_equal(sources.RandomLabels(rel[::-1], 16, 3).label(0), la[-1])
    big = random_targets.random_matrix(0, [f'k{i}' for i in range(400)], 50)
    assert big.dtype == np.float32 and abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05
    gen = sources.GeneratedRandomLabels(16, 3, stream=0)
    assert np.array_equal(gen.label(5), gen.label(5)) and not np.allclose(gen.label(5), gen.label(6))
    assert not np.allclose(gen.label(5), sources.GeneratedRandomLabels(16, 3, stream=1).label(5))


def test_phdict_random_matrix_matches_the_loader_and_pretrains(folder, tmp_path, run_script):
    run_script(
        'PHdict.py',
        folder,
        '-o',
        tmp_path / 'rnd',
        '-it',
        'png',
        '--label_type',
        'random',
        '--numof_dims',
        '16',
        '--seed',
        '5',
        check=True,
    )
    from util.ph.labels import load_label_matrix

    m, names = load_label_matrix(
        str(tmp_path / 'rnd' / 'labels_random.npy'), str(tmp_path / 'rnd' / 'labels_random.txt'), 16
    )
    loader = sources.RandomLabels(names, 16, 5)
    np.testing.assert_array_equal(m, np.stack([loader.label(i) for i in range(len(names))]))
    assert not (tmp_path / 'rnd' / 'sub').exists()  # no PH computed
    for extra in (['-pd', tmp_path / 'rnd', '-pc'], []):  # from the matrix, and made in the loader
        out = tmp_path / f'run{len(extra)}'
        run_script(
            'pretraining.py',
            '-t',
            folder,
            '--label_type',
            'random',
            '-nc',
            '16',
            '--seed',
            '5',
            '-o',
            out,
            *extra,
            *TINY,
            check=True,
        )
        assert _args(only_run_dir(out))['label_type'] == 'random'
    res = run_script(
        'pretraining.py',
        '-t',
        folder,
        '--label_type',
        'random',
        '-nc',
        '16',
        '-ph',
        'post',
        '-o',
        tmp_path / 'bad',
        *TINY,
        check=False,
    )
    assert '-ph pre' in res.stderr and 'Traceback' not in res.stderr


# ------------------------------------------------------------------------------------------ label statistics
def test_compute_stats_floor():
    rng = np.random.default_rng(0)
    m = np.c_[rng.normal(5, 3, (400, 3)), rng.normal(1, 1e-5, 400), np.full(400, 2.0)]
    mean, std = label_norm.compute_stats(m, floor=0.1)
    np.testing.assert_allclose(mean, m.mean(0))
    np.testing.assert_allclose(std[:3], m.std(0)[:3])
    rms = np.sqrt(np.mean(m.std(0) ** 2))
    assert std[3] == std[4] == pytest.approx(0.1 * rms)  # floored: not blown up into unit noise
    z = (m - mean) / std
    assert np.abs(z[:, 3]).max() < 1e-3 and np.all(z[:, 4] == 0)
    _, raw = label_norm.compute_stats(m, floor=0)
    assert raw[3] == pytest.approx(m[:, 3].std())


def test_constant_label_components_are_said_once(capsys):
    rng = np.random.default_rng(1)
    m = np.c_[rng.normal(size=(50, 3)), np.zeros(50), np.full(50, 0.1, np.float32)]
    label_norm.compute_stats(m)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line.startswith('warning: --label_norm standard: 2 of the 5 label components are constant') and '(3, 4)' in line
    )
    label_norm.compute_stats(m[:, :3])
    assert capsys.readouterr().err == ''  # nothing constant: nothing said
    label_norm.compute_stats(np.zeros((6, 4)))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert 'every label component is constant over the 6 labels' in line and 'learn nothing' in line
    # the statistics PHdict.py stored say so again when pretraining reads them
    mean, std = label_norm.compute_stats(np.zeros((6, 4)))
    rec = dict(label_norm.stats_record(mean, std, 0.1, 'x', 6), constant=[0, 1, 2, 3])
    capsys.readouterr()
    label_norm.from_record(rec, 4, 'labels_x.json')
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert 'every label component is constant' in line and 'labels_x.json' in line
    label_norm.compute_whiten(np.zeros((6, 4)), k=2)
    assert 'whiten: every label component is constant' in capsys.readouterr().err


def test_whiten_keeps_and_records_at_most_rows_minus_one_directions(tmp_path, capsys):
    from util.ph.labels import label_names, write_label_matrix

    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(40, 50)).astype(np.float32)
    names = label_names('histogram')
    write_label_matrix(str(tmp_path), names, matrix, [f'{i}.png' for i in range(40)], {'label_type': 'histogram'})
    rec = label_norm.add_whiten_to_json(str(tmp_path), 'histogram', 99)
    err = capsys.readouterr().err
    assert '--label_norm_components 99' in err and 'keeping 39' in err, err
    assert rec['k'] == len(rec['scales']) == len(rec['components']) == 39 and rec['asked'] == 99
    stored = json.loads((tmp_path / names[2]).read_text())['label_whiten']
    assert stored['k'] == 39 and stored['asked'] == 99
    assert label_norm.add_whiten_to_json(str(tmp_path), 'histogram', 99) == stored  # kept: same K asked
    assert label_norm.add_whiten_to_json(str(tmp_path), 'histogram', 5)['k'] == 5


def test_label_norm_stored_reused_on_resume_and_fresh_run(folder, tmp_path, run_script):
    from util.ph.labels import load_label_matrix

    ph = tmp_path / 'ph'
    run_script(
        'PHdict.py',
        folder,
        '-o',
        ph,
        '-it',
        'png',
        '-nw',
        '1',
        '--label_type',
        'histogram',
        '--numof_dims',
        '16',
        check=True,
    )
    flags = ['-t', folder, '-pd', ph, '-pc', '--label_type', 'histogram', '-nc', '16', '--label_norm', 'standard']
    run_script('pretraining.py', *flags, '-o', tmp_path / 'a', *TINY, '-e', '2', '--stop_after', '1', check=True)
    run_a = only_run_dir(tmp_path / 'a')
    stored = _args(run_a)
    m, _ = load_label_matrix(str(ph / 'labels_histogram.npy'), str(ph / 'labels_histogram.txt'), 16)
    mean, std = label_norm.compute_stats(m, 0.1)
    np.testing.assert_allclose(stored['label_norm_mean'], mean, rtol=1e-6)
    np.testing.assert_allclose(stored['label_norm_std'], std, rtol=1e-6)
    ckpt = torch.load(os.path.join(run_a, 'checkpoint.pth'), weights_only=True)
    assert ckpt['args']['label_norm_mean'] == stored['label_norm_mean']
    # a fresh run on the same matrix computes the same statistics
    run_script('pretraining.py', *flags, '-o', tmp_path / 'b', *TINY, check=True)
    assert _args(only_run_dir(tmp_path / 'b'))['label_norm_std'] == stored['label_norm_std']
    # resume after the matrix changed since: refused (issue 22: the run records the digest of its label matrix)
    original = (ph / 'labels_histogram.npy').read_bytes()
    np.save(ph / 'labels_histogram.npy', (m * 3 + 1).astype(np.float32))
    res = run_script('pretraining.py', *flags, '--resume', run_a, *TINY, '-e', '2', check=False)
    assert res.returncode == 2 and 'label matrix was recomputed' in res.stderr, res.stderr
    # resume on the matrix it trained on: the stored statistics
    (ph / 'labels_histogram.npy').write_bytes(original)
    run_script('pretraining.py', *flags, '--resume', run_a, *TINY, '-e', '2', check=True)
    resumed = _args(run_a, 'args_resume_epoch2.json')
    assert resumed['label_norm_mean'] == stored['label_norm_mean']
    assert resumed['label_norm_std'] == stored['label_norm_std']
    # PHdict.py --label_norm standard stores them in the label json, and pretraining takes them from there
    run_script(
        'PHdict.py',
        folder,
        '-o',
        ph,
        '-it',
        'png',
        '-nw',
        '1',
        '--label_type',
        'histogram',
        '--numof_dims',
        '16',
        '--label_norm',
        'standard',
        '--label_norm_floor',
        '0.5',
        check=True,
    )
    with open(ph / 'labels_histogram.json', encoding='utf-8') as f:
        rec = json.load(f)['label_norm']
    run_script('pretraining.py', *flags, '-o', tmp_path / 'c', *TINY, check=True)
    assert _args(only_run_dir(tmp_path / 'c'))['label_norm_std'] == rec['std'] and rec['floor'] == 0.5


def test_label_norm_on_the_fly_and_finetuning_from_it(tmp_path, run_script):
    out = tmp_path / 'otf'
    run_script(
        'pretraining.py', '-n', '10', '-nv', '4', '-nc', '16', '--label_norm', 'standard', '-o', out, *TINY, check=True
    )
    run = only_run_dir(out)
    a = _args(run)
    assert a['label_norm_count'] == 10 and len(a['label_norm_std']) == 16 and min(a['label_norm_std']) > 0
    assert 'first 10' in a['label_norm_source']
    from tests.conftest import make_two_class_task

    train, val = make_two_class_task(tmp_path / 'task', n_train=4, n_val=2, size=24)
    run_script(
        'finetuning.py',
        '-t',
        train,
        '-val',
        val,
        '-pw',
        os.path.join(run, 'resnet18_epoch1.pth'),
        '-o',
        tmp_path / 'ft',
        *TINY,
        check=True,
    )
    assert os.path.isfile(os.path.join(only_run_dir(tmp_path / 'ft'), 'metrics.json'))


# ------------------------------------------------------------------------------------------ flips
def test_hflip_switch():
    from torchvision import transforms as T

    from util.cli.flags import get_args_parser
    from util.config import AugmentConfig
    from util.train.datasets import finetune_train_parts, pretrain_transforms

    def flips(spatial):
        return sum(isinstance(t, T.RandomHorizontalFlip) for t in spatial.transforms)

    assert flips(finetune_train_parts(AugmentConfig())[0]) == 1  # today's default kept
    assert flips(finetune_train_parts(AugmentConfig(hflip=False))[0]) == 0
    assert flips(pretrain_transforms(AugmentConfig())[0]) == 0
    assert flips(pretrain_transforms(AugmentConfig(hflip=True))[0]) == 1
    assert flips(pretrain_transforms(AugmentConfig(aug_plus=True))[0]) == 1
    assert flips(pretrain_transforms(AugmentConfig(aug_plus=True, hflip=False))[0]) == 0
    p = get_args_parser('finetuning')
    assert p.parse_args([]).hflip is None and p.parse_args(['--no-hflip']).hflip is False
    assert p.parse_args(['--hflip']).hflip is True
