"""Learning modes (``--learning_mode/-lm``), shared by pretraining.py and finetuning.py.

Both scripts parse the same flags and call :func:`main`; they differ only in their default mode
(``pretraining`` / ``finetuning``).  The modes:

* ``pretraining``   regress PH label vectors of images (folder -t, or generated on the fly) with MSE; with
  ``--label_type class``, classify the class folders of -t by cross-entropy instead (the control experiment).
* ``finetuning``    classify the class folders of -t (validation -val) starting from -pw.
* ``combined``      pretraining, then fine-tuning in one run: the PH task on -t2/-v2 (``--ph_train/--ph_val``;
  generated on the fly when -t2 is absent) for ``--epochs_pre`` epochs, then the classes of -t/-val for -e
  epochs, starting from the first phase's weights with the head replaced.  Phase folders ``pretraining/``
  and ``finetuning/`` inside one run folder.
* ``simultaneous``  one labelled folder -t, two heads: cross-entropy on the classes plus ``--ph_weight`` x MSE
  on PH labels computed from the same images.
* ``alternating``   batches alternate between the labelled folder -t (cross-entropy) and PH-labelled images
  (-t2, or generated on the fly; MSE x ``--ph_weight``), one optimiser step each.
* ``evaluation``    no training: evaluate the fine-tuned weights -pw on -val (= finetuning.py --evaluate).

Every log record and checkpoint holds ``mode`` and ``phase``; ``args.json`` holds ``learning_mode``.
Classifiers (modes other than pretraining) write ``ft_{usenet}_epoch{E}.pth`` (a plain state dict of the
classifier alone, which torchvision's constructor with ``num_classes=K`` loads) and ``classes.json`` next to it.
"""
import argparse
import os
import sys

import numpy as np
from torch import nn

import models
from models.two_heads import PHOutput, TwoHeads
from util import datasets, distributed, engine, fileio, runs
from util.data_sources import (DEFAULT_NUM_CLASSES, build_class_pretraining_sets, build_pretraining_sets, build_sets,
                               check_class_layout, class_folder, match_classes, resolve_val)
from util.errors import UserError
from util.two_task import train_alternating_epoch, train_simultaneous_epoch

MODES = ('pretraining', 'finetuning', 'combined', 'simultaneous', 'alternating', 'evaluation')
PHASES = ('pretraining', 'finetuning')          # the sub-folders of a combined run


def run(args):
    """Run the mode ``args.learning_mode`` in this process (the flags already checked by :mod:`util.cli`)."""
    distributed.init_distributed(args)
    args.phase = args.learning_mode
    RUNNERS[args.learning_mode](args)
    distributed.cleanup_distributed(args)
    return 0


def _tags(args, phase):
    return {'mode': args.learning_mode, 'phase': phase}


def phase_args(args, phase, **changes):
    """A copy of ``args`` for one phase (``args.phase`` set), with ``changes`` applied."""
    new = argparse.Namespace(**vars(args))
    new.phase = phase
    for k, v in changes.items():
        setattr(new, k, v)
    return new


# --------------------------------------------------------------------------------------------- models
def build_finetune_model(args, init_state=None, quiet=False):
    """The model with a fresh head of -nc outputs, initialised from ``init_state`` (a state dict, e.g. the
    pretraining phase's model), else from -pw (ours / imagenet), else at random."""
    pw = args.path2weight
    if init_state is not None:
        model, report = models.load_for(args.usenet, init_state, args.numof_classes)
        if distributed.is_main(args):
            print(f"initialised from the pretraining phase: {report['loaded']} tensors loaded, head "
                  f"{'re-initialised' if report['head_reinitialised'] else 'kept'}", flush=True)
        return model
    if pw == 'imagenet':
        model, _ = models.load_for(args.usenet, 'imagenet', args.numof_classes)
        print(f"initialised from torchvision's ImageNet weights for {args.usenet}", flush=True)
        return model
    if not pw:
        model, _ = models.load_for(args.usenet, None, args.numof_classes)
        if not quiet:
            print("WARNING: no -pw given: training from scratch (random initialisation)", file=sys.stderr,
                  flush=True)
        return model
    if not os.path.isfile(pw):
        raise UserError(f"-pw {pw!r}: no such weights file")
    stored = models.infer_num_classes(pw, args.usenet)
    if args.numof_pretrained_classes is not None and args.numof_pretrained_classes != stored:
        raise UserError(f"-npc {args.numof_pretrained_classes} but {pw} has a head of {stored} outputs; "
                        f"drop -npc (it is read from the file)")
    args.numof_pretrained_classes = stored
    model, report = models.load_for(args.usenet, pw, args.numof_classes, verbose=distributed.is_main(args))
    print(f"initialised from {pw}: {report['loaded']} tensors loaded, head "
          f"{'re-initialised' if report['head_reinitialised'] else 'kept'}", flush=True)
    return model


