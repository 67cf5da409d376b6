"""The run configuration: built once from the flags (util/cli/build.py), its dataclass defaults are the flags'
defaults, it is frozen, phases are derived from it, and what a run finds is returned, not written onto the flags."""

import dataclasses
import os

import pytest

from util.cli.build import build_pretraining_sets, run_config
from util.cli.flags import get_args_parser
from util.config import DEFAULT_NUM_OUTPUTS, RunConfig, TrainConfig, record, resolve_num_classes
from util.errors import UserError


@pytest.mark.parametrize('mode', ['pretraining', 'finetuning'])
def test_flag_defaults_are_the_dataclass_defaults(mode):
    run = run_config(get_args_parser(mode).parse_args([]))
    # --epochs_pre not given (None) is -e, resolved when the configuration is built
    expected = RunConfig(learning_mode=mode, phase=mode, epochs_pre=TrainConfig.epochs)
    assert dataclasses.replace(run, flags=()) == expected


def test_record_keeps_the_flag_names_of_args_json():
    """args.json holds every flag under its name, plus the phase and the device set-up."""
    args = get_args_parser('pretraining').parse_args(['-pd', 'PH', '-p', 'gloo', '--label_norm_floor', '0.2'])
    rec = record(run_config(args))
    assert set(rec) == set(vars(args)) | {'phase', 'rank', 'local_rank', 'distributed'}
    # as given, but for what the flags leave to be derived: --epochs_pre not given is -e (as checked runs record it)
    assert {k: rec[k] for k in vars(args)} == {**vars(args), 'epochs_pre': args.epochs}
    assert rec['path2PHdir'] == 'PH' and rec['pidf'] == 'gloo' and rec['label_norm_floor'] == 0.2


def test_configuration_is_frozen_and_phases_are_derived():
    from util.train.modes import pretraining_phase

    args = get_args_parser('finetuning').parse_args(
        ['-lm', 'combined', '-t', 'lab', '-t2', 'ph', '-e', '5', '--epochs_pre', '3', '-nd', '40', '-fe']
    )
    run = run_config(args)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.epochs = 1
    pre = pretraining_phase(run)
    assert (pre.phase, pre.train.epochs, pre.train.freeze_encoder, pre.data.train, pre.model.numof_classes) == (
        'pretraining',
        3,
        False,
        'ph',
        40,
    )
    assert (run.train.epochs, run.train.freeze_encoder, run.data.train, run.model.numof_classes) == (
        5,
        True,
        'lab',
        None,
    )
    rec = record(pre)
    assert rec['epochs'] == 3 and rec['train'] == 'ph' and rec['numof_classes'] == 40 and rec['phase'] == 'pretraining'


def test_resolve_num_classes():
    assert resolve_num_classes(None) == DEFAULT_NUM_OUTPUTS
    assert resolve_num_classes(7) == 7
    assert resolve_num_classes(None, ['a', 'b'], 'x') == 2
    with pytest.raises(UserError, match="-nc 3 but 'x' has 2 classes"):
        resolve_num_classes(3, ['a', 'b'], 'x')


def test_label_statistics_are_returned_not_written_onto_the_flags():
    from util.train import sources

    args = get_args_parser('pretraining').parse_args(
        ['-n', '4', '-nv', '0', '--img_size', '40', '--crop_size', '32', '-nc', '40', '--label_norm', 'standard']
    )
    before = dict(vars(args))
    train, val = build_pretraining_sets(args)
    assert vars(args) == before and val is None
    _, _, facts = sources.pretraining_sets(run_config(args), 40)
    assert len(facts['label_norm_mean']) == 40 and facts['label_norm_count'] == 4 and facts['label_norm_floor'] == 0.1
    assert vars(args) == before


def test_max_pixels_travels_in_the_configuration(tmp_path, monkeypatch):
    """--max_pixels reaches the training sets through the run configuration, not the environment: an image over
    it is a bad image (skipped), one within it is read."""
    from PIL import Image

    from util.cli import checks
    from util.io import fileio
    from util.train import sources

    monkeypatch.delenv('PRETRAINCNN_MAX_PIXELS', raising=False)
    for cls, size in (('a', 20), ('b', 10)):
        (tmp_path / cls).mkdir()
        Image.new('RGB', (size, size), (9, 99, 199)).save(tmp_path / cls / 'x.png')
    args = get_args_parser('finetuning').parse_args(['-t', str(tmp_path), '-val', str(tmp_path), '--max_pixels', '300'])
    checks.check_common_args(args)
    run = run_config(args)
    assert run.data.max_pixels == 300 and record(run)['max_pixels'] == 300
    assert 'PRETRAINCNN_MAX_PIXELS' not in os.environ and fileio.max_pixels() == fileio.DEFAULT_MAX_PIXELS
    train, _, classes = sources.build_sets(run.data, need_train=True)
    assert classes == ['a', 'b'] and train[0] is None and train[1] is not None  # 20 x 20 = 400 > 300
    assert RunConfig().data.max_pixels == fileio.DEFAULT_MAX_PIXELS
