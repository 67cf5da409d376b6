"""-u timm:NAME (the optional timm backend): tiny pretraining -> fine-tuning round trips for a CNN and a ViT
through the scripts, files that plain timm loads, the head put on by timm's reset_classifier, and the one-line
error without timm installed (that last test runs without timm too)."""

import csv
import glob
import os

import pytest
import torch

from tests.conftest import make_two_class_task

SIZES = ['--img_size', '40', '--crop_size', '32', '-b', '8', '-nw', '0']


def _timm():
    return pytest.importorskip('timm')


@pytest.fixture(scope='module')
def task(tmp_path_factory):
    return make_two_class_task(tmp_path_factory.mktemp('task'), n_train=8, n_val=4)


@pytest.mark.parametrize('name', ['resnet18d', 'vit_tiny_patch16_224'])
def test_pretrain_finetune_predict_vismap_round_trip(name, task, run_script, tmp_path):
    timm = _timm()
    vit = name.startswith('vit')
    arch = f'timm:{name}'
    run_script(
        'pretraining.py', '-o', tmp_path / 'w', '-u', arch, '--numof_classes=20', '-n', '16', '-nv', '0', '-e', '1',
        *SIZES, check=True,
    )  # fmt: skip
    [pw] = glob.glob(str(tmp_path / 'w' / '*' / f'timm-{name}_epoch1.pth'))
    pretrained = torch.load(pw, weights_only=True, map_location='cpu')
    # a plain state dict that plain timm loads, built for the 32-pixel crops the network was fed
    plain = timm.create_model(name, pretrained=False, num_classes=20, **({'img_size': 32} if vit else {}))
    plain.load_state_dict(pretrained)
    if vit:
        assert tuple(pretrained['pos_embed'].shape) == (1, 1 + (32 // 16) ** 2, 192)

    train, val = task
    run_script(
        'finetuning.py', '-t', train, '-val', val, '-pw', pw, '-u', arch, '-o', tmp_path / 'ft', '-e', '1', *SIZES,
        check=True,
    )  # fmt: skip
    [ft] = glob.glob(str(tmp_path / 'ft' / '*' / f'ft_timm-{name}_epoch1.pth'))
    finetuned = torch.load(ft, weights_only=True, map_location='cpu')
    plain = timm.create_model(name, pretrained=False, num_classes=2, **({'img_size': 32} if vit else {}))
    plain.load_state_dict(finetuned)
    assert plain.get_classifier().out_features == 2
    assert set(finetuned) == set(pretrained)

    # predict.py reads the architecture and sizes from the run's args.json
    out_csv = tmp_path / 'pred.csv'
    run_script('predict.py', val, '-pw', ft, '-o', out_csv, '-nw', '0', '--device', 'cpu', check=True)
    with open(out_csv, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r['top1'] in ('bright', 'dark') for r in rows[:8]), rows[:2]

    res = run_script('visMap.py', '-pw', pw, '-u', arch, '-o', tmp_path / 'f.png', check=True)
    assert os.path.getsize(tmp_path / 'f.png') > 0 and arch in res.stdout


def test_load_for_resets_the_head_with_timm_and_keeps_the_encoder(tmp_path):
    timm = _timm()
    import models

    src = timm.create_model('resnet18d', pretrained=False, num_classes=20)
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    calls = []
    real_reset = type(src).reset_classifier

    def spy(self, *a, **k):
        calls.append(a)
        return real_reset(self, *a, **k)

    type(src).reset_classifier = spy
    try:
        model, report = models.load_for('timm:resnet18d', str(tmp_path / 'w.pth'), 3)
    finally:
        type(src).reset_classifier = real_reset
    assert calls == [(3,)]
    assert report['stored_classes'] == 20 and report['head_reinitialised'] and model.get_classifier().out_features == 3
    for k, v in model.state_dict().items():
        if not k.startswith('fc.'):
            assert torch.equal(v, src.state_dict()[k]), k
    assert models.head_parameter_names(model) == {'fc.weight', 'fc.bias'}


def test_vit_file_of_another_input_size_is_resampled(tmp_path):
    timm = _timm()
    import models

    src = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=5, img_size=64)
    torch.save(src.state_dict(), tmp_path / 'v.pth')
    model, _ = models.load_for('timm:vit_tiny_patch16_224', str(tmp_path / 'v.pth'), 5, input_size=32)
    assert tuple(model.pos_embed.shape) == (1, 1 + 4, 192)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert torch.equal(model.state_dict()['blocks.0.attn.qkv.weight'], src.state_dict()['blocks.0.attn.qkv.weight'])


def test_vit_crop_must_be_a_whole_number_of_patches():
    """A ViT's stride-16 patch convolution fails on 8-pixel crops and sees only the top-left 16x16 of 30-pixel
    ones: both refused wherever the model is built (the training scripts' flag check, and load_for, which
    predict.py uses); multiples of the patch and CNNs (which take any size) pass."""
    _timm()
    import models
    from models import timm_backend
    from util.errors import UserError

    vit = 'timm:vit_tiny_patch16_224'
    for size, valid in ((8, 16), (30, 32), (40, 48), (17, 16)):
        with pytest.raises(UserError, match=rf"--crop_size {size} .*16.* --crop_size {valid}$"):
            timm_backend.check_input_size(vit, size)
        with pytest.raises(UserError, match=rf"--crop_size {size} "):
            models.load_for(vit, None, 3, input_size=size)
    for size in (16, 32, 48):
        timm_backend.check_input_size(vit, size)
    timm_backend.check_input_size('timm:resnet18d', 30)
    timm_backend.check_input_size('timm:swin_tiny_patch4_window7_224', 28)  # 7 patches of 4: one window
    model, _ = models.load_for(vit, None, 3, input_size=32)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_timm_name_suggests_close_matches():
    _timm()
    import models
    from util.errors import UserError

    with pytest.raises(UserError, match="did you mean .*timm:resnet18d"):
        models.resolve_arch('timm:resnet18dd')
    with pytest.raises(UserError, match="nothing is downloaded for timm models"):
        models.load_for('timm:resnet18d', 'imagenet', 10)


def test_without_timm_one_line_says_how_to_install(run_script, tmp_path):
    """timm made unimportable (a package on PYTHONPATH that raises ImportError, as when it is not installed)."""
    blocker = tmp_path / 'block' / 'timm'
    blocker.mkdir(parents=True)
    (blocker / '__init__.py').write_text("raise ImportError('No module named timm')\n")
    env = {'PYTHONPATH': os.pathsep.join([str(tmp_path / 'block'), os.environ['PYTHONPATH']])}
    for script, args in (
        ('pretraining.py', ['-o', tmp_path / 'w', '-n', '4', '-nv', '0', '-e', '1', *SIZES]),
        ('visMap.py', ['-pw', 'imagenet', '-o', tmp_path / 'f.png']),
    ):
        res = run_script(script, '-u', 'timm:resnet18d', *args, env=env, check=False)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith('error: -u timm:resnet18d needs the optional package timm'), res.stderr
        assert 'pip install timm' in lines[-1] and 'Traceback' not in res.stderr, res.stderr
    assert not (tmp_path / 'w').exists()  # refused at flag checking, before any run folder or data