def _pretraining_model(args):
    model, _ = models.load_for(args.usenet, args.path2weight or None, args.numof_classes,
                               verbose=distributed.is_main(args))
    return model


# ---------------------------------------------------------------------------------------------- runners
def run_pretraining(args, run_dir=None, phase='pretraining'):
    """Pretraining (PH regression, or classes with ``--label_type class``); returns (bare model, records)."""
    classes = None
    if args.label_type == 'class':
        train_set, val_set, classes = build_class_pretraining_sets(args)
        what = f"{len(train_set)} training images in {len(classes)} classes from {args.train}"
    else:
        train_set, val_set = build_pretraining_sets(args)
        source = 'generated on the fly' if args.train is None else f'from {args.train}'
        what = f"{len(train_set)} training images {source}; labels: {args.label_type}, dimension {train_set.dim}"
    if distributed.is_main(args):
        print(what + (f"; {len(val_set)} validation images" if val_set is not None else ''), flush=True)

    model = _pretraining_model(args)
    run_dir, checkpoint = runs.setup_dir(args, 'pretraining', run_dir)
    model = engine.prepare_model(model, args)
    task = 'classification' if classes is not None else 'regression'
    criterion = nn.CrossEntropyLoss() if classes is not None else nn.MSELoss()
    if classes is not None and distributed.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)

    if args.output_training_images > 0 and distributed.is_main(args) and checkpoint is None:
        runs.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=(lambda target: classes[target]) if classes is not None else None)

    evaluate = None
    if val_set is not None:
        def evaluate(bare_model, epoch):
            loader = engine.make_loader(val_set, args, epoch, shuffle=False, train=False)
            if classes is not None:
                return engine.evaluate_classification(bare_model, loader, criterion, args, len(classes))[0]
            return engine.evaluate_regression(bare_model, loader, criterion, args)

    weights_name = f'{args.usenet}_epoch{{epoch}}.pth'
    records = engine.fit(model, criterion, train_set, args, lr=args.lr_pre, task=task, weights_name=weights_name,
                    evaluate=evaluate, checkpoint=checkpoint, tags=_tags(args, phase))
    if distributed.is_main(args):
        _pictures(model, run_dir, filters=True)
        print(runs.final_message(args, records, weights_name), flush=True)
    return models.unwrap(model), records


def run_finetuning(args, run_dir=None, phase='finetuning', init_state=None):
    """Fine-tuning on the class folders of -t/-val; returns (bare model, records)."""
    train_set, val_set, classes = build_sets(args, need_train=True)
    model = build_finetune_model(args, init_state, quiet=bool(args.resume))
    params = None
    if args.freeze_encoder:
        head_names = models.head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad = name in head_names
        params = [p for p in model.parameters() if p.requires_grad]
    run_dir, checkpoint = runs.setup_dir(args, 'fine-tuning', run_dir)
    if distributed.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes", flush=True)
    model = engine.prepare_model(model, args)
    if args.output_training_images > 0 and distributed.is_main(args) and checkpoint is None:
        runs.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target])
    criterion = nn.CrossEntropyLoss()

    def evaluate(bare_model, epoch):
        loader = engine.make_loader(val_set, args, epoch, shuffle=False, train=False)
        return engine.evaluate_classification(bare_model, loader, criterion, args, len(classes))[0]

    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = engine.fit(model, criterion, train_set, args, lr=args.lr_fine, task='classification',
                    weights_name=weights_name, evaluate=evaluate, checkpoint=checkpoint, params=params,
                    tags=_tags(args, phase))
    _finish_classifier(args, models.unwrap(model), val_set, classes, run_dir, records, weights_name)
    return models.unwrap(model), records


