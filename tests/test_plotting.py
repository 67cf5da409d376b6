"""Tests for util/plot/plotting.py: every picture is a real, non-blank PNG, and the arrays behind them are right."""

import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from matplotlib.figure import Figure
from PIL import Image

from util.errors import UserError
from util.io import runlog
from util.plot import plotting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def assert_png(path, min_size=(100, 100)):
    """``path`` is a decodable PNG at least ``min_size`` pixels, not one flat colour, with no temp file left."""
    assert os.path.isfile(path)
    with Image.open(path) as im:
        assert im.format == 'PNG'
        im.load()
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        rgb = np.asarray(im.convert('RGB'))
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    assert len(np.unique(codes)) > 10, "the picture is (nearly) one colour"
    leftovers = [n for n in os.listdir(os.path.dirname(path)) if '.tmp-' in n]
    assert not leftovers, leftovers
    return rgb


# --------------------------------------------------------------------------- filter_grid


def test_filter_grid_resnet18(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    tiles = plotting.filter_tiles(model, max_filters=64)
    assert tiles.shape == (64, 7, 7, 3)
    np.testing.assert_allclose(tiles.min(axis=(1, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(tiles.max(axis=(1, 2, 3)), 1.0, atol=1e-12)
    # tile 5 is conv1.weight[5] rescaled, channels last
    w5 = model.conv1.weight[5].detach().numpy().astype(np.float64).transpose(1, 2, 0)
    np.testing.assert_allclose(tiles[5], (w5 - w5.min()) / (w5.max() - w5.min()), atol=1e-6)
    assert plotting.filter_tiles(model, max_filters=10).shape[0] == 10
    out = str(tmp_path / 'filters.png')
    assert plotting.filter_grid(model, out, max_filters=16) == out
    assert_png(out)


def test_filter_grid_nested_first_conv(tmp_path):
    # mobilenet_v3_small's stem is features[0][0], a Conv2d(3, 16, 3) inside a Conv2dNormActivation
    model = torchvision.models.mobilenet_v3_small(weights=None)
    tiles = plotting.filter_tiles(model, max_filters=64)
    assert tiles.shape == (min(16, 64), 3, 3, 3)
    np.testing.assert_array_equal(
        plotting.first_conv_weight(model), model.features[0][0].weight.detach().numpy().astype(np.float64)
    )
    assert_png(plotting.filter_grid(model, str(tmp_path / 'sub' / 'mnv3.png')))


def test_filter_grid_greyscale_state_dict_and_weight(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    tiles = plotting.filter_tiles(model, max_filters=8)
    assert tiles.shape == (8, 7, 7, 3)
    np.testing.assert_array_equal(tiles[..., 0], tiles[..., 2])  # grey: R = G = B
    # a state dict (as saved by training) and the bare weight give the same tiles
    np.testing.assert_allclose(plotting.filter_tiles(model.state_dict(), 8), tiles)
    np.testing.assert_allclose(plotting.filter_tiles({'epoch': 2, 'state_dict': model.state_dict()}, 8), tiles)
    np.testing.assert_allclose(plotting.filter_tiles(model.conv1.weight, 8), tiles)
    # a constant filter does not divide by zero
    flat = plotting.filter_tiles(torch.ones(4, 3, 5, 5))
    assert np.all(flat == 0.5)
    assert_png(plotting.filter_grid(model.state_dict(), str(tmp_path / 'grey.png'), max_filters=8))


def test_filter_grid_model_without_input_conv(tmp_path):
    with pytest.raises(UserError, match='no Conv2d'):
        plotting.filter_grid(nn.Sequential(nn.Conv2d(4, 8, 3)), str(tmp_path / 'x.png'))
    assert not os.path.exists(tmp_path / 'x.png')
    with pytest.raises(UserError, match='state dict'):
        plotting.filter_tiles({'fc.weight': torch.zeros(10, 512)})


# --------------------------------------------------------------------------- sample_grid


def test_sample_images_array_unnormalises():
    torch.manual_seed(0)
    original = torch.rand(5, 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (original - mean) / std
    back = plotting.sample_images_array(normalised, IMAGENET_MEAN, IMAGENET_STD)
    assert back.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(back, original.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    # without mean/std values are only clipped
    clipped = plotting.sample_images_array(normalised)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    np.testing.assert_allclose(clipped, np.clip(normalised.permute(0, 2, 3, 1).numpy(), 0, 1))


def test_sample_images_array_greyscale_single_and_uint8():
    grey = torch.tensor([[[[0.0, 0.5], [1.0, 2.0]]]])  # [1, 1, 2, 2], normalised by 0.5/0.25
    out = plotting.sample_images_array(grey, mean=0.5, std=0.25)
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(out[0, :, :, 1], [[0.5, 0.625], [0.75, 1.0]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    single = plotting.sample_images_array(np.full((3, 4, 4), 255, dtype=np.uint8))
    assert single.shape == (1, 4, 4, 3) and np.all(single == 1.0)
    with pytest.raises(ValueError):
        plotting.sample_images_array(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError):
        plotting.sample_images_array(torch.zeros(2, 1, 8, 8), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_sample_grid_png_with_titles(tmp_path):
    torch.manual_seed(1)
    x = torch.rand(10, 3, 32, 32)
    titles = [f"H0 {i} bars, H1 {2 * i} loops, a long summary" for i in range(10)]
    out = plotting.sample_grid(x, str(tmp_path / 'samples.png'), nrow=5, titles=titles)
    assert_png(out, min_size=(300, 150))
    assert_png(plotting.sample_grid(x[:3, :1], str(tmp_path / 'grey.png')), min_size=(150, 50))
    with pytest.raises(ValueError):
        plotting.sample_grid(x, str(tmp_path / 'bad.png'), titles=['only one'])


# --------------------------------------------------------------------------- curves_from_log


def write_log(path, n_epochs, truncated_tail=True):
    with open(path, 'w') as f:
        for e in range(n_epochs):
            rec = {
                'epoch': e,
                'train_loss': 2.0 / (e + 1),
                'train_acc1': 10.0 + 8 * e,
                'lr': 0.1 * 0.8**e,
                'model': 'resnet18',
                'flag': True,
            }
            if e % 2 == 1:
                rec.update(val_loss=2.5 / (e + 1), val_acc1=5.0 + 8 * e, val_r2=None)
            f.write(json.dumps(rec) + '\n')
        if truncated_tail:
            f.write('{"epoch": %d, "train_loss": 0.1' % n_epochs)  # run killed mid-write


def test_curves_from_log_truncated_last_line(tmp_path):
    log = tmp_path / 'log.jsonl'
    write_log(log, 6)
    records = runlog.read_log(log)
    assert [r['epoch'] for r in records] == list(range(6))
    series = runlog.log_series(records)
    assert set(series) == {'train_loss', 'train_acc1', 'lr', 'val_loss', 'val_acc1'}  # no str/bool/None
    np.testing.assert_array_equal(series['val_loss'][0], [1, 3, 5])
    out = plotting.curves_from_log(str(log), str(tmp_path / 'curves.png'))
    assert_png(out, min_size=(400, 400))
    only = runlog.log_series(records, keys=['val_acc1', 'missing'])
    assert list(only) == ['val_acc1']


def test_curves_from_log_resumed_and_empty(tmp_path):
    log = tmp_path / 'log.jsonl'
    write_log(log, 4, truncated_tail=False)
    with open(log, 'a') as f:  # a resumed run re-logs epoch 3
        f.write(json.dumps({'epoch': 3, 'train_loss': 0.01}) + '\n')
    records = runlog.read_log(log)
    assert len(records) == 4 and records[-1]['train_loss'] == 0.01
    empty = tmp_path / 'empty.jsonl'
    empty.write_text('{"epoch": 0, "train_')
    assert_png(plotting.curves_from_log(empty, str(tmp_path / 'empty.png')), min_size=(300, 100))
    with pytest.raises(UserError, match='nope.jsonl'):
        plotting.curves_from_log(tmp_path / 'nope.jsonl', str(tmp_path / 'x.png'))


# --------------------------------------------------------------------------- confusion matrices


def test_confusion_matrix_png_and_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 9, size=(4, 4)) + 20 * np.eye(4, dtype=int)
    cm[2] = 0  # a class with no samples
    names = ['cat', 'dog, big', 'bird "x"', 'fish']
    assert_png(plotting.confusion_matrix_png(cm, names, str(tmp_path / 'cm.png')), min_size=(300, 300))
    assert_png(plotting.confusion_matrix_png(cm, names, str(tmp_path / 'cm_raw.png'), normalise=False))
    big = rng.integers(0, 5, size=(40, 40))
    assert_png(plotting.confusion_matrix_png(big, None, str(tmp_path / 'cm40.png')))

    out = plotting.confusion_matrix_csv(cm, names, str(tmp_path / 'cm.csv'))
    with open(out, newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == names
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), cm)
    with pytest.raises(ValueError):
        plotting.confusion_matrix_csv(cm, names[:3], str(tmp_path / 'bad.csv'))


# --------------------------------------------------------------------------- axes helpers


def render(fig, tmp_path, name):
    out = str(tmp_path / name)
    fig.savefig(out)
    return assert_png(out)


def test_persistence_diagram_ax_infinite_and_empty(tmp_path):
    diagram = np.array(
        [
            [0, 0.1, 0.5, 1, 2, 0, 3, 4, 0],
            [0, 0.0, np.finfo(np.float64).max, 0, 0, 0, 0, 0, 0],  # cripser's essential H0
            [1, 0.3, 0.9, 5, 5, 0, 6, 6, 0],
            [1, 0.4, np.inf, 5, 5, 0, 6, 6, 0],
        ]
    )
    fig = Figure(figsize=(8, 4))
    ax1, ax2 = fig.subplots(1, 2)
    plotting.persistence_diagram_ax(ax1, diagram)
    top = ax1.get_ylim()[1]
    assert 0.9 < top < 2.0  # infinite deaths did not blow up the axes
    drawn = np.concatenate([c.get_offsets() for c in ax1.collections])
    assert len(drawn) == 4 and np.all(np.isfinite(drawn))
    assert {t.get_text() for t in ax1.get_legend().get_texts()} == {'H0 (2)', 'H1 (2)'}
    plotting.persistence_diagram_ax(ax2, np.zeros((0, 9)))
    plotting.persistence_diagram_ax(fig.add_axes([0, 0, 0.1, 0.1]), [])
    render(fig, tmp_path, 'pd.png')
    fig = Figure()
    ax = plotting.persistence_diagram_ax(fig.add_subplot(), diagram[:, :3], max_value=2.0)
    assert ax.get_ylim()[1] >= 2.0


def test_label_vector_ax_parts(tmp_path):
    fig = Figure(figsize=(8, 3))
    ax1, ax2 = fig.subplots(1, 2)
    v = np.linspace(-1, 1, 30)
    plotting.label_vector_ax(ax1, v, parts=[('H0', 10), ('H1', 15)])
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ['H0', 'H1', 'rest']
    plotting.label_vector_ax(ax2, torch.randn(1, 500), parts={'a': 250, 'b': 250})  # long: drawn as lines
    assert len(ax2.get_lines()) >= 2
    render(fig, tmp_path, 'labels.png')
    with pytest.raises(ValueError):
        plotting.label_vector_ax(Figure().add_subplot(), v, parts=[('too long', 31)])


# --------------------------------------------------------------------------- summary page


def test_summary_page(tmp_path):
    curves = tmp_path / 'log.jsonl'
    write_log(curves, 5)
    curves_png = plotting.curves_from_log(curves, str(tmp_path / 'curves.png'))
    rgb = np.asarray(Image.open(curves_png).convert('RGB'))
    out = plotting.summary_page(
        str(tmp_path / 'summary.png'),
        'quickstart',
        [
            ('pretraining', 'final loss 0.12 after 5 epochs\n' + 'a long line of text ' * 20),
            ('curves', curves_png),
            ('array', rgb[::4, ::4]),
            ('missing picture', str(tmp_path / 'not_there.png')),
        ],
    )
    page = assert_png(out, min_size=(800, 800))
    assert page.shape[0] > page.shape[1]  # sections stacked vertically


def test_no_figures_left_behind(tmp_path):
    """Nothing is registered with pyplot, however many pictures are made."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for i in range(3):
        plotting.confusion_matrix_png(np.eye(3, dtype=int), None, str(tmp_path / f'{i}.png'))
        plotting.filter_grid(torch.randn(8, 3, 3, 3), str(tmp_path / f'f{i}.png'))
    assert plt.get_fignums() == before
