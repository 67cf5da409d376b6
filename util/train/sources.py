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

Numpy only at import (PHdict.py imports the random targets); torch comes with the datasets when sets are built.
"""

import hashlib
import json
import os
import sys

import numpy as np

from util.errors import UserError
from util.io import fileio
from util.io.provenance import describe

RANDOM = 'random'


# ----------------------------------------------------------------------------------------- random targets
def image_key(rel_path):
    """The identity of a folder image: its relative path without extension, '/'-separated."""
    return os.path.splitext(str(rel_path).replace(os.sep, '/'))[0]


def random_target(seed, key, dim):
    """The fixed N(0, 1) vector (float32 [dim]) of image ``key`` under ``seed``."""
    words = np.frombuffer(hashlib.sha256(str(key).encode('utf-8')).digest()[:16], dtype='<u4')
    rng = np.random.default_rng([int(seed)] + [int(w) for w in words])
    return rng.standard_normal(int(dim)).astype(np.float32)


def random_matrix(seed, keys, dim):
    return np.asarray([random_target(seed, k, dim) for k in keys], dtype=np.float32).reshape(len(keys), int(dim))


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


def build_pretraining_sets(data, dim, dim_flag='-nc'):
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


def _plain(value):
    """A setting as compared with a recorded one: numbers as floats (50 and 50.0 agree), lists element-wise."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return json.dumps(value, sort_keys=True, default=str)


def _shown(value):
    """A value as typed on the command line (a list as its words)."""
    return ' '.join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


def _filtrations(filtration):
    return list(filtration) if isinstance(filtration, (list, tuple)) else [filtration]


def loader_labels(data, dim, flag=None):
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


class PhDirMismatch(UserError):
    """-pd was made with other settings than this run's flags (:func:`check_ph_dir`)."""


class FolderRecipe:
    """How -pd's label matrix was made, as its json records it: ``labels`` computes such labels in the loader
    (for -val images the matrix has no rows for), or ``problem`` names the recorded parameter that labels computed
    here cannot honour; ``facts``: what the run records (``fitted_<name>``: the values ``auto`` stands for)."""

    def __init__(self, labels=None, problem=None, facts=None):
        self.labels, self.problem, self.facts = labels, problem, dict(facts or {})


def _recorded_parts(meta):
    """[(filtration, label parameters)] of a label matrix's json: one, or one per filtration of PHdict.py
    --filtration A B (its ``params`` and ``filtration`` are then lists); None when they do not pair up."""
    params, filtration = meta.get('params'), meta.get('filtration')
    if isinstance(params, list):
        pairs = isinstance(filtration, list) and len(filtration) == len(params)
        if not (pairs and all(isinstance(p, dict) for p in params)):
            return None
        return list(zip(filtration, params))
    return [(filtration, params if isinstance(params, dict) else {})]


def _fitted_names(meta, ph_dir, label_type):
    """The label parameters PHdict.py fitted (``auto``) for the matrix whose json is ``meta`` (a joined one: its
    parts' jsons say), or None where that cannot be read."""
    from util.ph.labels import label_names, read_json

    def of(m):
        auto = m.get('auto') if isinstance(m, dict) else None
        return set(auto.get('fitted') or ()) if isinstance(auto, dict) else set()

    if not isinstance(meta.get('params'), list):
        return of(meta)
    names = set()
    for part in meta.get('parts') or ():
        m = read_json(os.path.join(ph_dir, str(part), label_names(label_type)[2]))
        if not isinstance(m, dict):
            return None
        names |= of(m)
    return names if meta.get('parts') else None


