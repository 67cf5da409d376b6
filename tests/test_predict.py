"""predict.py: CSV of top-k classes and probabilities, equal to the model's own softmax; class names, defaults
from the run's args.json, recursion, bad images, and refused mismatches."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms as TV

from util.datasets import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ['cat', 'dog', 'emu']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A fine-tuning run folder as finetuning.py leaves it: weights, classes.json, args.json."""
    d = tmp_path_factory.mktemp('run')
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=3)
    torch.save(model.state_dict(), d / 'ft_resnet18_epoch1.pth')
    (d / 'classes.json').write_text(json.dumps(CLASSES))
    (d / 'args.json').write_text(json.dumps({'usenet': 'resnet18', 'img_size': 40, 'crop_size': 32}))
    return d


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Six images in nested folders (one greyscale, one not square) and one undecodable file."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for i, rel in enumerate(['a.png', 'b.jpg', 'sub/c.png', 'sub/deeper/d.png', 'sub/e.png', 'f.png']):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (40, 40) if i == 4 else ((50, 40, 3) if i == 5 else (40, 40, 3))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    (root / 'sub' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 10)
    return root


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.reader(f))


def expected_probs(run, path):
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(run / 'ft_resnet18_epoch1.pth', weights_only=True))
    tf = TV.Compose([TV.Resize(40), TV.CenterCrop(32), TV.ToTensor(), TV.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        return torch.softmax(model.eval()(tf(Image.open(path).convert('RGB'))[None]), 1)[0].numpy()


def test_csv_is_the_models_own_softmax(run, images, run_script, tmp_path):
    out = tmp_path / 'out' / 'pred.csv'
    res = run_script('predict.py', images, '-pw', run / 'ft_resnet18_epoch1.pth', '-o', out, '-nw', '0',
                     check=True)
    rows = read_csv(out)
    assert rows[0] == ['path', 'top1', 'top1_prob', 'top2', 'top2_prob', 'top3', 'top3_prob']  # k capped at 3
    assert [r[0] for r in rows[1:]] == ['a.png', 'b.jpg', 'f.png', 'sub/c.png', 'sub/deeper/d.png', 'sub/e.png']
    for row in rows[1:]:
        probs = expected_probs(run, images / row[0])
        order = np.argsort(-probs)
        assert row[1::2] == [CLASSES[j] for j in order]
        np.testing.assert_allclose([float(p) for p in row[2::2]], probs[order], atol=2e-6)
        assert abs(sum(float(p) for p in row[2::2]) - 1) < 1e-4
    assert 'broken.png' in res.stderr and '6 images labelled' in res.stdout


def predict_in_process(*argv):
    import predict
    return predict.main(predict.get_args_parser().parse_args([str(a) for a in argv]))


def test_topk_class_file_and_single_image(run, images, tmp_path):
    names = tmp_path / 'names.txt'
    names.write_text('x\ny\nz\n')
    out = tmp_path / 'p.csv'
    assert predict_in_process(images / 'a.png', '-pw', run / 'ft_resnet18_epoch1.pth', '--classes', names, '-k', '1',
                              '-o', out, '-nw', '0') == 0
    rows = read_csv(out)
    probs = expected_probs(run, images / 'a.png')
    assert rows == [['path', 'top1', 'top1_prob'], ['a.png', 'xyz'[int(np.argmax(probs))], f'{probs.max():.6f}']]


def test_accuracy_from_class_named_folders(run, tmp_path, capsys):
    """Images in sub-folders named after the classes: the top-1 accuracy against them is printed."""
    probs_of = {}
    rng = np.random.default_rng(1)
    for cls in CLASSES:
        (tmp_path / 'eval' / cls).mkdir(parents=True)
        for i in range(2):
            path = tmp_path / 'eval' / cls / f'{i}.png'
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
            probs_of[f'{cls}/{i}.png'] = expected_probs(run, path)
    assert predict_in_process(tmp_path / 'eval', '-pw', run / 'ft_resnet18_epoch1.pth', '-o', tmp_path / 'p.csv',
                              '-nw', '0') == 0
    correct = sum(CLASSES[int(np.argmax(p))] == rel.split('/')[0] for rel, p in probs_of.items())
    assert f'top-1 accuracy {100 * correct / 6:.2f}% over 6 images' in capsys.readouterr().out


@pytest.mark.parametrize('case', ['class_count', 'no_weights', 'other_arch', 'no_images'])
def test_refused(case, run, images, tmp_path):
    from util.errors import UserError
    args = [images, '-pw', run / 'ft_resnet18_epoch1.pth', '-o', tmp_path / 'p.csv', '-nw', '0']
    if case == 'class_count':
        (tmp_path / 'two.json').write_text('["a", "b"]')
        args += ['--classes', tmp_path / 'two.json']
        expect = '2 classes'
    elif case == 'no_weights':
        args[2] = tmp_path / 'none.pth'
        expect = 'no such weights file'
    elif case == 'other_arch':
        args += ['-u', 'mobilenet_v3_small']
        expect = 'resnet18'
    else:
        (tmp_path / 'empty').mkdir()
        args[0] = tmp_path / 'empty'
        expect = 'no images'
    with pytest.raises(UserError, match=expect):
        predict_in_process(*args)
    assert not os.path.exists(tmp_path / 'p.csv')


def test_bad_input_is_one_line(run, run_script, tmp_path):
    res = run_script('predict.py', tmp_path / 'missing', '-pw', run / 'ft_resnet18_epoch1.pth', check=False)
    assert res.returncode == 2 and res.stderr.startswith('error:') and 'does not exist' in res.stderr
    assert 'Traceback' not in res.stderr
