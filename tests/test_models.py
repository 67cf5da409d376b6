"""Tests for the models/ package: building by name, generic head replacement, safe weight loading."""

import builtins
import os
import pickle
from urllib.parse import urlparse

import pytest
import torch
import torch.nn as nn
import torchvision

import models
from models import (
    build_model,
    get_head,
    head_in_features,
    head_out_features,
    head_parameter_names,
    infer_num_classes,
    list_architectures,
    load_pretrained,
    read_state_dict,
    replace_head,
)
from models.registry import skeleton
from util.errors import UserError

# One small member of every torchvision classification family, with an input size it accepts.
FAMILIES = [
    ('resnet18', 64),
    ('densenet121', 64),
    ('vgg11', 64),
    ('alexnet', 64),
    ('squeezenet1_0', 64),
    ('mobilenet_v2', 64),
    ('mobilenet_v3_small', 64),
    ('efficientnet_b0', 64),
    ('regnet_y_400mf', 64),
    ('shufflenet_v2_x0_5', 64),
    ('mnasnet0_5', 64),
    ('convnext_tiny', 64),
    ('googlenet', 64),
    ('inception_v3', 80),
    ('vit_b_16', 64),
    ('swin_t', 64),
    ('maxvit_t', None),
]
# Constructor options for the test (vit's input size is fixed at build time; 64 px keeps it fast).
FAMILY_KWARGS = {'vit_b_16': {'image_size': 64}}


