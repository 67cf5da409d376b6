"""pretraining.py: the README command, every data mode, -ph pre/post, resume, torchrun, bad input."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from tests.conftest import ROOT, only_run_dir, read_log

TINY = ['-u', 'resnet18', '-e', '1', '--img_size', '48', '--crop_size', '32', '-b', '8', '-nw', '0']


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    """32 generated 64-px JPEGs in random/ and their diagrams in PH_random/ (the README's first two steps)."""
    from tests.conftest import _run_script

    base = tmp_path_factory.mktemp('pipeline')
    _run_script(
        'util/random_image.py',
        '-pb',
        '0.5',
        '-pc',
        '0.5',
        '-o',
        'random',
        '-n',
        '32',
        '-is',
        '64',
        '-nw',
        '1',
        cwd=base,
        check=True,
    )
    _run_script('PHdict.py', 'random', '-o', 'PH_random', '-it', 'jpg', '-nw', '1', cwd=base, check=True)
    return base


def test_readme_command(generated, run_script):
    res = run_script(
        'pretraining.py',
        '-o',
        'weights',
        '--numof_classes=200',
        '-ph',
        'pre',
        '-t',
        'random',
        '-pd',
        'PH_random',
        *TINY,
        '-oti',
        '4',
        cwd=generated,
        check=True,
    )
    run = only_run_dir(generated / 'weights')
    weights = os.path.join(run, 'resnet18_epoch1.pth')
    # a plain state_dict that torchvision's constructor accepts as it is
    model = torchvision.models.resnet18(num_classes=200)
    model.load_state_dict(torch.load(weights, weights_only=True))
    ckpt = torch.load(os.path.join(run, 'checkpoint.pth'), weights_only=True)
    assert ckpt['epoch'] == 1 and set(ckpt) >= {'model', 'optimizer', 'lr_scheduler', 'scaler', 'rng', 'args'}
    assert ckpt['args']['usenet'] == 'resnet18'
    (record,) = read_log(run)
    assert np.isfinite(record['train_loss']) and record['images'] == 32
    assert os.path.exists(os.path.join(run, 'args.json'))
    assert os.path.exists(os.path.join(run, 'training_samples.png'))
    assert 'weights:' in res.stdout


def test_consolidated_labels_mode(generated, run_script, tmp_path):
    run_script(
        'PHdict.py',
        'random',
        '-o',
        'PH_random',
        '-it',
        'jpg',
        '-nw',
        '1',
        '--label_type',
        'betti_curve',
        '--numof_dims',
        '24',
        cwd=generated,
        check=True,
    )
    run_script(
        'pretraining.py',
        '-o',
        tmp_path,
        '-t',
        'random',
        '-pd',
        'PH_random',
        '-pc',
        '--label_type',
        'betti_curve',
        '-nc',
        '24',
        *TINY,
        cwd=generated,
        check=True,
    )
    assert os.path.exists(os.path.join(only_run_dir(tmp_path), 'resnet18_epoch1.pth'))
    # the label dimension must agree with -nc
    res = run_script(
        'pretraining.py',
        '-o',
        tmp_path / 'x',
        '-t',
        'random',
        '-pd',
        'PH_random',
        '-pc',
        '--label_type',
        'betti_curve',
        '-nc',
        '30',
        *TINY,
        cwd=generated,
        check=False,
    )
    assert 'dimension 24' in res.stderr and '--numof_classes' in res.stderr
    assert 'Traceback' not in res.stderr


def test_compute_in_loader_and_validation(generated, run_script, tmp_path):
    run_script(
        'pretraining.py',
        '-o',
        tmp_path,
        '-t',
        'random',
        '-val',
        'random',
        '-nc',
        '40',
        '-ph',
        'post',
        '--ph_engine',
        'cripser',
        *TINY,
        cwd=generated,
        check=True,
    )
    (record,) = read_log(only_run_dir(tmp_path))
    assert {'val_loss', 'val_r2'} <= set(record) and record['val_images'] == 32
    with open(os.path.join(only_run_dir(tmp_path), 'args.json'), encoding='utf-8') as f:
        assert __import__('json').load(f)['ph_engine'] == 'cripser'


def test_on_the_fly_generation_with_cache(run_script, tmp_path):
    cache = tmp_path / 'cache'
    args = ['-o', tmp_path / 'out', '-nc', '20', '-n', '16', '-nv', '8', '--cache_dir', cache, *TINY]
    run_script('pretraining.py', *args, check=True)
    images = sorted(glob.glob(str(cache / 'images' / '*.png')))
    diagrams = sorted(glob.glob(str(cache / 'PH' / '*.npy')))
    assert len(images) == 16 and len(diagrams) == 16
    stamps = [os.stat(p).st_mtime_ns for p in images]
    run_script('pretraining.py', *args, check=True)  # a second run reuses the cache untouched
    assert [os.stat(p).st_mtime_ns for p in images] == stamps
    rec = read_log(sorted(glob.glob(str(tmp_path / 'out' / '*')))[-1])[0]
    assert rec['val_images'] == 8 and np.isfinite(rec['val_r2'])


def test_on_the_fly_matches_generator_and_phdict(tmp_path, run_script):
    """Epoch 0 of on-the-fly generation is the image random_image.py writes, labelled as PHdict labels it."""
    from util.ph.generator import GeneratorConfig
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels, GeneratedPH

    run_script(
        'util/random_image.py',
        '-o',
        tmp_path / 'img',
        '-n',
        '3',
        '-is',
        '48',
        '--format',
        'png',
        '--seed',
        '5',
        '-nw',
        '1',
        '-pc',
        '0.5',
        '-pb',
        '0.5',
        check=True,
    )
    run_script('PHdict.py', tmp_path / 'img', '-o', tmp_path / 'ph', '-it', 'png', '-nw', '1', check=True)
    vec = make_vectoriser('histogram', 40)
    cfg = GeneratorConfig(img_size=48, prob_binary=0.5, prob_colour=0.5)
    ds = GeneratedPH(cfg, 5, 3, ComputedLabels(vec), spatial=lambda im: im, to_tensor=lambda im: im)
    for i in range(3):
        image, label = ds[i]
        on_disk = np.asarray(__import__('PIL.Image').Image.open(tmp_path / 'img' / f'v{i:08d}.png').convert('RGB'))
        assert np.array_equal(np.asarray(image), on_disk)
        expected = vec(np.load(tmp_path / 'ph' / f'v{i:08d}.npy'))
        np.testing.assert_array_equal(label.numpy(), expected)
    ds.set_epoch(1)  # fresh images in the next epoch
    assert not np.array_equal(
        np.asarray(ds[0][0]),
        np.asarray(GeneratedPH(cfg, 5, 3, ComputedLabels(vec), spatial=lambda im: im, to_tensor=lambda im: im)[0][0]),
    )


def test_pre_and_post_labels(generated):
    """-ph pre labels the whole image; -ph post labels the crop the network sees."""
    from PIL import Image
    from torchvision import transforms

    from util.io.fileio import list_images
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels, FolderPH

    root = str(generated / 'random')
    rel = list_images(root)[:6]
    labels = ComputedLabels(make_vectoriser('histogram', 40))
    crop = transforms.RandomCrop(40)
    pre = FolderPH(root, rel, labels, crop, lambda im: im, 'pre')
    post = FolderPH(root, rel, labels, crop, lambda im: im, 'post')
    differ = 0
    for i in range(len(rel)):
        full = Image.open(os.path.join(root, rel[i])).convert('RGB')
        img_pre, lab_pre = pre[i]
        img_post, lab_post = post[i]
        np.testing.assert_array_equal(lab_pre.numpy(), labels.from_image(full))
        np.testing.assert_array_equal(lab_post.numpy(), labels.from_image(img_post))
        differ += not np.array_equal(lab_pre.numpy(), lab_post.numpy())
    assert differ > 0
    # a crop of the full size is the image itself: both modes agree
    same = FolderPH(root, rel, labels, transforms.RandomCrop(64), lambda im: im, 'post')
    np.testing.assert_array_equal(same[0][1].numpy(), pre[0][1].numpy())


def test_resume_is_exact(generated, run_script, tmp_path):
    common = [
        '-t',
        'random',
        '-pd',
        'PH_random',
        '-nc',
        '40',
        '-u',
        'resnet18',
        '--img_size',
        '48',
        '--crop_size',
        '32',
        '-b',
        '8',
        '-nw',
        '1',
        '-e',
        '2',
        '-aff',
    ]
    run_script('pretraining.py', '-o', tmp_path / 'full', *common, cwd=generated, check=True)
    run_script('pretraining.py', '-o', tmp_path / 'split', *common, '--stop_after', '1', cwd=generated, check=True)
    split = only_run_dir(tmp_path / 'split')
    assert not os.path.exists(os.path.join(split, 'resnet18_epoch2.pth'))
    run_script('pretraining.py', *common, '--resume', split, cwd=generated, check=True)
    a = torch.load(os.path.join(only_run_dir(tmp_path / 'full'), 'resnet18_epoch2.pth'), weights_only=True)
    b = torch.load(os.path.join(split, 'resnet18_epoch2.pth'), weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r['epoch'] for r in read_log(split)] == [1, 2]
    assert read_log(split)[1]['train_loss'] == read_log(only_run_dir(tmp_path / 'full'))[1]['train_loss']


@pytest.mark.timeout(900)  # torchrun has 600 s of its own
def test_torchrun_two_processes(generated, tmp_path):
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node',
        '2',
        os.path.join(ROOT, 'pretraining.py'),
        '-o',
        str(tmp_path),
        '-t',
        'random',
        '-pd',
        'PH_random',
        '-nc',
        '40',
        *TINY,
        '-b',
        '4',
    ]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    res = subprocess.run(cmd, cwd=generated, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = only_run_dir(tmp_path)
    state = torch.load(os.path.join(run, 'resnet18_epoch1.pth'), weights_only=True)
    single = torchvision.models.resnet18(num_classes=40).state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in single.items()}
    (record,) = read_log(run)
    assert record['images'] == 32  # both ranks' images counted once