def _finish_classifier(args, classifier, val_set, classes, run_dir, records, weights_name):
    """Rank 0: the final evaluation files, the curves and the closing line."""
    if not distributed.is_main(args):
        return
    write_evaluation(classifier, val_set, classes, nn.CrossEntropyLoss(), args, run_dir)
    _pictures(None, run_dir, filters=False)
    print(runs.final_message(args, records, weights_name), flush=True)


def run_evaluation(args):
    """Evaluate fine-tuned weights (-pw or --resume) on -val: metrics.json, per_class.csv, confusion matrix."""
    _, val_set, classes = build_sets(args, need_train=False)
    if not args.path2weight and not args.resume:
        raise UserError("--evaluate needs the fine-tuned weights: -pw FILE (or --resume checkpoint.pth)")
    source = runs.resolve_resume(args.resume) if args.resume else args.path2weight
    model, report = models.load_for(args.usenet, source, len(classes))
    if report['head_reinitialised']:
        raise UserError(f"{source} has a head of {report['stored_classes']} outputs but "
                        f"{args.val or 'the validation folder'} has {len(classes)} classes: these are not "
                        f"fine-tuned weights for this dataset")
    args.resume = ''
    run_dir, _ = runs.setup_run(args, 'evaluation')
    model = engine.prepare_model(model, args)
    metrics = write_evaluation(model, val_set, classes, nn.CrossEntropyLoss(), args, run_dir)
    print(engine.format_metrics(metrics), flush=True)
    return metrics


def write_evaluation(model, val_set, classes, criterion, args, run_dir):
    """metrics.json, per_class.csv, confusion_matrix.csv and .png in ``run_dir``; returns the metrics."""
    loader = engine.make_loader(val_set, args, 0, shuffle=False, train=False)
    metrics, cm = engine.evaluate_classification(model, loader, criterion, args, len(classes))
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.full(len(classes), np.nan), where=cm.sum(1) > 0)
    lines = ['class,images,correct,accuracy'] + [f'{c},{int(cm[i].sum())},{int(cm[i, i])},{100 * per_class[i]:.2f}'
                                                 for i, c in enumerate(classes)]
    fileio.write_text(os.path.join(run_dir, 'per_class.csv'), '\n'.join(lines) + '\n')
    fileio.write_json(os.path.join(run_dir, 'metrics.json'), dict(metrics, mode=args.learning_mode))
    try:
        from util.plotting import confusion_matrix_csv, confusion_matrix_png
        confusion_matrix_csv(cm, classes, os.path.join(run_dir, 'confusion_matrix.csv'))
        confusion_matrix_png(cm, classes, os.path.join(run_dir, 'confusion_matrix.png'))
    except Exception as e:  # pictures are a convenience; the CSV above already holds the numbers
        print(f"warning: could not draw the confusion matrix: {e}", file=sys.stderr)
    return metrics


