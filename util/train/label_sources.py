"""``--label_type random`` (the random-target control) and the assembly of ``--label_norm`` around the
pretraining datasets of :mod:`util.train.data_sources`.

Random targets: image ``key`` gets ``default_rng([seed, *sha256(key)[:16] as 4 uint32]).standard_normal(D)``,
a fixed N(0, 1) vector that depends only on ``--seed`` and the image's identity, never on its pixels:

* an image of a folder: ``key`` = its path relative to the folder without the extension, '/'-separated
  (so ``PHdict.py --label_type random`` on the images or on their diagrams, and pretraining without a label
  matrix, give the same vectors);
* a generated image: ``key`` = ``generated/<stream>/<index>`` (index ``epoch x n + i`` when images are
  fresh each epoch).

Scale: each component has mean 0 and variance 1, the scale of ``--label_norm standard`` PH labels (raw PH
labels have their own, much smaller scale; the control matches the dimension, and the scale of the
standardised labels).  Only ``-ph pre`` makes sense (a random target describes a whole image).
"""

import hashlib
import os

import numpy as np

from util.errors import UserError

RANDOM = 'random'


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


def allow_random_choice(group):
    """Add 'random' to the choices of the ``--label_type`` flag of an argparse group."""
    for action in group._group_actions:
        if action.dest == 'label_type':
            action.choices = tuple(action.choices) + (RANDOM,)
            action.help += (
                "; 'random': the random-target control, a fixed N(0,1) vector per image from "
                "--seed and the image's identity, not its content (see util/train/label_sources.py)"
            )


def add_norm_args(group):
    from util.train.label_norm import DEFAULT_COMPONENTS, DEFAULT_FLOOR

    group.add_argument(
        '--label_norm',
        choices=('none', 'standard', 'whiten'),
        default='none',
        help='standard: z-score each label component by the mean and std of the training labels '
        '(std floored at --label_norm_floor x their RMS), computed once and stored in the run; '
        'whiten: PCA-whiten the top --label_norm_components directions of the labels (the rest dropped), '
        'so the first component no longer dominates the loss (default: %(default)s)',
    )
    group.add_argument(
        '--label_norm_components',
        type=int,
        default=DEFAULT_COMPONENTS,
        metavar='K',
        help='--label_norm whiten: the number K of principal directions kept (default: %(default)s)',
    )
    group.add_argument(
        '--label_norm_floor',
        type=float,
        default=DEFAULT_FLOOR,
        help='variance floor of --label_norm standard, relative to the RMS of the components\' '
        'std (default: %(default)s)',
    )


