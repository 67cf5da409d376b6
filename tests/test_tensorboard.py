"""--tensorboard: the event files hold log.jsonl's per-epoch figures and the first layer's filters; without the
package the training scripts stop with one line before training (that test runs without tensorboard too)."""

import glob
import os

import pytest

from tests.conftest import make_two_class_task, only_run_dir, read_log

TINY = ['-u', 'resnet18', '--img_size', '40', '--crop_size', '32', '-b', '8', '-nw', '0']


def _events(run_dir):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(run_dir, 'tensorboard', 'events.out.tfevents.*'))
    assert len(files) == 1, files  # one writer: ours
    acc = EventAccumulator(os.path.join(run_dir, 'tensorboard'), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return acc


def _scalar(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_finetuning_scalars_match_log_jsonl_and_filters_drawn(tmp_path, run_script):
    pytest.importorskip('tensorboard')
    train, val = make_two_class_task(tmp_path / 'task', n_train=8, n_val=4)
    run_script(
        'finetuning.py', '-t', train, '-val', val, '-o', tmp_path / 'ft', '-e', '2', '--tensorboard', *TINY,
        check=True,
    )  # fmt: skip
    run_dir = only_run_dir(tmp_path / 'ft')
    records = read_log(run_dir)
    acc = _events(run_dir)
    tags = set(acc.Tags()['scalars'])
    for tag in ('loss/train_loss', 'loss/val_loss', 'accuracy/train_acc1', 'accuracy/val_acc1', 'lr'):
        assert tag in tags, tags
    assert 'speed/images_per_s' in tags and 'speed/data_wait_share' in tags
    for r in records:
        e = r['epoch']
        assert _scalar(acc, 'loss/train_loss')[e] == pytest.approx(r['train_loss'], rel=1e-5)
        assert _scalar(acc, 'accuracy/val_acc1')[e] == pytest.approx(r['val_acc1'], rel=1e-5)
        assert _scalar(acc, 'lr')[e] == pytest.approx(r['lr'], rel=1e-5)
        assert _scalar(acc, 'speed/images_per_s')[e] == pytest.approx(r['images'] / r['seconds'], rel=1e-4)
        assert _scalar(acc, 'speed/data_wait_share')[e] == pytest.approx(r['data_wait'], rel=1e-4, abs=1e-6)
    images = acc.Images('filters/first_conv')
    assert [i.step for i in images] == [1, 2]
    # resnet18's conv1: 64 RGB 7x7 filters drawn at 4x in an 8x8 grid (1-pixel padding)
    assert images[0].width == images[0].height == 8 * (7 * 4 + 1) + 1


def test_pretraining_r2_scalars(tmp_path, run_script):
    pytest.importorskip('tensorboard')
    run_script(
        'pretraining.py', '-o', tmp_path / 'w', '--numof_classes=20', '-n', '16', '-nv', '8', '-e', '1',
        '--tensorboard', *TINY, check=True,
    )  # fmt: skip
    run_dir = only_run_dir(tmp_path / 'w')
    [record] = read_log(run_dir)
    acc = _events(run_dir)
    assert _scalar(acc, 'r2/val_r2')[1] == pytest.approx(record['val_r2'], rel=1e-5, abs=1e-6)
    assert _scalar(acc, 'loss/val_loss')[1] == pytest.approx(record['val_loss'], rel=1e-5)


def test_nothing_for_tensorboard_unless_asked(tmp_path):
    """With the package installed, a run without --tensorboard writes log.jsonl only (no tensorboard/ folder)."""
    pytest.importorskip('tensorboard')
    from util.io.runlog import RunLogger

    logger = RunLogger(str(tmp_path))
    logger.log({'epoch': 1, 'train_loss': 0.5, 'lr': 0.1})
    logger.close()
    assert os.listdir(tmp_path) == ['log.jsonl']


def test_scalars_of_a_record():
    from util.train.tensorboard_log import scalars

    record = {
        'epoch': 3,
        'lr': 0.1,
        'mode': 'simultaneous',
        'train_loss': 1.5,
        'train_ph_loss': 0.5,
        'train_acc1': 50.0,
        'val_r2': 0.25,
        'data_wait': 0.4,
        'images': 100,
        'seconds': 4.0,
        'skipped_bad': 0,
    }
    assert scalars(record) == {
        'lr': 0.1,
        'loss/train_loss': 1.5,
        'loss/train_ph_loss': 0.5,
        'accuracy/train_acc1': 50.0,
        'r2/val_r2': 0.25,
        'speed/data_wait_share': 0.4,
        'speed/images_per_s': 25.0,
    }


def test_without_tensorboard_one_line_before_training(tmp_path, run_script):
    blocker = tmp_path / 'block' / 'tensorboard'
    blocker.mkdir(parents=True)
    (blocker / '__init__.py').write_text("raise ImportError('No module named tensorboard')\n")
    env = {'PYTHONPATH': os.pathsep.join([str(tmp_path / 'block'), os.environ['PYTHONPATH']])}
    train, val = make_two_class_task(tmp_path / 'task', n_train=2, n_val=1)
    for script, args in (
        ('pretraining.py', ['-n', '4', '-nv', '0']),
        ('finetuning.py', ['-t', train, '-val', val]),
    ):
        out = tmp_path / script
        res = run_script(script, '-o', out, '-e', '1', '--tensorboard', *TINY, env=env, check=False)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert lines == [
            'error: --tensorboard needs the optional package tensorboard, which is not installed: '
            'pip install tensorboard (or: pip install -r requirements-extra.txt)'
        ], res.stderr
        assert not out.exists()  # nothing trained, no run folder
