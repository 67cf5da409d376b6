"""The CUDA paths, checked on the CPU (issue 21): what would crash, mislead or crawl on a GPU machine, each proven
here with fake device counts, a ``cuda:0`` storage tag, a hidden cripser, or counts of host synchronisations."""

import glob
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import only_run_dir, read_log
from util.config import TrainConfig
from util.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['-u', 'resnet18', '-e', '1', '--img_size', '48', '--crop_size', '32', '-b', '8', '-nw', '0']


def _hidden_cripser(tmp_path):
    """A folder that, first on PYTHONPATH, makes ``import cripser`` fail as on a machine without it."""
    d = tmp_path / 'no_cripser'
    (d / 'cripser').mkdir(parents=True)
    (d / 'cripser' / '__init__.py').write_text("raise ImportError('cripser is not installed on this machine')\n")
    return {'PYTHONPATH': os.pathsep.join([str(d), ROOT, os.environ.get('PYTHONPATH', '')])}


# ---------------------------------------------------------------------------------------- 1: cripser optional
def test_cubical_imports_without_cripser_and_says_what_needs_it(monkeypatch):
    import importlib

    import util.ph.cubical as cubical

    monkeypatch.setitem(sys.modules, 'cripser', None)
    monkeypatch.delitem(sys.modules, 'util.ph.cubical')
    fresh = importlib.import_module('util.ph.cubical')
    try:
        grey = np.random.default_rng(0).integers(0, 255, (24, 24)).astype(np.uint8)
        assert fresh.compute_ph(grey).shape[1] == 9  # the default engine and filtration need no cripser
        with pytest.raises(UserError, match='cripser'):
            fresh.compute_ph(grey, engine='cripser')
        with pytest.raises(UserError, match='cripser'):
            fresh.compute_filtration(grey, 'radial')
    finally:
        sys.modules['util.ph.cubical'] = cubical


@pytest.mark.timeout(900)  # a pretraining, then the tiny GPU benchmark with 600 s of its own
def test_training_and_gpu_bench_run_without_cripser(run_script, tmp_path):
    env = _hidden_cripser(tmp_path)
    for script in ('pretraining.py', 'finetuning.py', 'PHdict.py'):
        run_script(script, '-h', env=env, check=True)
    run_script('pretraining.py', '-o', tmp_path / 'pt', '-nc', '20', '-n', '16', '-nv', '8', *TINY, env=env, check=True)
    assert np.isfinite(read_log(only_run_dir(tmp_path / 'pt'))[0]['val_r2'])
    out = tmp_path / 'bench'
    out.mkdir()
    res = run_script(
        'bench/gpu_bench.py', '--tiny', '--device', 'cpu', env=dict(env, OUT=str(out)), check=True, timeout=600
    )
    data = json.loads((out / 'gpu_bench.json').read_text())
    assert set(data['stage_seconds']) == {'ceiling', 'pipeline', 'accuracy'}
    assert 'cripser_floor' not in data['stages']['pipeline']
    assert any('cripser floor skipped' in n for n in data['notes'])
    assert 'summary' in data['stages']['accuracy'] and 'results:' in res.stdout


# ---------------------------------------------------------------------------------------- 2: NCCL, one GPU per rank
def _fake_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: pytest.fail(f"set_device({d}) before the check"))


def test_two_nccl_ranks_on_one_gpu_are_refused(monkeypatch):
    from util.train.distributed import init_distributed

    _fake_gpus(monkeypatch, 1)
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    with pytest.raises(UserError, match='-p gloo') as e:
        init_distributed(TrainConfig(device='cuda'))
    assert '\n' not in str(e.value) and 'NCCL' in str(e.value)


def test_two_nccl_ranks_on_one_gpu_refused_in_one_line_by_the_cli(monkeypatch, capsys):
    from util.errors import run_cli
    from util.train.distributed import init_distributed

    _fake_gpus(monkeypatch, 1)
    for k, v in (('RANK', '0'), ('WORLD_SIZE', '2'), ('LOCAL_RANK', '0'), ('LOCAL_WORLD_SIZE', '2')):
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        run_cli(init_distributed, TrainConfig(device='cuda', backend='nccl'))
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and '-p gloo' in err[0]


