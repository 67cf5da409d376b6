"""Label new images with fine-tuned weights: one CSV row per image with its top-k classes and probabilities.

    python predict.py photos -pw result/XX/ft_resnet50_epoch90.pth -o predictions.csv

reads every image below ``photos`` (recursively; a single image file works too), resizes it to --img_size and
centre-crops it to --crop_size as fine-tuning validates, and writes ``predictions.csv`` with the columns
``path,top1,top1_prob,top2,top2_prob,...`` (``path`` relative to the folder, probabilities from the softmax).
Class names come from ``classes.json``, which finetuning.py writes next to the weights (or --classes);
the architecture and image sizes default to those in the ``args.json`` of the same run.
Images that cannot be decoded are named on stderr and left out of the CSV.
"""

import argparse
import csv
import io
import json
import os
import re
import sys

from util.cli.strict_args import PREDICT_FLAGS, StrictArgumentParser
from util.errors import BadImageError, UserError, run_cli
from util.io import fileio

DEFAULTS = {'usenet': 'resnet50', 'img_size': 256, 'crop_size': 224}


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        refuse=PREDICT_FLAGS,
        description='Predict the classes of images with weights fine-tuned by finetuning.py (a CSV of the '
        'top-k classes and their probabilities per image).',
        epilog='examples:\n'
        '  python predict.py photos -pw result/XX/ft_resnet50_epoch90.pth\n'
        '  python predict.py photos -pw ft.pth --classes names.txt -u resnet18 --img_size 40 '
        '--crop_size 32 --topk 3 -o out.csv\n',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        'images',
        nargs='?',
        default=None,
        help='folder of images (searched recursively) or one image file; when the folder has '
        'sub-folders named after the classes, they are the ground truth and a report is written',
    )
    p.add_argument(
        '--val', '-val', default=None, metavar='DIR', help="the same as the folder argument (the original's name)"
    )
    p.add_argument(
        '--path2weight',
        '-pw',
        required=True,
        help='fine-tuned weights (ft_{usenet}_epoch{E}.pth, or the checkpoint.pth of a fine-tuning run)',
    )
    p.add_argument(
        '--classes',
        default=None,
        help='class names: a JSON list (classes.json) or a text file with '
        'one name per line, in the order of the outputs (default: classes.json next to -pw; '
        'without one, the class indices)',
    )
    p.add_argument('--output', '-o', default='predictions.csv', help='CSV file to write (default: %(default)s)')
    p.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an existing -o file that is not a CSV of '
        'an earlier prediction (never an input image, the weights or the class names) (default: off)',
    )
    p.add_argument(
        '--topk',
        '-k',
        default=5,
        type=int,
        help='classes per image, at most the number of classes (default: %(default)s)',
    )
    p.add_argument(
        '--usenet',
        '-u',
        default=None,
        help="architecture, torchvision's or timm:NAME (default: the run's args.json next to -pw, else resnet50)",
    )
    p.add_argument(
        '--img_size',
        default=None,
        type=int,
        help="images are resized to this first (default: the run's args.json, else 256)",
    )
    p.add_argument(
        '--crop_size',
        default=None,
        type=int,
        help="then centre-cropped to this (default: the run's args.json, else 224)",
    )
    p.add_argument('--batch_size', '-b', default=64, type=int, help='images per batch (default: %(default)s)')
    p.add_argument('--num_workers', '-nw', default=2, type=int, help='data loader processes (default: %(default)s)')
    fileio.add_max_pixels_arg(p)
    p.add_argument('--device', default=None, help="'cuda', 'cpu', ... (default: cuda when available)")
    from util.cli.compat import add_aliases

    add_aliases(p, {'-is': 'img_size', '-cs': 'crop_size', '-j': 'num_workers'})  # the original's names
    return p


def run_settings(weights_path):
    """The ``args.json`` of the run that wrote ``weights_path`` (as a dict), or {}."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), 'args.json')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def fill_defaults(args):
    """Set --usenet/--img_size/--crop_size left unset from the run's args.json, else :data:`DEFAULTS`."""
    stored = run_settings(args.path2weight)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            value = stored.get(key)
            setattr(args, key, value if isinstance(value, type(default)) else default)
    return args


def _untold_warning(weights, num_outputs):
    """The warning for weights that neither a class list nor a training record identifies as a classifier."""
    name = os.path.basename(weights)
    hint = (
        f" ({name} is named like pretraining.py's weights; fine-tuned ones are ft_*.pth)"
        if re.fullmatch(r'.+_epoch\d+\.pth', name) and not name.startswith('ft_')
        else ''
    )
    return (
        f"warning: no classes.json next to {weights} and no --classes: writing class indices; nothing in the file "
        f"says it is a classifier: if it holds pretraining (PH regression) weights{hint}, its {num_outputs} outputs "
        "are label components, not classes, and these predictions mean nothing (fine-tune it first)"
    )


