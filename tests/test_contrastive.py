"""-lm contrastive (issue 28, 2d): the NT-Xent loss against a plain computation, gradients reaching the backbone,
--ph_weight 0 training without any PH label, tiny runs whose weights finetuning.py loads, the shuffled-label
control, and the log's separate losses."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import make_two_class_task, only_run_dir, read_log
from tests.faultlib import expect_ok, run
from util.config import TrainConfig
from util.train.contrastive import contrastive_step, nt_xent
from util.train.engine import EpochSums

TINY = ['-u', 'resnet18', '--img_size', '40', '--crop_size', '32', '-b', '8', '-nw', '0', '-e', '1']
D = 20  # PH label dimension (histogram: 4 x 5 bins)


# ------------------------------------------------------------------------------------------------- loss
def reference_nt_xent(z1, z2, tau):
    """NT-Xent written from its definition, anchor by anchor, in float64."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2  # the other view of the same image
        others = [math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / sum(others))
    return total / n2


def test_nt_xent_equals_reference():
    rng = np.random.default_rng(0)
    for n, k, tau in ((4, 5, 0.2), (3, 8, 0.5), (2, 3, 1.0)):
        z1, z2 = rng.standard_normal((n, k)), rng.standard_normal((n, k))
        loss, _ = nt_xent(torch.tensor(z1), torch.tensor(z2), tau)
        assert loss.item() == pytest.approx(reference_nt_xent(z1, z2, tau), rel=1e-5)


def test_nt_xent_minimal_when_views_coincide():
    """Orthogonal images: coinciding views give the bound log(1 + (2N - 2) e^(-1/tau)); random views more;
    opposite views most; the positive is everyone's nearest only when the views coincide."""
    n, tau = 4, 0.2
    z1 = torch.eye(n, 8)
    same, hits = nt_xent(z1, z1.clone(), tau)
    assert same.item() == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-5)
    assert hits.item() == 2 * n
    far, far_hits = nt_xent(z1, -z1, tau)
    rand, _ = nt_xent(z1, torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), tau)
    assert same.item() < rand.item() < far.item() and far_hits.item() == 0
    assert nt_xent(z1 * 5.0, z1 * 0.1, tau)[0].item() == pytest.approx(same.item(), rel=1e-5)  # scale-free


def _step_once(ph_weight):
    from models.projection import ContrastiveNet

    torch.manual_seed(0)
    model = ContrastiveNet(torchvision.models.resnet18(num_classes=D), proj_dim=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(device='cpu', amp=False, channels_last=False, ph_weight=ph_weight, weight_decay=0.0, momentum=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0, weight_decay=0)
    sums = EpochSums()
    views = torch.randn(4, 2, 3, 32, 32)
    shown = contrastive_step(cfg, 0.2)(model, views, torch.randn(4, D), opt, sums, 1, 0)
    changed = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    return changed, model, sums, shown


def test_gradient_reaches_backbone_and_ph_weight_gates_the_head():
    changed, model, sums, shown = _step_once(0.0)
    assert model.net.conv1.weight.grad.abs().sum() > 0 and 'net.conv1.weight' in changed
    assert 'proj_head.0.weight' in changed and 'proj_head.2.weight' in changed
    assert 'net.fc.weight' not in changed  # --ph_weight 0: the PH head takes no part
    assert sums.images == 4 and float(sums.ph_images) == 0 and math.isfinite(float(shown['nt_xent']))
    changed, _, sums, _ = _step_once(1.0)
    assert {'net.fc.weight', 'net.conv1.weight', 'proj_head.2.weight'} <= changed
    assert float(sums.ph_images) == 4 and float(sums.ph_loss) > 0


# ------------------------------------------------------------------------------------------ tiny runs
@pytest.fixture(scope='module')
def runs_dir(tmp_path_factory):
    """Three tiny runs: --ph_weight 0 (with PH labels made impossible), --ph_weight 1 on generated images, and
    --ph_weight 1 on a folder with a shuffled label matrix (bench/probe.py's control)."""
    from bench.probe import shuffled_copy
    from util.io.fileio import list_images
    from util.train import datasets

    root = tmp_path_factory.mktemp('contrastive')
    out = {}

    def no_ph(*a, **k):
        raise AssertionError('-lm contrastive --ph_weight 0 built a PH label source')

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.ComputedLabels, '__init__', no_ph)
        mp.setattr('util.ph.cubical.compute_ph', no_ph)
        res = expect_ok(run('pretraining', '-lm', 'contrastive', '--ph_weight', 0, '-n', 16, '-o', root / 'l0', *TINY))
    out['l0'] = (only_run_dir(root / 'l0'), res)
    res = expect_ok(run('pretraining', '-lm', 'contrastive', '-n', 16, '-nv', 8, '-nc', D, '-o', root / 'l1', *TINY))
    out['l1'] = (only_run_dir(root / 'l1'), res)

    images, labels, shuffled = root / 'images', root / 'labels', root / 'shuffled'
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f'{i:02d}.png')
    labels.mkdir()
    np.save(labels / 'labels_histogram.npy', rng.standard_normal((16, D)).astype(np.float32))
    (labels / 'labels_histogram.txt').write_text(''.join(n + '\n' for n in list_images(str(images))))
    perm = shuffled_copy(str(labels), 'histogram', str(shuffled), seed=3)
    assert sorted(perm) == list(range(16)) and list(perm) != list(range(16))
    argv = ['-lm', 'contrastive', '-t', images, '-pd', shuffled, '-pc', '-nc', D, '-o', root / 'shuf', *TINY]
    out['shuffled'] = (only_run_dir(root / 'shuf') if expect_ok(run('pretraining', *argv)) else None, None)
    out['task'] = make_two_class_task(root / 'task', n_train=8, n_val=4)
    return out


