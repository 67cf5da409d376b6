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
import dataclasses
import os
import sys

from torch import nn

import models
from models.two_heads import PHOutput, TwoHeads
from util.cli.build import data_config, resolve_num_classes
from util.errors import UserError
from util.io import fileio
from util.train import data_sources, distributed, engine, label_sources, runs
from util.train.data_sources import build_sets, check_class_layout, resolve_val
from util.train.reports import pictures, write_evaluation
from util.train.two_task import train_alternating_epoch, train_simultaneous_epoch

MODES = ('pretraining', 'finetuning', 'combined', 'simultaneous', 'alternating', 'evaluation')
PHASES = ('pretraining', 'finetuning')  # the sub-folders of a combined run


def build_pretraining_sets(args):
    """The PH-labelled (train, val or None) datasets the flags select (pretraining.py's data modes), the label
    dimension -nc; see :func:`util.train.data_sources.build_pretraining_sets`."""
    return data_sources.build_pretraining_sets(data_config(args), resolve_num_classes(args))


def _class_sets(args, need_train):
    """:func:`util.train.data_sources.build_sets` of the flags, -nc resolved; (train or None, val, classes)."""
    data = data_config(args)
    train_set, val_set, classes = build_sets(data, need_train)
    resolve_num_classes(args, classes, resolve_val(data))
    return train_set, val_set, classes


def run(args, cfg):
    """Run the mode ``args.learning_mode`` in this process: the flags (checked by :mod:`util.cli.flags`) name the
    data and files, ``cfg`` (:class:`util.config.TrainConfig`, built from them by the CLI) says how to train."""
    distributed.init_distributed(cfg)
    args.phase = args.learning_mode
    RUNNERS[args.learning_mode](args, cfg)
    distributed.cleanup_distributed(cfg)
    return 0


def _tags(args, phase):
    return {'mode': args.learning_mode, 'phase': phase}


def _settings(args, cfg):
    """What args.json and checkpoints record: the flags and the device set-up found at start."""
    return dict(
        vars(args),
        device=cfg.device,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        rank=cfg.rank,
        world_size=cfg.world_size,
        local_rank=cfg.local_rank,
        distributed=cfg.distributed,
    )


def open_run(args, cfg, kind, run_dir=None):
    """(run_dir, checkpoint or None): the folder ``--resume`` names (refusing a checkpoint of another mode),
    else ``run_dir`` (created), else a fresh dated folder under -o; records the settings there."""
    checkpoint = None
    if args.resume:
        run_dir, checkpoint = runs.open_checkpoint(args.resume, kind, args.usenet)
        if checkpoint.get('mode') not in (None, args.learning_mode):
            raise UserError(
                f"--resume {args.resume}: that run used -lm {checkpoint['mode']}, not -lm {args.learning_mode}"
            )
        runs.check_resume(run_dir, checkpoint, _settings(args, cfg))
    elif run_dir is None:
        run_dir = runs.make_run_dir(args.output, cfg)
    elif distributed.is_main(cfg):
        fileio.ensure_dir(run_dir, 'run folder')
    args.run_dir = run_dir
    if distributed.is_main(cfg):
        runs.write_settings(run_dir, _settings(args, cfg), checkpoint)
    return run_dir, checkpoint


def _resumed_epoch(checkpoint):
    return None if checkpoint is None else int(checkpoint['epoch'])


def _start(args, cfg, kind, run_dir, train_set, classes, message=None, titles=None):
    """Open the run folder, and on rank 0 write classes.json, say ``message`` and save the picture of the
    first training samples (-oti) of a fresh run. Returns (run_dir, checkpoint or None)."""
    run_dir, checkpoint = open_run(args, cfg, kind, run_dir)
    if distributed.is_main(cfg):
        if classes is not None:
            fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        if message:
            print(message, flush=True)
        if args.output_training_images > 0 and checkpoint is None:
            runs.save_sample_grid(
                train_set, args.output_training_images, os.path.join(run_dir, 'training_samples.png'), titles=titles
            )
    return run_dir, checkpoint