def class_names(args, num_outputs, told=False):
    """The class names for a head of ``num_outputs``: --classes, classes.json next to -pw, or the indices.

    ``told``: the weights file records the mode that trained it (a checkpoint), so it is known to be no
    pretraining (regression) model; otherwise indices come with a warning that it may be one."""
    from util.train.runs import read_classes

    path = args.classes
    if path is None:
        candidate = os.path.join(os.path.dirname(os.path.abspath(args.path2weight)), 'classes.json')
        if os.path.isfile(candidate):
            path = candidate
    if path is None:
        print(
            f"warning: no classes.json next to {args.path2weight} and no --classes: writing class indices"
            if told
            else _untold_warning(args.path2weight, num_outputs),
            file=sys.stderr,
            flush=True,
        )
        return [str(i) for i in range(num_outputs)]
    names = read_classes(path)
    if len(names) != num_outputs:
        raise UserError(
            f"{path} names {len(names)} classes but the weights {args.path2weight} have "
            f"{num_outputs} outputs; give the class names of that run with --classes"
        )
    beside = os.path.join(os.path.dirname(os.path.abspath(args.path2weight)), 'classes.json')
    if args.classes is not None and os.path.isfile(beside) and os.path.realpath(beside) != os.path.realpath(path):
        recorded = {n: i for i, n in enumerate(read_classes(beside))}
        moved = [(n, i, recorded[n]) for i, n in enumerate(names) if n in recorded and recorded[n] != i]
        if moved:  # the run's own class names in another order would relabel the predictions (other names: a renaming)
            name, ours, theirs = moved[0]
            raise UserError(
                f"--classes {path} names {name!r} as output {ours} but {beside} of the run that wrote the weights as "
                f"output {theirs}; the outputs follow classes.json: drop --classes, or list the names in its order"
            )
    return names


def load_classifier(args):
    """(model in eval mode on args.device, class names) from -pw (a plain state dict or a checkpoint)."""
    import models
    from util.train.runs import regression_weights

    # also a two-head (simultaneous) file; a ViT is built for the --crop_size images it gets
    model, report = models.load_for(args.usenet, args.path2weight, input_size=args.crop_size)
    regression = regression_weights(args.path2weight, report['meta'])
    if regression:
        raise UserError(
            f"-pw {args.path2weight} holds {regression}, not a classifier; fine-tune them first "
            "(finetuning.py -pw FILE ...) and predict with the ft_*.pth weights that writes"
        )
    meta = report['meta'] or {}
    names = class_names(args, report['num_classes'], told=bool(meta.get('mode') or meta.get('phase')))
    return model.to(args.device).eval(), names


class ImageList:
    """Dataset of image files: ``(tensor [3, crop, crop], index)``, or None (warned) for an undecodable file."""

    def __init__(self, paths, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from util.io.fileio import load_image

        try:
            image = load_image(self.paths[index], 'RGB')
        except BadImageError as e:
            print(f"warning: skipped {e}", file=sys.stderr, flush=True)
            return None
        return self.transform(image), index


def list_inputs(target):
    """(root, relative paths) of the images to label: the folder's images (recursive) or the one file."""
    from util.io import fileio

    if os.path.isfile(target):
        return os.path.dirname(target) or '.', [os.path.basename(target)]
    fileio.require_dir(target, 'image folder', 'IMAGES')
    rel = fileio.list_images(target)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {target!r}")
    return target, rel


def check_output(args, root, rel):
    """Refuse an -o that is a folder, an input (image, weights, class names) or a file we did not write."""
    out = args.output
    if os.path.isdir(out):
        raise UserError(
            f"-o {out!r} is a folder; give the CSV file to write, e.g. -o {os.path.join(out, 'predictions.csv')}"
        )
    if not os.path.exists(out):
        return
    real = os.path.realpath(out)
    inputs = [(args.path2weight, '-pw weights'), (args.classes, '--classes file')]
    inputs += [(os.path.join(root, r), 'input image') for r in rel]
    for path, what in inputs:
        if path is not None and os.path.exists(path) and os.path.realpath(path) == real:
            raise UserError(f"-o {out!r} is the {what}; choose another output file")
    try:
        with open(out, encoding='utf-8', newline='') as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = []
    if header[:3] != ['path', 'top1', 'top1_prob'] and not args.overwrite:
        raise UserError(
            f"-o {out!r} exists and is not a CSV of an earlier prediction; choose another file, or "
            "give --overwrite to replace it"
        )


def predict(model, dataset, args, k):
    """{index: (top-k class indices, top-k probabilities)} for the decodable images of ``dataset``."""
    import torch
    from tqdm import tqdm

    from util.train.loaders import collate_skip_bad

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers, collate_fn=collate_skip_bad
    )
    results = {}
    with torch.no_grad():
        for inputs, indices, _ in tqdm(loader, desc='predict', unit='batch', file=sys.stderr, dynamic_ncols=True):
            if inputs is None:
                continue
            probs = torch.softmax(model(inputs.to(args.device)).float(), dim=1)
            top = probs.topk(k, dim=1)
            for i, idx, p in zip(indices.tolist(), top.indices.cpu().tolist(), top.values.cpu().tolist()):
                results[i] = (idx, p)
    return results