def _pictures(model, run_dir, filters):
    """Loss curves (and first-layer filters); a plotting failure never fails the run."""
    try:
        from util.plotting import curves_from_log, filter_grid
        curves_from_log(os.path.join(run_dir, runs.LOG_NAME), os.path.join(run_dir, 'curves.png'))
        if filters:
            filter_grid(models.unwrap(model), os.path.join(run_dir, 'filters.png'))
    except Exception as e:  # pictures are a convenience
        print(f"warning: could not draw pictures: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- combined
def _combined_folders(args):
    """(top run folder, pretraining checkpoint or None, fine-tuning checkpoint or None) of a combined run:
    a fresh dated folder, or the one --resume names (the top folder, a phase folder or a checkpoint)."""
    if not args.resume:
        top = runs.make_run_dir(args.output, args)
        if distributed.is_main(args):
            fileio.write_json(os.path.join(top, 'args.json'), runs.args_to_dict(args))
        return top, None, None
    top = os.path.abspath(args.resume)
    if os.path.isfile(top):
        top = os.path.dirname(top)
    if os.path.basename(top) in PHASES:
        top = os.path.dirname(top)
    found = [os.path.join(top, p, runs.CHECKPOINT_NAME) for p in PHASES]
    found = [c if os.path.isfile(c) else None for c in found]
    if not any(found):
        raise UserError(f"--resume {args.resume}: no pretraining/{runs.CHECKPOINT_NAME} or finetuning/"
                        f"{runs.CHECKPOINT_NAME} there; pass the folder of a -lm combined run")
    return top, found[0], found[1]


def run_combined(args):
    """Pretraining phase, then fine-tuning from its weights, in ``<run>/pretraining`` and ``<run>/finetuning``."""
    if not args.train:   # the fine-tuning data are checked before the (long) first phase starts
        raise UserError("-lm combined fine-tunes on labelled images: give their class folders with -t DIR "
                        "(the pretraining images, if any, with -t2)")
    check_class_layout(args.train, '-t')
    check_class_layout(resolve_val(args), '-val')
    top, pre_ckpt, ft_ckpt = _combined_folders(args)
    if distributed.is_main(args):
        print(f"combined run in {top}: pretraining for {args.epochs_pre} epochs, then fine-tuning for "
              f"{args.epochs} epochs", flush=True)
    pre = phase_args(args, 'pretraining', epochs=args.epochs_pre, train=args.ph_train, val=args.ph_val,
                     freeze_encoder=False, resume='',
                     numof_classes=DEFAULT_NUM_CLASSES if args.label_type == 'class' else args.ph_dims)
    init_state, done = None, 0
    if ft_ckpt is None:
        state = runs.load_checkpoint(pre_ckpt) if pre_ckpt else None
        if state is not None and int(state['epoch']) >= args.epochs_pre:
            init_state = state['model']
            print(f"pretraining phase already complete ({pre_ckpt}); fine-tuning from it", flush=True)
        else:
            pre.resume = pre_ckpt or ''
            model, records = run_pretraining(pre, os.path.join(top, 'pretraining'), phase='pretraining')
            done = len(records)
            if not records or records[-1]['epoch'] < args.epochs_pre:
                return _stopped(args, top)
            init_state = model.state_dict()
            if args.stop_after > 0 and done >= args.stop_after:
                return _stopped(args, top)
    ft = phase_args(args, 'finetuning', resume=ft_ckpt or '', path2weight=None,
                    stop_after=args.stop_after - done if args.stop_after > 0 else 0)
    _, records = run_finetuning(ft, os.path.join(top, 'finetuning'), phase='finetuning', init_state=init_state)
    if records and records[-1]['epoch'] < args.epochs:
        return _stopped(args, top)
    return None


def _stopped(args, top):
    if distributed.is_main(args):
        print(f"combined run stopped early; continue with -lm combined --resume {top}", flush=True)


# ----------------------------------------------------------------------------------- simultaneous / alternating
def _two_head_model(args):
    model = build_finetune_model(args, quiet=bool(args.resume))
    return TwoHeads(model, args.ph_dims)


def _ph_eval(val_ph, criterion, args):
    def evaluate(bare_model, epoch):
        loader = engine.make_loader(val_ph, args, epoch, shuffle=False, train=False)
        return engine.evaluate_regression(PHOutput(bare_model), loader, criterion, args, prefix='val_ph')
    return evaluate


def _class_eval(val_set, classes, args):
    def evaluate(bare_model, epoch):
        loader = engine.make_loader(val_set, args, epoch, shuffle=False, train=False)
        return engine.evaluate_classification(bare_model.net, loader, nn.CrossEntropyLoss(), args, len(classes))[0]
    return evaluate


def run_simultaneous(args):
    """One labelled folder, two heads: CE on the classes + ph_weight x MSE on PH labels of the same images."""
    from torchvision import transforms
    from util.datasets import ComputedLabels, FolderPH, LabelledPH, finetune_train_parts, finetune_transforms
    from util.vectorise import vectoriser_from_args
    if not args.train:
        raise UserError("-lm simultaneous trains on labelled images: give their class folders with -t DIR")
    computed = ComputedLabels(vectoriser_from_args(args, args.ph_dims), args.filtration, args.gradient)
    spatial, to_tensor = finetune_train_parts(args)
    check_class_layout(args.train, '-t')
    train_set = LabelledPH(args.train, computed, spatial, to_tensor, args.persistence, args.bad_images)
    val_root = resolve_val(args)
    val_set = class_folder(val_root, finetune_transforms(args, False), 'skip', '-val')
    classes = match_classes(args, train_set, val_set, val_root)
    val_spatial = transforms.Compose([transforms.Resize(args.img_size), transforms.CenterCrop(args.crop_size)])
    val_rel = [os.path.relpath(p, val_root).replace(os.sep, '/') for p, _ in val_set.samples]
    val_ph = FolderPH(val_root, val_rel, computed, val_spatial, transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)]), 'pre', bad_images='skip')

    model = _two_head_model(args)
    run_dir, checkpoint = runs.setup_dir(args, 'simultaneous')
    if distributed.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        print(f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes; PH labels "
              f"{args.label_type} of dimension {args.ph_dims}, weight {args.ph_weight}", flush=True)
    if args.output_training_images > 0 and distributed.is_main(args) and checkpoint is None:
        runs.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target[0]])
    model = engine.prepare_model(model, args)

    def train_epoch(m, optimizer, epoch):
        loader = engine.make_loader(train_set, args, epoch, shuffle=True, train=True)
        return train_simultaneous_epoch(m, loader, optimizer, epoch, args)

    class_eval, ph_eval = _class_eval(val_set, classes, args), _ph_eval(val_ph, nn.MSELoss(), args)
    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = engine.fit(model, None, None, args, lr=args.lr_fine, task='classification', weights_name=weights_name,
                    evaluate=lambda m, e: {**class_eval(m, e), **ph_eval(m, e)}, checkpoint=checkpoint,
                    train_epoch=train_epoch, tags=_tags(args, 'simultaneous'), export=lambda m: m.net)
    _finish_classifier(args, models.unwrap(model).net, val_set, classes, run_dir, records, weights_name)