def _fit(model, criterion, train_set, args, cfg, run_dir, phase, **kw):
    """:func:`util.train.engine.fit` with this run's folder, tags and checkpoint record."""
    tags = _tags(args, phase)
    meta = {'args': runs.jsonable(_settings(args, cfg)), 'arch': args.usenet, 'num_outputs': args.numof_classes}
    return engine.fit(model, criterion, train_set, cfg, run_dir=run_dir, tags=tags, meta=meta, **kw)


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
    pretraining phase's model), else from -pw (ours / imagenet), else at random. -nc not given (None): see
    :func:`util.cli.build.resolve_num_classes`."""
    resolve_num_classes(args)
    pw = args.path2weight
    if init_state is not None:
        model, report = models.load_for(args.usenet, init_state, args.numof_classes, input_size=args.crop_size)
        if distributed.is_main_process():
            print(
                f"initialised from the pretraining phase: {report['loaded']} tensors loaded, head "
                f"{'re-initialised' if report['head_reinitialised'] else 'kept'}",
                flush=True,
            )
        return model
    if pw == 'imagenet':
        model, _ = models.load_for(args.usenet, 'imagenet', args.numof_classes, input_size=args.crop_size)
        print(f"initialised from torchvision's ImageNet weights for {args.usenet}", flush=True)
        return model
    if not pw:
        model, _ = models.load_for(args.usenet, None, args.numof_classes, input_size=args.crop_size)
        if not quiet:
            print("WARNING: no -pw given: training from scratch (random initialisation)", file=sys.stderr, flush=True)
        return model
    if not os.path.isfile(pw):
        raise UserError(f"-pw {pw!r}: no such weights file")
    stored = models.infer_num_classes(pw, args.usenet)
    if args.numof_pretrained_classes is not None and args.numof_pretrained_classes != stored:
        raise UserError(
            f"-npc {args.numof_pretrained_classes} but {pw} has a head of {stored} outputs; "
            f"drop -npc (it is read from the file)"
        )
    args.numof_pretrained_classes = stored
    model, report = models.load_for(
        args.usenet, pw, args.numof_classes, verbose=distributed.is_main_process(), input_size=args.crop_size
    )
    print(
        f"initialised from {pw}: {report['loaded']} tensors loaded, head "
        f"{'re-initialised' if report['head_reinitialised'] else 'kept'}",
        flush=True,
    )
    return model


def _pretraining_model(args):
    model, _ = models.load_for(
        args.usenet,
        args.path2weight or None,
        args.numof_classes,
        verbose=distributed.is_main_process(),
        input_size=args.crop_size,
    )
    return model


# ---------------------------------------------------------------------------------------------- runners
def run_pretraining(args, cfg, run_dir=None, phase='pretraining'):
    """Pretraining (PH regression, or classes with ``--label_type class``); returns (bare model, records)."""
    classes = None
    if args.label_type == 'class':
        data = data_config(args)
        train_set, val_set, classes = data_sources.build_class_pretraining_sets(data)
        resolve_num_classes(args, classes, resolve_val(data, required=False) or data.train)
        what = f"{len(train_set)} training images in {len(classes)} classes from {args.train}"
    else:
        train_set, val_set = label_sources.pretraining_sets(args)  # PH labels or random targets, --label_norm
        source = 'generated on the fly' if args.train is None else f'from {args.train}'
        what = f"{len(train_set)} training images {source}; labels: {args.label_type}, dimension {train_set.dim}"
    if distributed.is_main(cfg):
        print(what + (f"; {len(val_set)} validation images" if val_set is not None else ''), flush=True)

    model = _pretraining_model(args)
    run_dir, checkpoint = _start(
        args,
        cfg,
        'pretraining',
        run_dir,
        train_set,
        classes,
        titles=(lambda target: classes[target]) if classes is not None else None,
    )
    model = engine.prepare_model(model, cfg)
    task = 'classification' if classes is not None else 'regression'
    criterion = nn.CrossEntropyLoss() if classes is not None else nn.MSELoss()

    evaluate = None
    if val_set is not None:

        def evaluate(bare_model, epoch):
            loader = engine.make_loader(val_set, cfg, epoch, shuffle=False, train=False)
            if classes is not None:
                return engine.evaluate_classification(bare_model, loader, criterion, cfg, len(classes))[0]
            return engine.evaluate_regression(bare_model, loader, criterion, cfg)

    weights_name = f'{models.file_stem(args.usenet)}_epoch{{epoch}}.pth'
    records = _fit(
        model,
        criterion,
        train_set,
        args,
        cfg,
        run_dir,
        phase,
        lr=args.lr_pre,
        task=task,
        weights_name=weights_name,
        evaluate=evaluate,
        checkpoint=checkpoint,
    )
    if distributed.is_main(cfg):
        pictures(model, run_dir, filters=True)
        print(
            runs.final_message(run_dir, records, weights_name, cfg.epochs, cfg.start_epoch, _resumed_epoch(checkpoint)),
            flush=True,
        )
    return models.unwrap(model), records


def run_finetuning(args, cfg, run_dir=None, phase='finetuning', init_state=None):
    """Fine-tuning on the class folders of -t/-val; returns (bare model, records)."""
    train_set, val_set, classes = _class_sets(args, need_train=True)
    model = build_finetune_model(args, init_state, quiet=bool(args.resume))
    params = None
    if cfg.freeze_encoder:
        head_names = models.head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad = name in head_names
        params = [p for p in model.parameters() if p.requires_grad]
    run_dir, checkpoint = _start(
        args,
        cfg,
        'fine-tuning',
        run_dir,
        train_set,
        classes,
        f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes",
        titles=lambda target: classes[target],
    )
    model = engine.prepare_model(model, cfg)
    records = _fit_classifier(
        model,
        train_set,
        val_set,
        classes,
        args,
        cfg,
        run_dir,
        phase,
        _class_eval(val_set, classes, cfg, lambda m: m),
        checkpoint=checkpoint,
        params=params,
    )
    return models.unwrap(model), records


def _fit_classifier(model, train_set, val_set, classes, args, cfg, run_dir, phase, evaluate, classifier=None, **kw):
    """Train a classifier (or a two-head model whose ``classifier(bare model)`` is it) with the fine-tuning
    rate, writing ft_{usenet}_epoch{E}.pth; then, on rank 0, the final evaluation, the curves and the
    closing line. Returns the records."""
    weights_name = f'ft_{models.file_stem(args.usenet)}_epoch{{epoch}}.pth'
    criterion = nn.CrossEntropyLoss() if train_set is not None else None
    records = _fit(
        model,
        criterion,
        train_set,
        args,
        cfg,
        run_dir,
        phase,
        lr=args.lr_fine,
        task='classification',
        weights_name=weights_name,
        evaluate=evaluate,
        export=classifier,
        **kw,
    )
    if distributed.is_main(cfg):
        bare = models.unwrap(model)
        write_evaluation(
            bare if classifier is None else classifier(bare),
            val_set,
            classes,
            nn.CrossEntropyLoss(),
            cfg,
            run_dir,
            args.learning_mode,
        )
        pictures(None, run_dir, filters=False)
        print(
            runs.final_message(
                run_dir, records, weights_name, cfg.epochs, cfg.start_epoch, _resumed_epoch(kw.get('checkpoint'))
            ),
            flush=True,
        )
    return records


def run_evaluation(args, cfg):
    """Evaluate fine-tuned weights (-pw or --resume) on -val: metrics.json, per_class.csv, confusion matrix."""
    _, val_set, classes = _class_sets(args, need_train=False)
    if not args.path2weight and not args.resume:
        raise UserError("--evaluate needs the fine-tuned weights: -pw FILE (or --resume checkpoint.pth)")
    source = runs.resolve_resume(args.resume) if args.resume else args.path2weight
    model, report = models.load_for(args.usenet, source, len(classes), input_size=args.crop_size)
    if report['head_reinitialised']:
        raise UserError(
            f"{source} has a head of {report['stored_classes']} outputs but "
            f"{args.val or 'the validation folder'} has {len(classes)} classes: these are not "
            f"fine-tuned weights for this dataset"
        )
    args.resume = ''
    run_dir, _ = open_run(args, cfg, 'evaluation')
    model = engine.prepare_model(model, cfg)
    metrics = write_evaluation(model, val_set, classes, nn.CrossEntropyLoss(), cfg, run_dir, args.learning_mode)
    print(engine.format_metrics(metrics), flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------- combined
def _combined_folders(args, cfg):
    """(top run folder, pretraining checkpoint or None, fine-tuning checkpoint or None) of a combined run:
    a fresh dated folder, or the one --resume names (the top folder, a phase folder or a checkpoint)."""
    if not args.resume:
        top = runs.make_run_dir(args.output, cfg)
        if distributed.is_main(cfg):
            runs.write_settings(top, _settings(args, cfg))
        return top, None, None
    top = os.path.abspath(args.resume)
    if os.path.isfile(top):
        top = os.path.dirname(top)
    if os.path.basename(top) in PHASES:
        top = os.path.dirname(top)
    found = [os.path.join(top, p, runs.CHECKPOINT_NAME) for p in PHASES]
    found = [c if os.path.isfile(c) else None for c in found]
    if not any(found):
        raise UserError(
            f"--resume {args.resume}: no pretraining/{runs.CHECKPOINT_NAME} or finetuning/"
            f"{runs.CHECKPOINT_NAME} there; pass the folder of a -lm combined run"
        )
    return top, found[0], found[1]


def run_combined(args, cfg):
    """Pretraining phase, then fine-tuning from its weights, in ``<run>/pretraining`` and ``<run>/finetuning``."""
    if not args.train:  # the fine-tuning data are checked before the (long) first phase starts
        raise UserError(
            "-lm combined fine-tunes on labelled images: give their class folders with -t DIR "
            "(the pretraining images, if any, with -t2)"
        )
    check_class_layout(args.train, '-t')
    check_class_layout(resolve_val(data_config(args)), '-val')
    top, pre_ckpt, ft_ckpt = _combined_folders(args, cfg)
    if distributed.is_main(cfg):
        print(
            f"combined run in {top}: pretraining for {args.epochs_pre} epochs, then fine-tuning for "
            f"{args.epochs} epochs",
            flush=True,
        )
    pre = phase_args(
        args,
        'pretraining',
        epochs=args.epochs_pre,
        train=args.ph_train,
        val=args.ph_val,
        freeze_encoder=False,
        resume='',
        numof_classes=None if args.label_type == 'class' else args.ph_dims,
    )
    pre_cfg = dataclasses.replace(cfg, epochs=args.epochs_pre, freeze_encoder=False)
    init_state, done = None, 0
    if ft_ckpt is None:
        state = runs.load_checkpoint(pre_ckpt) if pre_ckpt else None
        if state is not None and int(state['epoch']) >= args.epochs_pre:
            init_state = state['model']
            print(f"pretraining phase already complete ({pre_ckpt}); fine-tuning from it", flush=True)
        else:
            pre.resume = pre_ckpt or ''
            model, records = run_pretraining(pre, pre_cfg, os.path.join(top, 'pretraining'), phase='pretraining')
            done = len(records)
            if not records or records[-1]['epoch'] < args.epochs_pre:
                return _stopped(cfg, top)
            init_state = model.state_dict()
            if cfg.stop_after > 0 and done >= cfg.stop_after:
                return _stopped(cfg, top)
    stop_after = cfg.stop_after - done if cfg.stop_after > 0 else 0
    ft = phase_args(args, 'finetuning', resume=ft_ckpt or '', path2weight=None, stop_after=stop_after)
    _, records = run_finetuning(
        ft,
        dataclasses.replace(cfg, stop_after=stop_after),
        os.path.join(top, 'finetuning'),
        phase='finetuning',
        init_state=init_state,
    )
    if records and records[-1]['epoch'] < args.epochs:
        return _stopped(cfg, top)
    return None


def _stopped(cfg, top):
    if distributed.is_main(cfg):
        print(f"combined run stopped early; continue with -lm combined --resume {top}", flush=True)


# ----------------------------------------------------------------------------------- simultaneous / alternating
def _two_head_model(args):
    model = build_finetune_model(args, quiet=bool(args.resume))
    return TwoHeads(model, args.ph_dims)


def _ph_eval(val_ph, criterion, cfg):
    def evaluate(bare_model, epoch):
        loader = engine.make_loader(val_ph, cfg, epoch, shuffle=False, train=False)
        return engine.evaluate_regression(PHOutput(bare_model), loader, criterion, cfg, prefix='val_ph')

    return evaluate


def _class_eval(val_set, classes, cfg, classifier):
    def evaluate(bare_model, epoch):
        loader = engine.make_loader(val_set, cfg, epoch, shuffle=False, train=False)
        return engine.evaluate_classification(classifier(bare_model), loader, nn.CrossEntropyLoss(), cfg, len(classes))[
            0
        ]

    return evaluate


def _net(two_heads):
    return two_heads.net


def run_simultaneous(args, cfg):
    """One labelled folder, two heads: CE on the classes + ph_weight x MSE on PH labels of the same images."""
    if not args.train:
        raise UserError("-lm simultaneous trains on labelled images: give their class folders with -t DIR")
    data = data_config(args)
    train_set, val_set, val_ph, classes = data_sources.build_simultaneous_sets(data, args.ph_dims)
    resolve_num_classes(args, classes, resolve_val(data))
    model = _two_head_model(args)
    run_dir, checkpoint = _start(
        args,
        cfg,
        'simultaneous',
        None,
        train_set,
        classes,
        f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} "
        f"classes; PH labels {args.label_type} of dimension {args.ph_dims}, weight "
        f"{args.ph_weight}",
        titles=lambda target: classes[target[0]],
    )
    model = engine.prepare_model(model, cfg)

    def train_epoch(m, optimizer, epoch):
        loader = engine.make_loader(train_set, cfg, epoch, shuffle=True, train=True)
        return train_simultaneous_epoch(m, loader, optimizer, epoch, cfg)

    class_eval, ph_eval = _class_eval(val_set, classes, cfg, _net), _ph_eval(val_ph, nn.MSELoss(), cfg)
    _fit_classifier(
        model,
        None,
        val_set,
        classes,
        args,
        cfg,
        run_dir,
        'simultaneous',
        lambda m, e: {**class_eval(m, e), **ph_eval(m, e)},
        classifier=_net,
        checkpoint=checkpoint,
        train_epoch=train_epoch,
    )


def run_alternating(args, cfg):
    """Batches alternate between the labelled folder -t (CE) and PH-labelled images (-t2 or generated; MSE)."""
    train_set, val_set, classes = _class_sets(args, need_train=True)
    ph_data = dataclasses.replace(data_config(args), train=args.ph_train, val=args.ph_val)
    ph_train, ph_val = data_sources.build_pretraining_sets(ph_data, args.ph_dims, '-nd')

    model = _two_head_model(args)
    source = 'generated on the fly' if args.ph_train is None else f'from {args.ph_train}'
    run_dir, checkpoint = _start(
        args,
        cfg,
        'alternating',
        None,
        train_set,
        classes,
        f"{len(train_set)} labelled training / {len(val_set)} validation images, "
        f"{len(classes)} classes; {len(ph_train)} PH images {source} (labels "
        f"{args.label_type}, dimension {args.ph_dims}, weight {args.ph_weight})",
        titles=lambda target: classes[target],
    )
    model = engine.prepare_model(model, cfg)

    def train_epoch(m, optimizer, epoch):
        if hasattr(ph_train, 'set_epoch'):
            ph_train.set_epoch(epoch - 1)
        class_loader = engine.make_loader(train_set, cfg, epoch, shuffle=True, train=True)
        return train_alternating_epoch(
            m, class_loader, lambda: engine.make_loader(ph_train, cfg, epoch), optimizer, epoch, cfg
        )

    class_eval = _class_eval(val_set, classes, cfg, _net)
    ph_eval = _ph_eval(ph_val, nn.MSELoss(), cfg) if ph_val is not None else (lambda m, e: {})
    _fit_classifier(
        model,
        None,
        val_set,
        classes,
        args,
        cfg,
        run_dir,
        'alternating',
        lambda m, e: {**class_eval(m, e), **ph_eval(m, e)},
        classifier=_net,
        checkpoint=checkpoint,
        train_epoch=train_epoch,
    )


def _run_pretraining_mode(args, cfg):
    run_pretraining(args, cfg)


def _run_finetuning_mode(args, cfg):
    run_finetuning(args, cfg)


RUNNERS = {
    'pretraining': _run_pretraining_mode,
    'finetuning': _run_finetuning_mode,
    'combined': run_combined,
    'simultaneous': run_simultaneous,
    'alternating': run_alternating,
    'evaluation': run_evaluation,
}
