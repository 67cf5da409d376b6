"""Fine-tune a (pretrained) torchvision CNN on a labelled image folder, or evaluate fine-tuned weights.

Folders are torchvision ImageFolder layouts: ``train/<class>/*.png``. Without -val the validation folder is
the training path with ``train`` replaced by ``val`` (else ``test``).
"""
import argparse
import os
import sys

import numpy as np
from torch import nn

import models
from util import fileio
from util import training as T
from util.errors import UserError, run_cli

EXAMPLES = """examples:
  python finetuning.py -t data/CIFAR100/train -val data/CIFAR100/val -pw weights/XX/resnet50_epoch90.pth -npc 200 -o result -nc 100 -e 90
  python finetuning.py -t data/CIFAR100/train -pw imagenet -u resnet18 -nc 100      # torchvision's ImageNet weights
  python finetuning.py -t data/CIFAR100/train -pw weights/XX/resnet50_epoch90.pth --freeze_encoder   # linear probe
  python finetuning.py --evaluate -val data/CIFAR100/val -pw result/XX/ft_resnet50_epoch90.pth -u resnet50

Outputs go to a new dated folder under -o: args.json, log.jsonl, checkpoint.pth (for --resume),
ft_{usenet}_epoch{E}.pth, curves.png, and the final evaluation (metrics.json, per_class.csv,
confusion_matrix.csv/.png).
"""


def get_args_parser():
    parser = argparse.ArgumentParser(description='Fine-tune a CNN on a labelled image folder (or evaluate it).',
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    T.add_common_args(parser)
    parser.add_argument('--evaluate', action='store_true', help='no training: evaluate the weights given by -pw '
                        '(or --resume) on -val and write the metrics, per-class accuracy and confusion matrix')
    return parser


def resolve_val(args):
    if args.val:
        return args.val
    if args.train:
        head, tail = os.path.split(os.path.normpath(args.train))
        if 'train' in tail:
            for name in ('val', 'test'):
                candidate = os.path.join(head, tail.replace('train', name))
                if os.path.isdir(candidate):
                    return candidate
    raise UserError("no validation folder: give -val DIR (looked for the -t path with 'train' replaced by "
                    "'val' or 'test')")


def build_sets(args, need_train):
    from util.datasets import SafeImageFolder, finetune_transforms
    train_set = None
    if need_train:
        if not args.train:
            raise UserError("give the training folder with -t DIR (class sub-folders of images)")
        train_set = SafeImageFolder(args.train, finetune_transforms(args, True), args.bad_images)
    val_root = resolve_val(args)
    val_set = SafeImageFolder(val_root, finetune_transforms(args, False), 'skip')
    if train_set is not None and val_set.classes != train_set.classes:
        extra = sorted(set(val_set.classes) - set(train_set.classes))
        missing = sorted(set(train_set.classes) - set(val_set.classes))
        raise UserError(f"the classes of {val_root!r} differ from those of {args.train!r}: "
                        f"only in val: {extra[:5]}, only in train: {missing[:5]}")
    classes = val_set.classes
    if args.numof_classes != len(classes):
        if args.numof_classes != 100 or args.evaluate:  # 100 is the default: adapt silently only then
            raise UserError(f"-nc {args.numof_classes} but {val_root!r} has {len(classes)} classes")
        print(f"note: {len(classes)} classes found; using -nc {len(classes)}", flush=True)
        args.numof_classes = len(classes)
    return train_set, val_set, classes


def build_finetune_model(args):
    """The model with a fresh head of -nc outputs, initialised from -pw (ours / imagenet) or at random."""
    pw = args.path2weight
    if pw == 'imagenet':
        model = models.build_model(args.usenet, args.numof_classes, weights='imagenet')
        print(f"initialised from torchvision's ImageNet weights for {args.usenet}", flush=True)
        return model
    model = models.build_model(args.usenet, args.numof_classes)
    if not pw:
        print("WARNING: no -pw given: training from scratch (random initialisation)", file=sys.stderr, flush=True)
        return model
    if not os.path.isfile(pw):
        raise UserError(f"-pw {pw!r}: no such weights file")
    stored = models.infer_num_classes(pw, args.usenet)
    if args.numof_pretrained_classes is not None and args.numof_pretrained_classes != stored:
        raise UserError(f"-npc {args.numof_pretrained_classes} but {pw} has a head of {stored} outputs; "
                        f"drop -npc (it is read from the file)")
    args.numof_pretrained_classes = stored
    report = models.load_pretrained(model, pw, arch=args.usenet, verbose=T.is_main(args))
    print(f"initialised from {pw}: {report['loaded']} tensors loaded, head "
          f"{'re-initialised' if report['head_reinitialised'] else 'kept'}", flush=True)
    return model


def main(args):
    T.check_common_args(args)
    if args.world_size > 1 and 'RANK' not in os.environ and not args.evaluate:
        return T.spawn_or_run(_main, args)
    return _main(args)


def _main(args):
    T.init_distributed(args)
    train_set, val_set, classes = build_sets(args, need_train=not args.evaluate)
    criterion = nn.CrossEntropyLoss()
    if args.evaluate:
        return _evaluate_only(args, val_set, classes, criterion)

    model = build_finetune_model(args)
    params = None
    if args.freeze_encoder:
        head_names = models.head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad = name in head_names
        params = [p for p in model.parameters() if p.requires_grad]
    run_dir, checkpoint = T.setup_run(args, 'fine-tuning')
    if T.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes", flush=True)
    model = T.prepare_model(model, args)
    if args.output_training_images > 0 and T.is_main(args) and checkpoint is None:
        T.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target])

    def evaluate(bare_model, epoch):
        loader = T.make_loader(val_set, args, epoch, shuffle=False, train=False)
        metrics, _ = T.evaluate_classification(bare_model, loader, criterion, args, len(classes))
        return metrics

    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = T.fit(model, criterion, train_set, args, lr=args.lr_fine, task='classification',
                    weights_name=weights_name, evaluate=evaluate, checkpoint=checkpoint, params=params)
    if T.is_main(args):
        write_evaluation(T.unwrap(model), val_set, classes, criterion, args, run_dir)
        try:
            from util.plotting import curves_from_log
            curves_from_log(os.path.join(run_dir, T.LOG_NAME), os.path.join(run_dir, 'curves.png'))
        except Exception as e:  # pictures are a convenience
            print(f"warning: could not draw curves: {e}", file=sys.stderr)
        print(T.final_message(args, records, weights_name), flush=True)
    T.cleanup_distributed(args)
    return 0


