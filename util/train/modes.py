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
* ``contrastive``   two augmented views of each PH pretraining image: NT-Xent + ``--ph_weight`` x MSE on the PH
  labels (util/train/contrastive.py).

Each mode takes the run configuration (:class:`util.config.RunConfig`, built once from the flags by
util/cli/build.py) and derives its phases with :func:`dataclasses.replace`. What a run finds (its folder, the
resolved -nc, the head size of -pw, the label statistics of --label_norm) is returned and recorded (args.json,
checkpoints), never written back onto the configuration.

Every log record and checkpoint holds ``mode`` and ``phase``; ``args.json`` holds ``learning_mode``.
Classifiers (modes other than pretraining) write ``ft_{usenet}_epoch{E}.pth`` (a plain state dict of the
classifier alone, which torchvision's constructor with ``num_classes=K`` loads) and ``classes.json`` next to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

import models
from models import timm_backend
from models.two_heads import PHOutput
from util.config import RunConfig, record, resolve_num_classes
from util.errors import UserError
from util.io import fileio
from util.train import contrastive, distributed, engine, loaders, model_build, runs, sources, tensorboard_log
from util.train.reports import pictures, write_evaluation
from util.train.sources import build_sets, check_class_layout, resolve_val
from util.train.two_task import train_alternating_epoch, train_simultaneous_epoch

MODES = ('pretraining', 'finetuning', 'combined', 'simultaneous', 'alternating', 'evaluation', 'contrastive')
PHASES = ('pretraining', 'finetuning')  # the sub-folders of a combined run


def _with_classes(run, n):
    """``run`` with the output size -nc resolved to ``n``."""
    return replace(run, model=replace(run.model, numof_classes=n))


def _resolve_classes(run, classes=None, where=None):
    """``run`` with -nc resolved (:func:`util.config.resolve_num_classes`) for the class folders ``classes``
    found in ``where`` (None: PH label vectors), saying so when the folders decided it."""
    n = resolve_num_classes(run.model.numof_classes, classes, where)
    if classes is not None and run.model.numof_classes is None and distributed.is_main_process():
        print(f"note: {n} classes found; using -nc {n}", flush=True)
    return _with_classes(run, n)


def _class_sets(run, need_train):
    """:func:`util.train.sources.build_sets` of ``run``'s data; (train or None, val, classes, run with -nc
    resolved)."""
    data = run.data
    train_set, val_set, classes = build_sets(data, need_train)
    return train_set, val_set, classes, _resolve_classes(run, classes, resolve_val(data))


def run(run_cfg: RunConfig) -> int:
    """Run the mode ``run_cfg.learning_mode`` (a :class:`util.config.RunConfig` built by util/cli/build.py) in
    this process, on the device set-up decided at start."""
    cfg = distributed.init_distributed(run_cfg.train)
    RUNNERS[run_cfg.learning_mode](replace(run_cfg, train=cfg))
    distributed.cleanup_distributed(cfg)
    return 0


def check_run(run_cfg: RunConfig) -> None:
    """What only torch and timm can tell about the run configuration, checked before any process starts, any
    data are read or any folder is made: ``--device`` (and ``-p nccl``) can be used here, and a timm ViT's
    patches tile the ``--crop_size`` images it is built for."""
    spawned = run_cfg.train.world_size if run_cfg.learning_mode != 'evaluation' else 1  # evaluation: one process
    distributed.check_device(run_cfg.train, int(os.environ.get('WORLD_SIZE', spawned)))
    if timm_backend.is_timm(run_cfg.model.usenet):
        timm_backend.check_input_size(run_cfg.model.usenet, run_cfg.data.augment.crop_size)


def _tags(run, phase):
    return {'mode': run.learning_mode, 'phase': phase}


def open_run(run: RunConfig, kind: str, facts: dict, run_dir: str | None = None) -> tuple[str, dict | None, dict]:
    """(run_dir, checkpoint or None, facts with ``run_dir``): the folder ``--resume`` names (refusing a
    checkpoint of another mode), else ``run_dir`` (created), else a fresh dated folder under -o; records the
    settings and ``facts`` there."""
    cfg = run.train
    checkpoint = None
    if run.resume:
        run_dir, checkpoint = runs.open_checkpoint(run.resume, kind, run.model.usenet)
        if checkpoint.get('mode') not in (None, run.learning_mode):
            raise UserError(
                f"--resume {run.resume}: that run used -lm {checkpoint['mode']}, not -lm {run.learning_mode}"
            )
        runs.check_resume(run_dir, checkpoint, record(run, **facts))
    elif run_dir is None:
        run_dir = runs.make_run_dir(run.output, cfg)
    elif distributed.is_main(cfg):
        fileio.ensure_dir(run_dir, 'run folder')
    if cfg.tensorboard and distributed.is_main(cfg):  # a resumed run's tensorboard/, before anything is written
        tensorboard_log.check_folder(run_dir)
    facts = {**facts, 'run_dir': run_dir}
    if distributed.is_main(cfg):
        runs.write_settings(run_dir, record(run, **facts), checkpoint)
    return run_dir, checkpoint, facts


def _resumed_epoch(checkpoint):
    return None if checkpoint is None else int(checkpoint['epoch'])


@dataclass(frozen=True)
class RunContext:
    """What a run (or a phase of -lm combined) trains with once its folder is open: ``run`` (-nc and -npc
    resolved), ``facts`` (what it found and records beside the flags: its folder, label statistics), ``run_dir``,
    ``phase`` (the ``phase`` of its log records and checkpoints) and the ``checkpoint`` it resumes (None: a fresh
    run)."""

    run: RunConfig
    facts: dict
    run_dir: str
    phase: str
    checkpoint: dict | None = None


def _start(
    run: RunConfig,
    kind: str,
    train_set: Any,
    classes: list | None,
    *,
    facts: dict | None = None,
    run_dir: str | None = None,
    message: str | None = None,
    titles: Callable | None = None,
) -> RunContext:
    """Open the run folder, and on rank 0 write classes.json, say ``message`` and save the picture of the
    first training samples (-oti) of a fresh run. Returns the run's :class:`RunContext` (phase: ``run.phase``)."""
    engine.check_trainable(train_set, run.train, run.model.usenet)  # before the run folder: a lone image, -b 1
    run_dir, checkpoint, facts = open_run(run, kind, facts or {}, run_dir)
    if distributed.is_main(run.train):
        if classes is not None:
            fileio.write_json(os.path.join(run_dir, 'classes.json'), classes)
        if message:
            print(message, flush=True)
        if run.output_training_images > 0 and checkpoint is None:
            runs.save_sample_grid(
                train_set, run.output_training_images, os.path.join(run_dir, 'training_samples.png'), titles=titles
            )
    return RunContext(run, facts, run_dir, run.phase, checkpoint)


def _fit(model, criterion, train_set, ctx, **kw):
    """:func:`util.train.engine.fit` with the run folder, tags, checkpoint record and resumed checkpoint of
    ``ctx`` (a :class:`RunContext`)."""
    run = ctx.run
    meta = {
        'args': runs.jsonable(record(run, **ctx.facts)),
        'arch': run.model.usenet,
        'num_outputs': run.model.numof_classes,
    }
    return engine.fit(
        model,
        criterion,
        train_set,
        run.train,
        run_dir=ctx.run_dir,
        tags=_tags(run, ctx.phase),
        meta=meta,
        checkpoint=ctx.checkpoint,
        **kw,
    )


# ---------------------------------------------------------------------------------------------- runners
def run_pretraining(run: RunConfig, run_dir: str | None = None) -> tuple[nn.Module, list]:
    """Pretraining (PH regression, or classes with ``--label_type class``) in ``run_dir`` (None: a fresh dated
    folder under -o, or the one --resume names); returns (bare model, records)."""
    data, cfg = run.data, run.train
    classes = None
    facts = {}
    if data.label.label_type == 'class':
        train_set, val_set, classes = sources.build_class_pretraining_sets(data)
        run = _resolve_classes(run, classes, resolve_val(data, required=False) or data.train)
        what = f"{len(train_set)} training images in {len(classes)} classes from {data.train}"
    else:
        run = _resolve_classes(run)
        # PH labels or random targets, --label_norm (its statistics are facts of the run)
        train_set, val_set, facts = sources.pretraining_sets(run, run.model.numof_classes)
        source = 'generated on the fly' if data.train is None else f'from {data.train}'
        what = f"{len(train_set)} training images {source}; labels: {data.label.label_type}, dimension {train_set.dim}"
    if distributed.is_main(cfg):
        print(what + (f"; {len(val_set)} validation images" if val_set is not None else ''), flush=True)

    model = model_build.pretraining_model(run)
    ctx = _start(
        run,
        'pretraining',
        train_set,
        classes,
        facts=facts,
        run_dir=run_dir,
        titles=(lambda target: classes[target]) if classes is not None else None,
    )
    model = engine.prepare_model(model, cfg)
    task = 'classification' if classes is not None else 'regression'
    ph_class = data.label.label_type == 'ph_class'  # one-hot class rows (util.ph.ph_class): cross-entropy
    criterion = nn.CrossEntropyLoss() if classes is not None or ph_class else nn.MSELoss()

    evaluate = None
    if val_set is not None:

        def evaluate(bare_model, epoch):
            loader = loaders.make_loader(val_set, cfg, epoch, shuffle=False, train=False)
            if classes is not None:
                return engine.evaluate_classification(bare_model, loader, criterion, cfg, len(classes))[0]
            return engine.evaluate_regression(bare_model, loader, criterion, cfg)

    weights_name = f'{models.file_stem(run.model.usenet)}_epoch{{epoch}}.pth'
    records = _fit(
        model, criterion, train_set, ctx, lr=run.lr_pre, task=task, weights_name=weights_name, evaluate=evaluate
    )
    if distributed.is_main(cfg):
        pictures(model, ctx.run_dir, filters=True)
        _final_message(ctx, records, weights_name)
    return models.unwrap(model), records


def _final_message(ctx, records, weights_name):
    cfg = ctx.run.train
    resumed = _resumed_epoch(ctx.checkpoint)
    print(runs.final_message(ctx.run_dir, records, weights_name, cfg.epochs, cfg.start_epoch, resumed), flush=True)


def run_finetuning(
    run: RunConfig, run_dir: str | None = None, init_state: dict | None = None
) -> tuple[nn.Module, list]:
    """Fine-tuning on the class folders of -t/-val in ``run_dir`` (as :func:`run_pretraining`), from
    ``init_state`` (a state dict) else -pw; returns (bare model, records)."""
    cfg = run.train
    train_set, val_set, classes, run = _class_sets(run, need_train=True)
    model, run = model_build.finetune_model(run, init_state, quiet=bool(run.resume))
    params = None
    if cfg.freeze_encoder:
        head_names = models.head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad = name in head_names
        params = [p for p in model.parameters() if p.requires_grad]
    ctx = _start(
        run,
        'fine-tuning',
        train_set,
        classes,
        run_dir=run_dir,
        message=f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes",
        titles=lambda target: classes[target],
    )
    model = engine.prepare_model(model, cfg)
    evaluate = _class_eval(val_set, classes, cfg, lambda m: m)
    records = _fit_classifier(model, train_set, val_set, classes, ctx, evaluate, params=params)
    return models.unwrap(model), records


def _fit_classifier(model, train_set, val_set, classes, ctx, evaluate, classifier=None, **kw):
    """Train a classifier (or a two-head model whose ``classifier(bare model)`` is it) with the fine-tuning
    rate, writing ft_{usenet}_epoch{E}.pth; then, on rank 0, the final evaluation, the curves and the
    closing line. Returns the records."""
    run = ctx.run
    cfg = run.train
    weights_name = f'ft_{models.file_stem(run.model.usenet)}_epoch{{epoch}}.pth'
    criterion = nn.CrossEntropyLoss() if train_set is not None else None
    records = _fit(
        model,
        criterion,
        train_set,
        ctx,
        lr=run.lr_fine,
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
            ctx.run_dir,
            run.learning_mode,
        )
        pictures(None, ctx.run_dir, filters=False)
        _final_message(ctx, records, weights_name)
    return records


def run_evaluation(run: RunConfig) -> dict:
    """Evaluate fine-tuned weights (-pw or --resume) on -val: metrics.json, per_class.csv, confusion matrix."""
    cfg = run.train
    _, val_set, classes, run = _class_sets(run, need_train=False)
    if not run.model.path2weight and not run.resume:
        raise UserError("--evaluate needs the fine-tuned weights: -pw FILE (or --resume checkpoint.pth)")
    source = runs.resolve_resume(run.resume) if run.resume else run.model.path2weight
    model, report = models.load_for(run.model.usenet, source, len(classes), input_size=run.data.augment.crop_size)
    regression = runs.regression_weights(source, report['meta'])
    if regression:
        raise UserError(f"{source} holds {regression}, not a classifier; fine-tune them first, then evaluate")
    if report['head_reinitialised']:
        raise UserError(
            f"{source} has a head of {report['stored_classes']} outputs but "
            f"{run.data.val or 'the validation folder'} has {len(classes)} classes: these are not "
            f"fine-tuned weights for this dataset"
        )
    run_dir, _, _ = open_run(replace(run, resume=''), 'evaluation', {})
    model = engine.prepare_model(model, cfg)
    metrics = write_evaluation(model, val_set, classes, nn.CrossEntropyLoss(), cfg, run_dir, run.learning_mode)
    if distributed.is_main(cfg):  # rank 0 alone evaluated
        print(engine.format_metrics(metrics), flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------- combined
def _combined_folders(run):
    """(top run folder, pretraining checkpoint or None, fine-tuning checkpoint or None) of a combined run:
    a fresh dated folder, or the one --resume names (the top folder, a phase folder or a checkpoint)."""
    if not run.resume:
        top = runs.make_run_dir(run.output, run.train)
        if distributed.is_main(run.train):
            runs.write_settings(top, record(run))
        return top, None, None
    top = os.path.abspath(run.resume)
    if os.path.isfile(top):
        top = os.path.dirname(top)
    if os.path.basename(top) in PHASES:
        top = os.path.dirname(top)
    found = [os.path.join(top, p, runs.CHECKPOINT_NAME) for p in PHASES]
    found = [c if os.path.isfile(c) else None for c in found]
    if not any(found):
        raise UserError(
            f"--resume {run.resume}: no pretraining/{runs.CHECKPOINT_NAME} or finetuning/"
            f"{runs.CHECKPOINT_NAME} there; pass the folder of a -lm combined run"
        )
    return top, found[0], found[1]


def pretraining_phase(run: RunConfig) -> RunConfig:
    """The pretraining phase of -lm combined: the PH task on -t2/-v2 for --epochs_pre epochs, the head of
    -nd outputs (the class folders' number with --label_type class), the encoder never frozen."""
    return replace(
        run,
        phase='pretraining',
        resume='',
        train=replace(run.train, epochs=run.epochs_pre, freeze_encoder=False),
        data=replace(run.data, train=run.ph_train, val=run.ph_val),
        model=replace(run.model, numof_classes=None if run.data.label.label_type == 'class' else run.ph_dims),
    )


def run_combined(run: RunConfig) -> None:
    """Pretraining phase, then fine-tuning from its weights, in ``<run>/pretraining`` and ``<run>/finetuning``."""
    cfg = run.train
    if not run.data.train:  # the fine-tuning data are checked before the (long) first phase starts
        raise UserError(
            "-lm combined fine-tunes on labelled images: give their class folders with -t DIR "
            "(the pretraining images, if any, with -t2)"
        )
    check_class_layout(run.data.train, '-t')
    check_class_layout(resolve_val(run.data), '-val')
    top, pre_ckpt, ft_ckpt = _combined_folders(run)
    if distributed.is_main(cfg):
        print(
            f"combined run in {top}: pretraining for {run.epochs_pre} epochs, then fine-tuning for {cfg.epochs} epochs",
            flush=True,
        )
    init_state, done = None, 0
    if ft_ckpt is None:
        state = runs.load_checkpoint(pre_ckpt) if pre_ckpt else None
        if state is not None and int(state['epoch']) >= run.epochs_pre:
            init_state = state['model']
            print(f"pretraining phase already complete ({pre_ckpt}); fine-tuning from it", flush=True)
        else:
            pre = replace(pretraining_phase(run), resume=pre_ckpt or '')
            model, records = run_pretraining(pre, os.path.join(top, 'pretraining'))
            done = len(records)
            if not records or records[-1]['epoch'] < run.epochs_pre:
                return _stopped(cfg, top)
            init_state = model.state_dict()
            if cfg.stop_after > 0 and done >= cfg.stop_after:
                return _stopped(cfg, top)
    stop_after = cfg.stop_after - done if cfg.stop_after > 0 else 0
    ft = replace(
        run,
        phase='finetuning',
        resume=ft_ckpt or '',
        model=replace(run.model, path2weight=None),
        train=replace(cfg, stop_after=stop_after),
    )
    _, records = run_finetuning(ft, os.path.join(top, 'finetuning'), init_state=init_state)
    if records and records[-1]['epoch'] < cfg.epochs:
        return _stopped(cfg, top)
    return None


def _stopped(cfg, top):
    if distributed.is_main(cfg):
        print(f"combined run stopped early; continue with -lm combined --resume {top}", flush=True)


# ----------------------------------------------------------------------------------- simultaneous / alternating
def _ph_eval(val_ph, criterion, cfg):
    def evaluate(bare_model, epoch):
        loader = loaders.make_loader(val_ph, cfg, epoch, shuffle=False, train=False)
        return engine.evaluate_regression(PHOutput(bare_model), loader, criterion, cfg, prefix='val_ph')

    return evaluate


def _class_eval(val_set, classes, cfg, classifier):
    def evaluate(bare_model, epoch):
        loader = loaders.make_loader(val_set, cfg, epoch, shuffle=False, train=False)
        return engine.evaluate_classification(classifier(bare_model), loader, nn.CrossEntropyLoss(), cfg, len(classes))[
            0
        ]

    return evaluate


def _net(two_heads):
    return two_heads.net


def run_simultaneous(run: RunConfig) -> None:
    """One labelled folder, two heads: CE on the classes + ph_weight x MSE on PH labels of the same images."""
    data, cfg = run.data, run.train
    if not data.train:
        raise UserError("-lm simultaneous trains on labelled images: give their class folders with -t DIR")
    train_set, val_set, val_ph, classes = sources.build_simultaneous_sets(data, run.ph_dims)
    run = _resolve_classes(run, classes, resolve_val(data))
    model, run = model_build.two_head_model(run)
    ctx = _start(
        run,
        'simultaneous',
        train_set,
        classes,
        message=f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} "
        f"classes; PH labels {data.label.label_type} of dimension {run.ph_dims}, weight "
        f"{cfg.ph_weight}",
        titles=lambda target: classes[target[0]],
    )

    def train_epoch(m, optimizer, epoch):
        loader = loaders.make_loader(train_set, cfg, epoch, shuffle=True, train=True)
        return train_simultaneous_epoch(m, loader, optimizer, epoch, cfg)

    _fit_two_heads(model, ctx, val_set, classes, train_epoch, _ph_eval(val_ph, nn.MSELoss(), cfg))


def run_alternating(run: RunConfig) -> None:
    """Batches alternate between the labelled folder -t (CE) and PH-labelled images (-t2 or generated; MSE)."""
    cfg = run.train
    train_set, val_set, classes, run = _class_sets(run, need_train=True)
    ph_data = replace(run.data, train=run.ph_train, val=run.ph_val)
    ph_train, ph_val = sources.build_pretraining_sets(ph_data, run.ph_dims, '-nd')

    model, run = model_build.two_head_model(run)
    source = 'generated on the fly' if run.ph_train is None else f'from {run.ph_train}'
    ctx = _start(
        run,
        'alternating',
        train_set,
        classes,
        message=f"{len(train_set)} labelled training / {len(val_set)} validation images, "
        f"{len(classes)} classes; {len(ph_train)} PH images {source} (labels "
        f"{run.data.label.label_type}, dimension {run.ph_dims}, weight {cfg.ph_weight})",
        titles=lambda target: classes[target],
    )

    def train_epoch(m, optimizer, epoch):
        if hasattr(ph_train, 'set_epoch'):
            ph_train.set_epoch(epoch - 1)
        class_loader = loaders.make_loader(train_set, cfg, epoch, shuffle=True, train=True)
        return train_alternating_epoch(
            m, class_loader, lambda: loaders.make_loader(ph_train, cfg, epoch), optimizer, epoch, cfg
        )

    ph_eval = _ph_eval(ph_val, nn.MSELoss(), cfg) if ph_val is not None else None
    _fit_two_heads(model, ctx, val_set, classes, train_epoch, ph_eval)


def _fit_two_heads(model, ctx, val_set, classes, train_epoch, ph_eval=None):
    """The ending both two-task modes share: train the two-head ``model`` by ``train_epoch``, evaluating the
    classifier on ``val_set`` (and the PH head by ``ph_eval``, when given) every epoch; the classifier alone is
    what the weights files hold and what the final evaluation reports."""
    cfg = ctx.run.train
    model = engine.prepare_model(model, cfg)
    class_eval = _class_eval(val_set, classes, cfg, _net)
    ph_eval = ph_eval or (lambda m, e: {})
    evaluate = lambda m, e: {**class_eval(m, e), **ph_eval(m, e)}  # noqa: E731
    _fit_classifier(model, None, val_set, classes, ctx, evaluate, classifier=_net, train_epoch=train_epoch)


def _run_pretraining_mode(run):
    run_pretraining(run)


def _run_finetuning_mode(run):
    run_finetuning(run)


def _run_contrastive_mode(run):
    contrastive.run_contrastive(run, open_run)


RUNNERS = {
    'pretraining': _run_pretraining_mode,
    'finetuning': _run_finetuning_mode,
    'combined': run_combined,
    'simultaneous': run_simultaneous,
    'alternating': run_alternating,
    'evaluation': run_evaluation,
    'contrastive': _run_contrastive_mode,
}