def ground_truth(rel, names):
    """{index: class index} when every image lies in a sub-folder named after a class, else None."""
    where = {n: i for i, n in enumerate(names)}
    top = [r.split('/', 1)[0] if '/' in r else None for r in rel]
    if not rel or any(t not in where for t in top):
        return None
    return {i: where[t] for i, t in enumerate(top)}


def report_paths(output):
    """(report text, confusion matrix CSV, metrics JSON) paths written next to the predictions CSV."""
    stem = os.path.splitext(output)[0]
    return stem + '_report.txt', stem + '_confusion.csv', stem + '_metrics.json'


def write_report(output, names, truth, ranked):
    """Print and write the classification report of the labelled images (see :mod:`util.train.metrics`)."""
    from util.io import fileio
    from util.train import metrics

    report = metrics.classification_report(truth, ranked, names)
    text = metrics.format_report(report)
    txt, conf, js = report_paths(output)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['truth \\ predicted'] + list(names))
    for n, row in zip(names, report['confusion']):
        writer.writerow([n] + row)
    fileio.write_text(conf, buffer.getvalue())
    fileio.write_text(txt, text)
    fileio.write_text(js, json.dumps(report, indent=1) + '\n')
    print(
        f"sub-folders named after the classes: top-1 accuracy {100.0 * report['accuracy']:.2f}% over "
        f"{report['n']} images\n" + text + f"report: {txt}, {conf}, {js}",
        flush=True,
    )
    return report


def main(args):
    from util.io import fileio

    if args.topk < 1:
        raise UserError(f"--topk must be at least 1 (got {args.topk})")
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch_size must be at least 1 and --num_workers at least 0")
    if os.path.isdir(args.path2weight):  # the original's -pw FOLDER: its newest weights file
        from util.cli.compat import newest_weights

        folder, args.path2weight = args.path2weight, newest_weights(args.path2weight)
        print(f"-pw {folder}: using its newest weights file {args.path2weight}", file=sys.stderr, flush=True)
    if not os.path.isfile(args.path2weight):
        raise UserError(f"-pw {args.path2weight!r}: no such weights file")
    fileio.set_max_pixels(args.max_pixels)
    if (args.images is None) == (args.val is None):
        raise UserError(
            "give the image folder once: as the first argument or as -val DIR"
            if args.images is None
            else f"two image folders given ({args.images!r} and -val {args.val!r}); give one"
        )
    args.images = args.images or args.val
    root, rel = list_inputs(args.images)  # input errors are reported before torch is imported (seconds)
    check_output(args, root, rel)
    import torch
    from torchvision import transforms

    from util.train.datasets import IMAGENET_MEAN, IMAGENET_STD

    fill_defaults(args)
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model, names = load_classifier(args)
    k = min(args.topk, len(names))
    bilinear = transforms.InterpolationMode.BILINEAR
    transform = transforms.Compose(
        [
            transforms.Resize(args.img_size, interpolation=bilinear),
            transforms.CenterCrop(args.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    results = predict(model, ImageList([os.path.join(root, r) for r in rel], transform), args, k)

    truth = ground_truth(rel, names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(
        ['path'] + [c for j in range(1, k + 1) for c in (f'top{j}', f'top{j}_prob')] + (['truth'] if truth else [])
    )
    for i, path in enumerate(rel):
        if i in results:
            idx, p = results[i]
            writer.writerow(
                [path]
                + [v for c, q in zip(idx, p) for v in (names[c], f'{q:.6f}')]
                + ([names[truth[i]]] if truth else [])
            )
    out_dir = os.path.dirname(os.path.abspath(args.output))
    fileio.ensure_dir(out_dir, 'output folder')
    fileio.write_text(args.output, buffer.getvalue())

    bad = [rel[i] for i in range(len(rel)) if i not in results]
    print(f"{len(results)} images labelled with {len(names)} classes (top {k}) -> {args.output}", flush=True)
    if truth and results:
        write_report(args.output, names, [truth[i] for i in sorted(results)], [results[i][0] for i in sorted(results)])
    if bad:
        print(
            f"{len(bad)} image(s) could not be read and are not in the CSV: "
            + ', '.join(bad[:10])
            + (' ...' if len(bad) > 10 else ''),
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