# ------------------------------------------------------------------------------------------ assembly
def _random_sets(args):
    """(train, val or None) with random targets, built like util.train.data_sources' PH sets."""
    from util.io import fileio
    from util.ph.labels import find_label_matrix, load_label_matrix
    from util.train.datasets import FolderPH, GeneratedPH, MatrixLabels, pretrain_transforms, pretrain_val_transforms

    if args.persistence == 'post':
        raise UserError("--label_type random gives one fixed vector per image; use -ph pre")
    from util.cli.build import data_config, resolve_num_classes

    dim = resolve_num_classes(args)
    aug = data_config(args).augment
    spatial, to_tensor = pretrain_transforms(aug)
    val_spatial, val_to_tensor = pretrain_val_transforms(aug)

    def folder(root, flag, sp, tt, matrix_ok):
        fileio.require_dir(root, 'image folder', flag)
        rel = fileio.list_images(root)
        if not rel:
            raise UserError(f"no images (png, jpg, ...) found under {root!r} (given by {flag})")
        labels = RandomLabels(rel, dim, args.seed)
        if matrix_ok and args.precomputed:
            if not args.path2PHdir:
                raise UserError("-pc reads precomputed labels from -pd; give -pd PHDIR")
            found = find_label_matrix(args.path2PHdir, RANDOM)
            if found is None:
                raise UserError(
                    f"no labels_random.npy/.txt in {args.path2PHdir!r}; run PHdict.py {root} -o "
                    f"{args.path2PHdir} --label_type random --numof_dims {dim} --seed {args.seed}, "
                    f"or drop -pc (random targets are made in the loader)"
                )
            labels = MatrixLabels(*load_label_matrix(*found, expected_dim=dim), rel, found[0])
        return FolderPH(root, rel, labels, sp, tt, 'pre', bad_images=args.bad_images)

    if args.train is None:
        if args.cache_dir:
            raise UserError(
                "--cache_dir keeps PH diagrams of generated images; --label_type random needs none: drop --cache_dir"
            )
        from util.ph.generator import GeneratorConfig

        cfg = GeneratorConfig(
            img_size=args.img_size,
            alpha_range=tuple(args.alpha_range),
            beta_range=tuple(args.beta_range),
            prob_binary=args.prob_binary,
            prob_colour=args.prob_colour,
        )
        cfg.validate()
        if args.n_samples < 1:
            raise UserError("--n_samples must be at least 1")
        train = GeneratedPH(
            cfg,
            args.seed,
            args.n_samples,
            None,
            spatial,
            to_tensor,
            'pre',
            stream=0,
            index_labels=GeneratedRandomLabels(dim, args.seed, 0),
        )
        n_val = min(1000, max(1, args.n_samples // 10)) if args.n_samples_val < 0 else args.n_samples_val
        val = None
        if args.val is not None:
            val = folder(args.val, '-val', val_spatial, val_to_tensor, False)
        elif n_val > 0:
            val = GeneratedPH(
                cfg,
                args.seed,
                n_val,
                None,
                val_spatial,
                val_to_tensor,
                'pre',
                stream=1,
                fresh_each_epoch=False,
                index_labels=GeneratedRandomLabels(dim, args.seed, 1),
            )
        return train, val
    if args.path2PHdir and not args.precomputed:
        print(
            f"note: --label_type random makes its targets in the loader; the diagrams in -pd "
            f"{args.path2PHdir} are not used",
            flush=True,
        )
    train = folder(args.train, '-t', spatial, to_tensor, True)
    val = folder(args.val, '-val', val_spatial, val_to_tensor, False) if args.val is not None else None
    return train, val


def _norm_stats(args, train):
    """(mean, std, record) for --label_norm standard: the resumed run's, else the label json's (PHdict.py),
    else the label matrix's, else a first sample's."""
    from util.train import label_norm

    dim = train.dim
    if args.resume:
        from util.train import runs

        path = runs.resolve_resume(args.resume)
        stored = runs.load_checkpoint(path).get('args', {})
        if stored.get('label_norm') != 'standard' or not stored.get('label_norm_mean'):
            raise UserError(
                f"--resume {args.resume}: that run did not use --label_norm standard; resume it "
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
    if matrix is not None and args.path2PHdir:
        js = os.path.join(args.path2PHdir, f'labels_{args.label_type}.json')
        rec = label_norm.json_stats(js)
        if rec is not None:
            if rec.get('floor') != args.label_norm_floor:
                print(
                    f"note: {js} holds label statistics with floor {rec.get('floor')}; using them "
                    f"(--label_norm_floor {args.label_norm_floor} applies when they are computed here)",
                    flush=True,
                )
            return (*label_norm.from_record(rec, dim, js), rec)
        rows = np.asarray(matrix)[labels.rows]
        source = f'rows of {js[:-5]}.npy used by this run'
    else:
        rows = label_norm.sample_labels(train)
        source = f'labels of the first {len(rows)} training images'
    mean, std = label_norm.compute_stats(rows, args.label_norm_floor)
    return mean, std, label_norm.stats_record(mean, std, args.label_norm_floor, source, len(rows))


def pretraining_sets(args):
    """(train, val or None) of the pretraining mode: PH labels (util.train.data_sources) or random targets, with
    ``--label_norm standard`` applied; the statistics are recorded on ``args`` (args.json, checkpoint)."""
    if args.label_type == RANDOM:
        train, val = _random_sets(args)
    else:
        from util.cli.build import data_config, resolve_num_classes
        from util.train.data_sources import build_pretraining_sets

        train, val = build_pretraining_sets(data_config(args), resolve_num_classes(args))
        from util.train.label_diagnostics import check_first_labels

        check_first_labels(args, train)  # labels computed in the loader: diagnostics, --max_life ... auto
    if getattr(args, 'label_norm', 'none') == 'whiten':
        return _whitened(args, train, val)
    if getattr(args, 'label_norm', 'none') != 'standard':
        return train, val
    from util.train.label_norm import Standardised

    mean, std, rec = _norm_stats(args, train)
    args.label_norm_mean, args.label_norm_std = rec['mean'], rec['std']
    args.label_norm_source, args.label_norm_count = rec['source'], rec['count']
    args.label_norm_floor = rec['floor'] if rec.get('floor') is not None else args.label_norm_floor
    print(f"labels standardised per component ({rec['source']}; std floor {args.label_norm_floor} x RMS)", flush=True)
    return Standardised(train, mean, std), (Standardised(val, mean, std) if val is not None else None)


def _whitened(args, train, val):
    """--label_norm whiten: the statistics of the resumed run, else of the label json (PHdict.py --label_norm
    whiten, same K), else of the rows the run uses, else of a first sample; recorded on ``args`` (label_whiten_*)."""
    from util.train import label_norm

    dim, k, rec, where = train.dim, args.label_norm_components, None, None
    if args.resume:
        from util.train import runs

        where = runs.resolve_resume(args.resume)
        stored = runs.load_checkpoint(where).get('args', {})
        if stored.get('label_norm') != 'whiten' or not stored.get('label_whiten_mean'):
            raise UserError(f"--resume {args.resume}: that run did not use --label_norm whiten; resume it as it ran")
        flat, n = stored['label_whiten_components'], len(stored['label_whiten_mean'])
        rec = {
            'mean': stored['label_whiten_mean'],
            'components': [flat[i : i + n] for i in range(0, len(flat), n)],
            'scales': stored['label_whiten_scales'],
            'floor': stored.get('label_norm_floor'),
            'source': stored.get('label_whiten_source', where),
            'count': stored.get('label_whiten_count', 0),
            'k': stored.get('label_norm_components'),
        }
    labels = getattr(train, 'labels', None)
    matrix = getattr(labels, 'matrix', None)
    if rec is None and matrix is not None and args.path2PHdir:
        where = os.path.join(args.path2PHdir, f'labels_{args.label_type}.json')
        from util.ph.labels import read_json

        rec = (read_json(where) or {}).get(label_norm.WHITEN_KEY)
        if rec is not None and (rec.get('k') != k or rec.get('floor') != args.label_norm_floor):
            rec = None  # other K or floor: computed here from the rows
    if rec is None:
        if matrix is not None:
            rows, source = np.asarray(matrix)[labels.rows], 'rows of the label matrix used by this run'
        else:
            rows = label_norm.sample_labels(train)
            source = f'labels of the first {len(rows)} training images'
        mean, comp, scales = label_norm.compute_whiten(rows, k, args.label_norm_floor)
        rec = dict(label_norm.whiten_record(mean, comp, scales, args.label_norm_floor, source, len(rows)), k=k)
        where = source
    mean, mapping = label_norm.whiten_from_record(rec, dim, where)
    # args.json / the checkpoint keep flat lists of numbers (components row-major, K x D)
    args.label_whiten_mean, args.label_whiten_scales = rec['mean'], rec['scales']
    args.label_whiten_components = [x for row in rec['components'] for x in row]
    args.label_whiten_source, args.label_whiten_count = rec['source'], rec['count']
    print(f"labels whitened: top {len(rec['scales'])} principal directions ({rec['source']})", flush=True)
    ones = np.ones(dim, np.float32)
    return label_norm.Standardised(train, mean, ones, mapping), (
        label_norm.Standardised(val, mean, ones, mapping) if val is not None else None
    )
