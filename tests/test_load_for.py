"""models.load_for: the one model-loading entry, from every weights layout the scripts write or accept."""

import pytest
import torch

import models
from models.two_heads import TwoHeads
from util.errors import UserError

ARCH = 'resnet18'


@pytest.fixture(scope='module')
def source():
    torch.manual_seed(0)
    return models.build_model(ARCH, 5)


def _same(model, reference):
    ref = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys()
    return all(torch.equal(got[k], ref[k]) for k in ref)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_plain_state_dict(source, tmp_path):
    model, report = models.load_for(ARCH, _save(source.state_dict(), tmp_path / 'w.pth'))
    assert report['num_classes'] == 5 and report['stored_classes'] == 5 and not report['head_reinitialised']
    assert _same(model, source)


def test_checkpoint(source, tmp_path):
    ckpt = {'model': source.state_dict(), 'epoch': 3, 'args': {'usenet': ARCH}, 'optimizer': {}}
    model, report = models.load_for(ARCH, _save(ckpt, tmp_path / 'checkpoint.pth'))
    assert _same(model, source) and report['meta']['epoch'] == 3


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', 'module._orig_mod.'])
def test_wrapper_prefixes(source, tmp_path, prefix):
    sd = {prefix + k: v for k, v in source.state_dict().items()}
    model, _ = models.load_for(ARCH, _save(sd, tmp_path / 'w.pth'))
    assert _same(model, source)


def test_two_head_file_gives_its_classifier(source, tmp_path):
    two = TwoHeads(source, 7)
    for name in ('ft.pth', 'checkpoint.pth'):
        obj = two.state_dict() if name == 'ft.pth' else {'model': two.state_dict(), 'epoch': 1}
        model, report = models.load_for(ARCH, _save(obj, tmp_path / name))
        assert report['num_classes'] == 5 and _same(model, source)


def test_new_head_size_keeps_the_encoder(source, tmp_path):
    model, report = models.load_for(ARCH, _save(source.state_dict(), tmp_path / 'w.pth'), 3)
    assert report['head_reinitialised'] and report['stored_classes'] == 5
    assert models.head_out_features(model) == 3
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_in_memory_state_dict_and_random(source):
    model, _ = models.load_for(ARCH, source.state_dict())
    assert _same(model, source)
    model, report = models.load_for(ARCH, None, 4)
    assert models.head_out_features(model) == 4 and report['stored_classes'] is None


def test_wrong_architecture_refused_by_name(source, tmp_path):
    path = _save(source.state_dict(), tmp_path / 'w.pth')
    with pytest.raises(UserError, match='w.pth'):
        models.load_for('resnet34', path, 5)
    with pytest.raises(UserError, match='number of classes'):
        models.load_for(ARCH, None)