def _recipe(data, meta, parts, where):
    """The :class:`FolderRecipe` of -pd's label matrix (json ``meta``, its ``parts``)."""
    from util.ph.vectorise import LABEL_FLAGS, vectoriser_from_params
    from util.train.datasets import ComputedLabels, JoinedLabels

    problem, labels = None, []
    for filtration, params in parts:
        dim = params.get('dim', meta.get('dim'))
        try:
            vec = vectoriser_from_params({**params, 'label_type': data.label.label_type}, int(dim))
            rebuilt = vec.get_params()
        except (UserError, TypeError, ValueError) as e:
            problem = f"its parameters {params} cannot be read here ({e})"
            break
        off = [k for k in params if k in rebuilt and _plain(rebuilt[k]) != _plain(params[k])]
        if off:
            problem = (
                f"{where} records {off[0]} {params[off[0]]!r} (filtration {filtration}), which labels computed "
                f"here cannot reproduce (they would have {rebuilt[off[0]]!r})"
            )
            break
        size = meta.get('size_normalise') or None
        labels.append(ComputedLabels(vec, filtration, bool(meta.get('gradient')), data.ph_engine, size))
    if problem:
        return FolderRecipe(problem=problem)
    fitted = {}
    for name in (n for n in LABEL_FLAGS if _is_auto(getattr(data.label, n, None))):
        values = [params.get(name) for _, params in parts]
        fitted[f'fitted_{name}'] = values[0] if len(values) == 1 else values
    return FolderRecipe(labels[0] if len(labels) == 1 else JoinedLabels(labels), facts=fitted)


def _is_auto(value):
    from util.ph.vectorise import AUTO

    return value == AUTO or (isinstance(value, (list, tuple)) and AUTO in value)


def check_ph_dir(data, vectoriser, dim=None):
    """Refuse an explicit -pd made with other settings than this run's flags: the label matrix's json (-pc:
    filtration(s), gradient, --size_normalise, the label dimension and every label parameter; ``auto`` flags
    stand for the values PHdict.py fitted there) or PHdict.py's settings.json (diagrams: filtration, gradient,
    --size_normalise), as the automatically found folder is refused.  A folder that records nothing (the
    original's, older versions') is used as it is.  Returns the :class:`FolderRecipe` of a label matrix's json
    (None: diagrams, or nothing recorded)."""
    from util.ph.labels import find_label_matrix, read_json

    auto = [n for n in ('max_life', 'max_birth', 'min_birth', 'sigma') if _is_auto(getattr(data.label, n, None))]
    label_type = data.label.label_type
    differ = []  # 'what -pd was made with (this run: ...)'
    recipe = None
    if data.precomputed:
        found = find_label_matrix(data.ph_dir, label_type)
        js = os.path.splitext(found[0])[0] + '.json' if found else None
        meta = read_json(js) if found else None
        if not isinstance(meta, dict):
            if auto and found:
                raise UserError(
                    f"--{auto[0]} auto: -pd {data.ph_dir} has no readable {os.path.basename(js)} recording the "
                    f"values PHdict.py fitted; rerun PHdict.py with --label_type {label_type} --{auto[0]} auto, or "
                    "give the values"
                )
            return None
        parts = _recorded_parts(meta)
        if parts is None:
            raise UserError(
                f"-pd {data.ph_dir}: {js} pairs {len(meta.get('params'))} parameter sets with filtration "
                f"{meta.get('filtration')!r}; rerun PHdict.py --label_type {label_type} into that folder"
            )
        what, fix = f"label matrix {found[0]}", f"or rerun PHdict.py --label_type {label_type} with them"
        recorded = [name for name, _ in parts]
        made_filtration = recorded[0] if len(parts) == 1 else recorded
        ours_filtration = data.filtration if isinstance(data.filtration, str) else list(data.filtration)
        if _plain(made_filtration) != _plain(ours_filtration) and made_filtration is not None:
            differ.append(f"--filtration {_shown(made_filtration)} (this run: {_shown(ours_filtration)})")
        made_dim = meta.get('dim')
        if isinstance(made_dim, int) and dim is not None and made_dim != dim:
            differ.append(f"label dimension {made_dim} (--numof_classes/-nc; this run: {dim})")
        fitted = _fitted_names(meta, data.ph_dir, label_type)
        ours = vectoriser.get_params()
        skip = set(auto) | ({'max_birth', 'min_birth'} if {'max_birth', 'min_birth'} & set(auto) else set())
        from util.ph.vectorise import LABEL_FLAGS

        for filtration, params in parts:
            at = f" for filtration {filtration}" if len(parts) > 1 else ''
            for key in (k for k in LABEL_FLAGS if k != 'label_type' and k in params):
                if (
                    key in auto
                    and fitted is not None
                    and key not in fitted
                    and not (key in ('max_birth', 'min_birth') and fitted & {'max_birth', 'min_birth'})
                ):
                    differ.append(f"--{key} {params[key]!r}{at}, not fitted (this run: auto)")
                elif key not in skip and key in ours and _plain(params[key]) != _plain(ours[key]):
                    differ.append(f"--{key} {params[key]!r}{at} (this run: {ours[key]!r})")
        made_grad, made_size = bool(meta.get('gradient')), meta.get('size_normalise') or None
        recipe = _recipe(data, meta, parts, f"its {os.path.basename(js)}")
    else:
        settings = read_json(os.path.join(data.ph_dir, 'settings.json'))
        diagram = settings.get('diagram') if isinstance(settings, dict) else None
        if not isinstance(diagram, dict):
            return None
        if diagram.get('filtration') is not None and diagram.get('filtration') != data.filtration:
            differ.append(f"--filtration {diagram.get('filtration')!r} (this run: {data.filtration!r})")
        made_grad, made_size = bool(diagram.get('gradient', False)), diagram.get('size_normalise') or None
        what, fix = 'diagrams', 'or give -pd a folder of diagrams made with them'
    if made_grad != bool(data.gradient):
        differ.append(f"--gradient {made_grad!r} (this run: {bool(data.gradient)!r})")
    if bool(made_size) != bool(data.size_normalise):
        made = '--size_normalise' if made_size else 'no --size_normalise'
        differ.append(f"{made} (this run: {'--size_normalise' if data.size_normalise else 'without it'})")
    if differ:
        shown = ', '.join(dict.fromkeys(differ))  # once each (the parts of several filtrations)
        raise PhDirMismatch(
            f"-pd {data.ph_dir}: its {what} were made with {shown}; give the same flags (args.json then records "
            f"what the labels are) {fix}"
        )
    return recipe