def test_unusable_device_and_nccl_off_gpu_refused_in_one_line(monkeypatch):
    """Issue 26: a --device torch cannot open, a GPU index the machine lacks, and -p nccl for ranks off the GPUs
    are each one line naming the flag, before any process group or folder."""
    from util.train.distributed import check_device

    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    for device, words in (('tpu', 'no device of that name'), ('meta', 'cannot train')):
        with pytest.raises(UserError, match=words) as e:
            check_device(TrainConfig(device=device))
        assert str(e.value).startswith(f'--device {device}') and '\n' not in str(e.value)
    check_device(TrainConfig(device='cpu', world_size=2, backend='gloo'))
    check_device(TrainConfig(device='cpu', backend='nccl'))  # one process: the backend is never used
    with pytest.raises(UserError, match='-p nccl runs on CUDA GPUs only.*-p gloo'):
        check_device(TrainConfig(device='cpu', world_size=2, backend='nccl'))
    monkeypatch.setenv('WORLD_SIZE', '2')  # torchrun's ranks
    with pytest.raises(UserError, match='-p nccl'):
        check_device(TrainConfig(backend='nccl'))
    monkeypatch.delenv('WORLD_SIZE')
    _fake_gpus(monkeypatch, 2)
    check_device(TrainConfig(device='cuda:1'))
    check_device(TrainConfig(world_size=2, backend='nccl'))  # the default device is then cuda
    with pytest.raises(UserError, match=r'--device cuda:2: only 2 CUDA device\(s\) are visible \(cuda:0 to cuda:1\)'):
        check_device(TrainConfig(device='cuda:2'))
    with pytest.raises(UserError, match='this run is on --device cpu'):
        check_device(TrainConfig(device='cpu', world_size=2, backend='nccl'))


# ---------------------------------------------------------------------------------------- 3: CPU tensors in files
@pytest.fixture
def cuda_tagged(monkeypatch):
    """Storages whose data pointer is in the returned set are written with the location tag ``cuda:0``, as
    torch.save tags the storages of tensors that live on the first GPU; loading such a file on a machine without
    CUDA (and without map_location) fails."""
    import torch.serialization as ser

    ptrs = set()
    monkeypatch.setattr(ser, '_package_registry', list(ser._package_registry))

    def tagger(storage):
        return 'cuda:0' if storage.data_ptr() in ptrs else None

    ser.register_package(0, tagger, lambda obj, location: None)
    return ptrs


def test_files_saved_from_cuda_tensors_load_on_the_cpu(cuda_tagged, tmp_path):
    from util.io.fileio import torch_save
    from util.train import runs

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    for t in [*model.state_dict().values(), *(b for s in opt.state.values() for b in s.values())]:
        if torch.is_tensor(t):
            cuda_tagged.add(t.untyped_storage().data_ptr())
    plain = tmp_path / 'as_is.pth'
    torch.save(model.state_dict(), plain)  # the harness: a file tagged cuda:0 does not load here
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match='(?i)cuda'):
            torch.load(plain, weights_only=True)
    runs.save_weights(str(tmp_path / 'w.pth'), model)
    runs.save_checkpoint(str(tmp_path), model, opt, sched, 1, {'arch': 'x'})
    torch_save({'nested': [model.state_dict()]}, str(tmp_path / 'n.pth'))
    weights = torch.load(tmp_path / 'w.pth', weights_only=True)
    for k, v in model.state_dict().items():
        assert weights[k].device.type == 'cpu' and torch.equal(weights[k], v)
    ckpt = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['arch'] == 'x'
    assert torch.equal(
        ckpt['optimizer']['state'][0]['momentum_buffer'], opt.state_dict()['state'][0]['momentum_buffer']
    )
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(torch.load(tmp_path / 'n.pth', weights_only=True)['nested'][0])