@pytest.mark.parametrize(
    'case', ['missing_train', 'empty_train', 'missing_diagrams', 'nan_labels', 'unknown_arch', 'unwritable_output']
)
def test_bad_input(case, generated, run_script, tmp_path):
    args = ['-t', 'random', '-pd', 'PH_random', '-o', tmp_path / 'out', '-nc', '40', *TINY]
    expect = None
    if case == 'missing_train':
        args[1], expect = 'no_such_dir', 'does not exist'
    elif case == 'empty_train':
        (tmp_path / 'empty').mkdir()
        args[1], expect = tmp_path / 'empty', 'no images'
    elif case == 'missing_diagrams':
        ph = tmp_path / 'ph_partial'
        ph.mkdir()
        diagrams = [f for f in sorted(os.listdir(generated / 'PH_random')) if f.startswith('v') and f.endswith('.npy')]
        for f in diagrams[:10]:
            (ph / f).write_bytes((generated / 'PH_random' / f).read_bytes())
        args[3], expect = ph, '22 of 32 images have no diagram'
    elif case == 'nan_labels':
        ph = tmp_path / 'ph_nan'
        ph.mkdir()
        np.save(ph / 'labels_histogram.npy', np.full((32, 40), np.nan, np.float32))
        names = sorted(os.listdir(generated / 'random'))
        (ph / 'labels_histogram.txt').write_text('\n'.join(n for n in names if n.endswith('.jpg')) + '\n')
        args[3], expect = ph, 'non-finite'
        args.append('-pc')
    elif case == 'unknown_arch':
        args += ['-u', 'resnet19']
        expect = 'resnet18'
    elif case == 'unwritable_output':
        if os.geteuid() == 0:
            blocker = tmp_path / 'file'
            blocker.write_text('x')
            args[5] = blocker / 'sub'  # a path below a regular file can never be created, even by root
        else:
            ro = tmp_path / 'ro'
            ro.mkdir()
            ro.chmod(0o500)
            args[5] = ro
        expect = 'cannot'
    res = run_script('pretraining.py', *args, cwd=generated, check=False)
    assert res.returncode == 2, res.stderr
    assert expect in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not glob.glob(str(tmp_path / 'out' / '*' / '*.pth'))