def label_record(train):
    """What pins a run's PH labels, for args.json and its checkpoints (a --resume after the labels were
    recomputed differs): the label matrix (its file name and BLAKE2b digest) the training set reads, else {}."""
    from util.io.provenance import fingerprint

    facts = dict(getattr(train, 'label_facts', None) or {})  # fitted_<name>: what -pd's 'auto' stood for
    source = getattr(getattr(train, 'labels', None), 'source', None)
    if not source or not os.path.isfile(source):
        return facts
    return {**facts, 'label_matrix': f"{os.path.basename(source)} blake2b {fingerprint(source)['hash']}"}


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


def class_folder(root, transform, bad_images, flag, max_pixels=None):
    from util.train.datasets import SafeImageFolder

    check_class_layout(root, flag)
    return SafeImageFolder(root, transform, bad_images, max_pixels)


def match_classes(train_set, val_set, val_root, train_root):
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


def build_sets(data, need_train):
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
    train = class_folder(data.train, transforms.Compose([spatial, to_tensor]), data.bad_images, '-t', data.max_pixels)
    val_root = resolve_val(data, required=False)
    val = None
    if val_root is not None:
        val = class_folder(val_root, transforms.Compose([val_spatial, val_to_tensor]), 'skip', '-val', data.max_pixels)
    return train, val, match_classes(train, val, val_root, data.train)


def build_simultaneous_sets(data, dim):
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
def _norm_stats(data, resume, train, mode=None):
    """(mean, std, record) for --label_norm standard: the resumed run's (``resume``: --resume, a checkpoint of
    the learning mode ``mode``), else the label json's (PHdict.py), else the label matrix's, else a first
    sample's."""
    from util.train import label_norm

    dim = train.dim
    if resume:
        from util.train import runs

        path = runs.resolve_resume(resume)
        checkpoint = runs.load_checkpoint(path)
        if mode is not None and checkpoint.get('mode') not in (None, mode):  # the mode first: it decides the rest
            raise UserError(f"--resume {resume}: that run used -lm {checkpoint['mode']}, not -lm {mode}")
        stored = checkpoint.get('args', {})
        if stored.get('label_norm') != 'standard' or not stored.get('label_norm_mean'):
            raise UserError(
                f"--resume {resume}: that run did not use --label_norm standard; resume it "
                f"with --label_norm {stored.get('label_norm', 'none')}"
            )
        rec = {
            'mean': stored['label_norm_mean'],
            'std': stored['label_norm_std'],
            'floor': stored.get('label_norm_floor'),
            'source': stored.get('label_norm_source', path),
            'count': stored.get('label_norm_count', 0),
        }
        return (*label_norm.from_record(rec, dim, path), rec)
    labels = getattr(train, 'labels', None)
    matrix = getattr(labels, 'matrix', None)
    floor = data.norm.floor
    if matrix is not None and data.ph_dir:
        js = os.path.join(data.ph_dir, f'labels_{data.label.label_type}.json')
        rec = label_norm.json_stats(js)
        if rec is not None:
            if rec.get('floor') != floor:
                print(
                    f"note: {js} holds label statistics with floor {rec.get('floor')}; using them "
                    f"(--label_norm_floor {floor} applies when they are computed here)",
                    flush=True,
                )
            return (*label_norm.from_record(rec, dim, js), rec)
        rows = np.asarray(matrix)[labels.rows]
        source = f'rows of {js[:-5]}.npy used by this run'
    else:
        rows = label_norm.sample_labels(train)
        source = f'labels of the first {len(rows)} training images'
    mean, std = label_norm.compute_stats(rows, floor)
    return mean, std, label_norm.stats_record(mean, std, floor, source, len(rows))