# ---------------------------------------------------------------------------------------- 4-7: gpu_bench
def test_floor_stage_calls_cripser_computePH_and_nothing_else(monkeypatch, tmp_path):
    from bench import gpu_bench
    from util.ph import cubical

    calls = []

    def compute_ph(f, maxdim=0):
        calls.append((f.shape, f.dtype, maxdim))
        return np.zeros((0, 9))

    monkeypatch.setitem(sys.modules, 'cripser', types.SimpleNamespace(computePH=compute_ph))
    for name in ('diagram_of_filtration', 'compute_ph', 'diagram_of_image'):
        if hasattr(cubical, name):
            monkeypatch.setattr(cubical, name, lambda *a, **k: pytest.fail('not cripser alone'))
    from util.ph import unionfind

    for name in ('diagram', 'diagram_of_sqkeys'):  # the union-find PH engine (its distance transform may serve)
        monkeypatch.setattr(unionfind, name, lambda *a, **k: pytest.fail('the union-find engine was used'))
    rng = np.random.default_rng(0)
    rel = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / f'{i}.png')
        rel.append(f'{i}.png')
    floor = gpu_bench.cripser_floor(str(tmp_path), rel, 3, 4)
    assert calls == [((20, 20), np.float64, 1)] * 3
    assert floor['images'] == 3 and floor['floor_img_s'] == pytest.approx(4000 / floor['cripser_ms'])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal when no GPU is visible")
def test_gpu_bench_full_run_never_falls_back_to_the_cpu():
    from bench import gpu_bench

    with pytest.raises(UserError, match='no CUDA device'):
        gpu_bench._config(gpu_bench.get_args_parser().parse_args([]))
    assert gpu_bench._config(gpu_bench.get_args_parser().parse_args(['--tiny'])).device == 'cpu'


def test_timed_window_starts_after_the_whole_prefetch(monkeypatch):
    """A loader that had ``workers x prefetch`` batches ready (piled up while the model started) then delivers
    one batch a second: the measured rate is one batch a second, not more."""
    from bench import gpu_bench
    from util.train.loaders import PREFETCH

    workers, batch = 3, 8
    now = [0.0]
    monkeypatch.setattr(gpu_bench.time, 'perf_counter', lambda: now[0])

    def loader():
        for i in range(200):
            now[0] += 1e-4 if i < workers * PREFETCH else 1.0  # the backlog comes at once
            yield torch.zeros(batch, 1), None, 0

    timed = gpu_bench.TimedBatches(loader(), seconds=60, skip=gpu_bench.steady_skip(workers))
    for _ in timed:
        pass
    rate, _, _ = timed.rate()
    assert rate == pytest.approx(batch, rel=0.01)


def test_cudnn_benchmark_is_what_the_docs_say(monkeypatch):
    """Every CUDA run turns cudnn.benchmark on; the docs say so and the GPU bench measures no ceiling without it."""
    from bench import gpu_bench
    from util.train.distributed import init_distributed

    _fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: None)
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    init_distributed(TrainConfig(device='cuda'))
    assert torch.backends.cudnn.benchmark is True
    text = open(os.path.join(ROOT, 'bench', 'gpu_bench.py'), encoding='utf-8').read()
    assert 'no_cudnn_benchmark' not in text and 'left off' not in text
    for doc in ('BENCHMARKS.md', 'README.md', 'ARCHITECTURE.md'):
        body = open(os.path.join(ROOT, doc), encoding='utf-8').read().lower()
        assert 'cudnn.benchmark stays off' not in body and 'without cudnn.benchmark' not in body, doc
    assert gpu_bench.ceiling_rate.__defaults__[-1] is True


# ---------------------------------------------------------------------------------------- 8: host synchronisations
class _SyncCounter:
    """Counts the calls that make the host wait for a tensor's value (.item, .tolist, bool/float/int of a tensor)."""

    NAMES = ('item', 'tolist', '__bool__', '__float__', '__int__')

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def _wrap(self, original):
        def counted(t, *a, **k):
            self.count += 1
            return original(t, *a, **k)

        return counted


def _tiny_net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    )


def _batches(n, seed=0, bad_at=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = torch.randn(4, 5, generator=g)
        if i == bad_at:
            y[0, 0] = float('nan')
        out.append((torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8), y, 0))
    return out


