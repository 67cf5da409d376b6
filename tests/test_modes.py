"""Learning modes (-lm): combined (with resume), simultaneous, alternating, evaluation; --label_type class;
the two-head wrapper; mode and phase recorded in logs and checkpoints; bad mode flags."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import make_two_class_task, only_run_dir, read_log
from util.errors import UserError

TINY = ['-u', 'resnet18', '--img_size', '40', '--crop_size', '32', '-b', '8', '-nw', '0']
PH = ['-nd', '20', '-n', '16', '-nv', '8']  # PH label dimension; generated PH images per epoch / for val


@pytest.fixture(scope='module')
def task(tmp_path_factory):
    return make_two_class_task(tmp_path_factory.mktemp('task'), n_train=12, n_val=4)


def checkpoint(run):
    return torch.load(os.path.join(run, 'checkpoint.pth'), weights_only=True)


def assert_plain_classifier(path, num_classes):
    """A weights file that torchvision's resnet18(num_classes=K) loads strictly."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))


@pytest.fixture(scope='module')
def simultaneous_run(task, tmp_path_factory):
    from tests.conftest import _run_script

    out = tmp_path_factory.mktemp('sim')
    res = _run_script(
        'finetuning.py',
        '-lm',
        'simultaneous',
        '-t',
        task[0],
        '-o',
        out,
        '-e',
        '3',
        '--ph_weight',
        '0.5',
        *TINY,
        *PH,
        check=True,
    )
    return only_run_dir(out), res


def test_simultaneous(simultaneous_run):
    run, res = simultaneous_run
    log = read_log(run)
    assert [r['epoch'] for r in log] == [1, 2, 3]
    assert all(r['mode'] == 'simultaneous' and r['phase'] == 'simultaneous' for r in log)
    assert all(np.isfinite(r[k]) for r in log for k in ('train_loss', 'train_ce', 'train_ph_loss', 'val_ph_loss'))
    assert log[-1]['train_loss'] < log[0]['train_loss']
    first = log[0]
    assert first['train_loss'] == pytest.approx(first['train_ce'] + 0.5 * first['train_ph_loss'])
    assert {'val_acc1', 'val_ph_r2', 'train_acc1'} <= set(log[-1]) and log[-1]['images'] == 24
    ck = checkpoint(run)
    assert ck['mode'] == 'simultaneous' and ck['args']['learning_mode'] == 'simultaneous'
    assert ck['model']['ph_head.weight'].shape == (20, 512)  # the second head, in_features -> D
    assert_plain_classifier(os.path.join(run, 'ft_resnet18_epoch3.pth'), 2)
    with open(os.path.join(run, 'classes.json')) as f:
        assert json.load(f) == ['bright', 'dark']
    assert os.path.exists(os.path.join(run, 'metrics.json')) and 'weights:' in res.stdout


def test_evaluation_mode_from_pretraining_script(simultaneous_run, task, run_script, tmp_path):
    """-lm evaluation (= finetuning.py --evaluate) reproduces the run's final validation accuracy."""
    run, _ = simultaneous_run
    run_script(
        'pretraining.py',
        '-lm',
        'evaluation',
        '-val',
        task[1],
        '-pw',
        os.path.join(run, 'ft_resnet18_epoch3.pth'),
        '-nc',
        '2',
        '-o',
        tmp_path,
        *TINY,
        check=True,
    )
    with open(os.path.join(only_run_dir(tmp_path), 'metrics.json')) as f:
        metrics = json.load(f)
    assert metrics['mode'] == 'evaluation'
    assert metrics['val_acc1'] == pytest.approx(read_log(run)[-1]['val_acc1'])


def test_alternating(task, run_script, tmp_path):
    run_script('finetuning.py', '-lm', 'alternating', '-t', task[0], '-o', tmp_path, '-e', '2', *TINY, *PH, check=True)
    run = only_run_dir(tmp_path)
    log = read_log(run)
    assert all(r['mode'] == 'alternating' for r in log)
    # one PH batch after each of the 3 labelled batches: 24 PH images, the 16 generated ones cycled
    assert log[0]['images'] == 24 and log[0]['ph_images'] == 24
    assert all(np.isfinite(r['train_ph_loss']) and np.isfinite(r['val_ph_loss']) for r in log)
    assert log[-1]['train_loss'] < log[0]['train_loss']
    assert checkpoint(run)['phase'] == 'alternating'
    assert_plain_classifier(os.path.join(run, 'ft_resnet18_epoch2.pth'), 2)


