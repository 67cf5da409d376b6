"""MoCo checkpoints load as their query encoder (projection head dropped) with the usual report; visMap.py draws
the first-layer filters of our files, torchvision state dicts, ImageNet weights (from a local hub cache) and
MoCo checkpoints."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image


def moco_checkpoint(path, arch='resnet18', seed=3):
    """A MoCo v2 checkpoint as its main_moco.py saves it: DDP prefix, query and key encoders with MLP heads,
    the queue; returns the query encoder's reference state dict (no head)."""
    torch.manual_seed(seed)
    enc = torchvision.models.get_model(arch, num_classes=128).state_dict()
    sd = {}
    for k, v in enc.items():
        if not k.startswith('fc.'):
            sd['module.encoder_q.' + k] = v
            sd['module.encoder_k.' + k] = v + 1
    for side in ('q', 'k'):
        sd[f'module.encoder_{side}.fc.0.weight'] = torch.randn(512, 512)
        sd[f'module.encoder_{side}.fc.0.bias'] = torch.randn(512)
        sd[f'module.encoder_{side}.fc.2.weight'] = torch.randn(128, 512)
        sd[f'module.encoder_{side}.fc.2.bias'] = torch.randn(128)
    sd['module.queue'] = torch.randn(128, 64)
    sd['module.queue_ptr'] = torch.zeros(1, dtype=torch.long)
    torch.save({'epoch': 200, 'arch': arch, 'state_dict': sd, 'optimizer': {'state': {}}}, path)
    return {k: v for k, v in enc.items() if not k.startswith('fc.')}


def test_moco_loads_query_encoder_with_report(tmp_path, capsys):
    import models
    from util.errors import UserError

    ref = moco_checkpoint(tmp_path / 'moco.pth.tar')
    model, report = models.load_for('resnet18', str(tmp_path / 'moco.pth.tar'), 10, verbose=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.items())  # the query encoder, not the key one
    assert report['missing'] == ['fc.weight', 'fc.bias'] and report['unexpected'] == []
    assert report['loaded'] == len(ref) and report['head_reinitialised']
    assert report['meta']['moco']['projection_head_dropped'] == 4 and report['meta']['epoch'] == 200
    out = capsys.readouterr().out
    assert f"loaded {len(ref)}/{len(own)} tensors of resnet18" in out and 'MoCo query encoder' in out
    assert "head not in the file" in out
    with pytest.raises(UserError, match='MoCo encoder.*number of classes'):
        models.load_for('resnet18', str(tmp_path / 'moco.pth.tar'))
    with pytest.raises(UserError, match='do not fit resnet50'):  # another architecture: the same refusal
        models.load_for('resnet50', str(tmp_path / 'moco.pth.tar'), 10)


def test_non_moco_keys_are_left_alone():
    from models.weights import moco_encoder

    sd = {'encoder_q.conv1.weight': torch.zeros(1), 'decoder.x': torch.zeros(1)}
    assert moco_encoder(sd) == (sd, None)


def _png_tiles(path):
    im = np.asarray(Image.open(path))
    assert im.ndim == 3 and im.shape[0] > 50 and im.shape[1] > 50
    return im


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['ours', 'torchvision', 'imagenet', 'moco'])
def test_vismap_png_for_each_weight_kind(kind, tmp_path, monkeypatch, capsys):
    import visMap

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    expected, argv = model.conv1.weight.detach(), []
    if kind == 'ours':  # a checkpoint of ours: state dict under 'model', args with usenet
        torch.save({'model': model.state_dict(), 'epoch': 1, 'args': {'usenet': 'resnet18'}}, tmp_path / 'ck.pth')
        source, tells = tmp_path / 'ck.pth', "resnet18 (according to its args['usenet'])"
    elif kind == 'torchvision':
        torch.save(model.state_dict(), tmp_path / 'tv.pth')
        source, tells = tmp_path / 'tv.pth', 'resnet18 (judging by its tensor names and shapes)'
    elif kind == 'imagenet':  # offline: torchvision's file placed in a local torch hub cache
        from models.loading import hub_cache_path

        monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
        cached = hub_cache_path(torchvision.models.ResNet18_Weights.DEFAULT)
        import os

        os.makedirs(os.path.dirname(cached))
        torch.save(torchvision.models.resnet18().state_dict(), cached)
        expected = torch.load(cached, weights_only=True)['conv1.weight']
        source, tells, argv = 'imagenet', 'resnet18 (given)', ['-u', 'resnet18']
    else:
        ref = moco_checkpoint(tmp_path / 'moco.pth')
        expected = ref['conv1.weight']
        source, tells = tmp_path / 'moco.pth', "resnet18 (according to its 'arch' entry)"
    from models.filters import first_conv_filters

    weight, info = first_conv_filters(str(source), 'resnet18' if kind == 'imagenet' else None)
    assert torch.equal(weight, expected) and info['layer'] == 'conv1'
    out = tmp_path / 'f.png'
    assert visMap.main(visMap.get_args_parser().parse_args(['-pw', str(source), '-o', str(out)] + argv)) == 0
    assert tells in capsys.readouterr().out
    _png_tiles(out)


@pytest.mark.slow
def test_vismap_u_must_fit_and_folder_means_newest(tmp_path, capsys):
    import visMap
    from util.errors import UserError

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / 'a.pth')
    with pytest.raises(UserError, match='do not fit resnet34'):
        visMap.main(
            visMap.get_args_parser().parse_args(
                ['-pw', str(tmp_path / 'a.pth'), '-u', 'resnet34', '-o', str(tmp_path / 'x.png')]
            )
        )
    assert (
        visMap.main(
            visMap.get_args_parser().parse_args(['-pw', str(tmp_path), '-o', str(tmp_path / 'y.png'), '-u', 'resnet18'])
        )
        == 0
    )
    assert 'a.pth' in capsys.readouterr().err and (tmp_path / 'y.png').is_file()