@pytest.mark.parametrize('task', ['regression', 'classification'])
def test_train_one_epoch_waits_for_the_device_only_at_log_intervals(monkeypatch, task):
    from util.train import engine

    cfg = TrainConfig(device='cpu', amp=False, channels_last=False, num_workers=0, log_interval=1000)
    counts = {}
    for n in (6, 18):
        torch.manual_seed(0)
        model = _tiny_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        data = _batches(n)
        if task == 'classification':
            data = [(x, y.argmax(1), d) for x, y, d in data]
        crit = torch.nn.MSELoss() if task == 'regression' else torch.nn.CrossEntropyLoss()
        counter = _SyncCounter(monkeypatch)
        sums, _ = engine.train_one_epoch(model, data, engine.supervised_step(crit, cfg, task), opt, 1, cfg)
        counts[n] = counter.count
        monkeypatch.undo()
        metrics = engine.supervised_metrics(sums, 1.0, task)
        assert metrics['images'] == 4 * n and np.isfinite(metrics['train_loss']) and 0 <= metrics['data_wait'] <= 1
    assert counts[6] == counts[18] <= 4, counts  # one check at iteration 0, the totals at the end


def test_two_task_steps_wait_only_at_log_intervals(monkeypatch):
    from util.train import two_task

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _tiny_net()
            self.cls = torch.nn.Linear(5, 3)

        def forward(self, x):
            f = self.body(x)
            return self.cls(f), f

    cfg = TrainConfig(device='cpu', amp=False, channels_last=False, num_workers=0, log_interval=1000, ph_weight=0.5)
    counts = {}
    for n in (5, 15):
        torch.manual_seed(0)
        model = TwoHeads()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = [(x, (y.argmax(1) % 3, y), d) for x, y, d in _batches(n)]
        counter = _SyncCounter(monkeypatch)
        out = two_task.train_simultaneous_epoch(model, data, opt, 1, cfg)
        counts[n] = counter.count
        monkeypatch.undo()
        assert out['images'] == 4 * n and np.isfinite(out['train_loss'])
    assert counts[5] == counts[15] <= 4, counts


def test_a_non_finite_loss_still_stops_the_run():
    from util.train import engine

    cfg = TrainConfig(device='cpu', amp=False, channels_last=False, num_workers=0, log_interval=4)
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(UserError, match=r'not finite at epoch 3, iterations 5-7: lower the learning rate'):
        engine.train_one_epoch(
            model, _batches(8, bad_at=5), engine.supervised_step(torch.nn.MSELoss(), cfg), opt, 3, cfg
        )


# ---------------------------------------------------------------------------------------- 9-11: the loader
def _generated(n=6):
    from util.config import AugmentConfig
    from util.ph.generator import GeneratorConfig
    from util.ph.vectorise import make_vectoriser
    from util.train.datasets import ComputedLabels, GeneratedPH
    from util.train.transforms import pretrain_transforms

    spatial, to_tensor = pretrain_transforms(AugmentConfig(img_size=24, crop_size=20, random_rotation=20))
    gcfg = GeneratorConfig(img_size=24, prob_binary=0.5, prob_colour=0.5)
    return GeneratedPH(gcfg, 3, n, ComputedLabels(make_vectoriser('histogram', 10)), spatial, to_tensor, 'pre')


def _epochs(workers, epochs=2):
    from util.train import loaders as L

    ds = _generated()
    cfg = TrainConfig(device='cpu', batch_size=3, num_workers=workers, seed=4)
    seen, made = [], []
    try:
        for epoch in range(1, epochs + 1):
            ds.set_epoch(epoch - 1)  # in this process, after the workers were forked
            loader = L.make_loader(ds, cfg, epoch, shuffle=True, train=True)
            made.append(loader)
            seen.append([(x.clone(), y.clone()) for x, y, _ in loader])
    finally:
        L.release_loaders(cfg)
    return seen, made


def test_persistent_workers_give_fresh_images_each_epoch_and_identical_runs():
    seen, loaders = _epochs(2)
    assert loaders[0] is loaders[1] and loaders[0].persistent_workers  # workers forked once for the run
    assert all(x.dtype == torch.uint8 for batches in seen for x, _ in batches)  # bytes through the loader
    e1, e2 = torch.cat([x for x, _ in seen[0]]), torch.cat([x for x, _ in seen[1]])
    assert not torch.equal(e1, e2)  # epoch 2 drew new images although the workers were forked in epoch 1
    for a, b in zip(e1, e2):
        assert not torch.equal(a, b)
    again, _ = _epochs(2)
    same_in_process, _ = _epochs(0)
    for other in (again, same_in_process):  # bit-identical, whichever process loads a sample
        for batches_a, batches_b in zip(seen, other):
            for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_uint8_batches_are_normalised_on_the_device_as_the_per_image_transforms_did():
    from util.config import AugmentConfig
    from util.train import engine
    from util.train.transforms import finetune_transforms, shipping_form

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    tf = finetune_transforms(AugmentConfig(img_size=24, crop_size=20), train=False)
    reference = tf(img)
    shipped = shipping_form(tf)(img)
    assert reference.dtype == torch.float32 and shipped.dtype == torch.uint8 and shipped.shape == reference.shape
    cfg = TrainConfig(device='cpu', channels_last=True)
    on_device = engine.to_device(shipped[None], cfg)
    assert on_device.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(on_device[0], reference)


