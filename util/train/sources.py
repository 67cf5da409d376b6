"""The datasets each learning mode trains and validates on, assembled from a :class:`util.config.DataConfig`
(built from the data flags by :mod:`util.cli.build`): PH labels (computed, diagrams of -pd, a label matrix),
the random-target control, class folders, and ``--label_norm standard`` around the pretraining sets.

Random targets (``--label_type random``): image ``key`` gets
``default_rng([seed, *sha256(key)[:16] as 4 uint32]).standard_normal(D)``, a fixed N(0, 1) vector that depends
only on ``--seed`` and the image's identity, never on its pixels:

* an image of a folder: ``key`` = its path relative to the folder without the extension, '/'-separated
  (so ``PHdict.py --label_type random`` on the images or on their diagrams, and pretraining without a label
  matrix, give the same vectors);
* a generated image: ``key`` = ``generated/<stream>/<index>`` (index ``epoch x n + i`` when images are
  fresh each epoch).

Scale: each component has mean 0 and variance 1, the scale of ``--label_norm standard`` PH labels (raw PH
labels have their own, much smaller scale; the control matches the dimension, and the scale of the
standardised labels).  Only ``-ph pre`` makes sense (a random target describes a whole image).

Numpy only at import; torch comes with the datasets when sets are built.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from util.errors import UserError
from util.io import fileio
from util.io.provenance import describe
from util.ph.random_targets import RANDOM, image_key, random_target
from util.train.label_scaling import standard_stats, whitened
from util.train.phdir import FolderRecipe, PhDirMismatch, check_ph_dir, label_record

if TYPE_CHECKING:
    from util.config import DataConfig, RunConfig
    from util.train.datasets import ComputedLabels, JoinedLabels, SafeImageFolder


# ----------------------------------------------------------------------------------------- random targets
class RandomLabels:
    """Label source of a folder (``label(index)`` like :class:`util.train.datasets.MatrixLabels`)."""

    def __init__(self, rel_paths, dim, seed):
        self.keys = [image_key(r) for r in rel_paths]
        self.dim = int(dim)
        self.seed = int(seed)

    def label(self, index):
        return random_target(self.seed, self.keys[index], self.dim)


class GeneratedRandomLabels:
    """Label source of generated images: ``label(index)`` of image ``index`` of one stream."""

    def __init__(self, dim, seed, stream):
        self.dim, self.seed, self.stream = int(dim), int(seed), int(stream)

    def label(self, index):
        return random_target(self.seed, f'generated/{self.stream}/{int(index)}', self.dim)


# ------------------------------------------------------------------------------------------ pretraining


def build_pretraining_sets(data: DataConfig, dim: int, dim_flag: str = '-nc') -> tuple[Any, Any]:
    """(train dataset, val dataset or None) of label vectors of length ``dim`` (set by the option ``dim_flag``)
    for the data mode ``data`` (a :class:`util.config.DataConfig`) selects (see pretraining.py): a ``train``
    folder with ``ph_dir`` (diagrams) / ``ph_dir`` + ``precomputed`` (label matrix) / nothing (computed), or
    generated images. With ``--label_type random`` the labels are random targets (made in the loader, or
    read from the ``labels_random`` matrix with ``precomputed``)."""
    from util.train.datasets import GeneratedPH, pretrain_transforms, pretrain_val_transforms

    random = data.label.label_type == RANDOM
    if random:
        if data.persistence == 'post':
            raise UserError("--label_type random gives one fixed vector per image; use -ph pre")
        vectoriser = computed = None
    else:
        computed = loader_labels(data, dim, None if data.precomputed else dim_flag)
        vectoriser = _first_part(computed).vectoriser
    spatial, to_tensor = pretrain_transforms(data.augment)
    val_spatial, val_to_tensor = pretrain_val_transforms(data.augment)

    def random_labels(stream):
        return {'index_labels': GeneratedRandomLabels(dim, data.seed, stream)} if random else {}

    if data.train is None:
        if random and data.cache_dir:
            raise UserError(
                "--cache_dir keeps PH diagrams of generated images; --label_type random needs none: drop --cache_dir"
            )
        if isinstance(data.filtration, (list, tuple)):
            raise UserError(
                f"--filtration {' '.join(data.filtration)}: several filtrations are joined for the images of a "
                "folder (-t DIR); give one for generated images"
            )
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
            max_pixels=data.max_pixels,
            **random_labels(0),
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
                max_pixels=data.max_pixels,
                **random_labels(1),
            )
        elif data.val is not None and random:
            val = _random_folder_set(data.val, '-val', val_spatial, val_to_tensor, data, dim, matrix_ok=False)
        elif data.val is not None:
            val = _folder_set(data.val, '-val', computed, val_spatial, val_to_tensor, 'pre', data, dim, vectoriser)
        return train, val

    if random:
        if data.ph_dir and not data.precomputed:
            print(
                f"note: --label_type random makes its targets in the loader; the diagrams in -pd "
                f"{data.ph_dir} are not used",
                flush=True,
            )
        train = _random_folder_set(data.train, '-t', spatial, to_tensor, data, dim, matrix_ok=True)
        val = None
        if data.val is not None:
            val = _random_folder_set(data.val, '-val', val_spatial, val_to_tensor, data, dim, matrix_ok=False)
        return train, val
    if data.precomputed and not data.ph_dir:
        raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
    if data.ph_dir and data.persistence == 'post':
        raise UserError(
            "-pd holds PH of whole images, which cannot describe augmented crops: use -ph pre, or "
            "drop -pd to compute PH of each crop"
        )
    recorded = None
    if data.ph_dir:  # what -pd was made with is what this run says (and args.json records)
        recorded = check_ph_dir(data, vectoriser, dim)
    train = _folder_set(data.train, '-t', computed, spatial, to_tensor, data.persistence, data, dim, vectoriser)
    if recorded is not None:
        train.label_facts = recorded.facts
    val = None
    if data.val is not None:
        val = _folder_set(
            data.val,
            '-val',
            recorded if recorded is not None else computed,  # -val labels made here: exactly as -pd's
            val_spatial,
            val_to_tensor,
            'pre',
            data,
            dim,
            vectoriser,
            fallback_to_computed=True,
        )
    return train, val


def _filtrations(filtration):
    return list(filtration) if isinstance(filtration, (list, tuple)) else [filtration]


def loader_labels(data: DataConfig, dim: int, flag: str | None = None) -> ComputedLabels | JoinedLabels:
    """The labels this run's flags compute in the loader (a :class:`util.train.datasets.ComputedLabels`, or for
    several ``--filtration`` values a :class:`util.train.datasets.JoinedLabels` of one per filtration, each of
    length ``dim`` / their number); ``flag`` (the option that set ``dim``) makes a length the label type cannot
    split evenly an error naming it."""
    from util.ph.cubical import SIZE_REFERENCE
    from util.train.datasets import ComputedLabels, JoinedLabels

    names = _filtrations(data.filtration)
    size = SIZE_REFERENCE if data.size_normalise else None
    if len(names) == 1:
        return ComputedLabels(data.label.vectoriser(dim, flag), names[0], data.gradient, data.ph_engine, size)
    if dim % len(names):
        raise UserError(
            f"{flag or '-nc'} {dim} cannot be split over the {len(names)} filtrations of --filtration "
            f"{' '.join(names)}: give a multiple of {len(names)} (their labels side by side)"
        )
    part_flag = f"{flag} {dim} over {len(names)} filtrations: each" if flag else None
    return JoinedLabels(
        [
            ComputedLabels(
                data.label.vectoriser(dim // len(names), part_flag), name, data.gradient, data.ph_engine, size
            )
            for name in names
        ]
    )


def _first_part(labels):
    return labels.parts[0] if hasattr(labels, 'parts') else labels


def _list_folder(root, flag):
    fileio.require_dir(root, 'image folder', flag)
    rel = fileio.list_images(root)
    if not rel:
        raise UserError(f"no images (png, jpg, ...) found under {root!r} (given by {flag})")
    return rel


def _random_folder_set(root, flag, spatial, to_tensor, data, dim, matrix_ok):
    """A folder with random targets (made here, or with ``matrix_ok`` and -pc read from labels_random)."""
    from util.ph.labels import find_label_matrix, load_label_matrix
    from util.train.datasets import FolderPH, MatrixLabels

    rel = _list_folder(root, flag)
    labels = RandomLabels(rel, dim, data.seed)
    if matrix_ok and data.precomputed:
        if not data.ph_dir:
            raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
        found = find_label_matrix(data.ph_dir, RANDOM)
        if found is None:
            raise UserError(
                f"no labels_random.npy/.txt in {data.ph_dir!r}; run PHdict.py {root} -o "
                f"{data.ph_dir} --label_type random --numof_dims {dim} --seed {data.seed}, "
                f"or drop -pc (random targets are made in the loader)"
            )
        labels = MatrixLabels(*load_label_matrix(*found, expected_dim=dim), rel, found[0])
    return FolderPH(
        root, rel, labels, spatial, to_tensor, 'pre', bad_images=data.bad_images, max_pixels=data.max_pixels
    )


def _folder_set(
    root, flag, computed, spatial, to_tensor, persistence, data, dim, vectoriser, fallback_to_computed=False
):
    from util.ph.labels import find_label_matrix, load_label_matrix, read_json, stale_rows
    from util.train.datasets import DiagramDirLabels, FolderPH, MatrixLabels

    rel = _list_folder(root, flag)
    recipe = computed if isinstance(computed, FolderRecipe) else None  # -val: labels made as -pd's were
    if recipe is not None:
        computed = recipe.labels
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
    except UserError as e:
        if not fallback_to_computed:
            raise
        if recipe is not None and recipe.problem:
            raise UserError(
                f"the labels of {flag} {root} must be computed in the loader (-pd {data.ph_dir} does not serve them: "
                f"{str(e).split(';')[0]}), but {recipe.problem}; make them with PHdict.py into another folder and "
                f"train with -val images -pd serves, or drop {flag}"
            ) from None
        labels = computed  # the parameters are -pd's (check_ph_dir): only these images' labels are made here
        print(
            f"note: the PH labels of the {len(rel)} images of {flag} {root} are computed in the loader with the "
            f"settings of -pd {data.ph_dir} (its labels do not serve them: {str(e).split(';')[0]})",
            flush=True,
        )
    unfitted = getattr(_first_part(labels), 'vectoriser', None) if labels is computed and labels is not None else None
    if unfitted is not None and unfitted.auto:  # the flags' check refuses this first (no folder made)
        raise UserError(
            f"{' '.join('--' + a for a in unfitted.auto)} auto: labels computed in the loader for {flag} {root} "
            "have nothing fitted; give the values, or -pd PHDIR -pc with PHdict.py's label matrix"
        )
    return FolderPH(
        root,
        rel,
        labels,
        spatial,
        to_tensor,
        persistence,
        computed=computed,
        bad_images=data.bad_images,
        max_pixels=data.max_pixels,
    )


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


def resolve_val(data: DataConfig, required: bool = True) -> str | None:
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


def check_class_layout(root: str, flag: str) -> None:
    """Raise :class:`UserError` unless ``root`` is a folder with class sub-folders."""
    fileio.require_dir(root, 'image folder', flag)
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(
            f"{root!r} (given by {flag}) has no class sub-folders; -lm finetuning, combined, "
            f"simultaneous and alternating and --label_type class need -t/-val in the layout "
            f"<folder>/<class>/<image> (PH-only images go to -t2 in combined/alternating)"
        )


def class_folder(
    root: str, transform: Callable | None, bad_images: str, flag: str, max_pixels: int | None = None
) -> SafeImageFolder:
    from util.train.datasets import SafeImageFolder

    check_class_layout(root, flag)
    return SafeImageFolder(root, transform, bad_images, max_pixels)


def match_classes(train_set: Any, val_set: Any, val_root: str | None, train_root: str | None) -> list[str]:
    """Check that train and val (either may be None) have the same classes; returns the class names.
    (Whether -nc fits them is decided in one place: :func:`util.config.resolve_num_classes`.)"""
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


def build_sets(data: DataConfig, need_train: bool) -> tuple[Any, Any, list[str]]:
    """(train ImageFolder or None, val ImageFolder, class names) for fine-tuning / evaluation."""
    from util.train.datasets import finetune_transforms

    train_set = None
    if need_train:
        if not data.train:
            raise UserError("give the training folder with -t DIR (class sub-folders of images)")
        transform = finetune_transforms(data.augment, True)
        train_set = class_folder(data.train, transform, data.bad_images, '-t', data.max_pixels)
    val_root = resolve_val(data)
    val_set = class_folder(val_root, finetune_transforms(data.augment, False), 'skip', '-val', data.max_pixels)
    classes = match_classes(train_set, val_set, val_root, data.train)
    return train_set, val_set, classes


def build_class_pretraining_sets(data: DataConfig) -> tuple[Any, Any, list[str]]:
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
    train = class_folder(data.train, transforms.Compose([spatial, to_tensor]), data.bad_images, '-t', data.max_pixels)
    val_root = resolve_val(data, required=False)
    val = None
    if val_root is not None:
        val = class_folder(val_root, transforms.Compose([val_spatial, val_to_tensor]), 'skip', '-val', data.max_pixels)
    return train, val, match_classes(train, val, val_root, data.train)


def build_simultaneous_sets(data: DataConfig, dim: int) -> tuple[Any, Any, Any, list[str]]:
    """-lm simultaneous: (labelled training set with PH labels of length ``dim`` (-nd), validation
    ImageFolder, the same validation images with PH labels, class names)."""
    from torchvision import transforms

    from util.train.datasets import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        FolderPH,
        LabelledPH,
        finetune_train_parts,
        finetune_transforms,
    )

    computed = loader_labels(data, dim, '-nd')
    spatial, to_tensor = finetune_train_parts(data.augment)
    check_class_layout(data.train, '-t')
    train_set = LabelledPH(data.train, computed, spatial, to_tensor, data.persistence, data.bad_images, data.max_pixels)
    val_root = resolve_val(data)
    val_set = class_folder(val_root, finetune_transforms(data.augment, False), 'skip', '-val', data.max_pixels)
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
        max_pixels=data.max_pixels,
    )
    return train_set, val_set, val_ph, classes


# ------------------------------------------------------------------------------------------ --label_norm
def pretraining_sets(run: RunConfig, dim: int) -> tuple[Any, Any, dict]:
    """(train, val or None, facts) of the pretraining mode of ``run`` (a :class:`util.config.RunConfig`):
    :func:`build_pretraining_sets` with labels of length ``dim`` (-nc), and ``--label_norm standard/whiten`` applied.

    ``facts``: what the run records in args.json and its checkpoint (:func:`label_record`, and
    ``label_norm_mean``, ``label_norm_std``, ``label_norm_source``, ``label_norm_count``, ``label_norm_floor``
    with --label_norm standard)."""
    data = run.data
    try:
        train, val = build_pretraining_sets(data, dim)
    except PhDirMismatch as e:
        if not run.resume:
            raise
        # a resumed run: the flags differ from -pd's labels, and so from the run's (args.json records both)
        raise UserError(f"--resume {run.resume}: {e}") from None
    from util.train.label_diagnostics import check_first_labels

    pinned = {
        **label_record(train),
        **check_first_labels(train, label_norm=data.norm.mode),
    }  # made in the loader: diagnostics, auto
    if data.norm.mode == 'whiten':
        return whitened(data, run.resume, train, val, pinned)
    if data.norm.mode != 'standard':
        return train, val, pinned
    from util.train.label_norm import Standardised

    mean, std, rec = standard_stats(data, run.resume, train, run.learning_mode)
    floor = rec['floor'] if rec.get('floor') is not None else data.norm.floor
    facts = {
        **pinned,
        'label_norm_mean': rec['mean'],
        'label_norm_std': rec['std'],
        'label_norm_source': rec['source'],
        'label_norm_count': rec['count'],
        'label_norm_floor': floor,
    }
    print(f"labels standardised per component ({rec['source']}; std floor {floor} x RMS)", flush=True)
    return Standardised(train, mean, std), (Standardised(val, mean, std) if val is not None else None), facts