class Payload:
    """Unpickling this creates ``marker`` (stands in for arbitrary code in a malicious .pth)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, 'w'))


def _forward(model, size, batch=1):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, 3, size, size))


def _seeded(arch, num_classes, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(arch, num_classes, **kw)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope='module')
def r18_file(tmp_path_factory):
    """A resnet18 state dict with a 200-output head (as PH pretraining would make) and its tensors."""
    model = _seeded('resnet18', 200, seed=1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('w') / 'resnet18_epoch90.pth'
    return _save(sd, path), sd


# ----------------------------------------------------------------------------------------- names / build


def test_list_architectures_is_classification_only():
    names = list_architectures()
    assert names == sorted(names)
    for expected in ('resnet50', 'vit_b_16', 'squeezenet1_0', 'maxvit_t', 'swin_v2_t'):
        assert expected in names
    assert not any(n.startswith(('fasterrcnn', 'deeplab', 'quantized', 'raft', 'r3d')) for n in names)


def test_unknown_architecture_suggests_close_match():
    with pytest.raises(UserError, match='resnet18'):
        build_model('resnt18', 3)
    with pytest.raises(UserError, match='not an image classification model'):
        build_model('fasterrcnn_resnet50_fpn', 3)
    assert head_out_features(build_model('ResNet18', 3)) == 3  # case does not matter


@pytest.mark.parametrize('bad', [0, -3, 2.5, True])
def test_bad_num_classes(bad):
    with pytest.raises(UserError, match='positive integer'):
        build_model('resnet18', bad)


@pytest.mark.parametrize('arch,size', FAMILIES, ids=[a for a, _ in FAMILIES])
def test_replace_head_every_family(arch, size):
    model = build_model(arch, 5, **FAMILY_KWARGS.get(arch, {}))
    assert head_out_features(model) == 5
    parent, name, old = get_head(model)
    in_features = head_in_features(model)
    new = replace_head(model, 7)
    parent2, name2, layer = get_head(model)
    assert layer is new and layer is not old
    assert parent2 is parent and name2 == name and type(layer) is type(old)
    assert head_in_features(model) == in_features and head_out_features(model) == 7
    state = model.state_dict()
    names = head_parameter_names(model)
    assert names and names <= set(state)
    assert all(state[k].shape[0] == 7 for k in names)
    if size is not None:  # maxvit_t only runs on 224 px images: too slow here, its head shape is checked
        assert _forward(model, size).shape == (1, 7)


def test_head_found_in_every_architecture():
    """On weight-free skeletons of all torchvision classifiers (aux classifiers on), the head is exactly the
    set of tensors whose size depends on num_classes (1009 appears nowhere else)."""
    for arch in list_architectures():
        kw = {'aux_logits': True} if arch in ('googlenet', 'inception_v3') else {}
        model = skeleton(arch, num_classes=1009, **kw)
        expected = {k for k, v in model.state_dict().items() if 1009 in v.shape}
        assert head_parameter_names(model) == expected, arch
        assert head_out_features(model) == 1009, arch
        replace_head(model, 7)
        assert head_out_features(model) == 7, arch
        assert all(model.state_dict()[k].shape[0] == 7 for k in expected), arch


def test_known_head_locations():
    assert head_parameter_names(build_model('resnet18', 3)) == {'fc.weight', 'fc.bias'}
    assert head_parameter_names(skeleton('vgg11')) == {'classifier.6.weight', 'classifier.6.bias'}
    assert head_parameter_names(skeleton('vit_b_16')) == {'heads.head.weight', 'heads.head.bias'}
    assert head_parameter_names(skeleton('maxvit_t')) == {'classifier.5.weight'}  # no bias there
    parent, name, layer = get_head(skeleton('squeezenet1_0'))
    assert name == 1 and isinstance(layer, nn.Conv2d) and isinstance(parent, nn.Sequential)


def test_aux_classifiers_are_resized_and_off_by_default():
    model = build_model('googlenet', 5, aux_logits=True)
    replace_head(model, 7)
    assert {'aux1.fc2.weight', 'aux2.fc2.weight', 'fc.weight'} <= head_parameter_names(model)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == out.aux_logits1.shape == out.aux_logits2.shape == (2, 7)
    plain = build_model('inception_v3', 4)
    plain.train()
    out = plain(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


def test_linear_probe_freezing_with_head_names():
    model = build_model('mobilenet_v3_small', 6)
    head = head_parameter_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'classifier.3.weight', 'classifier.3.bias'}


# --------------------------------------------------------------------------------------- loading weights


def _assert_same(model, sd, skip=()):
    own = model.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(own[k], v), k


def test_load_plain_state_dict(r18_file, capsys):
    path, sd = r18_file
    model = _seeded('resnet18', 200, seed=2)
    assert not torch.equal(model.state_dict()['conv1.weight'], sd['conv1.weight'])
    report = load_pretrained(model, path, arch='resnet18')
    _assert_same(model, sd)
    assert report['loaded'] == len(sd) and report['missing'] == [] and report['unexpected'] == []
    assert report['head_reinitialised'] is False
    assert 'loaded 122/122' in capsys.readouterr().out


def test_load_checkpoint_dict(tmp_path, r18_file):
    _, sd = r18_file
    model = _seeded('resnet18', 200, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # optimizer state now holds momentum tensors
    ckpt = {
        'model': sd,
        'optimizer': opt.state_dict(),
        'epoch': 90,
        'args': {'usenet': 'resnet18', 'numof_classes': 200},
    }
    path = _save(ckpt, tmp_path / 'checkpoint.pth')
    state, meta = read_state_dict(path)
    assert set(state) == set(sd)
    assert meta == {'epoch': 90, 'args': {'usenet': 'resnet18', 'numof_classes': 200}}
    fresh = _seeded('resnet18', 200, seed=4)
    report = load_pretrained(fresh, path, verbose=False)
    _assert_same(fresh, sd)
    assert report['meta']['epoch'] == 90
    fresh2 = _seeded('resnet18', 200, seed=5)
    load_pretrained(fresh2, ckpt, verbose=False)  # an in-memory checkpoint works too
    _assert_same(fresh2, sd)


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', 'module._orig_mod.', '_orig_mod.module.'])
@pytest.mark.parametrize('as_checkpoint', [False, True])
def test_load_prefixed_keys(tmp_path, r18_file, prefix, as_checkpoint):
    _, sd = r18_file
    prefixed = {prefix + k: v for k, v in sd.items()}
    obj = {'model': prefixed, 'epoch': 1} if as_checkpoint else prefixed
    path = _save(obj, tmp_path / 'w.pth')
    assert set(read_state_dict(path)[0]) == set(sd)
    model = _seeded('resnet18', 200, seed=6)
    report = load_pretrained(model, path, verbose=False)
    _assert_same(model, sd)
    assert report['unexpected'] == [] and report['missing'] == []


def test_load_from_real_wrappers_and_into_wrapped_model(tmp_path, r18_file):
    _, sd = r18_file
    src = _seeded('resnet18', 200, seed=7)
    src.load_state_dict(sd)
    averaged = torch.optim.swa_utils.AveragedModel(src)  # keys 'module.*' plus 'n_averaged'
    for wrapped in (nn.DataParallel(src), averaged):
        path = _save(wrapped.state_dict(), tmp_path / 'wrapped.pth')
        target = nn.DataParallel(_seeded('resnet18', 200, seed=8))
        report = load_pretrained(target, path, verbose=False)
        assert report['unexpected'] == []
        _assert_same(target.module, sd)


@pytest.mark.parametrize('arch', ['resnet18', 'squeezenet1_0', 'mobilenet_v3_small'])
def test_head_size_mismatch_keeps_fresh_head(tmp_path, arch, capsys):
    src = _seeded(arch, 200, seed=9)
    sd = src.state_dict()
    path = _save(sd, tmp_path / f'{arch}.pth')
    assert infer_num_classes(path, arch) == 200
    model = _seeded(arch, 7, seed=10)
    head = head_parameter_names(model)
    fresh_head = {k: model.state_dict()[k].clone() for k in head}
    report = load_pretrained(model, path, arch=arch)
    out = capsys.readouterr().out
    assert report['head_reinitialised'] is True
    assert sorted(report['mismatched']) == sorted(head) and report['missing'] == []
    assert report['loaded'] == len(sd) - len(head)
    _assert_same(model, sd, skip=head)
    for k, v in fresh_head.items():
        assert torch.equal(model.state_dict()[k], v)
    assert 'head re-initialised' in out and '200' in out and '7' in out
    assert head_out_features(model) == 7
    assert _forward(model, 64).shape == (1, 7)


def test_build_model_with_weights_file(r18_file):
    path, sd = r18_file
    model = build_model('resnet18', 10, weights=path)
    _assert_same(model, sd, skip={'fc.weight', 'fc.bias'})
    assert head_out_features(model) == 10


def test_infer_num_classes_errors(r18_file):
    path, sd = r18_file
    assert infer_num_classes(sd, 'resnet18') == 200
    with pytest.raises(UserError, match=r"no 'classifier.weight'.*resnet18"):
        infer_num_classes(path, 'densenet121')


@pytest.mark.parametrize('target', ['densenet121', 'resnet34'])
def test_other_architecture_is_refused_with_guess(r18_file, target):
    path, sd = r18_file
    model = build_model(target, 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"do not fit resnet34|do not fit densenet121") as e:
        load_pretrained(model, path, arch=target)
    assert 'resnet18' in str(e.value) and 'resnet18_epoch90.pth' in str(e.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing loaded


def test_other_architecture_named_by_checkpoint_args(tmp_path, r18_file):
    _, sd = r18_file
    path = _save({'model': sd, 'args': {'usenet': 'resnet18'}}, tmp_path / 'ck.pth')
    with pytest.raises(UserError, match=r"for resnet18 \(according to its args\['usenet'\]\)"):
        load_pretrained(build_model('mobilenet_v2', 7), path)


def test_non_strict_loads_matching_subset(r18_file):
    _, sd = r18_file
    model = build_model('resnet34', 7)
    report = load_pretrained(model, sd, strict=False, verbose=False)
    assert torch.equal(model.state_dict()['layer1.0.conv1.weight'], sd['layer1.0.conv1.weight'])
    assert report['loaded'] == len(sd) - 2 and 'layer1.2.conv1.weight' in report['missing']


# ----------------------------------------------------------------------------------------- unsafe files


@pytest.mark.parametrize('container', ['torch_zip', 'raw_pickle'])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'evil.pth'
    if container == 'torch_zip':
        torch.save({'model': Payload(marker)}, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(Payload(marker), f)
    with pytest.raises(UserError, match=r"refusing to load weights file .*evil\.pth"):
        read_state_dict(path)
    with pytest.raises(UserError, match='evil.pth'):
        load_pretrained(build_model('resnet18', 3), str(path))
    with pytest.raises(UserError):
        build_model('resnet18', 3, weights=str(path))
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    if container == 'torch_zip':
        torch.load(path, weights_only=False)
    else:
        with open(path, 'rb') as f:
            pickle.load(f)
    assert marker.exists()


def test_files_that_are_not_weights(tmp_path):
    cases = {
        'missing.pth': None,
        'garbage.pth': b'this is not a torch file',
        'empty.pth': b'',
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=name):
            read_state_dict(tmp_path / name)
    _save([torch.zeros(2)], tmp_path / 'list.pth')
    with pytest.raises(UserError, match='holds a list'):
        read_state_dict(tmp_path / 'list.pth')
    _save({'epoch': 3, 'args': {}}, tmp_path / 'nomodel.pth')
    with pytest.raises(UserError, match='no model state dict'):
        read_state_dict(tmp_path / 'nomodel.pth')
    _save(nn.Linear(2, 3), tmp_path / 'whole.pth')
    with pytest.raises(UserError, match=r'whole pickled model.*state_dict'):
        read_state_dict(tmp_path / 'whole.pth')


# ------------------------------------------------------------------------------ torchvision ImageNet path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty $TORCH_HOME and no way to download: only the pre-populated cache can serve weights."""
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    monkeypatch.delenv('TORCH_HUB', raising=False)
    downloads = []

    def no_download(url, dst, *args, **kwargs):
        downloads.append(url)
        raise ConnectionError(f"network disabled in tests: {url}")

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    return home, downloads


