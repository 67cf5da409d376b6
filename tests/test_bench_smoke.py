"""Smoke tests of the benchmark drivers (bench/cpu_bench.py, bench/gpu_bench.py, bench/loader_bench.py) at toy
size, plus the pieces whose correctness the benchmarks' numbers rest on (the original-style label, the
steady-state timers, the GPU bench's splits and augmentations)."""

import json
import math
import os

import numpy as np
import pytest
import torch

from bench import gpu_bench, loader_bench, reference

# each tiny benchmark has 300 s of its own
pytestmark = pytest.mark.timeout(600)


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------- cpu_bench.py


def test_cpu_bench_tiny_writes_json_and_table(run_script, tmp_path):
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    extra = tmp_path / 'cpu.json'
    res = run_script(
        'bench/cpu_bench.py', '--tiny', '--json', extra, env={'OUT': str(out_dir)}, check=True, timeout=300
    )
    data = json.loads((out_dir / 'cpu_bench.json').read_text())
    assert json.loads(extra.read_text()) == data
    for key in ('date', 'cpu_model', 'cores', 'torch', 'numpy', 'load_average', 'results', 'table', 'seconds'):
        assert key in data, key
    assert data['cores'] == os.cpu_count() and data['torch'] == torch.__version__ and data['numpy'] == np.__version__
    assert data['preset'] == 'tiny' and data['workers'] == 2
    assert set(data['results']) == {'generator', 'ph', 'vectorise', 'loader'}
    assert len(data['load_average']['start']) == 3 and len(data['load_average']['end']) == 3
    assert len(data['table']) == 8
    for row in data['table']:
        assert _positive(row['ours']) and _positive(row['reference']), row
        # (ph_bench rounds its rates and ratios to 2-3 decimals)
        assert row['ratio'] == pytest.approx(row['ours'] / row['reference'], rel=2e-2, abs=2e-3), row
        if row['target'] is None:
            assert row['met'] is None
        else:
            assert row['met'] == (row['ratio'] >= row['target'])
    targets = {r['what']: r['target'] for r in data['table']}
    assert sorted(t for t in targets.values() if t is not None) == [0.75, 0.75, 2.0, 2.0, 3.0, 100.0]
    lo = data['results']['loader']
    assert lo['image_shape'] == [3, 56, 56] and lo['label_shape'] == [200]
    for key in ('ours_img_s', 'original_img_s', 'ours_img_cpu_s', 'original_img_cpu_s'):
        assert _positive(lo[key]), key
    # the table is printed last, one line per row, with its header
    lines = res.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('what'))
    for col in ('ours', 'reference', 'ratio', 'target', 'met?'):
        assert col in lines[header]
    for row, line in zip(data['table'], lines[header + 1 : header + 9]):
        assert line.startswith(row['what']) and f"{row['ratio']:.2f}x" in line


def test_bad_sizes_are_user_errors():
    from bench import cpu_bench
    from util.errors import UserError

    with pytest.raises(UserError, match='nonsense'):
        cpu_bench.run('tiny', 2, ['nonsense'])
    with pytest.raises(UserError, match='preset'):
        cpu_bench.run('huge', 2)
    with pytest.raises(UserError, match='workers'):
        cpu_bench.run('tiny', 0)
    with pytest.raises(UserError):
        loader_bench.run(n_images=0)
    with pytest.raises(UserError, match='img_size'):
        loader_bench.run(n_images=4, img_size=4, crop_size=4)


# ---------------------------------------------------------------------------------------- loader_bench.py


def _toy_diagram(size=64, index=0):
    from util.ph.generator import GeneratorConfig, generate_image

    img = generate_image(GeneratorConfig(img_size=size, prob_binary=0.5, prob_colour=0.0), 0, index)
    return reference.original_diagram(np.repeat(img[:, :, None], 3, axis=2))


@pytest.mark.parametrize('bandwidth', [1, 5])
def test_original_histogram_matches_our_vectoriser_where_the_definitions_agree(bandwidth):
    """Lifetime histograms and the H1 birth histogram are defined alike; the H0 birth range differs on purpose
    (ours [-max_birth, 0] without the essential class, the original's [-max_birth, max_birth] with it)."""
    from util.ph.vectorise import make_vectoriser

    for i in range(3):
        dgm = _toy_diagram(index=i)
        orig = reference.original_histogram(dgm, (50, 50, 50, 50), bandwidth=bandwidth)
        ours = make_vectoriser('histogram', 200, bandwidth=bandwidth)(dgm)
        assert orig.shape == (200,) and orig.dtype == np.float32 and np.isfinite(orig).all()
        np.testing.assert_allclose(orig[:100], ours[:100], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(orig[150:], ours[150:], rtol=1e-6, atol=1e-6)
        assert orig[:100].sum() > 0


def test_reflect_smooth_equals_our_smoothing_matrix():
    from util.ph.vectorise import smoothing_matrix

    y = np.random.default_rng(0).random(30)
    for b in (1, 3, 4, 7):
        np.testing.assert_allclose(reference.reflect_smooth(y, b), smoothing_matrix(30, b) @ y, atol=1e-12)


def test_original_style_dataset_item():
    from util.config import AugmentConfig
    from util.train.datasets import pretrain_transforms

    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=40, crop_size=32))
    ds = loader_bench.OriginalStyleGenerated(3, 40, lambda im: to_tensor(spatial(im)), (5, 5, 5, 5))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (20,) and np.isfinite(y).all()
    grey = reference.original_random_image(40, (0.01, 1.0), (0.5, 2.0), 1.0)
    assert grey.mode == 'L' and grey.size == (40, 40) and set(np.unique(np.asarray(grey))) <= {0, 255}