@pytest.mark.parametrize('post', [False, True])
def test_what_the_loader_ships_is_what_the_dataset_gives(post):
    """The loader's copy of a generated set (uint8, grey kept in one channel until the tensor) gives, once
    normalised on the device, exactly the float image and the label the dataset itself gives."""
    from util.train import engine, loaders

    ds = _generated()
    if post:
        ds.persistence = 'post'
    shipped = loaders._shipped(ds)
    assert shipped is not ds and shipped.keep_grey and not ds.keep_grey
    grey = 0
    for i in range(6):
        key = (i, 0, 11)
        x, y = loaders.KeyedSamples(ds)[key]
        xs, ys = loaders.KeyedSamples(shipped)[key]
        assert xs.dtype == torch.uint8 and x.dtype == torch.float32
        assert torch.equal(engine.to_device(xs[None], TrainConfig(device='cpu'))[0], x) and torch.equal(ys, y)
        grey += bool((xs[0] == xs[1]).all() and (xs[1] == xs[2]).all())
    assert 0 < grey < 6  # both kinds of generated images were seen


def test_default_workers_are_the_cores_per_process_minus_two(monkeypatch):
    from util.train import distributed

    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    monkeypatch.setattr(distributed, 'usable_cores', lambda: 16)
    assert distributed.default_workers() == 14 and distributed.default_workers(2) == 6
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert distributed.default_workers() == 2
    monkeypatch.setattr(distributed, 'usable_cores', lambda: 2)
    assert distributed.default_workers(1) == 0
    assert TrainConfig().num_workers is None
    from util.cli.flags import get_args_parser

    assert get_args_parser('pretraining').parse_args([]).num_workers is None


def test_the_log_says_when_the_loader_is_the_bottleneck():
    from util.train import engine

    cfg = TrainConfig(num_workers=3)
    note = engine.data_wait_note({'epoch': 2, 'data_wait': 0.6}, cfg)
    assert 'epoch 2' in note and '60%' in note and '3 loader workers' in note and 'bottleneck' in note
    assert engine.data_wait_note({'epoch': 2, 'data_wait': 0.05}, cfg) is None


# ---------------------------------------------------------------------------------------- 13: ranks, resume
def test_only_rank_0_evaluates_and_writes(tmp_path):
    from util.train.reports import write_evaluation

    class Untouchable(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError('rank 1 loaded validation images')

    cfg = TrainConfig(device='cpu', rank=1, world_size=2, num_workers=0)
    assert (
        write_evaluation(_tiny_net(), Untouchable(), ['a', 'b'], torch.nn.CrossEntropyLoss(), cfg, str(tmp_path), 'x')
        == {}
    )
    assert os.listdir(tmp_path) == []


def test_resume_on_a_machine_with_fewer_gpus(monkeypatch):
    from util.train import runs

    restored = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: [torch.zeros(16, dtype=torch.uint8)] * 2)

    def set_all(states):
        if len(states) != torch.cuda.device_count():
            raise RuntimeError('invalid device ordinal')

    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', set_all)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda s, device='cuda': restored.append(device))
    state = runs.rng_state()  # saved on a machine with two GPUs
    runs.set_rng_state(state)
    assert restored == [0]


# ---------------------------------------------------------------------------------------- bf16 + channels-last
def test_amp_channels_last_pretraining_on_the_cpu(run_script, tmp_path):
    args = ['-o', tmp_path / 'pt', '-nc', '20', '-n', '16', '-nv', '8', '--amp', '--channels_last', *TINY]
    run_script('pretraining.py', *args, check=True)
    run = only_run_dir(tmp_path / 'pt')
    rec = read_log(run)[0]
    assert np.isfinite(rec['train_loss']) and np.isfinite(rec['val_r2'])
    assert json.load(open(os.path.join(run, 'args.json')))['amp'] is True
    weights = glob.glob(os.path.join(run, '*.pth'))
    assert weights and all(torch.load(w, weights_only=True) for w in weights)


