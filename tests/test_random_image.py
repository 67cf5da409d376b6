"""Tests of util/random_image.py: the fast generator against the plain formula, reproducibility, the script.

What "equal to the formula" means here (test_images_match_direct_formula), per image of a fixed sample:

* the random draws are consumed identically (same generator state after the float stage and at the end);
* float stage: fast channel == plain float64 channel minus its mean (the dropped DC term), to within
  1e-5 of the channel's range (observed: ~1e-6);
* uint8 image, binarised channels: a pixel may differ only if its plain value is within 1e-5 of the range
  from the Otsu threshold (observed: none differ);
* uint8 image, min-max normalised channels: a pixel may differ only by one grey level, and only if
  255 * (value - min) / ptp is within 1e-3 of an integer (a truncation boundary);
* over the whole sample, at most 1e-4 of the pixels differ (observed: ~2e-5, all in normalised channels).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from skimage.filters import threshold_otsu

from bench import reference
from util.errors import UserError
from util.io.fileio import list_images
from util.ph.generator import (
    PREVIEW_FILE,
    TRAIN_STREAM,
    VAL_STREAM,
    GeneratorConfig,
    _filtered_channels,
    generate_image,
    image_rng,
)
from util.ph.otsu import otsu_threshold
from util.random_image import get_args_parser, main

SCRIPT = 'util/random_image.py'


# ----------------------------------------------------------------------------------------- the formula


def direct_image(cfg, seed, index, stream=TRAIN_STREAM):
    """The model written plainly (bench/reference.py with np.fft): complex float64 FFTs of the full spectrum,
    skimage's Otsu, astype(uint8).

    Returns (floats (C,S,S) float64 before thresholding, kinds ['ge'|'lt'|'norm'] per channel, Otsu
    thresholds (None for 'norm'), uint8 image (S,S) or (S,S,3), rng state after the float stage, rng).
    """
    rng = np.random.default_rng([seed, stream, index])
    channels = 3 if rng.uniform(0, 1) < cfg.prob_colour else 1
    sample = reference.formula_channels(rng.uniform, cfg.img_size, cfg.alpha_range, cfg.beta_range, channels, np.fft)
    state_after_float = rng.bit_generator.state
    floats = sample.copy()
    kinds, thresholds, image = reference.finish_channels(sample, rng.uniform, cfg.prob_binary)
    return floats, kinds, thresholds, image, state_after_float, rng


@pytest.mark.parametrize('size', [32, 45, 64])
def test_images_match_direct_formula(size):
    cfg = GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.5)
    n_diff = n_pix = 0
    seen_kinds = set()
    for index in range(40):
        floats, kinds, thresholds, ref, ref_state, ref_rng = direct_image(cfg, 7, index)
        seen_kinds.update(kinds)

        rng = image_rng(7, index)
        fast = _filtered_channels(rng, cfg)
        assert rng.bit_generator.state == ref_state, "float stage consumed different random draws"
        assert fast.shape == floats.shape and fast.dtype == np.float32
        centred = floats - floats.mean(axis=(1, 2), keepdims=True)
        ptp = np.ptp(floats, axis=(1, 2))
        err = np.abs(fast - centred).max(axis=(1, 2))
        assert np.all(err <= 1e-5 * ptp), (index, err / ptp)

        image = generate_image(cfg, 7, index)
        assert image.dtype == np.uint8 and image.shape == ref.shape
        img3, ref3 = image.reshape(size, size, -1), ref.reshape(size, size, -1)
        for c, kind in enumerate(kinds):
            diff = img3[:, :, c].astype(int) - ref3[:, :, c]
            differ = diff != 0
            if kind == 'norm':
                assert np.abs(diff).max() <= 1
                pos = 255 * (floats[c] - floats[c].min()) / ptp[c]
                assert np.all(np.abs(pos - np.rint(pos))[differ] <= 1e-3), index
            else:
                assert np.all(np.abs(floats[c] - thresholds[c])[differ] <= 1e-5 * ptp[c]), index
            n_diff += int(differ.sum())
            n_pix += differ.size
    assert seen_kinds == {'ge', 'lt', 'norm'}
    assert n_diff <= 1e-4 * n_pix, n_diff / n_pix


def test_generate_image_consumes_exactly_the_formula_draws():
    cfg = GeneratorConfig(img_size=32, prob_binary=0.5, prob_colour=0.5)
    for index in range(5):
        *_, ref_rng = direct_image(cfg, 1, index)
        # generate_image draws from image_rng(1, index); replay it and compare the final states
        rng = image_rng(1, index)
        out = _filtered_channels(rng, cfg)
        for _ in range(out.shape[0]):
            rng.uniform(0, 1)
        assert rng.bit_generator.state == ref_rng.bit_generator.state


def test_otsu_threshold_equals_skimage():
    rng = np.random.default_rng(3)
    cfg = GeneratorConfig(img_size=48, prob_colour=1.0)
    for index in range(60):
        for chan in _filtered_channels(image_rng(0, index), cfg):
            assert otsu_threshold(chan) == threshold_otsu(chan)
            for offset in (0.01, 0.3):  # far from zero relative to the range: other code paths
                shifted = chan + np.float32(offset)
                assert otsu_threshold(shifted) == threshold_otsu(shifted)
            wide = chan.astype(np.float64) * 1e3
            assert otsu_threshold(wide) == threshold_otsu(wide)
    for k in range(100):
        a = rng.normal(size=(37, 29)).astype(np.float32)
        if k % 2:
            a = np.round(a * 8) / 8  # many values exactly on bin edges
        assert otsu_threshold(a) == threshold_otsu(a)
    for k in range(40):  # values exactly on, and one ulp either side of, every bin edge
        low, high = np.sort(rng.normal(size=2)).astype(np.float32)
        edges = np.linspace(low, high, 257, dtype=np.float32)
        vals = np.concatenate(
            [edges, np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf))]
        )
        vals = np.clip(vals, low, high)
        a = rng.permutation(np.concatenate([vals, rng.uniform(low, high, 1024 - vals.size)]))
        a = a.astype(np.float32).reshape(32, 32)
        assert otsu_threshold(a) == threshold_otsu(a)
    assert otsu_threshold(np.full((8, 8), 0.5)) == 0.5


# ------------------------------------------------------------------------------------ API behaviour


def test_config_validation():
    GeneratorConfig().validate()
    GeneratorConfig(img_size=8, alpha_range=(1, 1), prob_binary=0, prob_colour=1).validate()
    bad = [
        dict(img_size=7),
        dict(alpha_range=(1.0, 0.5)),
        dict(beta_range=(2, 1)),
        dict(prob_binary=1.01),
        dict(prob_colour=-0.1),
        dict(alpha_range=(0, float('nan'))),
    ]
    for kwargs in bad:
        with pytest.raises(UserError):
            GeneratorConfig(**kwargs).validate()


def test_deterministic_order_independent_and_streams_differ():
    cfg = GeneratorConfig(img_size=32, prob_binary=0.5, prob_colour=0.5)
    forward = [generate_image(cfg, 5, i) for i in range(12)]
    backward = [generate_image(cfg, 5, i) for i in reversed(range(12))][::-1]
    for a, b in zip(forward, backward):
        assert np.array_equal(a, b)
    assert not np.array_equal(generate_image(cfg, 5, 3), generate_image(cfg, 6, 3))
    assert not np.array_equal(generate_image(cfg, 5, 3, VAL_STREAM), generate_image(cfg, 5, 3, TRAIN_STREAM))
    with pytest.raises(UserError):
        generate_image(cfg, -1, 0)


def test_fractions_follow_probabilities():
    """Colour images ~ Binomial(n, pc); binarised channels ~ Binomial(channels, pb): within 4 sigma."""
    n = 400
    cfg = GeneratorConfig(img_size=32, prob_binary=0.6, prob_colour=0.3)
    colour = binary = channels = 0
    for i in range(n):
        img = generate_image(cfg, 11, i)
        assert img.shape in ((32, 32), (32, 32, 3))
        colour += img.ndim == 3
        for c in img.reshape(32, 32, -1).transpose(2, 0, 1):
            channels += 1
            binary += bool(np.all((c == 0) | (c == 255)))
            assert c.min() == 0 and c.max() == 255  # both binarised and normalised channels span 0..255
    assert abs(colour / n - 0.3) <= 4 * np.sqrt(0.3 * 0.7 / n)
    assert abs(binary / channels - 0.6) <= 4 * np.sqrt(0.6 * 0.4 / channels)
    grey_binary = GeneratorConfig(img_size=32, prob_binary=1.0, prob_colour=0.0)
    colour_smooth = GeneratorConfig(img_size=32, prob_binary=0.0, prob_colour=1.0)
    for i in range(20):
        g = generate_image(grey_binary, 0, i)
        assert g.ndim == 2 and set(np.unique(g)) <= {0, 255}
        c = generate_image(colour_smooth, 0, i)
        assert c.shape == (32, 32, 3) and all(len(np.unique(c[:, :, k])) > 2 for k in range(3))


# ------------------------------------------------------------------------------------------- script


def _digests(folder, ext='.jpg'):
    return {
        name: hashlib.sha256(open(os.path.join(folder, name), 'rb').read()).hexdigest()
        for name in sorted(os.listdir(folder))
        if name.endswith(ext)
    }


def test_script_worker_count_does_not_change_bytes_and_no_duplicates(run_script, tmp_path):
    args = ['-pb', '0.5', '-pc', '0.5', '-n', '200', '-is', '32', '--preview', '0']
    run_script(SCRIPT, *args, '-o', tmp_path / 'one', '-nw', '1', check=True)
    res = run_script(SCRIPT, *args, '-o', tmp_path / 'two', '-nw', '2', check=True)
    assert 'wrote 200' in res.stdout
    one, two = _digests(tmp_path / 'one'), _digests(tmp_path / 'two')
    assert len(one) == 200 and sorted(one) == [f"v{i:08d}.jpg" for i in range(200)]
    assert one == two
    assert len(set(two.values())) == 200, "duplicate images"


def test_script_writes_what_the_api_generates(run_script, tmp_path):
    run_script(
        SCRIPT,
        '-o',
        tmp_path,
        '-n',
        '12',
        '-is',
        '40',
        '-pb',
        '0.5',
        '-pc',
        '0.5',
        '--seed',
        '4',
        '--format',
        'png',
        '-pf',
        'img',
        '-nw',
        '2',
        check=True,
    )
    cfg = GeneratorConfig(img_size=40, prob_binary=0.5, prob_colour=0.5)
    for i in range(12):
        with Image.open(tmp_path / f"img{i:08d}.png") as im:
            assert np.array_equal(np.asarray(im), generate_image(cfg, 4, i))


def test_resume_regenerates_exactly_the_missing_files(run_script, tmp_path):
    args = ['-o', tmp_path, '-n', '30', '-is', '32', '-nw', '1', '--preview', '0']
    run_script(SCRIPT, *args, check=True)
    before = _digests(tmp_path)
    stat = {n: os.stat(tmp_path / n) for n in before}
    deleted = ['v00000000.jpg', 'v00000007.jpg', 'v00000029.jpg']
    for name in deleted:
        os.remove(tmp_path / name)
    stale = tmp_path / 'v00000007.jpg.tmp-abc123'  # what a killed run may leave behind
    stale.write_bytes(b'half an image')
    time.sleep(0.01)
    res = run_script(SCRIPT, *args, check=True)
    assert 'wrote 3 images, skipped 27' in res.stdout
    assert _digests(tmp_path) == before
    assert not stale.exists()
    for name in before:
        if name not in deleted:
            now = os.stat(tmp_path / name)
            assert (now.st_ino, now.st_mtime_ns) == (stat[name].st_ino, stat[name].st_mtime_ns), name
    res = run_script(SCRIPT, *args, '--overwrite', check=True)
    assert 'wrote 30 images, skipped 0' in res.stdout
    assert _digests(tmp_path) == before
    assert os.stat(tmp_path / 'v00000001.jpg').st_ino != stat['v00000001.jpg'].st_ino


@pytest.mark.slow
def test_killed_run_resumes_to_identical_output(root, tmp_path):
    killed, clean = tmp_path / 'killed', tmp_path / 'clean'
    args = [
        sys.executable,
        os.path.join(root, SCRIPT),
        '-n',
        '600',
        '-is',
        '32',
        '--preview',
        '0',
        '-pb',
        '0.5',
        '-pc',
        '0.5',
    ]
    proc = subprocess.Popen(
        args + ['-o', str(killed), '-nw', '2'],
        cwd=root,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if killed.is_dir() and len(os.listdir(killed)) > 40:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its pool workers
    proc.wait()
    subprocess.run(args + ['-o', str(killed), '-nw', '2'], cwd=root, check=True, capture_output=True)
    subprocess.run(args + ['-o', str(clean), '-nw', '1'], cwd=root, check=True, capture_output=True)
    assert _digests(killed) == _digests(clean)
    assert len(_digests(clean)) == 600
    assert not [n for n in os.listdir(killed) if '.tmp-' in n]


@pytest.mark.parametrize('layout', ['named_train', 'parent'])
def test_validation_split(run_script, tmp_path, layout):
    out = tmp_path / 'train' if layout == 'named_train' else tmp_path / 'data'
    run_script(SCRIPT, '-o', out, '-n', '25', '-nv', '15', '-is', '32', '-nw', '2', check=True)
    train, val = (tmp_path / 'train', tmp_path / 'val') if layout == 'named_train' else (out / 'train', out / 'val')
    t, v = _digests(train), _digests(val)
    assert len(t) == 25 and len(v) == 15
    assert not set(t.values()) & set(v.values()), "train and val share images"
    assert json.loads((val / 'args.json').read_text())['stream'] == VAL_STREAM
    assert json.loads((train / 'args.json').read_text())['stream'] == TRAIN_STREAM


def test_preview_and_args_json(run_script, tmp_path):
    res = run_script(SCRIPT, '-o', tmp_path / 'a', '-n', '6', '-is', '32', '--preview', '4', '--seed', '9', check=True)
    assert PREVIEW_FILE in res.stdout
    # the preview sits next to the images but is not listed as one (pretraining lists the folder)
    assert list_images(tmp_path / 'a') == [f"v{i:08d}.jpg" for i in range(6)]
    with Image.open(tmp_path / 'a' / PREVIEW_FILE) as im:
        assert im.format == 'PNG' and im.size[0] == im.size[1] > 0
        assert np.asarray(im.convert('L')).std() > 0
    saved = json.loads((tmp_path / 'a' / 'args.json').read_text())
    assert saved['seed'] == 9 and saved['img_size'] == 32 and saved['n_samples'] == 6
    run_script(SCRIPT, '-o', tmp_path / 'b', '-n', '3', '-is', '32', '--preview', '0', check=True)
    assert not (tmp_path / 'b' / PREVIEW_FILE).exists() and (tmp_path / 'b' / 'args.json').exists()


def test_other_settings_are_not_mixed_into_a_folder(run_script, tmp_path):
    run_script(SCRIPT, '-o', tmp_path, '-n', '4', '-is', '32', check=True)
    res = run_script(SCRIPT, '-o', tmp_path, '-n', '4', '-is', '32', '--seed', '1', check=False)
    assert res.returncode == 2 and 'seed' in res.stderr and '--overwrite' in res.stderr
    run_script(SCRIPT, '-o', tmp_path, '-n', '4', '-is', '32', '--seed', '1', '--overwrite', check=True)


@pytest.mark.parametrize(
    'flags, words',
    [
        (['-ar', '2', '1'], '--alpha_range'),
        (['-pb', '1.5'], '--prob_binary'),
        (['-is', '4'], '--img_size'),
    ],
)
def test_bad_flags_exit_with_one_line(run_script, tmp_path, flags, words):
    res = run_script(SCRIPT, '-o', tmp_path, '-n', '2', *flags, check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and words in lines[0]
    assert not list(tmp_path.glob('*.jpg'))


def test_unwritable_output_is_a_clear_error(run_script, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    res = run_script(SCRIPT, '-o', blocker / 'out', '-n', '2', check=False)
    assert res.returncode == 2 and res.stderr.startswith('error: ') and 'out' in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    'flags', [['-br', '3', '1'], ['-pc', '-0.1'], ['-n', '-1'], ['--seed', '-2'], ['-nw', '-1'], ['-pf', 'a/b']]
)
def test_bad_flags_raise_user_error(tmp_path, flags):
    args = get_args_parser().parse_args(['-o', str(tmp_path), '-n', '2', *flags])
    with pytest.raises(UserError):
        main(args)