def test_time_loader_steady_state_and_fallback():
    batches = [(torch.zeros(4, 3, 8, 8), torch.zeros(4, 5))] * 6
    res = loader_bench.time_loader(batches, workers=2)
    assert res['steady'] and res['images'] == 24 and res['counted'] == 16 and _positive(res['img_s'])
    assert res['cpu_img_s'] > 0 or math.isnan(res['cpu_img_s'])  # nan if too quick for the CPU clock
    assert res['image_shape'] == [3, 8, 8] and res['label_shape'] == [5]
    short = loader_bench.time_loader(batches[:2], workers=2)
    assert not short['steady'] and short['counted'] == 8
    with pytest.raises(AssertionError):
        loader_bench.time_loader([(torch.zeros(2, 3), torch.tensor([[float('nan')], [0.0]]))], workers=0)


def test_loader_bench_script(run_script, tmp_path):
    out = tmp_path / 'loader.json'
    res = run_script(
        'bench/loader_bench.py',
        '-n',
        24,
        '-w',
        1,
        '-is',
        48,
        '-cs',
        40,
        '-b',
        4,
        '--repeats',
        1,
        '--label_dim',
        40,
        '--json',
        out,
        check=True,
        timeout=300,
    )
    data = json.loads(out.read_text())
    assert _positive(data['ours_img_s']) and _positive(data['original_img_s'])
    assert data['ratio'] == pytest.approx(data['ours_img_s'] / data['original_img_s'])
    assert data['cpu_ratio'] == pytest.approx(data['ours_img_cpu_s'] / data['original_img_cpu_s'])
    assert data['image_shape'] == [3, 40, 40] and data['label_shape'] == [40] and data['steady']
    assert f"ratio:    {data['ratio']:8.2f}x       {data['cpu_ratio']:8.2f}x" in res.stdout


# ---------------------------------------------------------------------------------------- gpu_bench.py


def test_gpu_bench_tiny_runs_every_stage(run_script, tmp_path):
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    res = run_script(
        'bench/gpu_bench.py', '--tiny', '--device', 'cpu', env={'OUT': str(out_dir)}, check=True, timeout=300
    )
    data = json.loads((out_dir / 'gpu_bench.json').read_text())
    assert data['device_name'].startswith('CPU') and data['cores'] == os.cpu_count()
    assert set(data['stage_seconds']) == {'ceiling', 'pipeline', 'accuracy'} and not data['notes']
    st = data['stages']
    assert _positive(st['ceiling']['resnet18']['img_s']) and st['ceiling']['resnet18']['steps'] >= 5
    pipe = st['pipeline']
    floor = pipe['cripser_floor']
    assert _positive(floor['cripser_ms']) and floor['floor_img_s'] == pytest.approx(
        floor['cores'] * 1000 / floor['cripser_ms']
    )
    for key in ('generator_img_s', 'label_precompute_img_s', 'label_precompute_vs_floor'):
        assert _positive(pipe[key]), key
    for key in ('from_labels_resnet18', 'on_the_fly_resnet18', 'from_labels_loader_only'):
        assert _positive(pipe[key]['img_s']) and pipe[key]['images'] > 0, key
    for key in ('from_labels_resnet18', 'on_the_fly_resnet18'):
        assert pipe[key]['vs_ceiling'] == pytest.approx(pipe[key]['img_s'] / st['ceiling']['resnet18']['img_s'])
        assert math.isfinite(pipe[key]['train_loss'])
    assert pipe['on_the_fly_resnet18']['vs_floor'] == pytest.approx(
        pipe['on_the_fly_resnet18']['img_s'] / floor['floor_img_s']
    )
    acc = st['accuracy']
    assert acc['pretrain_ph']['steps'] == acc['pretrain_random']['steps'] >= 3
    assert set(acc['summary']) == {'10', '50', 'all'}
    for row in acc['summary'].values():
        assert set(row) == {'scratch', 'ph', 'random'}
        for cell in row.values():
            assert cell['n'] == 2 and 0 <= cell['min'] <= cell['mean'] <= cell['max'] <= 100 and cell['std'] >= 0
    # the short table comes last
    tail = res.stdout.strip().splitlines()
    assert tail[-1].startswith('results:')
    assert any(line.strip().startswith('ceiling resnet18') for line in tail)
    assert any('scratch | PH-pretrained | random-target' in line for line in tail)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_gpu_bench_without_cuda_says_so():
    from util.errors import UserError

    args = gpu_bench.get_args_parser().parse_args(['--device', 'cuda'])
    with pytest.raises(UserError, match='no CUDA device'):
        gpu_bench._config(args)