def _cache_file(home, arch):
    """Where torch hub looks for the DEFAULT weights of ``arch``: $TORCH_HOME/hub/checkpoints/<url basename>.
    The name carries a hash prefix (e.g. resnet18-f37072fd.pth), but torch hub checks it only when it
    downloads, so a file placed there by hand is used as is."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = home / 'hub' / 'checkpoints' / os.path.basename(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_imagenet_weights_from_hub_cache(hub):
    home, downloads = hub
    path = _cache_file(home, 'resnet18')
    assert path.name.startswith('resnet18-')
    sd = _seeded('resnet18', 1000, seed=11).state_dict()
    torch.save(sd, path)
    same = build_model('resnet18', 1000, weights='imagenet')
    _assert_same(same, sd)
    model = build_model('resnet18', 7, weights='DEFAULT')
    _assert_same(model, sd, skip={'fc.weight', 'fc.bias'})
    assert head_out_features(model) == 7 and head_in_features(model) == 512
    assert _forward(model, 64).shape == (1, 7)
    assert downloads == []


def test_imagenet_weights_googlenet_drops_aux(hub):
    home, _ = hub
    src = _seeded('googlenet', 1000, seed=12, aux_logits=True)
    torch.save(src.state_dict(), _cache_file(home, 'googlenet'))
    model = build_model('googlenet', 5, weights='imagenet')
    assert model.aux1 is None and model.aux2 is None
    assert torch.equal(model.state_dict()['conv1.conv.weight'], src.state_dict()['conv1.conv.weight'])
    model.train()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_imagenet_weights_missing_without_network(hub):
    home, downloads = hub
    expected = _cache_file(home, 'resnet18')
    with pytest.raises(UserError, match=str(expected)):
        build_model('resnet18', 7, weights='imagenet')
    assert len(downloads) == 1


def test_imagenet_cache_payload_is_refused(hub, tmp_path):
    home, _ = hub
    marker = tmp_path / 'payload_ran'
    torch.save({'fc.weight': Payload(marker)}, _cache_file(home, 'resnet18'))
    with pytest.raises(UserError, match='cannot be loaded safely'):
        build_model('resnet18', 7, weights='imagenet')
    assert not marker.exists()


def test_unknown_weights_name():
    with pytest.raises(UserError, match='IMAGENET1K_V1'):
        build_model('resnet18', 7, weights='imagnet')


def test_module_docstring_example_names_exist():
    for name in ('build_model', 'load_pretrained'):
        assert name in models.__doc__ and callable(getattr(models, name))
