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

from util.train.datasets import IMAGENET_MEAN, IMAGENET_STD

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
    res = run_script('predict.py', images, '-pw', run / 'ft_resnet18_epoch1.pth', '-o', out, '-nw', '0', check=True)
    rows = read_csv(out)
    assert rows[0] == ['path', 'top1', 'top1_prob', 'top2', 'top2_prob', 'top3', 'top3_prob']  # k capped at 3
    assert [r[0] for r in rows[1:]] == ['a.png', 'b.jpg', 'f.png', 'sub/c.png', 'sub/deeper/d.png', 'sub/e.png']
    for row in rows[1:]:
        probs = expected_probs(run, images / row[0])
        order = np.argsort(-probs)
        assert row[1::2] == [CLASSES[j] for j in order]
        # 6 decimals in the CSV (5e-7), plus float32 kernels that differ by batch shape (predict.py's batch of 6
        # against one image here) and by CPU (~3e-7 on these probabilities): 1e-5; a wrong transform costs ~0.1
        np.testing.assert_allclose([float(p) for p in row[2::2]], probs[order], atol=1e-5)
        assert abs(sum(float(p) for p in row[2::2]) - 1) < 1e-4
    assert 'broken.png' in res.stderr and '6 images labelled' in res.stdout


def predict_in_process(*argv):
    import predict

    return predict.main(predict.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.mark.slow
def test_topk_class_file_and_single_image(run, images, tmp_path):
    names = tmp_path / 'names.txt'
    names.write_text('x\ny\nz\n')
    out = tmp_path / 'p.csv'
    assert (
        predict_in_process(
            images / 'a.png',
            '-pw',
            run / 'ft_resnet18_epoch1.pth',
            '--classes',
            names,
            '-k',
            '1',
            '-o',
            out,
            '-nw',
            '0',
        )
        == 0
    )
    rows = read_csv(out)
    probs = expected_probs(run, images / 'a.png')
    assert rows == [['path', 'top1', 'top1_prob'], ['a.png', 'xyz'[int(np.argmax(probs))], f'{probs.max():.6f}']]


@pytest.mark.slow
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
    assert (
        predict_in_process(
            tmp_path / 'eval', '-pw', run / 'ft_resnet18_epoch1.pth', '-o', tmp_path / 'p.csv', '-nw', '0'
        )
        == 0
    )
    correct = sum(CLASSES[int(np.argmax(p))] == rel.split('/')[0] for rel, p in probs_of.items())
    assert f'top-1 accuracy {100 * correct / 6:.2f}% over 6 images' in capsys.readouterr().out


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_on_a_labelled_folder_matches_scikit_learn(run, tmp_path, capsys):
    """-val DIR with class sub-folders: CSV gains the truth; confusion matrix, per-class precision/recall/F1,
    top-1/top-k and MCC are printed and written, equal to scikit-learn's on the same predictions."""
    skm = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(7)
    truth, probs = [], []
    for c, cls in enumerate(CLASSES):
        (tmp_path / 'val' / cls).mkdir(parents=True)
        for i in range(3):
            path = tmp_path / 'val' / cls / f'{i}.png'
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
            truth.append(c)
            probs.append(expected_probs(run, path))
    out = tmp_path / 'pred.csv'
    assert (
        predict_in_process(
            '-val', tmp_path / 'val', '-pw', run / 'ft_resnet18_epoch1.pth', '-o', out, '-nw', '0', '-k', '2'
        )
        == 0
    )
    pred = [int(np.argmax(p)) for p in probs]
    rows = read_csv(out)
    assert rows[0] == ['path', 'top1', 'top1_prob', 'top2', 'top2_prob', 'truth']
    assert [r[-1] for r in rows[1:]] == [CLASSES[t] for t in truth]
    assert [r[1] for r in rows[1:]] == [CLASSES[p] for p in pred]
    report = json.loads((tmp_path / 'pred_metrics.json').read_text())
    labels = list(range(3))
    assert report['confusion'] == skm.confusion_matrix(truth, pred, labels=labels).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    got = report['per_class']
    assert np.allclose([g['precision'] for g in got], p) and np.allclose([g['recall'] for g in got], r)
    assert np.allclose([g['f1'] for g in got], f) and [g['support'] for g in got] == s.tolist()
    for avg in ('macro', 'weighted'):
        ap, ar, af, _ = skm.precision_recall_fscore_support(truth, pred, average=avg, zero_division=0)
        assert np.allclose([report[avg][k] for k in ('precision', 'recall', 'f1')], [ap, ar, af])
    assert report['mcc'] == pytest.approx(skm.matthews_corrcoef(truth, pred), abs=1e-12)
    assert report['accuracy'] == pytest.approx(skm.accuracy_score(truth, pred))
    assert report['top5_k'] == 2
    assert report['top5'] == pytest.approx(skm.top_k_accuracy_score(truth, np.array(probs), k=2, labels=labels))
    text = capsys.readouterr().out
    assert 'confusion matrix' in text and 'precision' in text and 'Matthews correlation' in text
    conf = read_csv(tmp_path / 'pred_confusion.csv')
    assert conf[0][1:] == CLASSES and [list(map(int, row[1:])) for row in conf[1:]] == report['confusion']
    assert (tmp_path / 'pred_report.txt').read_text() in text


@pytest.mark.filterwarnings('ignore:A single label was found')
def test_metrics_match_scikit_learn_with_absent_classes():
    skm = pytest.importorskip('sklearn.metrics')
    from util.train import metrics

    rng = np.random.default_rng(3)
    for trial in range(20):
        n, k = 5, int(rng.integers(1, 40))
        truth = rng.integers(0, n - 1, k)  # class 4 never true; some never predicted
        ranked = np.argsort(rng.random((k, n)), axis=1)
        ranked[:, 0] = np.where(rng.random(k) < 0.5, truth, ranked[:, 0])
        rep = metrics.classification_report(truth, ranked, [str(i) for i in range(n)])
        pred = ranked[:, 0]
        assert rep['confusion'] == skm.confusion_matrix(truth, pred, labels=list(range(n))).tolist()
        assert rep['mcc'] == pytest.approx(skm.matthews_corrcoef(truth, pred), abs=1e-12)
        p, r, f, _ = skm.precision_recall_fscore_support(truth, pred, labels=list(range(n)), zero_division=0)
        assert np.allclose([c['f1'] for c in rep['per_class']], f)
        assert np.allclose([c['precision'] for c in rep['per_class']], p)
        ap, ar, af, _ = skm.precision_recall_fscore_support(truth, pred, average='macro', zero_division=0)
        assert np.allclose([rep['macro'][m] for m in ('precision', 'recall', 'f1')], [ap, ar, af])
        assert rep['top5'] == pytest.approx(np.mean([t in row[:5] for t, row in zip(truth, ranked)]))


@pytest.mark.slow
def test_positional_and_val_are_one_folder(run, images, tmp_path):
    from util.errors import UserError

    with pytest.raises(UserError, match='give one'):
        predict_in_process(images, '-val', images, '-pw', run / 'ft_resnet18_epoch1.pth', '-o', tmp_path / 'p.csv')
    with pytest.raises(UserError, match='-val DIR'):
        predict_in_process('-pw', run / 'ft_resnet18_epoch1.pth', '-o', tmp_path / 'p.csv')


@pytest.mark.slow
def test_pw_folder_means_its_newest_weights(run, images, tmp_path, capsys):
    out = tmp_path / 'p.csv'
    assert predict_in_process(images / 'a.png', '-pw', run, '-o', out, '-nw', '0') == 0
    assert 'ft_resnet18_epoch1.pth' in capsys.readouterr().err and read_csv(out)[1][0] == 'a.png'


@pytest.mark.slow
@pytest.mark.parametrize(
    'name, record, expect',
    [
        ('resnet18_epoch1.pth', None, "named like pretraining.py's weights"),  # a pretraining weights file copied out
        ('weights.pth', None, 'pretraining (PH regression) weights'),  # any plain state dict: cannot tell
        ('checkpoint.pth', 'finetuning', None),  # a fine-tuning checkpoint records its mode: indices, no doubt
        ('checkpoint.pth', 'pretraining', 'error'),  # a pretraining checkpoint copied out: refused
    ],
)
def test_weights_that_cannot_tell_their_mode_are_warned_about(run, images, tmp_path, capsys, name, record, expect):
    """Without a class list, weights whose file does not record a mode may be regression weights: said so."""
    from util.errors import UserError

    alone = tmp_path / 'alone'
    alone.mkdir()
    state = torch.load(run / 'ft_resnet18_epoch1.pth', weights_only=True)
    if record is not None:
        state = {'model': state, 'epoch': 1, 'mode': record, 'phase': record, 'args': {'label_type': 'histogram'}}
    torch.save(state, alone / name)
    argv = [images / 'a.png', '-pw', alone / name, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32, '-nw', 0]
    out = tmp_path / 'p.csv'
    if expect == 'error':
        with pytest.raises(UserError, match="pretraining weights .*checkpoint's mode says so.*not a classifier"):
            predict_in_process(*argv, '-o', out)
        assert not out.exists()
        return
    assert predict_in_process(*argv, '-o', out) == 0 and read_csv(out)[0][:2] == ['path', 'top1']
    [warning] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning: ')]
    assert warning.startswith(f'warning: no classes.json next to {alone / name} and no --classes')
    if expect is None:
        assert 'pretraining' not in warning
    else:
        assert expect in warning and 'its 3 outputs are label components, not classes' in warning
        assert ("named like" in warning) == (name == 'resnet18_epoch1.pth')
    assert predict_in_process(*argv, '-o', out, '--classes', run / 'classes.json') == 0  # classes given: no doubt
    assert 'warning' not in capsys.readouterr().err
