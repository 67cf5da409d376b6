"""The datasets each learning mode trains and validates on, assembled from a :class:`util.config.DataConfig`
(which util/train/modes.py builds from the data flags)."""

import os
import sys

from util.errors import UserError
from util.io import fileio
from util.io.provenance import describe


def build_pretraining_sets(data, dim, dim_flag='-nc'):
    """(train dataset, val dataset or None) of PH label vectors of length ``dim`` (set by the option
    ``dim_flag``) for the data mode ``data`` (a :class:`util.config.DataConfig`) selects (see pretraining.py):
    a ``train`` folder with ``ph_dir`` (diagrams) / ``ph_dir`` + ``precomputed`` (label matrix) / nothing
    (computed), or generated images."""
    from util.train.datasets import ComputedLabels, GeneratedPH, pretrain_transforms, pretrain_val_transforms

    vectoriser = data.label.vectoriser(dim, None if data.precomputed else dim_flag)
    computed = ComputedLabels(vectoriser, data.filtration, data.gradient, data.ph_engine)
    spatial, to_tensor = pretrain_transforms(data.augment)
    val_spatial, val_to_tensor = pretrain_val_transforms(data.augment)

    if data.train is None:
        cfg = data.generator
        cfg.validate()
        if data.n_samples < 1:
            raise UserError("--n_samples must be at least 1")
        train = GeneratedPH(
            cfg,
            data.seed,
            data.n_samples,
            computed,
            spatial,
            to_tensor,
            data.persistence,
            stream=0,
            cache_dir=data.cache_dir,
        )
        n_val = min(1000, max(1, data.n_samples // 10)) if data.n_samples_val < 0 else data.n_samples_val
        val = None
        if n_val > 0 and data.val is None:
            val_cache = os.path.join(data.cache_dir, 'val') if data.cache_dir else None
            val = GeneratedPH(
                cfg,
                data.seed,
                n_val,
                computed,
                val_spatial,
                val_to_tensor,
                'pre',
                stream=1,
                cache_dir=val_cache,
                fresh_each_epoch=False,
            )
        elif data.val is not None:
            val = _folder_set(data.val, '-val', computed, val_spatial, val_to_tensor, 'pre', data, dim, vectoriser)
        return train, val

    if data.precomputed and not data.ph_dir:
        raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
    if data.ph_dir and data.persistence == 'post':
        raise UserError(
            "-pd holds PH of whole images, which cannot describe augmented crops: use -ph pre, or "
            "drop -pd to compute PH of each crop"
        )
    train = _folder_set(data.train, '-t', computed, spatial, to_tensor, data.persistence, data, dim, vectoriser)
    val = None
    if data.val is not None:
        val = _folder_set(
            data.val,
            '-val',
            computed,
            val_spatial,
            val_to_tensor,
            'pre',
            data,
            dim,
            vectoriser,
            fallback_to_computed=True,
        )
    return train, val


def _folder_set(
    root, flag, computed, spatial, to_tensor, persistence, data, dim, vectoriser, fallback_to_computed=False
):
    from util.ph.labels import find_label_matrix, load_label_matrix, read_json, stale_rows
    from util.train.datasets import DiagramDirLabels, FolderPH, MatrixLabels

    fileio.require_dir(root, 'image folder', flag)
    rel = fileio.list_images(root)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {root!r} (given by {flag})")
    labels = computed
    try:
        if data.ph_dir:
            fileio.require_dir(data.ph_dir, 'PH folder', '-pd')
            if data.precomputed:
                label_type = data.label.label_type
                found = find_label_matrix(data.ph_dir, label_type)
                if found is None:
                    raise UserError(
                        f"no labels_{label_type}.npy/.txt in {data.ph_dir!r}; run PHdict.py "
                        f"{root} -o {data.ph_dir} --label_type {label_type} "
                        f"--numof_dims {dim}"
                    )
                matrix, names = load_label_matrix(*found, expected_dim=dim)
                labels = MatrixLabels(matrix, names, rel, found[0])
                meta = read_json(os.path.splitext(found[0])[0] + '.json')
                _refuse_stale(
                    stale_rows(meta, root, names, rel),
                    rel,
                    found[0],
                    root,
                    data,
                    f"--label_type {label_type} --numof_dims {dim}",
                )
            else:
                labels = DiagramDirLabels(data.ph_dir, rel, vectoriser)
                _refuse_stale(labels.changed(root), rel, data.ph_dir, root, data, "-it <image extension>")
    except UserError:
        if not fallback_to_computed:
            raise
        labels = computed
    return FolderPH(root, rel, labels, spatial, to_tensor, persistence, computed=computed, bad_images=data.bad_images)


def _refuse_stale(changed, rel, where, root, data, flags):
    """Refuse labels made from other versions of the images (None: ``where`` records no sources to check)."""
    if changed is None:
        print(
            f"warning: cannot check that the PH labels in {where} were computed from the images in {root} as "
            "they are now (no record of their sources: made by an older version or the original); rerun "
            "PHdict.py to make such a record",
            file=sys.stderr,
            flush=True,
        )
    elif changed:
        raise UserError(
            f"{describe(changed, len(rel))} images changed since their PH labels in {where} were "
            f"computed (or were never recorded there): the labels would be wrong; rerun PHdict.py "
            f"{root} -o {data.ph_dir} {flags} (it recomputes just those)"
        )


def resolve_val(data, required=True):
    """The validation folder: ``data.val`` (-val), else the ``data.train`` (-t) path with 'train' replaced by
    'val' (else 'test')."""
    if data.val:
        return data.val
    if data.train:
        head, tail = os.path.split(os.path.normpath(data.train))
        if 'train' in tail:
            for name in ('val', 'test'):
                candidate = os.path.join(head, tail.replace('train', name))
                if os.path.isdir(candidate):
                    return candidate
    if not required:
        return None
    raise UserError(
        "no validation folder: give -val DIR (looked for the -t path with 'train' replaced by 'val' or 'test')"
    )


def check_class_layout(root, flag):
    """Raise :class:`UserError` unless ``root`` is a folder with class sub-folders."""
    fileio.require_dir(root, 'image folder', flag)
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(
            f"{root!r} (given by {flag}) has no class sub-folders; -lm finetuning, combined, "
            f"simultaneous and alternating and --label_type class need -t/-val in the layout "
            f"<folder>/<class>/<image> (PH-only images go to -t2 in combined/alternating)"
        )


def class_folder(root, transform, bad_images, flag):
    from util.train.datasets import SafeImageFolder

    check_class_layout(root, flag)
    return SafeImageFolder(root, transform, bad_images)


def match_classes(train_set, val_set, val_root, train_root):
    """Check that train and val (either may be None) have the same classes; returns the class names.
    (Whether -nc fits them is decided in one place: :func:`util.cli.build.resolve_num_classes`.)"""
    if train_set is not None and val_set is not None and val_set.classes != train_set.classes:
        extra = sorted(set(val_set.classes) - set(train_set.classes))
        missing = sorted(set(train_set.classes) - set(val_set.classes))
        raise UserError(
            f"the classes of {val_root!r} differ from those of {train_root!r}: "
            f"only in val: {extra[:5]}, only in train: {missing[:5]}"
        )
    classes = (val_set if val_set is not None else train_set).classes
    if len(classes) < 2:  # one class: every prediction right, a report of 100%
        root, flag = (train_root, '-t') if train_set is not None else (val_root, '-val')
        raise UserError(
            f"{flag} {root!r} has {len(classes)} class folder(s) {classes}: classifying needs at least 2 classes "
            "(one sub-folder of images per class)"
        )
    return classes


def build_sets(data, need_train):
    """(train ImageFolder or None, val ImageFolder, class names) for fine-tuning / evaluation."""
    from util.train.datasets import finetune_transforms

    train_set = None
    if need_train:
        if not data.train:
            raise UserError("give the training folder with -t DIR (class sub-folders of images)")
        train_set = class_folder(data.train, finetune_transforms(data.augment, True), data.bad_images, '-t')
    val_root = resolve_val(data)
    val_set = class_folder(val_root, finetune_transforms(data.augment, False), 'skip', '-val')
    classes = match_classes(train_set, val_set, val_root, data.train)
    return train_set, val_set, classes


def build_class_pretraining_sets(data):
    """``--label_type class``: (train, val or None, classes) from the class folders of -t / -val, with the
    pretraining augmentation."""
    from torchvision import transforms

    from util.train.datasets import pretrain_transforms, pretrain_val_transforms

    if not data.train:
        raise UserError("--label_type class pretrains on labelled images: give their class folders with -t DIR")
    if data.ph_dir or data.precomputed:
        raise UserError("-pd/-pc hold PH labels; --label_type class uses the class folders of -t instead")
    spatial, to_tensor = pretrain_transforms(data.augment)
    val_spatial, val_to_tensor = pretrain_val_transforms(data.augment)
    train = class_folder(data.train, transforms.Compose([spatial, to_tensor]), data.bad_images, '-t')
    val_root = resolve_val(data, required=False)
    val = None
    if val_root is not None:
        val = class_folder(val_root, transforms.Compose([val_spatial, val_to_tensor]), 'skip', '-val')
    return train, val, match_classes(train, val, val_root, data.train)


def build_simultaneous_sets(data, dim):
    """-lm simultaneous: (labelled training set with PH labels of length ``dim`` (-nd), validation
    ImageFolder, the same validation images with PH labels, class names)."""
    from torchvision import transforms

    from util.train.datasets import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        ComputedLabels,
        FolderPH,
        LabelledPH,
        finetune_train_parts,
        finetune_transforms,
    )

    computed = ComputedLabels(data.label.vectoriser(dim, '-nd'), data.filtration, data.gradient, data.ph_engine)
    spatial, to_tensor = finetune_train_parts(data.augment)
    check_class_layout(data.train, '-t')
    train_set = LabelledPH(data.train, computed, spatial, to_tensor, data.persistence, data.bad_images)
    val_root = resolve_val(data)
    val_set = class_folder(val_root, finetune_transforms(data.augment, False), 'skip', '-val')
    classes = match_classes(train_set, val_set, val_root, data.train)
    aug = data.augment
    val_spatial = transforms.Compose([transforms.Resize(aug.img_size), transforms.CenterCrop(aug.crop_size)])
    val_rel = [os.path.relpath(p, val_root).replace(os.sep, '/') for p, _ in val_set.samples]
    val_ph = FolderPH(
        val_root,
        val_rel,
        computed,
        val_spatial,
        transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
        'pre',
        bad_images='skip',
    )
    return train_set, val_set, val_ph, classes