# ---------------------------------------------------------------------------------------- 12: transfer --preset gpu
def test_transfer_gpu_preset_takes_workers_from_the_cores(monkeypatch):
    from bench import transfer
    from util.train import distributed

    monkeypatch.setattr(distributed, 'usable_cores', lambda: 16)
    cfg = transfer.resolve(transfer.get_args_parser().parse_args(['--preset', 'gpu', '--device', 'cuda']))
    assert cfg['workers'] == 16 and cfg['jobs'] > 1
    assert transfer._nw(cfg, 2) == 16 and transfer._nw(cfg, 1, loader=True) == 6  # two pretrainings side by side
    runs = len(cfg['labels']) * cfg['seeds'] * len(transfer.DEFAULT_INITS)
    assert runs <= 30 and cfg['n_images'] * cfg['pre_epochs'] <= 300_000  # the size the 10-minute estimate is for
    cpu = transfer.resolve(transfer.get_args_parser().parse_args(['--preset', 'cpu']))
    assert cpu['workers'] is None and transfer._nw(cpu, 2) == 2  # the CPU presets' commands (and caches) unchanged
    argv, _ = transfer.prepare_pretraining(_Recorder(), cfg, lambda m: None)
    ph = argv['ph'][0] if isinstance(argv['ph'][0], list) else argv['ph']  # one argv per pretraining seed
    assert ph[ph.index('-nw') + 1] == 6


class _Recorder:
    """A stand-in for transfer.Runner that records the commands instead of running them."""

    work = '/nonexistent'

    def __init__(self):
        self.commands = []

    def run(self, script, argv, what):
        self.commands.append((script, argv))


# ---------------------------------------------------------------------------------------- the device script
@pytest.mark.slow
@pytest.mark.timeout(1600)  # the device script's every step, 1500 s of its own
def test_gpu_check_tiny_runs_every_step_and_writes_the_figures(tmp_path):
    import subprocess

    out = tmp_path / 'out'
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS='1', PYTHON=sys.executable)
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        env.pop(k, None)
    res = subprocess.run(
        ['bash', os.path.join(ROOT, 'bench', 'gpu_check.sh'), '--tiny'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = (out / 'summary.txt').read_text()
    assert res.returncode == 0, res.stdout + res.stderr + summary
    for step in ('info', 'smoke', 'ddp', 'weights', 'bench'):
        assert f'{step}: ok' in summary, summary
    info = json.loads((out / 'info.json').read_text())
    assert info['cores'] == os.cpu_count() and info['torch'] == torch.__version__ and 'dev_shm_gib' in info
    bench = json.loads((out / 'gpu_bench.json').read_text())
    assert 'ceiling' in bench['stages'] and 'pipeline' in bench['stages']
    assert 'loaded on the CPU with weights_only=True' in (out / 'weights.log').read_text()
    assert summary.strip().splitlines()[-1].startswith('total:')


def test_checkpoint_keeps_dict_subclasses(tmp_path):
    """The CPU copy made before saving rebuilds a Counter (MultiStepLR's milestones) as it was, not as a Counter
    of its (key, value) pairs: a resumed run gets the same schedule."""
    from util.train import runs

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60], gamma=0.1)
    runs.save_checkpoint(str(tmp_path), model, opt, sched, 1, {'arch': 'x'})
    ckpt = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert ckpt['lr_scheduler']['milestones'] == sched.state_dict()['milestones'] == {30: 1, 60: 1}


def test_ph_engine_bench_reports_phdict_with_and_without_start_up():
    from bench import ph_engine_bench

    res = ph_engine_bench.run(n_images=4, workers=1, size=24, repeats=1, loader_images=0, stage_images=1)['phdict']
    for key in ('cpu_ratio', 'cpu_ratio_without_startup', 'phdict_cpu_ms_marginal', 'floor_cpu_ms_marginal'):
        assert isinstance(res[key], float) and np.isfinite(res[key]), key
