"""finetuning.py: weight transfer, linear probe, the README sequence, evaluation, ImageNet path, bad input."""

import glob
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import make_two_class_task, only_run_dir, read_log

TINY = ['-u', 'resnet18', '--img_size', '40', '--crop_size', '32', '-b', '8', '-nw', '0']


@pytest.fixture(scope='module')
def task(tmp_path_factory):
    return make_two_class_task(tmp_path_factory.mktemp('task'))


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A plain state_dict of resnet18 with a 200-output head, as pretraining.py writes it."""
    path = tmp_path_factory.mktemp('pw') / 'resnet18_epoch3.pth'
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18(num_classes=200).state_dict(), path)
    return path


def parse(*argv):
    import finetuning

    return finetuning.get_args_parser().parse_args([str(a) for a in argv])


def test_weights_transfer_and_head_reinitialised(pretrained):
    import finetuning

    args = parse('-pw', pretrained, '-u', 'resnet18', '-nc', '2')
    model = finetuning.build_finetune_model(args)
    source = torch.load(pretrained, weights_only=True)
    state = model.state_dict()
    for k, v in source.items():
        if k.startswith('fc.'):
            continue
        assert torch.equal(state[k], v), k
    assert state['fc.weight'].shape == (2, 512)
    assert args.numof_pretrained_classes == 200  # read from the file


def test_npc_mismatch_is_refused(pretrained):
    import finetuning
    from util.errors import UserError

    with pytest.raises(UserError, match='head of 200 outputs'):
        finetuning.build_finetune_model(parse('-pw', pretrained, '-u', 'resnet18', '-nc', '2', '-npc', '100'))


def test_explicit_nc_must_match_the_class_folders(task, pretrained, run_script, tmp_path):
    """-nc 100 given on a 2-class folder is refused (100 is no "not given" sentinel); without -nc the folder's
    count is adopted, in fine-tuning and in evaluation alike."""
    train, val = task
    res = run_script(
        'finetuning.py',
        '-t',
        train,
        '-pw',
        pretrained,
        '-o',
        tmp_path / 'nc100',
        '-nc',
        '100',
        '-e',
        '1',
        *TINY,
        check=False,
    )
    assert res.returncode == 2 and '-nc 100' in res.stderr and '2 classes' in res.stderr, res.stderr
    assert not glob.glob(str(tmp_path / 'nc100' / '*' / '*.pth'))

    res = run_script(
        'finetuning.py', '-t', train, '-pw', pretrained, '-o', tmp_path / 'auto', '-e', '1', *TINY, check=True
    )
    assert 'using -nc 2' in res.stdout
    run = only_run_dir(tmp_path / 'auto')
    tuned = torch.load(os.path.join(run, 'ft_resnet18_epoch1.pth'), weights_only=True)
    assert tuned['fc.weight'].shape == (2, 512)
    res = run_script(
        'finetuning.py',
        '--evaluate',
        '-val',
        val,
        '-pw',
        os.path.join(run, 'ft_resnet18_epoch1.pth'),
        '-o',
        tmp_path / 'eval',
        *TINY,
        check=True,
    )
    assert os.path.exists(os.path.join(only_run_dir(tmp_path / 'eval'), 'metrics.json'))
    res = run_script(
        'finetuning.py',
        '--evaluate',
        '-val',
        val,
        '-pw',
        os.path.join(run, 'ft_resnet18_epoch1.pth'),
        '-o',
        tmp_path / 'eval100',
        '-nc',
        '100',
        *TINY,
        check=False,
    )
    assert res.returncode == 2 and '-nc 100' in res.stderr and '2 classes' in res.stderr, res.stderr


def test_finetune_learns_easy_task_and_evaluates(task, pretrained, run_script, tmp_path):
    train, val = task
    run_script(
        'finetuning.py',
        '-t',
        train,
        '-pw',
        pretrained,
        '-npc',
        '200',
        '-o',
        tmp_path,
        '-nc',
        '2',
        '-e',
        '4',
        *TINY,
        '--lr_fine',
        '0.002',
        '-op',
        'sgd_cos',
        check=True,
    )
    run = only_run_dir(tmp_path)
    log = read_log(run)
    assert [r['epoch'] for r in log] == [1, 2, 3, 4]
    assert log[-1]['train_loss'] < log[0]['train_loss']
    assert log[-1]['val_acc1'] >= 75.0
    assert {'val_loss', 'val_acc1', 'val_acc2', 'train_acc1'} <= set(log[-1])
    for name in (
        'ft_resnet18_epoch4.pth',
        'checkpoint.pth',
        'metrics.json',
        'per_class.csv',
        'confusion_matrix.csv',
        'confusion_matrix.png',
        'curves.png',
        'args.json',
    ):
        assert os.path.exists(os.path.join(run, name)), name
    # evaluation of the fine-tuned weights, as a separate command
    res = run_script(
        'finetuning.py',
        '--evaluate',
        '-val',
        val,
        '-pw',
        os.path.join(run, 'ft_resnet18_epoch4.pth'),
        '-o',
        tmp_path / 'eval',
        *TINY,
        '-nc',
        '2',
        check=True,
    )
    ev = only_run_dir(tmp_path / 'eval')
    with open(os.path.join(ev, 'metrics.json')) as f:
        metrics = json.load(f)
    assert metrics['val_acc1'] == pytest.approx(log[-1]['val_acc1'])
    assert 'val_acc1' in res.stdout
    rows = open(os.path.join(ev, 'per_class.csv')).read().splitlines()
    assert rows[0] == 'class,images,correct,accuracy' and len(rows) == 3


def test_linear_probe_leaves_encoder_unchanged(task, pretrained, run_script, tmp_path):
    train, _ = task
    run_script(
        'finetuning.py',
        '-t',
        train,
        '-pw',
        pretrained,
        '-o',
        tmp_path,
        '-nc',
        '2',
        '-e',
        '1',
        '--freeze_encoder',
        *TINY,
        check=True,
    )
    tuned = torch.load(os.path.join(only_run_dir(tmp_path), 'ft_resnet18_epoch1.pth'), weights_only=True)
    source = torch.load(pretrained, weights_only=True)
    for k, v in tuned.items():
        if not k.startswith('fc.'):
            assert torch.equal(v, source[k]), k  # weights and BatchNorm statistics alike


def test_readme_sequence_pretrain_then_finetune(task, run_script, tmp_path):
    """pretraining.py writes weights that finetuning.py -pw ... -npc 200 picks up."""
    train, val = task
    run_script(
        'pretraining.py',
        '-o',
        tmp_path / 'weights',
        '--numof_classes=200',
        '-n',
        '16',
        '-nv',
        '0',
        '-u',
        'resnet18',
        '-e',
        '1',
        '--img_size',
        '48',
        '--crop_size',
        '40',
        '-b',
        '8',
        '-nw',
        '0',
        check=True,
    )
    pw = glob.glob(str(tmp_path / 'weights' / '*' / 'resnet18_epoch1.pth'))[0]
    run_script(
        'finetuning.py',
        '-t',
        train,
        '-val',
        val,
        '-pw',
        pw,
        '-npc',
        '200',
        '-o',
        tmp_path / 'result',
        '-nc',
        '2',
        '-e',
        '1',
        *TINY,
        check=True,
    )
    assert glob.glob(str(tmp_path / 'result' / '*' / 'ft_resnet18_epoch1.pth'))


def test_imagenet_weights_from_prepopulated_cache(task, run_script, tmp_path):
    """-pw imagenet goes through torchvision's own download path, served from a cache the test fills."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    hub = tmp_path / 'torch' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    torch.manual_seed(7)
    fake = torchvision.models.resnet18().state_dict()
    torch.save(fake, hub / os.path.basename(weights.url))
    train, _ = task
    res = run_script(
        'finetuning.py',
        '-t',
        train,
        '-pw',
        'imagenet',
        '-o',
        tmp_path / 'out',
        '-nc',
        '2',
        '-e',
        '1',
        '--freeze_encoder',
        *TINY,
        env={'TORCH_HOME': str(tmp_path / 'torch')},
        check=True,
    )
    assert 'ImageNet' in res.stdout
    tuned = torch.load(glob.glob(str(tmp_path / 'out' / '*' / 'ft_resnet18_epoch1.pth'))[0], weights_only=True)
    assert torch.equal(tuned['conv1.weight'], fake['conv1.weight'])