def run_alternating(args):
    """Batches alternate between the labelled folder -t (CE) and PH-labelled images (-t2 or generated; MSE)."""
    train_set, val_set, classes = build_sets(args, need_train=True)
    ph_args = phase_args(args, 'alternating', train=args.ph_train, val=args.ph_val, numof_classes=args.ph_dims)
    ph_train, ph_val = build_pretraining_sets(ph_args)

    model = _two_head_model(args)
    run_dir, checkpoint = runs.setup_dir(args, 'alternating')
    if distributed.is_main(args):
        fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        source = 'generated on the fly' if args.ph_train is None else f'from {args.ph_train}'
        print(f"{len(train_set)} labelled training / {len(val_set)} validation images, {len(classes)} classes; "
              f"{len(ph_train)} PH images {source} (labels {args.label_type}, dimension {args.ph_dims}, "
              f"weight {args.ph_weight})", flush=True)
    if args.output_training_images > 0 and distributed.is_main(args) and checkpoint is None:
        runs.save_sample_grid(train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'),
                           titles=lambda target: classes[target])
    model = engine.prepare_model(model, args)

    def train_epoch(m, optimizer, epoch):
        if hasattr(ph_train, 'set_epoch'):
            ph_train.set_epoch(epoch - 1)
        class_loader = engine.make_loader(train_set, args, epoch, shuffle=True, train=True)
        return train_alternating_epoch(m, class_loader, lambda: engine.make_loader(ph_train, args, epoch),
                                       optimizer, epoch, args)

    class_eval = _class_eval(val_set, classes, args)
    ph_eval = _ph_eval(ph_val, nn.MSELoss(), args) if ph_val is not None else (lambda m, e: {})
    weights_name = f'ft_{args.usenet}_epoch{{epoch}}.pth'
    records = engine.fit(model, None, None, args, lr=args.lr_fine, task='classification', weights_name=weights_name,
                    evaluate=lambda m, e: {**class_eval(m, e), **ph_eval(m, e)}, checkpoint=checkpoint,
                    train_epoch=train_epoch, tags=_tags(args, 'alternating'), export=lambda m: m.net)
    _finish_classifier(args, models.unwrap(model).net, val_set, classes, run_dir, records, weights_name)


def _run_pretraining_mode(args):
    run_pretraining(args)


def _run_finetuning_mode(args):
    run_finetuning(args)


RUNNERS = {'pretraining': _run_pretraining_mode, 'finetuning': _run_finetuning_mode, 'combined': run_combined,
           'simultaneous': run_simultaneous, 'alternating': run_alternating, 'evaluation': run_evaluation}


