"""Augmentation presets (--aug_plus, --random_scale, --random_rotation, --crop_padding) and the --gradient
edge filtration (util/ph/cubical.py, PHdict.py, the pretraining loader)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi
from torchvision import transforms as TV

from util.cli import flags as T
from util.errors import UserError


def parse(*argv):
    import pretraining

    args = pretraining.get_args_parser().parse_args([str(a) for a in argv])
    T.check_common_args(args)
    return args


def augment(*argv):
    """The AugmentConfig the training scripts build from these flags (what the transforms take)."""
    from util.cli.build import data_config

    return data_config(parse(*argv)).augment


def noise_image(seed, size=(48, 40)):
    """A smooth random image with a few blobs (Otsu gives a non-trivial mask)."""
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random((size[1], size[0])), 3)
    a = (255 * (a - a.min()) / np.ptp(a)).astype(np.uint8)
    return Image.fromarray(np.stack([a, a[::-1], a[:, ::-1]], -1))


def disk(size=64, radius=15):
    yy, xx = np.mgrid[:size, :size]
    return (((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2) <= radius**2).astype(np.uint8) * 255


# ------------------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize(
    'flags',
    [
        [],
        ['--aug_plus'],
        ['-rs', '0.3'],
        ['-rr', '30'],
        ['-cp', '4'],
        ['--aug_plus', '-rr', '20', '-rs', '0.2', '-cp', '2', '-aff'],
    ],
)
def test_transforms_give_crops_of_the_right_shape(flags):
    from util.train.datasets import finetune_transforms, pretrain_transforms, pretrain_val_transforms

    args = augment('--img_size', 48, '--crop_size', 32, *flags)
    torch.manual_seed(0)
    for seed in range(3):
        img = noise_image(seed)
        spatial, to_tensor = pretrain_transforms(args)
        for x in (to_tensor(spatial(img)), finetune_transforms(args, True)(img), finetune_transforms(args, False)(img)):
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
        val_spatial, val_to_tensor = pretrain_val_transforms(args)
        assert val_to_tensor(val_spatial(img)).shape == (3, 32, 32)


def test_presets_are_in_the_pipelines():
    from util.train.datasets import RandomRescale, finetune_train_parts, pretrain_transforms

    plain_spatial, plain_tensor = pretrain_transforms(augment('--img_size', 48, '--crop_size', 32))
    assert [type(t) for t in plain_tensor.transforms] == [TV.ToTensor, TV.Normalize]

    spatial, to_tensor = pretrain_transforms(augment('--img_size', 48, '--crop_size', 32, '--aug_plus'))
    crop = next(t for t in spatial.transforms if isinstance(t, TV.RandomResizedCrop))
    assert crop.scale == (0.2, 1.0) and any(isinstance(t, TV.RandomHorizontalFlip) for t in spatial.transforms)
    inner = [type(s) for t in to_tensor.transforms for s in getattr(t, 'transforms', [t])]
    assert {TV.ColorJitter, TV.RandomGrayscale, TV.GaussianBlur} <= set(inner)
    jitter = next(
        t for t in to_tensor.transforms if isinstance(t, TV.RandomApply) and isinstance(t.transforms[0], TV.ColorJitter)
    )
    assert jitter.p == 0.8
    blur = next(s for t in to_tensor.transforms for s in getattr(t, "transforms", []) if isinstance(s, TV.GaussianBlur))
    assert tuple(blur.sigma) == (0.1, 2.0) and blur.kernel_size[0] % 2 == 1

    spatial, _ = pretrain_transforms(augment('--img_size', 48, '--crop_size', 32, '-cp', 4, '-rs', 0.25, '-rr', 10))
    kinds = [type(t) for t in spatial.transforms]
    assert kinds == [TV.Resize, RandomRescale, TV.RandomRotation, TV.RandomCrop]
    assert spatial.transforms[-1].padding == 4 and list(spatial.transforms[2].degrees) == [-10.0, 10.0]

    spatial, _ = finetune_train_parts(augment('--img_size', 48, '--crop_size', 32, '-cp', 3))
    assert [type(t) for t in spatial.transforms] == [TV.Resize, TV.RandomCrop, TV.RandomHorizontalFlip]
    spatial, _ = finetune_train_parts(augment('--img_size', 48, '--crop_size', 32))
    assert [type(t) for t in spatial.transforms] == [TV.Resize, TV.RandomResizedCrop, TV.RandomHorizontalFlip]


def test_random_rescale_covers_its_range():
    from util.train.datasets import RandomRescale

    torch.manual_seed(1)
    widths = [RandomRescale(0.25)(Image.new('RGB', (100, 60))).size[0] for _ in range(300)]
    assert 75 <= min(widths) < 80 and 120 < max(widths) <= 125


@pytest.mark.parametrize('flags', [['-rs', '1.2'], ['-rr', '200'], ['-cp', '-1']])
def test_bad_augmentation_flags(flags):
    with pytest.raises(
        UserError,
        match=flags[0].replace('-rs', 'random_scale').replace('-rr', 'random_rotation').replace('-cp', 'crop_padding'),
    ):
        parse(*flags)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('imgs')
    for i in range(3):
        noise_image(i).save(root / f'{i}.png')
    return root


AUG = ['--aug_plus', '-rr', '25', '-rs', '0.2', '-cp', '3', '--img_size', '48', '--crop_size', '32']


def test_ph_pre_label_is_that_of_the_whole_image(folder):
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels, FolderPH, pretrain_transforms

    labels = ComputedLabels(make_vectoriser('histogram', 40))
    spatial, to_tensor = pretrain_transforms(augment(*AUG))
    ds = FolderPH(str(folder), ['0.png', '1.png', '2.png'], labels, spatial, to_tensor, 'pre')
    torch.manual_seed(3)
    for i in range(3):
        expected = labels.from_image(Image.open(folder / f'{i}.png').convert('RGB'))
        views = [ds[i] for _ in range(3)]
        for x, label in views:
            np.testing.assert_array_equal(label.numpy(), expected)
        assert not torch.equal(views[0][0], views[1][0])  # the augmentation did change the image


def test_ph_post_label_is_that_of_the_crop_before_colour_changes(folder):
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import NORMALIZE, ComputedLabels, FolderPH, pretrain_transforms

    labels = ComputedLabels(make_vectoriser('histogram', 40))
    spatial, to_tensor = pretrain_transforms(augment(*AUG))
    ds = FolderPH(str(folder), ['0.png', '1.png', '2.png'], labels, spatial, to_tensor, 'post')
    coloured = 0
    for seed in range(6):
        i = seed % 3
        torch.manual_seed(seed)
        x, label = ds[i]
        torch.manual_seed(seed)  # replay the spatial part alone: the same crop
        crop = spatial(Image.open(folder / f'{i}.png').convert('RGB'))
        np.testing.assert_array_equal(label.numpy(), labels.from_image(crop))
        coloured += not torch.allclose(x, NORMALIZE(TV.functional.to_tensor(crop)))
    assert coloured > 0  # photometric steps ran, after the label


# ------------------------------------------------------------------------------------------ --gradient
def test_edge_map_of_a_disk_is_a_ring():
    from util.ph.cubical import edge_map

    e = edge_map(disk())
    assert e.dtype == bool
    assert ndi.label(e, np.ones((3, 3)))[1] == 1  # one closed curve ...
    assert ndi.label(~e)[1] == 2  # ... separating inside from outside
    assert 0.7 * 2 * np.pi * 15 < e.sum() < 1.5 * 2 * np.pi * 15
    assert not edge_map(np.full((20, 20), 90, np.uint8)).any()


def test_gradient_diagram_of_a_disk_has_one_loop():
    from util.ph.cubical import compute_ph

    plain, edges = compute_ph(disk()), compute_ph(disk(), gradient=True)
    for d in (plain, edges):
        assert d.shape[1] == 9 and not np.isnan(d).any() and (d[:, 1] <= d[:, 2]).all()
        h1 = d[d[:, 0] == 1]
        assert len(h1[h1[:, 2] - h1[:, 1] > 0.5]) == 1
        assert np.sum((d[:, 0] == 0) & (d[:, 2] > 1e300)) == 1  # one essential component
    loop_plain, loop_edges = plain[plain[:, 0] == 1][0], edges[edges[:, 0] == 1][0]
    assert loop_edges[2] == 1.0  # filled as soon as the one-pixel ring enters
    assert loop_plain[2] > 10  # filled only when the disk's centre enters
    # the inside of the ring is a second component of the edge filtration, born at the disk's centre
    assert np.sum(edges[:, 0] == 0) > np.sum(plain[:, 0] == 0)


def test_gradient_on_generated_images():
    from util.ph.cubical import compute_ph
    from util.ph.generator import GeneratorConfig, generate_image

    cfg = GeneratorConfig(img_size=48, prob_binary=0.5)
    for i in range(3):
        img = generate_image(cfg, 2, i, 0)
        d = compute_ph(img, gradient=True)
        assert d.ndim == 2 and d.shape[1] == 9 and len(d) >= 1 and not np.isnan(d).any()
        assert not np.array_equal(d, compute_ph(img))
    d = compute_ph(np.full((16, 16), 7, np.uint8), gradient=True)  # no edges: one class, never dies
    assert len(d) == 1 and d[0, 2] > 1e300


def test_phdict_gradient(tmp_path, run_script):
    from util.io.fileio import load_image
    from util.ph.cubical import compute_ph

    src = tmp_path / 'in'
    src.mkdir()
    Image.fromarray(disk()).save(src / 'disk.png')
    noise_image(5).save(src / 'noise.png')
    run_script('PHdict.py', src, '-o', tmp_path / 'out', '-it', 'png', '-nw', '1', '--gradient', check=True)
    for name in ('disk', 'noise'):
        expected = compute_ph(load_image(src / f'{name}.png', 'L'), gradient=True)
        np.testing.assert_array_equal(np.load(tmp_path / 'out' / f'{name}.npy'), expected)
    with open(tmp_path / 'out' / 'settings.json') as f:
        assert json.load(f)['diagram'] == {
            'filtration': 'signed_distance',
            'gradient': True,
            'ph_engines': ['unionfind'],
        }
    res = run_script('PHdict.py', src, '-o', tmp_path / 'out', '-it', 'png', '-nw', '1', check=False)
    assert res.returncode == 2 and 'other settings' in res.stderr and 'gradient' in res.stderr


def test_pretraining_loader_computes_gradient_labels(folder):
    from util.cli.build import build_pretraining_sets
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels

    args = parse('-t', folder, '--gradient', '-nc', 40, '--img_size', 48, '--crop_size', 32)
    train, _ = build_pretraining_sets(args)
    image = Image.open(os.path.join(folder, train.rel_paths[0])).convert('RGB')
    vec = make_vectoriser('histogram', 40)
    label = train[0][1].numpy()
    np.testing.assert_array_equal(label, ComputedLabels(vec, gradient=True).from_image(image))
    assert not np.array_equal(label, ComputedLabels(vec).from_image(image))