def test_gpu_bench_checks_sizes():
    from util.errors import UserError

    parser = gpu_bench.get_args_parser()
    with pytest.raises(UserError, match='ft_steps'):
        gpu_bench._config(parser.parse_args(['--device', 'cpu', '--ft_steps', '0']))
    with pytest.raises(UserError):
        gpu_bench._config(parser.parse_args(['--device', 'cpu', '--models', 'no_such_net']))


def test_split_is_stratified_and_disjoint():
    targets = np.repeat(np.arange(4), 20)
    tr, va = gpu_bench.split(targets, 0.3, 5, seed=1)
    assert len(set(tr) & set(va)) == 0
    assert np.bincount(targets[tr]).tolist() == [5] * 4 and np.bincount(targets[va]).tolist() == [6] * 4
    tr_all, va_all = gpu_bench.split(targets, 0.3, 0, seed=1)
    assert np.array_equal(va_all, va) and len(tr_all) == 56
    assert not np.array_equal(gpu_bench.split(targets, 0.3, 5, seed=2)[0], tr)


def test_standardise():
    x = np.random.default_rng(0).normal(3, 2, (50, 4))
    x[:, 2] = 7.0
    z, const = gpu_bench.standardise(x)
    assert const == 1 and np.all(z[:, 2] == 0)
    np.testing.assert_allclose(z[:, [0, 1, 3]].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(0), 1, atol=1e-5)


def test_augmentations_keep_content():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 3, 12, 12, dtype=torch.uint8)
    x[:, :, 5, 6] = 200
    shifted = gpu_bench._random_shift(x, 2, gen)
    assert shifted.shape == x.shape and shifted.dtype == x.dtype
    assert (shifted == 200).sum().item() == 16 * 3  # the pixel moved, never lost
    ys, xs = torch.nonzero(shifted[:, 0] == 200, as_tuple=True)[1:]
    assert ys.min() >= 3 and ys.max() <= 7 and xs.min() >= 4 and xs.max() <= 8
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 1  # per-sample shifts
    sym = gpu_bench._random_symmetry(x, gen)
    assert sym.shape == x.shape and (sym == 200).sum().item() == 16 * 3
    assert len({tuple(torch.nonzero(s[0] == 200)[0].tolist()) for s in sym}) > 1


def test_timed_batches_counts_after_warmup():
    batches = [(torch.zeros(3, 1), None, 0)] * 7
    timed = gpu_bench.TimedBatches(batches, seconds=60, skip=2)
    assert len(list(timed)) == 7
    rate, counted, dt = timed.rate()
    assert counted == 15 and dt >= 0 and (rate > 0 or dt == 0)
    stopped = gpu_bench.TimedBatches(batches, seconds=0.0, skip=2)
    assert len(list(stopped)) == 1  # the clock ran out at the 2nd batch


def test_r_squared():
    y = torch.randn(20, 3)
    assert gpu_bench.r_squared(y, y) == pytest.approx(1.0)
    assert gpu_bench.r_squared(y.mean(0, keepdim=True).expand_as(y), y) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------- ph_engine_bench.py


def test_ph_engine_bench_tiny():
    from bench import ph_engine_bench

    res = ph_engine_bench.run(n_images=3, workers=1, size=24, repeats=1, loader_images=0, stage_images=1)
    assert set(res['ph']) == set(ph_engine_bench.ph.FILTRATIONS) | {'all'}
    for r in res['ph'].values():
        assert _positive(r['cripser_ms']) and _positive(r['unionfind_ms']) and _positive(r['ratio'])
    for key in ('floor_img_s', 'phdict_img_s', 'ratio', 'cpu_ratio'):
        assert _positive(res['phdict'][key]), key
    assert [row['what'][:6] for row in res['table']] == ['PH alo', 'PHdict', 'PHdict']
    stages = ph_engine_bench.loader_stages(2, 32, 28, 1)
    assert set(stages['ours_ms']) == {'generate', 'filtration', 'ph', 'label', 'transforms', 'total'}
    assert all(_positive(v) for v in stages['original_ms'].values())
