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

from util.cli import checks as T
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


# ------------------------------------------------------------------------------------------ issue 28: --warp_*
WARP = ['--img_size', '48', '--crop_size', '32', '--warp_scale', '0.2', '1', '--warp_rotation', '60']


def test_warp_of_an_identity_draw_is_the_image_itself():
    from util.train.transforms import WarpCrop

    a = np.asarray(noise_image(0, (40, 40)))
    out = WarpCrop(40, (1, 1), degrees=0, shear=0, ratio=(1, 1))(Image.fromarray(a))
    assert np.array_equal(np.asarray(out), a)  # pixel-exact: no half-pixel shift, no blur


@pytest.mark.parametrize('mode', ['L', 'RGB'])
@pytest.mark.parametrize('scale', [(0.05, 0.3), (0.9, 1.0), (1.0, 1.0)])
def test_warp_takes_no_pixel_from_outside_the_image(mode, scale):
    """A constant image stays constant under any draw: no fill colour ever reaches the crop (a rotation by
    torchvision with its default fill would put 0 in the corners)."""
    from util.train.transforms import WarpCrop

    image = Image.new(mode, (64, 48), 200 if mode == 'L' else (200, 150, 100))
    warp = WarpCrop(32, scale, degrees=180, shear=45)
    torch.manual_seed(0)
    for _ in range(200):
        out = np.asarray(warp(image)).reshape(32, 32, -1)
        assert out.shape[:2] == (32, 32) and (out == np.asarray(image)[0, 0]).all()
    rotated = np.asarray(TV.RandomRotation(45)(image))
    assert (rotated == 0).any()  # what the test guards against


def test_warp_draws_cover_their_ranges():
    from util.train.transforms import WarpCrop

    warp = WarpCrop(32, (0.3, 0.6), degrees=40, shear=0, ratio=(1, 1))
    torch.manual_seed(1)
    angles, areas = [], []
    for _ in range(400):
        a, b, d, e, cx, cy = warp.params(100, 80)
        angles.append(np.degrees(np.arctan2(d, a)))
        areas.append(abs(a * e - b * d) * 32 * 32 / (100 * 80))
        half = np.array([[a, b], [d, e]]) @ np.array([[16, 16, -16, -16], [16, -16, 16, -16]])
        assert (half[0] + cx >= 0).all() and (half[0] + cx <= 100).all() and (half[1] + cy >= 0).all()
        assert (half[1] + cy <= 80).all()  # every corner inside the image
    assert -40 <= min(angles) < -35 and 35 < max(angles) <= 40
    assert 0.3 - 1e-9 <= min(areas) < 0.33 and 0.57 < max(areas) <= 0.6 + 1e-9
    sheared = WarpCrop(32, (0.3, 0.3), degrees=0, shear=30, ratio=(1, 1))
    shears = [np.degrees(np.arctan2(sheared.params(100, 80)[1], sheared.params(100, 80)[0])) for _ in range(200)]
    assert -30 <= min(shears) < -25 and 25 < max(shears) <= 30  # b/a = tan(shear) without rotation


def test_warp_is_off_by_default_and_replaces_the_crop_when_given():
    from util.train.datasets import RandomRescale, finetune_train_parts, pretrain_transforms
    from util.train.transforms import WarpCrop

    plain = augment('--img_size', 48, '--crop_size', 32)
    assert (plain.warp_scale, plain.warp_rotation, plain.warp_shear) == (None, 0.0, 0.0)
    assert [type(t) for t in pretrain_transforms(plain)[0].transforms] == [TV.Resize, TV.RandomCrop]

    spatial, _ = pretrain_transforms(augment(*WARP, '--warp_shear', '10'))
    assert [type(t) for t in spatial.transforms] == [WarpCrop]
    warp = spatial.transforms[0]
    assert (warp.size, warp.scale, warp.degrees, warp.shear) == (32, (0.2, 1.0), 60.0, 10.0)
    spatial, to_tensor = pretrain_transforms(augment(*WARP, '-rs', '0.2', '--aug_plus'))
    assert [type(t) for t in spatial.transforms] == [RandomRescale, WarpCrop, TV.RandomHorizontalFlip]
    assert any(isinstance(t, TV.RandomApply) for t in to_tensor.transforms)  # --aug_plus's colours still apply
    spatial, _ = finetune_train_parts(augment(*WARP))
    assert [type(t) for t in spatial.transforms] == [WarpCrop, TV.RandomHorizontalFlip]