def test_bad_images_are_converted_or_skipped(tmp_path, run_script):
    train, val = make_two_class_task(tmp_path / 'data', n_train=8, n_val=4)
    Image.fromarray(np.zeros((40, 40), np.uint16) + 60000).save(train / 'bright' / 'sixteen.png')
    Image.fromarray(np.full((40, 40, 4), 200, np.uint8)).save(train / 'bright' / 'rgba.png')
    Image.fromarray(np.zeros((40, 40), np.uint8)).convert('P').save(train / 'dark' / 'palette.png')
    (train / 'dark' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    res = run_script(
        'finetuning.py', '-t', train, '-o', tmp_path / 'out', '-nc', '2', '-e', '1', *TINY, '-b', '4', check=True
    )
    assert 'broken.png' in res.stderr and 'from scratch' in res.stderr
    (record,) = read_log(only_run_dir(tmp_path / 'out'))
    assert record['skipped_bad'] == 1 and record['images'] == 19  # 20 files, 1 undecodable


@pytest.mark.parametrize('case', ['empty_class', 'class_mismatch', 'other_arch', 'missing_val'])
def test_bad_input(case, task, pretrained, run_script, tmp_path):
    train, val = task
    args = ['-t', train, '-val', val, '-o', tmp_path / 'out', '-nc', '2', '-e', '1', *TINY]
    if case == 'empty_class':
        train, val = make_two_class_task(tmp_path / 'd', n_train=2, n_val=2)
        (train / 'zebra').mkdir()
        (val / 'zebra').mkdir()
        args[1], args[3], expect = train, val, 'class folder'
    elif case == 'class_mismatch':
        other = tmp_path / 'val2'
        for cls in ('bright', 'cat'):
            (other / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other / cls / 'a.png')
        args[3], expect = other, 'differ'
    elif case == 'other_arch':
        path = tmp_path / 'densenet.pth'
        torch.save(torchvision.models.densenet121(num_classes=200).state_dict(), path)
        args += ['-pw', path]
        expect = 'densenet'
    elif case == 'missing_val':
        lonely = tmp_path / 'lonely' / 'train'
        make_two_class_task(tmp_path / 'lonely', n_train=2, n_val=0)
        import shutil

        shutil.rmtree(tmp_path / 'lonely' / 'val')
        args = ['-t', lonely, '-o', tmp_path / 'out', '-nc', '2', '-e', '1', *TINY]
        expect = '-val'
    res = run_script('finetuning.py', *args, check=False)
    assert res.returncode == 2, res.stderr
    assert expect in res.stderr.lower() or expect in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr
    assert not glob.glob(str(tmp_path / 'out' / '*' / '*.pth'))