def test_combined_stops_between_phases_and_resumes(task, run_script, tmp_path):
    """Pretraining, a stop, then --resume runs the fine-tuning phase from the pretrained encoder."""
    args = ['-lm', 'combined', '-t', task[0], '--epochs_pre', '1', '-e', '1', '--freeze_encoder', *TINY, *PH]
    res = run_script('pretraining.py', *args, '-o', tmp_path, '--stop_after', '1', check=True)
    top = only_run_dir(tmp_path)
    assert sorted(os.listdir(top)) == ['args.json', 'pretraining']
    assert f'--resume {top}' in res.stdout
    pre = os.path.join(top, 'pretraining')
    (record,) = read_log(pre)
    assert record['mode'] == 'combined' and record['phase'] == 'pretraining' and np.isfinite(record['train_loss'])
    assert checkpoint(pre)['phase'] == 'pretraining'
    pretrained = torch.load(os.path.join(pre, 'resnet18_epoch1.pth'), weights_only=True)
    assert pretrained['fc.weight'].shape == (20, 512)  # the PH head: -nd outputs
    stamp = os.stat(os.path.join(pre, 'resnet18_epoch1.pth')).st_mtime_ns

    run_script('pretraining.py', *args, '--resume', top, check=True)
    ft = os.path.join(top, 'finetuning')
    (record,) = read_log(ft)
    assert record['mode'] == 'combined' and record['phase'] == 'finetuning'
    ck = checkpoint(ft)
    assert ck['args']['phase'] == 'finetuning' and ck['args']['learning_mode'] == 'combined'
    tuned = torch.load(os.path.join(ft, 'ft_resnet18_epoch1.pth'), weights_only=True)
    assert tuned['fc.weight'].shape == (2, 512)
    for k, v in tuned.items():  # the frozen encoder is exactly the pretraining phase's
        if not k.startswith('fc.'):
            assert torch.equal(v, pretrained[k]), k
    assert len(read_log(pre)) == 1 and os.stat(os.path.join(pre, 'resnet18_epoch1.pth')).st_mtime_ns == stamp


def test_label_type_class_then_finetune(task, run_script, tmp_path):
    run_script(
        'pretraining.py',
        '--label_type',
        'class',
        '-t',
        task[0],
        '-o',
        tmp_path / 'pt',
        '-e',
        '2',
        '--lr_pre',
        '0.01',
        *TINY,
        check=True,
    )
    run = only_run_dir(tmp_path / 'pt')
    log = read_log(run)
    assert log[0]['mode'] == 'pretraining' and 'val_acc1' in log[0] and log[0]['images'] == 24
    assert log[-1]['train_loss'] < log[0]['train_loss']
    weights = os.path.join(run, 'resnet18_epoch2.pth')
    assert_plain_classifier(weights, 2)
    with open(os.path.join(run, 'classes.json')) as f:
        assert json.load(f) == ['bright', 'dark']
    import finetuning  # what finetuning.py -pw does with them: every tensor loaded (same class count)

    args = finetuning.get_args_parser().parse_args(['-pw', weights, '-u', 'resnet18', '-nc', '5'])
    model = finetuning.build_finetune_model(args)
    source = torch.load(weights, weights_only=True)
    assert args.numof_pretrained_classes == 2 and model.fc.out_features == 5
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if not k.startswith('fc.'))


def test_combined_needs_class_folders(tmp_path, run_script):
    flat = tmp_path / 'flat'
    flat.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(flat / 'a.png')
    res = run_script(
        'pretraining.py', '-lm', 'combined', '-t', flat, '-o', tmp_path / 'out', '-e', '1', *TINY, *PH, check=False
    )
    assert res.returncode == 2 and 'class sub-folders' in res.stderr and '-t2' in res.stderr
    assert 'Traceback' not in res.stderr and not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--evaluate', '-lm', 'combined'], 'contradicts'),
        (['-lm', 'simultaneous', '--label_type', 'class'], 'PH label type'),
        (['-lm', 'alternating', '--ph_weight', '-1'], '--ph_weight'),
        (['-lm', 'simultaneous', '--freeze_encoder'], '--freeze_encoder'),
        (['-lm', 'combined', '-pd', 'x'], '-t2'),
        (['--epochs_pre', '0'], '--epochs_pre'),
    ],
)
def test_bad_mode_flags(argv, message):
    import finetuning
    from util.cli import checks

    args = finetuning.get_args_parser().parse_args(argv)
    with pytest.raises(UserError, match=message):
        checks.check_mode_args(args)


def test_evaluate_flag_is_evaluation_mode():
    import finetuning
    import pretraining
    from util.cli import checks
    from util.cli.build import run_config
    from util.config import record

    assert pretraining.get_args_parser().parse_args([]).learning_mode == 'pretraining'
    args = finetuning.get_args_parser().parse_args(['--evaluate', '--save_interval', '0', '-e', '7'])
    checks.check_mode_args(args)
    # the checks leave the flags as parsed; the run configuration (and so args.json) holds what they resolve to
    assert (args.learning_mode, args.epochs_pre, args.save_interval) == ('finetuning', None, 0)
    run = run_config(args)
    assert (run.learning_mode, run.phase, run.epochs_pre, run.train.save_interval) == ('evaluation', 'evaluation', 7, 7)
    recorded = record(run)
    assert (recorded['learning_mode'], recorded['epochs_pre'], recorded['save_interval']) == ('evaluation', 7, 7)


@pytest.mark.parametrize('arch', ['resnet18', 'mobilenet_v3_small', 'squeezenet1_0'])
def test_two_heads_any_architecture(arch):
    """The PH head reads the features the classifier's own head receives; the classifier stays plain."""
    import models
    from models.two_heads import TwoHeads

    torch.manual_seed(0)
    net = models.build_model(arch, 3)
    two = TwoHeads(net, 7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scores, ph = two(x)
        assert scores.shape == (2, 3) and ph.shape == (2, 7)
        torch.testing.assert_close(scores, net(x))  # the class head is the model's own
    assert two.ph_head.in_features == models.head_in_features(net)
    plain = getattr(torchvision.models, arch)(num_classes=3)
    plain.load_state_dict(two.net.state_dict())  # what the weights files hold