def _evaluate_only(args, val_set, classes, criterion):
    if not args.path2weight and not args.resume:
        raise UserError("--evaluate needs the fine-tuned weights: -pw FILE (or --resume checkpoint.pth)")
    model = models.build_model(args.usenet, len(classes))
    source = T.resolve_resume(args.resume) if args.resume else args.path2weight
    report = models.load_pretrained(model, source, arch=args.usenet, verbose=False)
    if report['head_reinitialised']:
        raise UserError(f"{source} has a head of {models.infer_num_classes(source, args.usenet)} outputs but "
                        f"{args.val or 'the validation folder'} has {len(classes)} classes: these are not "
                        f"fine-tuned weights for this dataset")
    args.resume = ''
    run_dir, _ = T.setup_run(args, 'evaluation')
    model = T.prepare_model(model, args)
    metrics = write_evaluation(model, val_set, classes, criterion, args, run_dir)
    print(T.format_metrics(metrics), flush=True)
    return 0


def write_evaluation(model, val_set, classes, criterion, args, run_dir):
    """metrics.json, per_class.csv, confusion_matrix.csv and .png in ``run_dir``; returns the metrics."""
    loader = T.make_loader(val_set, args, 0, shuffle=False, train=False)
    metrics, cm = T.evaluate_classification(model, loader, criterion, args, len(classes))
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.full(len(classes), np.nan), where=cm.sum(1) > 0)
    lines = ['class,images,correct,accuracy'] + [f'{c},{int(cm[i].sum())},{int(cm[i, i])},{100 * per_class[i]:.2f}'
                                                 for i, c in enumerate(classes)]
    fileio.write_text(os.path.join(run_dir, 'per_class.csv'), '\n'.join(lines) + '\n')
    fileio.write_json(os.path.join(run_dir, 'metrics.json'), metrics)
    try:
        from util.plotting import confusion_matrix_csv, confusion_matrix_png
        confusion_matrix_csv(cm, classes, os.path.join(run_dir, 'confusion_matrix.csv'))
        confusion_matrix_png(cm, classes, os.path.join(run_dir, 'confusion_matrix.png'))
    except Exception as e:  # pictures are a convenience; the CSV above already holds the numbers
        print(f"warning: could not draw the confusion matrix: {e}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