def pretraining_sets(run, dim):
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
        return _whitened(data, run.resume, train, val, pinned)
    if data.norm.mode != 'standard':
        return train, val, pinned
    from util.train.label_norm import Standardised

    mean, std, rec = _norm_stats(data, run.resume, train, run.learning_mode)
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


def _whitened(data, resume, train, val, facts):
    """--label_norm whiten: the statistics of the resumed run, else of the label json (PHdict.py --label_norm
    whiten, same K and floor), else of the rows the run uses, else of a first sample; ``facts`` gain
    ``label_whiten_*`` (flat lists: args.json and the checkpoint keep lists of numbers)."""
    from util.ph.labels import read_json
    from util.train import label_norm

    dim, k, floor, rec, where = train.dim, data.norm.components, data.norm.floor, None, None
    if resume:
        from util.train import runs

        where = runs.resolve_resume(resume)
        stored = runs.load_checkpoint(where).get('args', {})
        if stored.get('label_norm') != 'whiten' or not stored.get('label_whiten_mean'):
            raise UserError(f"--resume {resume}: that run did not use --label_norm whiten; resume it as it ran")
        flat, n = stored['label_whiten_components'], len(stored['label_whiten_mean'])
        rec = {
            'mean': stored['label_whiten_mean'],
            'components': [flat[i : i + n] for i in range(0, len(flat), n)],
            'scales': stored['label_whiten_scales'],
            'source': stored.get('label_whiten_source', where),
            'count': stored.get('label_whiten_count', 0),
        }
    labels = getattr(train, 'labels', None)
    matrix = getattr(labels, 'matrix', None)
    if rec is None and matrix is not None and data.ph_dir:
        where = os.path.join(data.ph_dir, f'labels_{data.label.label_type}.json')
        rec = (read_json(where) or {}).get(label_norm.WHITEN_KEY)
        if rec is not None and (rec.get('asked', rec.get('k')) != k or rec.get('floor') != floor):
            rec = None  # another K or floor: computed here from the rows
    if rec is None:
        if matrix is not None:
            rows, source = np.asarray(matrix)[labels.rows], 'rows of the label matrix used by this run'
        else:
            rows = label_norm.sample_labels(train)
            source = f'labels of the first {len(rows)} training images'
        mean, comp, scales = label_norm.compute_whiten(rows, k, floor)
        rec = label_norm.whiten_record(mean, comp, scales, floor, source, len(rows))
        where = source
    mean, mapping = label_norm.whiten_from_record(rec, dim, where)
    facts = {
        **facts,
        'label_whiten_mean': rec['mean'],
        'label_whiten_scales': rec['scales'],
        'label_whiten_components': [x for row in rec['components'] for x in row],
        'label_whiten_source': rec['source'],
        'label_whiten_count': rec['count'],
    }
    print(f"labels whitened: top {len(rec['scales'])} principal directions ({rec['source']})", flush=True)
    ones = np.ones(dim, np.float32)
    wrap = lambda s: label_norm.Standardised(s, mean, ones, mapping)  # noqa: E731
    return wrap(train), (wrap(val) if val is not None else None), facts