@pytest.mark.parametrize(
    'flags, match',
    [
        (['--warp_scale', '0', '1'], '--warp_scale'),
        (['--warp_scale', '0.5', '0.4'], '--warp_scale'),
        (['--warp_scale', '0.5', '1.01'], '--warp_scale'),
        (['--warp_scale', '0.5', '1', '--warp_rotation', '181'], '--warp_rotation'),
        (['--warp_scale', '0.5', '1', '--warp_shear', '46'], '--warp_shear'),
        (['--warp_shear', '10'], 'give --warp_scale'),
        (['--warp_scale', '0.5', '1', '-rr', '10'], '--random_rotation'),
        (['--warp_scale', '0.5', '1', '--affine'], '--affine'),
        (['--warp_scale', '0.5', '1', '-cp', '2'], '--crop_padding'),
    ],
)
def test_bad_warp_flags(flags, match):
    with pytest.raises(UserError, match=match):
        parse(*flags)


def _generated_sets(*flags):
    from util.cli import build, compat

    args = parse('-n', 6, '-nv', 0, '-nc', 40, *flags)
    compat.resolve_special_values(args)
    T.check_mode_args(args)
    return build.build_pretraining_sets(args)


def _pixels_seen(x):
    """The uint8 RGB image a normalised tensor [3, H, W] was made from."""
    from util.train.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return Image.fromarray((x * std + mean).mul(255).round().byte().permute(1, 2, 0).numpy())


def test_ph_post_label_of_a_warped_crop_is_the_ph_of_the_pixels_seen():
    """-ph post on fresh generated images under the warp: each label is the PH label computed directly on the
    pixels the network gets (borders included), and differs from the whole image's label."""
    train, _ = _generated_sets('-ph', 'post', *WARP, '--warp_shear', '15', '--warp_scale', '0.1', '0.5')
    computed = train.computed
    differs = 0
    torch.manual_seed(2)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for i in range(len(train)):
            x, label = train[i]
            assert x.shape == (3, 32, 32)
            np.testing.assert_allclose(label.numpy(), computed.from_image(_pixels_seen(x)), rtol=1e-6, atol=1e-6)
            differs += not np.allclose(label.numpy(), computed.from_image(train._image(i)))
    assert differs >= 6  # the label is of the crop, not of the image it was cut from


def test_fresh_images_every_epoch_give_n_times_e_distinct_images(tmp_path):
    """-n N without -t or --cache_dir: epoch e shows images e*N .. e*N+N-1 of the seed's stream, so N x E
    image-epochs are N x E distinct images (the budget of a fixed set of N images seen E times); reproducible
    from (seed, epoch, index), so a resumed run draws what the uninterrupted one drew."""
    train, _ = _generated_sets(*WARP)
    again, _ = _generated_sets(*WARP)
    seen = set()
    for epoch in range(3):
        train.set_epoch(epoch)
        again.set_epoch(epoch)
        for i in range(len(train)):
            image = np.asarray(train._image(i))
            assert np.array_equal(image, np.asarray(again._image(i)))
            seen.add(image.tobytes())
    assert len(seen) == 3 * 6
    cached, _ = _generated_sets(*WARP, '--cache_dir', tmp_path / 'cache')
    cached.set_epoch(2)
    train.set_epoch(0)
    assert np.array_equal(np.asarray(cached._image(1)), np.asarray(train._image(1)))  # a cache: the same N