def test_ph_weight_0_logs_contrastive_loss_only(runs_dir):
    run_dir, res = runs_dir['l0']
    (rec,) = read_log(run_dir)
    assert rec['mode'] == 'contrastive' and rec['phase'] == 'pretraining' and rec['images'] == 16
    assert math.isfinite(rec['train_contrastive_loss']) and rec['train_loss'] == rec['train_contrastive_loss']
    assert 'train_ph_loss' not in rec and 'val_r2' not in rec and 0 <= rec['train_pair_acc1'] <= 100
    assert 'no PH labels' in res.out
    with open(os.path.join(run_dir, 'args.json')) as f:
        args = json.load(f)
    assert args['learning_mode'] == 'contrastive' and args['ph_weight'] == 0 and args['temperature'] == 0.2


def test_ph_weight_1_logs_both_losses(runs_dir):
    run_dir, _ = runs_dir['l1']
    (rec,) = read_log(run_dir)
    assert math.isfinite(rec['train_contrastive_loss']) and math.isfinite(rec['train_ph_loss'])
    assert rec['train_loss'] == pytest.approx(rec['train_contrastive_loss'] + rec['train_ph_loss'])
    assert 'val_r2' in rec and rec['val_images'] == 8
    ck = torch.load(os.path.join(run_dir, 'checkpoint.pth'), weights_only=True)
    assert ck['mode'] == 'contrastive' and ck['model']['net.fc.weight'].shape == (D, 512)
    assert ck['model']['proj_head.2.weight'].shape == (128, 512)


def test_shuffled_labels_control(runs_dir):
    run_dir, _ = runs_dir['shuffled']
    (rec,) = read_log(run_dir)
    assert math.isfinite(rec['train_ph_loss']) and rec['images'] == 16
    with open(os.path.join(run_dir, 'args.json')) as f:
        assert 'blake2b' in json.load(f)['label_matrix']  # the shuffled copy's matrix is what the run read


@pytest.mark.parametrize('which', ['l0', 'l1'])
def test_weights_load_in_finetuning(runs_dir, which, tmp_path):
    """The weights file is the backbone with the PH head, as -lm pretraining writes: torchvision's resnet18 loads
    it strictly, and finetuning.py -pw starts from every tensor but the head; so does the checkpoint's network."""
    run_dir, _ = runs_dir[which]
    weights = os.path.join(run_dir, 'resnet18_epoch1.pth')
    sd = torch.load(weights, weights_only=True)
    torchvision.models.resnet18(num_classes=sd['fc.weight'].shape[0]).load_state_dict(sd)
    ck = torch.load(os.path.join(run_dir, 'checkpoint.pth'), weights_only=True)['model']
    assert torch.equal(sd['conv1.weight'], ck['net.conv1.weight'])
    train, val = runs_dir['task']
    argv = ['-t', train, '-val', val, '-pw', weights, '-o', tmp_path / 'ft', *TINY]
    res = expect_ok(run('finetuning', *argv))
    assert f'initialised from {weights}: {len(sd) - 2} tensors loaded, head re-initialised' in res.out
    import models

    model, report = models.load_for('resnet18', os.path.join(run_dir, 'checkpoint.pth'), 2)
    assert report['loaded'] == len(sd) - 2 and torch.equal(model.conv1.weight, sd['conv1.weight'])


@pytest.mark.slow
def test_checkpoint_as_pretrained_weights(runs_dir, tmp_path):
    """finetuning.py -pw <contrastive run>/checkpoint.pth starts like -pw resnet18_epoch1.pth: the network's tensors
    loaded (not the projection head), a fresh head of -nc outputs, the PH head's size recorded as -npc."""
    run_dir, _ = runs_dir['l1']
    sd = torch.load(os.path.join(run_dir, 'resnet18_epoch1.pth'), weights_only=True)
    ck = os.path.join(run_dir, 'checkpoint.pth')
    train, val = runs_dir['task']
    res = expect_ok(run('finetuning', '-t', train, '-val', val, '-pw', ck, '-o', tmp_path / 'ft', *TINY))
    assert f'initialised from {ck}: {len(sd) - 2} tensors loaded, head re-initialised' in res.out
    with open(os.path.join(only_run_dir(tmp_path / 'ft'), 'args.json')) as f:
        assert json.load(f)['numof_pretrained_classes'] == D


@pytest.mark.slow
def test_two_head_checkpoint_as_pretrained_weights(runs_dir, tmp_path):
    """So does the checkpoint.pth of -lm simultaneous / alternating (a classifier ``net.*`` beside ``ph_head.*``):
    its classifier is loaded, head included when -nc matches it."""
    from models.two_heads import TwoHeads

    net = torchvision.models.resnet18(num_classes=2)
    model = TwoHeads(net, D)
    ck = tmp_path / 'checkpoint.pth'
    torch.save({'model': model.state_dict(), 'epoch': 3, 'mode': 'simultaneous', 'arch': 'resnet18'}, ck)
    train, val = runs_dir['task']
    res = expect_ok(run('finetuning', '-t', train, '-val', val, '-pw', ck, '-o', tmp_path / 'ft', *TINY))
    assert f'initialised from {ck}: {len(net.state_dict())} tensors loaded, head kept' in res.out
    with open(os.path.join(only_run_dir(tmp_path / 'ft'), 'args.json')) as f:
        assert json.load(f)['numof_pretrained_classes'] == 2
