"""Precompute the persistent homology of a folder of images (and, optionally, label vectors from it).

    python PHdict.py random -o PH_random -it jpg

reads every ``*.jpg`` below ``random`` (sorted, sub-folders included), computes its persistence diagram
(Otsu binarisation, signed Euclidean distance transform, cubical PH of dimensions 0 and 1 -- by the exact
union-find engine for 2-D images, or cripser with ``--ph_engine cripser``; see ``util/ph/cubical.py``) and writes it
under ``PH_random``.

Output files (``<stem>`` = the input's path relative to TARGET_DIR without its extension, so the folder
structure is mirrored: ``random/v00000001.jpg`` -> ``PH_random/v00000001.npy``, ``random/cat/x.jpg`` ->
``PH_random/cat/x.npy``):

* ``<stem>.npy`` -- the diagram, float64 ``(n, 9)`` rows ``dim, birth, death, x1, y1, z1, x2, y2, z2``
  (written for every image input).
* ``-ch``: ``<stem>hist.npy`` -- float32 histogram vector of length ``sum(--num_bins)`` (lifetime and birth
  histograms of H0/H1, see ``util/ph/vectorise.py``), and ``hist_mean.png``, the mean of the four curves.
  With ``-it npy`` the diagrams are read from TARGET_DIR (as saved by an earlier run) instead of computed.
* ``-cpi``: persistence images, float32, H0 then H1, about 10 birth pixels and square pixels per homology
  dimension (100 values each by default), Gaussian of variance ``--sigma``.  Read from saved diagrams
  (``-it npy``) they are written as ``<stem>.npy`` (the original's naming, so -o must differ from
  TARGET_DIR); computed from images they are written as ``<stem>_persImg.npy`` beside the diagram.
* ``--label_type TYPE``: one consolidated matrix for pretraining,
  ``labels_TYPE.npy`` -- float32 ``[N, D]`` (``D = --numof_dims``), row ``i`` for the image on line ``i`` of
  ``labels_TYPE.txt`` (paths relative to TARGET_DIR, sorted), and ``labels_TYPE.json`` (vectoriser
  parameters, filtration, count).  Under ``--shard K/N`` each shard writes
  ``labels_TYPE.shard-K-of-N.{npy,txt,json}``; the shard that finds all N parts present (with equal
  parameters) merges them into ``labels_TYPE.{npy,txt,json}`` (rows in the sorted order of all paths).  If
  the shards ran on machines with separate disks, copy all parts into one folder and rerun any shard there:
  its own files are already complete, so it only merges.
* ``--plot N``: ``plots/<stem>.png`` for the first N images (image | filtration | diagram | label vector).
* ``args.json``: the arguments of the last run; ``settings.json``: the settings (filtration, bins, ...) of
  each kind of per-file output present, so that a rerun with other settings is refused instead of silently
  keeping outputs made differently.  The PH engines that made the diagrams are recorded there too
  (``ph_engines``) but not compared: both engines give the same pairs, so diagrams and label matrices made
  by one are accepted by a rerun with the other.

Runs resume: outputs are written atomically (temporary name, then rename), so an existing output is a
complete one; it is kept when ``sources.jsonl`` records it as computed from the input as it is now (path,
size, content hash; see ``util/io/provenance.py``), and recomputed otherwise (the image changed since).
Unreadable inputs are named on stderr and the rest are processed; the exit status is 1 if any failed, unless
``--skip_bad``.
"""

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from util.cli import compat, label_flags
from util.cli.label_flags import add_label_args, vectoriser_from_args
from util.cli.strict_args import PHDICT_FLAGS, StrictArgumentParser
from util.errors import UserError, run_cli
from util.io.fileio import (
    add_max_pixels_arg,
    ensure_dir,
    list_images,
    refuse_output_inside,
    require_dir,
    save_npy,
    set_max_pixels,
    write_json,
)
from util.io.provenance import SOURCES_FILE, SourceLog, describe, fingerprint_below
from util.ph import cubical as ph
from util.ph import diagnostics
from util.ph.labels import (
    label_file_re,
    label_matrix_complete,
    label_names,
    merge_label_shards,
    read_json,
    read_paths,
    same_params,
    source_entries,
    write_label_matrix,
)
from util.ph.vectorise import check_label_dim, make_vectoriser
from util.train import label_norm, sources

HIST_SUFFIX = 'hist.npy'
PERSIMG_SUFFIX = '_persImg.npy'
PI_BIRTH_PIXELS = 10  # the original's persistence image: pixel size = (birth range) / 10
FLUSH_EVERY = 64  # diagrams vectorised together

EPILOG = """\
outputs (under -o; <stem> = input path relative to TARGET_DIR, without extension):
  <stem>.npy              persistence diagram, float64 (n, 9): dim, birth, death, x1, y1, z1, x2, y2, z2
  <stem>hist.npy          -ch: float32 histogram vector, length sum(--num_bins); plus hist_mean.png
  <stem>.npy / <stem>_persImg.npy
                          -cpi: float32 persistence images (from saved diagrams with -it npy / from images)
  labels_TYPE.npy         --label_type TYPE: float32 [N, --numof_dims] label matrix for pretraining
  labels_TYPE.txt         its N image paths (relative to TARGET_DIR), one per line, row order
  labels_TYPE.json        vectoriser parameters, filtration and count
  labels_TYPE.shard-K-of-N.{npy,txt,json}
                          the same for one shard; merged into labels_TYPE.* once all N parts exist
  plots/<stem>.png        --plot N: image | filtration | diagram | label vector
  args.json               the arguments of the run
  settings.json           the settings of the per-file outputs present (a run with other settings for
                          the same kind of output is refused rather than mixing them)
  sources.jsonl           what each output was computed from (input path, size, content hash): outputs
                          of inputs changed since are recomputed, and pretraining refuses stale labels

examples:
  python PHdict.py random -o PH_random -it jpg                      # diagrams of random/*.jpg
  python PHdict.py random -o PH_random -it jpg --label_type histogram --numof_dims 200
  python PHdict.py PH_random -o PH_random -ch                        # histograms of saved diagrams
  python PHdict.py random -o PH_random -it jpg --shard 0/4           # first of 4 machines (or RANK/WORLD_SIZE)
  python PHdict.py photos -o PH_edges -it jpg --gradient            # PH of the Canny edge maps

Existing outputs are complete (atomic writes) and are skipped, so an interrupted run resumes.
Exit status: 0, or 1 if some inputs could not be read (named on stderr) and --skip_bad is not given;
2 for a usage error.
"""


class _OneOrMore(argparse.Action):
    """One value stored as it is (the original's flag), several as a list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(dict.fromkeys(values)))


def get_args_parser():
    p = StrictArgumentParser(
        allow_abbrev=False,
        refuse=PHDICT_FLAGS,
        description="Compute persistence diagrams of images (Otsu + signed distance + cubical PH by "
        "cripser) and, optionally, histograms, persistence images or one label matrix.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('target_dir', help="folder of input files (searched recursively)")
    p.add_argument('--output', '-o', default='output', help="output folder (default: %(default)s)")
    p.add_argument(
        '--imgtype',
        '-it',
        default='npy',
        help="extension of the input files: an image type (jpg, png, ...) to compute diagrams, or "
        "npy to read diagrams saved by an earlier run (default: %(default)s)",
    )
    p.add_argument(
        '--compute_hist',
        '-ch',
        action='store_true',
        help="write a histogram vector <stem>hist.npy per input and hist_mean.png (default: off)",
    )
    p.add_argument(
        '--compute_persistence_image',
        '-cpi',
        action='store_true',
        help="write a persistence image per input (default: off)",
    )
    p.add_argument(
        '--num_bins',
        '-n',
        type=int,
        nargs=4,
        default=[50, 50, 50, 50],
        metavar=('LIFE0', 'LIFE1', 'BIRTH0', 'BIRTH1'),
        help="-ch histogram bins: H0 lifetimes, H1 lifetimes, H0 births, H1 births (default: 50 50 50 50)",
    )
    p.add_argument(
        '--num_workers',
        '-nw',
        type=int,
        default=8,
        help="worker processes computing diagrams; 0 or 1: this process only (default: %(default)s)",
    )
    p.add_argument(
        '--filtration',
        choices=ph.FILTRATIONS,
        default=ph.DEFAULT_FILTRATION,
        nargs='+',
        action=_OneOrMore,
        help="filtration of the binarised image (see util/ph/cubical.py); 'none' = raw grey values "
        "(sublevel sets), 'none_inv' = their superlevel sets.  Several (e.g. signed_distance none none_inv) "
        "with --label_type: each is computed into -o/filtration_NAME/ and the label matrices are concatenated "
        "into -o/labels_TYPE.* (length = their number x --numof_dims) (default: %(default)s)",
    )
    p.add_argument(
        '--gradient',
        '-g',
        action='store_true',
        help="take the filtration of the Canny edge map of the denoised image instead of the Otsu "
        "binarisation (thresholds from the median grey value; see util/ph/cubical.py) (default: off)",
    )
    p.add_argument(
        '--size_normalise',
        action='store_true',
        help=f"multiply the filtration values (births, deaths) by {ph.SIZE_REFERENCE}/SIZE, SIZE = the image's "
        "longer side, as the original's later version does to distances: a shape gives the same diagram at "
        "every image size (filtrations in pixel units only; not with -it npy) (default: off)",
    )
    p.add_argument(
        '--ph_engine',
        choices=ph.ENGINES,
        default=ph.DEFAULT_ENGINE,
        help="PH engine: unionfind (exact, fast, 2-D images), cripser, or auto = unionfind for 2-D "
        "images; both give the same pairs (birth, death) -- tests/test_ph_unionfind.py checks "
        "it -- so diagrams and a label matrix made by one engine are accepted by a rerun with "
        "the other (the engines are recorded in settings.json and labels_TYPE.json); only row "
        "order and the pixel named among tied ones may differ (default: %(default)s)",
    )
    p.add_argument(
        '--numof_dims', type=int, default=200, help="length D of the --label_type vectors (default: %(default)s)"
    )
    p.add_argument(
        '--shard',
        default=None,
        metavar='K/N',
        help="process only shard K of N (0 <= K < N) of the sorted file list (every N-th file from "
        "the K-th); defaults to RANK/WORLD_SIZE when torchrun sets them (default: all files)",
    )
    p.add_argument(
        '--skip_bad',
        action='store_true',
        help="exit with status 0 even if some inputs could not be read (default: off)",
    )
    add_max_pixels_arg(p)
    p.add_argument(
        '--plot',
        type=int,
        default=0,
        metavar='N',
        help="save plots/<stem>.png for the first N inputs (default: %(default)s)",
    )
    group = p.add_argument_group(
        'label vectors',
        "--label_type writes one consolidated label matrix (labels_TYPE.npy/.txt/.json); "
        "the other flags also set the -ch histogram and the -cpi persistence image",
    )
    add_label_args(group, max_life='-ml', max_birth='-mb', bandwidth='-b', sigma='-s')
    label_flags.allow_random_choice(group)
    group.add_argument(
        '--seed',
        type=int,
        default=1,
        help="--label_type random: the seed of the targets; "
        "pretraining.py --seed with the same value makes the same ones (default: %(default)s)",
    )
    group.add_argument(
        '--label_norm',
        choices=('none', 'standard', 'whiten'),
        default='none',
        help="standard: also write the per-component mean and floored std of the label matrix "
        "into labels_TYPE.json, for pretraining.py --label_norm standard; whiten: its top "
        "--label_norm_components principal directions and their floored std (label_whiten), for "
        "pretraining.py --label_norm whiten (the matrix stays raw) (default: %(default)s)",
    )
    group.add_argument(
        '--label_norm_components',
        type=int,
        default=label_norm.DEFAULT_COMPONENTS,
        metavar='K',
        help="--label_norm whiten: the number K of principal directions kept (default: %(default)s)",
    )
    group.add_argument(
        '--label_norm_floor',
        type=float,
        default=label_norm.DEFAULT_FLOOR,
        help="std floor of --label_norm standard, relative to the RMS of the components' std (default: %(default)s)",
    )
    p.set_defaults(label_type=None)
    compat.phdict_compat(p)  # the original's later names and value shapes (docs/compat.md)
    return p


# ----------------------------------------------------------------------------------------------------
# arguments


def parse_shard(spec, environ=os.environ):
    """``(K, N)`` from ``'K/N'``, or from torchrun's RANK / WORLD_SIZE, or ``(0, 1)``."""
    if spec is None:
        world = environ.get('WORLD_SIZE')
        if world is None or int(world) <= 1:
            return 0, 1
        spec = f"{environ.get('RANK', '0')}/{world}"
    m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(spec))
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard {spec!r} must be K/N with 0 <= K < N (e.g. --shard 0/4)")
    return int(m.group(1)), int(m.group(2))


def _check_args(args, filtration=None):
    """Refuse bad flags before anything is read or written (``filtration``: check them for that one of several)."""
    if filtration is not None:
        args.filtration = filtration
    args.imgtype = args.imgtype.lower().lstrip('.')
    if not args.imgtype:
        raise UserError("--imgtype is empty; give an extension such as jpg, png or npy")
    if args.imgtype == 'npy' and not (
        args.compute_hist or args.compute_persistence_image or args.label_type or args.plot
    ):
        raise UserError(
            "-it npy reads saved diagrams, but nothing was asked of them: add -ch, -cpi or "
            "--label_type, or give the image type (e.g. -it jpg) to compute diagrams"
        )
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 (this process only) or more, got {args.num_workers}")
    if args.numof_dims < 1:
        raise UserError(f"--numof_dims must be at least 1, got {args.numof_dims}")
    if args.label_type:
        check_label_dim(args.label_type, args.numof_dims, '--numof_dims', args.num_landscapes)
    grey = [f for f in _values(args.filtration) if f not in ph.SIZE_FILTRATIONS]
    if args.size_normalise and (args.imgtype == 'npy' or grey):
        raise UserError(
            "--size_normalise scales filtration values in pixels of images: it needs image inputs (-it jpg ...) "
            f"and a filtration among {', '.join(ph.SIZE_FILTRATIONS)}"
            + (f" (not --filtration {' '.join(grey)})" if grey else '')
        )
    autos = [n for n in ('max_life', 'max_birth', 'min_birth', 'sigma') if 'auto' in _values(getattr(args, n))]
    if 'sigma' in autos and args.label_type not in ('persistence_image', 'split_image'):
        raise UserError("--sigma auto applies to the labels with a kernel: persistence_image, split_image")
    if autos and (args.compute_hist or args.compute_persistence_image or not args.label_type):
        raise UserError(
            f"--{autos[0]} auto is fitted for the --label_type matrix only; give -ch / -cpi numbers "
            "(run them separately), or add --label_type"
        )
    if args.plot < 0:
        raise UserError(f"--plot must be 0 or more, got {args.plot}")
    if min(args.num_bins) < 0 or sum(args.num_bins) < 1:
        raise UserError(f"--num_bins {args.num_bins} must be four non-negative counts, not all zero")
    if args.label_type and args.label_norm == 'whiten' and args.label_norm_components < 1:
        raise UserError(f"--label_norm_components must be at least 1, got {args.label_norm_components}")
    if args.label_type and args.label_norm != 'none' and not args.label_norm_floor >= 0:
        raise UserError(f"--label_norm_floor must be >= 0, got {args.label_norm_floor}")
    _vectorisers(None, args)  # the vectorisers' parameters (--max_life -5 ...) are checked before any folder exists


def _values(v):
    return v if isinstance(v, list) else [v]


def _pi_dim(args):
    """Length of the -cpi vector: 2 x (10 birth pixels x square-pixel lifetime rows), as the original."""
    min_birth = -args.max_birth if args.min_birth is None else args.min_birth
    pixel = (args.max_birth - min_birth) / PI_BIRTH_PIXELS
    life_pixels = max(1, int(round(args.max_life / pixel))) if pixel > 0 else 1
    return 2 * PI_BIRTH_PIXELS * life_pixels


# ----------------------------------------------------------------------------------------------------
# listing


def list_inputs(target_dir, imgtype, out_dir=None):
    """Sorted relative paths of the ``*.imgtype`` files below ``target_dir``.

    Files below ``out_dir``, when it is a sub-folder of ``target_dir``, are left out.  For ``npy`` so are the
    files this script derives from diagrams: ``Xhist.npy`` and ``X_persImg.npy`` beside an ``X.npy``, and
    top-level ``labels_*.npy`` matrices.
    """
    found = list_images(target_dir, extensions=('.' + imgtype,))
    if out_dir is not None:
        inner = os.path.relpath(os.path.realpath(out_dir), os.path.realpath(target_dir)).replace(os.sep, '/')
        if inner != '.' and not inner.startswith('../') and inner != '..':
            found = [f for f in found if not f.startswith(inner + '/')]
    if imgtype != 'npy':
        return found
    present = set(found)
    labels = label_file_re()
    keep = []
    for rel in found:
        if '/' not in rel and labels.fullmatch(rel):
            continue
        derived = False
        for suffix in (HIST_SUFFIX, PERSIMG_SUFFIX):
            if rel.endswith(suffix) and rel[: -len(suffix)] + '.npy' in present:
                derived = True
        if not derived:
            keep.append(rel)
    return keep


def shard_of(files, k, n):
    """The files of shard ``k`` of ``n``: every ``n``-th of the sorted list starting at ``k``."""
    return files[k::n]


SETTINGS_FILE = 'settings.json'


def output_settings(args):
    """The settings each kind of per-file output depends on (only the kinds this run writes)."""
    kinds = {}
    if args.imgtype != 'npy':
        kinds['diagram'] = dict(filtration=args.filtration)
        if args.gradient:  # recorded only when on: older outputs stay compatible
            kinds['diagram']['gradient'] = True
        if args.size_normalise:  # recorded only when on, like gradient
            kinds['diagram']['size_normalise'] = ph.SIZE_REFERENCE
        # recorded, never compared (RECORDED_ONLY): both engines give equal pairs, so a folder may mix them
        kinds['diagram']['ph_engines'] = [ph.resolve_engine(getattr(args, 'ph_engine', ph.DEFAULT_ENGINE), 2)]
    if args.compute_hist:
        kinds['hist'] = dict(
            num_bins=list(args.num_bins), max_life=args.max_life, max_birth=args.max_birth, bandwidth=args.bandwidth
        )
    if args.compute_persistence_image:
        kinds['persistence_image'] = dict(
            max_life=args.max_life,
            max_birth=args.max_birth,
            min_birth=args.min_birth,
            sigma=args.sigma,
            power=args.power,
        )
    return kinds


# Settings recorded in settings.json but not compared: the PH engines that made the diagrams there (lists,
# merged over runs).  Diagrams (and so every vector made from them) of either engine hold the same pairs.
RECORDED_ONLY = ('ph_engines',)


def check_settings(out_dir, kinds):
    """Refuse to resume into ``out_dir`` when its ``settings.json`` records other settings for the same kind
    of output (existing files would be kept although they were made differently); else record ``kinds``
    (the lists in :data:`RECORDED_ONLY` are merged with the recorded ones, not compared)."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    old = read_json(path) or {}
    kinds = json.loads(json.dumps(kinds))
    for kind, settings in kinds.items():
        for key in RECORDED_ONLY:
            if key in settings:
                settings[key] = sorted(set(settings[key]) | set((old.get(kind) or {}).get(key) or ()))
    for kind, settings in kinds.items():
        before = (
            {k: v for k, v in (old.get(kind) or {}).items() if k not in RECORDED_ONLY}
            if old.get(kind) is not None
            else None
        )
        now = {k: v for k, v in settings.items() if k not in RECORDED_ONLY}
        if before is not None and before != now:
            diff = ', '.join(
                f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(before) | set(now))
                if before.get(k) != now.get(k)
            )
            raise UserError(
                f"{out_dir} holds {kind} outputs made with other settings ({diff}; see {path}); "
                "choose another output folder with -o, or delete those outputs"
            )
    if any(old.get(k) != json.loads(json.dumps(v)) for k, v in kinds.items()):
        write_json(path, dict(old, **kinds))


# ----------------------------------------------------------------------------------------------------
# main


class _Outputs:
    """Where each input's outputs go, and which of them are still missing."""

    def __init__(self, args, target_dir, out_dir):
        self.args, self.target_dir, self.out_dir = args, target_dir, out_dir
        self.from_npy = args.imgtype == 'npy'
        self._dirs = set()

    def stem(self, rel):
        return os.path.join(self.out_dir, *os.path.splitext(rel)[0].split('/'))

    def diagram(self, rel):
        return None if self.from_npy else self.stem(rel) + '.npy'

    def hist(self, rel):
        return self.stem(rel) + HIST_SUFFIX if self.args.compute_hist else None

    def pimg(self, rel):
        if not self.args.compute_persistence_image:
            return None
        return self.stem(rel) + ('.npy' if self.from_npy else PERSIMG_SUFFIX)

    def wanted(self, rel):
        return [p for p in (self.diagram(rel), self.hist(rel), self.pimg(rel)) if p is not None]

    def kinds(self, rel):
        """{kind: path} of the per-file outputs this run writes for ``rel`` (kinds as in sources.jsonl)."""
        paths = {'diagram': self.diagram(rel), 'hist': self.hist(rel), 'persistence_image': self.pimg(rel)}
        return {k: p for k, p in paths.items() if p is not None}

    def key(self, path):
        """An output's path relative to the output folder (the key of its sources.jsonl record)."""
        return os.path.relpath(path, self.out_dir).replace(os.sep, '/')

    def makedirs(self, path):
        d = os.path.dirname(path)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)


def _plan(run, need_all):
    """Decide the work per input of ``run`` (its ``outs`` and ``log`` set).

    An existing output counts as done only when ``run.log`` (sources.jsonl) records it as computed from the input
    as it is now (same path, size and content hash): an image changed, swapped or regenerated since has its
    outputs recomputed.  Returns ``(jobs, job_files, complete, earlier_hist, todo)``: ``jobs`` for
    :func:`util.ph.cubical.iter_diagrams` (a saved, still valid diagram is loaded instead of recomputed),
    ``job_files[j]`` = index into ``files`` of job ``j``, ``complete`` = indices with nothing to (re)write
    (jobs only if ``need_all``, i.e. their diagram is needed for the label matrix), ``earlier_hist`` = indices
    whose valid -ch histogram already exists, ``todo[i]`` = the kinds of output to (re)write for index ``i``.
    """
    args, files, outs, target_dir, fingerprints, log = (
        run.args,
        run.files,
        run.outs,
        run.target_dir,
        run.fingerprints,
        run.log,
    )
    jobs, job_files, complete, earlier_hist, todo = [], [], set(), [], {}
    diagram_log = SourceLog(target_dir) if outs.from_npy else None  # what the input diagrams came from
    gradient = args.gradient
    engine = args.ph_engine
    for i, rel in enumerate(files):
        kinds = outs.kinds(rel)
        # from saved diagrams: an output made beside the diagram from the same image content is as good
        made_with = diagram_log.records.get(rel) if diagram_log is not None else None
        valid = {
            k
            for k, path in kinds.items()
            if os.path.exists(path)
            and (
                log.fresh(outs.key(path), rel, fingerprints[i])
                or (made_with is not None and log.fresh(outs.key(path), made_with.get('source'), made_with))
            )
        }
        todo[i] = set(kinds) - valid
        if not todo[i]:
            complete.add(i)
        if 'hist' in valid:
            earlier_hist.append(i)
        if todo[i] or need_all:
            if 'diagram' in valid:
                jobs.append((kinds['diagram'], 'npy', args.filtration, gradient, engine))  # resume: saved one
            else:
                src = os.path.join(target_dir, *rel.split('/'))
                source = 'npy' if outs.from_npy else 'image'
                jobs.append((src, source, args.filtration, gradient, engine, args.size_normalise))
            job_files.append(i)
    changed = [rel for i, rel in enumerate(files) if any(os.path.exists(outs.kinds(rel)[k]) for k in todo[i])]
    if changed:
        tqdm.write(
            f"{describe(changed, len(files))} inputs have outputs that were not made from them as they are "
            f"now (changed, replaced or never recorded in {SOURCES_FILE}): recomputing those",
            file=sys.stderr,
        )
    return jobs, job_files, complete, earlier_hist, todo


def _fingerprints(target_dir, files):
    """The content fingerprint of each input (None for one that cannot be read: it fails as a bad input)."""
    return [
        fingerprint_below(target_dir, rel)
        for rel in tqdm(files, desc='checking inputs', unit='file', file=sys.stderr, disable=len(files) < 5000)
    ]


def _refuse_shared_stems(files):
    """Two inputs that differ only in their extension (``x.jpg``, ``x.JPG``, ``x.png``) would write one output."""
    seen = {}
    for rel in files:
        stem = os.path.splitext(rel)[0]
        if stem in seen:
            raise UserError(
                f"{seen[stem]} and {rel} would write the same outputs ({stem}.npy); rename one, or "
                "choose the extension with -it"
            )
        seen[stem] = rel


@dataclass
class Run:
    """What one PHdict run works on; the steps of :func:`main` take it instead of long argument lists."""

    args: argparse.Namespace
    target_dir: str
    out_dir: str
    k: int  # this shard ...
    n: int  # ... of n
    all_files: list  # every input (sorted), files: those of this shard
    files: list
    fingerprints: list = None
    outs: '_Outputs' = None
    log: SourceLog = None
    diagram_dir: str = None  # where the diagrams are when not in out_dir (the first part of concatenated labels)

    @property
    def shard_note(self):
        return f" (shard {self.k}/{self.n} of {len(self.all_files)})" if self.n > 1 else ''


@dataclass
class Vectorisers:
    """The vectorisers of one run: -ch histogram, -cpi persistence image, --label_type label (None if off)."""

    hist: object = None
    pimg: object = None
    label: object = None
    label_info: dict = None  # what labels_TYPE.json records of the label's making


@dataclass
class Results:
    """What the PH loop produced."""

    ok: np.ndarray
    complete: set
    matrix: np.ndarray = None
    hist_sum: np.ndarray = None
    hist_count: int = 0
    earlier_hist: list = field(default_factory=list)
    failures: list = field(default_factory=list)


def main(args):
    if isinstance(args.filtration, list):
        return _several_filtrations(args)
    _check_args(args)
    set_max_pixels(args.max_pixels)
    run = _open_run(args)
    if args.label_type == sources.RANDOM:
        return _random_labels(run)
    check_settings(run.out_dir, output_settings(args))
    vecs = _vectorisers(run)
    write_json(os.path.join(run.out_dir, 'args.json'), vars(args))
    run.fingerprints = _fingerprints(run.target_dir, run.files)
    if vecs.label is not None and label_matrix_complete(
        run.out_dir, label_names(args.label_type, run.k, run.n), run.files, vecs.label_info, run.fingerprints
    ):
        vecs.label = None  # already written for exactly these files as they are now: nothing to redo
    results = _compute(run, vecs)
    _finish(run, vecs, results)
    return _report(run, results)


def _several_filtrations(args):
    """--filtration A B ...: one run per filtration into -o/filtration_NAME, then their label matrices
    concatenated (columns: A's, then B's ...) into -o/labels_TYPE.* once every part is complete."""
    import copy

    if not args.label_type or args.label_type == sources.RANDOM:
        raise UserError("several --filtration values make one concatenated PH label matrix: add --label_type TYPE")
    if args.imgtype == 'npy' or args.compute_hist or args.compute_persistence_image:
        raise UserError("several --filtration values need image inputs (-it jpg ...) and no -ch/-cpi")
    for name in args.filtration:  # every part's flags, before any folder is made or any PH computed
        _check_args(copy.copy(args), filtration=name)
    _check_args(args)
    target_dir = require_dir(args.target_dir, 'target folder', flag='TARGET_DIR')
    refuse_output_inside(args.output, [('TARGET_DIR', target_dir)])
    parse_shard(args.shard)
    refuse_mixed_folder(args.output, several=True)
    out_dir = ensure_dir(args.output, 'output folder')
    status, parts = 0, []
    for name in args.filtration:
        part = copy.copy(args)
        part.filtration, part.output = name, os.path.join(out_dir, f'filtration_{name}')
        print(f"--- filtration {name} -> {part.output}", flush=True)
        status = max(status, main(part))
        parts.append(part.output)
    joined = join_label_matrices(out_dir, parts, args.label_type)
    if joined is None:
        print("not all parts are complete yet (other shards?): labels not concatenated", flush=True)
        return status
    print(
        f"label matrix {label_names(args.label_type)[0]}: {joined[0]} x {joined[1]} float32, the columns of "
        f"{len(parts)} filtrations ({', '.join(args.filtration)}); pretrain with -nc {joined[1]} --filtration "
        f"{' '.join(args.filtration)}{' --size_normalise' if args.size_normalise else ''}"
    )
    write_json(os.path.join(out_dir, 'args.json'), vars(args))
    run = Run(args, target_dir, out_dir, 0, 1, [], [], diagram_dir=parts[0])
    _label_stats(args, out_dir)
    _diagnose(run)
    return status


def refuse_mixed_folder(output, several):
    """A folder holds the outputs of one filtration (diagrams, settings.json, labels_TYPE.*) or those of several
    (filtration_NAME/ parts and their concatenated labels_TYPE.*), never both: a run of the other kind into it
    is refused before anything is written (else its label files and settings.json would contradict each
    other, and pretraining -pd would read the one or the other)."""
    if not os.path.isdir(output):
        return
    labels = {}
    for name in sorted(os.listdir(output)):
        if name.startswith('labels_') and name.endswith('.json'):
            meta = read_json(os.path.join(output, name))
            if isinstance(meta, dict) and meta.get('filtration') is not None:
                labels[name] = meta['filtration']
    if several:
        kinds = [
            k
            for k in (read_json(os.path.join(output, SETTINGS_FILE)) or {})
            if k in ('diagram', 'hist', 'persistence_image')
        ]
        single = {n: f for n, f in labels.items() if not isinstance(f, list)}
        if kinds or single:
            what = ', '.join([f'{k} outputs ({SETTINGS_FILE})' for k in kinds] + list(single))
            raise UserError(
                f"-o {output} holds the outputs of one filtration ({what}); several --filtration values write "
                "filtration_NAME/ parts and a concatenated label matrix, which must not mix with them: choose "
                "another -o (or delete those outputs first)"
            )
        return
    multi = {n: f for n, f in labels.items() if isinstance(f, list)}
    if multi:
        name, filtrations = next(iter(multi.items()))
        raise UserError(
            f"-o {output} holds a label matrix of several filtrations ({name}: --filtration {' '.join(filtrations)}); "
            "the outputs of one filtration must not mix with it: choose another -o, or give --filtration "
            f"{' '.join(filtrations)} to resume that run"
        )


def join_label_matrices(out_dir, parts, label_type):
    """Concatenate the columns of ``labels_TYPE`` of the folders ``parts`` (same rows, same images as they are
    now) into ``out_dir``; returns ``(rows, columns)``, or None while a part is missing.  Kept when already
    made from these parts."""
    names = label_names(label_type)
    metas, paths = [], None
    for part in parts:
        npy, txt, js = (os.path.join(part, x) for x in names)
        meta = read_json(js)
        if meta is None or not os.path.isfile(npy):
            return None
        rows = read_paths(txt)
        if paths is not None and (rows != paths or meta.get('sources') != metas[0].get('sources')):
            raise UserError(f"{part} holds labels of other images than {parts[0]}; recompute them together")
        paths = rows
        metas.append(meta)
    info = dict(
        label_type=label_type,
        params=[m['params'] for m in metas],
        filtration=[m['filtration'] for m in metas],
        imgtype=metas[0].get('imgtype'),
        gradient=metas[0].get('gradient'),
        size_normalise=metas[0].get('size_normalise'),
        parts=[os.path.basename(p) for p in parts],
        target_dir=metas[0].get('target_dir'),
    )
    old = read_json(os.path.join(out_dir, names[2]))
    if old is not None and same_params(old, info) and old.get('sources') == metas[0].get('sources'):
        return old['count'], old['dim']
    matrix = np.concatenate([np.load(os.path.join(p, names[0])) for p in parts], axis=1)
    write_label_matrix(out_dir, names, matrix, paths, info, metas[0].get('sources'))
    return matrix.shape


def _open_run(args):
    """Check the folders, list and shard the inputs."""
    target_dir = require_dir(args.target_dir, 'target folder', flag='TARGET_DIR')
    if args.imgtype != 'npy':  # (from saved diagrams, -o TARGET_DIR is the original's way to add -ch outputs)
        refuse_output_inside(args.output, [('TARGET_DIR', target_dir)])
    k, n = parse_shard(args.shard)
    if args.label_type != sources.RANDOM:
        refuse_mixed_folder(args.output, several=False)
    out_dir = ensure_dir(args.output, 'output folder')
    if (
        args.compute_persistence_image
        and args.imgtype == 'npy'
        and os.path.realpath(out_dir) == os.path.realpath(target_dir)
    ):
        raise UserError(
            "-cpi with -it npy writes persistence images as <stem>.npy, which would overwrite the "
            f"diagrams in {target_dir}; choose another output folder with -o"
        )
    all_files = list_inputs(target_dir, args.imgtype, out_dir)
    if not all_files:
        raise UserError(
            f"no *.{args.imgtype} files under {target_dir}; set --imgtype/-it to the extension "
            "of your images (e.g. -it jpg)"
        )
    _refuse_shared_stems(all_files)
    return Run(args, target_dir, out_dir, k, n, all_files, shard_of(all_files, k, n))


def _histogram_vectoriser(args):
    return make_vectoriser(
        'histogram',
        sum(args.num_bins),
        max_life=args.max_life,
        max_birth=args.max_birth,
        bandwidth=args.bandwidth,
        num_bins=args.num_bins,
    )


def _vectorisers(run, args=None):
    """The vectorisers this run writes with, and the record of the label's making.  Without a ``run``: only
    made from ``args`` (which refuses bad parameters), nothing fitted."""
    args = run.args if run is not None else args
    vecs = Vectorisers()
    if args.compute_hist:
        vecs.hist = _histogram_vectoriser(args)
    if args.compute_persistence_image:
        vecs.pimg = make_vectoriser(
            'persistence_image',
            _pi_dim(args),
            max_life=args.max_life,
            max_birth=args.max_birth,
            min_birth=args.min_birth,
            sigma=args.sigma,
            power=args.power,
        )
    if args.label_type and args.label_type != sources.RANDOM:
        vecs.label = vectoriser_from_args(args, args.numof_dims, '--numof_dims')
        if run is None:
            return vecs
        if vecs.label.auto:
            _fit_auto(run, vecs.label)
        vecs.label_info = dict(
            label_type=args.label_type,
            params=vecs.label.get_params(),
            filtration=args.filtration,
            imgtype=args.imgtype,
            target_dir=os.path.abspath(run.target_dir),
            ph_engine=args.ph_engine,
        )  # the engine is recorded, not compared: both engines give equal pairs
        if getattr(args, 'auto_fitted', None):
            vecs.label_info['auto'] = dict(fitted=args.auto_fitted, sample=FIT_SAMPLE)
            if vecs.label.without_pairs:  # kept the values given (or the defaults) there
                vecs.label_info['auto']['without_pairs'] = [f'H{h}' for h in vecs.label.without_pairs]
        if args.gradient:
            vecs.label_info['gradient'] = True
        if args.size_normalise:
            vecs.label_info['size_normalise'] = ph.SIZE_REFERENCE
    return vecs


FIT_SAMPLE = 256  # diagrams --max_life/--sigma ... auto are fitted on (evenly spaced over all inputs)


def _fit_auto(run, vec):
    """Fit the ``auto`` parameters of ``vec`` on the diagrams of a sample of the inputs -- the same sample
    for every shard (it is taken from all of them), so the shards' matrices agree; the fitted values go to
    labels_TYPE.json (``params``, ``auto``) and args.json."""
    args = run.args
    sample = [run.all_files[i] for i in diagnostics.sample_rows(len(run.all_files), FIT_SAMPLE)]
    source = 'npy' if args.imgtype == 'npy' else 'image'
    jobs = [
        (
            os.path.join(run.target_dir, *rel.split('/')),
            source,
            args.filtration,
            args.gradient,
            args.ph_engine,
            args.size_normalise,
        )
        for rel in sample
    ]
    diagrams = []
    for _, dgm, _err in tqdm(
        ph.iter_diagrams(jobs, workers=min(args.num_workers, len(jobs))),
        total=len(jobs),
        desc='fitting auto',
        unit='file',
        file=sys.stderr,
    ):
        if dgm is not None:  # a bad input is reported by the main pass
            diagrams.append(dgm)
    fitted = vec.auto
    vec.fit(diagrams)
    params = vec.get_params()
    for name in fitted:
        if hasattr(args, name) and name in params:
            setattr(args, name, params[name])  # args.json records the fitted values
    args.auto_fitted = list(fitted)
    warning = vec.fit_warning()  # a homology dimension (or all) without pairs to fit on
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if len(vec.without_pairs) < 2:
        print(
            f"fitted on {len(diagrams)} diagrams: "
            + ', '.join(f"{n} {params[n]}" for n in ('max_life', 'min_birth', 'max_birth', 'sigma') if n in params)
        )


def _compute(run, vecs):
    """Compute (or load) the diagrams still needed, write the per-file outputs, fill the label matrix."""
    args, files = run.args, run.files
    run.outs = _Outputs(args, run.target_dir, run.out_dir)
    run.log = SourceLog(run.out_dir)
    jobs, job_files, complete, earlier_hist, todo = _plan(run, vecs.label is not None)
    res = Results(ok=np.zeros(len(files), dtype=bool), complete=complete, earlier_hist=earlier_hist)
    res.ok[list(complete)] = True
    if vecs.label is not None:
        res.matrix = np.zeros((len(files), vecs.label.dim), np.float32)
    if vecs.hist is not None:
        res.hist_sum = np.zeros(vecs.hist.dim)
    pending = []  # (file index, diagram) waiting to be vectorised
    with tqdm(total=len(jobs), desc='PH', unit='file', file=sys.stderr, disable=not jobs) as bar:
        for j, dgm, err in ph.iter_diagrams(jobs, workers=min(args.num_workers, len(jobs) or 1)):
            i = job_files[j]
            bar.update(1)
            if err is not None:
                res.failures.append(files[i])
                res.ok[i] = False
                tqdm.write(f"bad input: {err}", file=sys.stderr)
                continue
            res.ok[i] = True
            path = run.outs.diagram(files[i])
            if path is not None and 'diagram' in todo[i]:
                run.outs.makedirs(path)
                save_npy(path, dgm)
                run.log.record(run.outs.key(path), files[i], run.fingerprints[i])  # only once the file is in place
            pending.append((i, dgm))
            if len(pending) >= FLUSH_EVERY:
                _flush(run, vecs, res, pending, todo)
        _flush(run, vecs, res, pending, todo)
    run.log.close()
    return res


def _flush(run, vecs, res, pending, todo):
    """Vectorise the ``pending`` (file index, diagram) pairs: per-file outputs and label matrix rows."""
    if not pending:
        return
    idx = [i for i, _ in pending]
    dgms = [d for _, d in pending]
    outs, files = run.outs, run.files
    for vec, path_of, kind in ((vecs.hist, outs.hist, 'hist'), (vecs.pimg, outs.pimg, 'persistence_image')):
        if vec is None:
            continue
        redo = [j for j, i in enumerate(idx) if kind in todo[i]]
        if redo:
            for row, j in zip(vec.transform([dgms[j] for j in redo]), redo):
                path = path_of(files[idx[j]])
                outs.makedirs(path)
                save_npy(path, row)
                run.log.record(outs.key(path), files[idx[j]], run.fingerprints[idx[j]])  # after the rename
                if vec is vecs.hist:
                    res.hist_sum += row
                    res.hist_count += 1
    if res.matrix is not None:
        res.matrix[idx] = vecs.label.transform(dgms)
    pending.clear()


def _finish(run, vecs, res):
    """The outputs made of the whole run: mean histogram, label matrix (merged shards), plots, statistics."""
    args = run.args
    if vecs.hist is not None:
        _hist_summary(run, res)
    if res.matrix is not None:
        _write_labels(run, vecs.label_info, res)
    elif vecs.label_info is not None:
        print(f"label matrix {label_names(args.label_type, run.k, run.n)[0]} is complete; kept")
        if run.n > 1 and merge_label_shards(run.out_dir, args.label_type, run.n, vecs.label_info, run.all_files):
            print(f"merged {run.n} shards into {label_names(args.label_type)[0]}")
    _label_stats(args, run.out_dir)
    if args.label_type:
        _diagnose(run)
    if args.plot:
        _plots(run, res.ok, vecs.hist or vecs.pimg)


def _report(run, res):
    """The closing line (and the failed inputs); the exit status."""
    skipped = sum(1 for i in res.complete if res.ok[i])
    done = int(res.ok.sum()) - skipped
    print(
        f"PHdict: {done} done, {skipped} skipped, {len(res.failures)} failed of {len(run.files)} files"
        f"{run.shard_note} -> {run.out_dir}",
        flush=True,
    )
    if res.failures:
        failures = res.failures
        print(
            f"failed inputs ({len(failures)}): " + ', '.join(failures[:20]) + (' ...' if len(failures) > 20 else ''),
            file=sys.stderr,
        )
        if not run.args.skip_bad:
            return 1
    return 0


def _hist_summary(run, res):
    """Print the maxima of the mean histogram and save its four curves as ``hist_mean.png``: the histograms
    written by this run (``res.hist_sum`` / ``res.hist_count``) and those an earlier run wrote (read back)."""
    args, files, out_dir, k, n = run.args, run.files, run.out_dir, run.k, run.n
    total, count = res.hist_sum.copy(), res.hist_count
    for i in res.earlier_hist:
        if res.ok[i]:
            total += np.load(run.outs.hist(files[i]))
            count += 1
    if count == 0:
        return
    mean = total / count
    nb = np.cumsum([0] + list(args.num_bins))
    curves = [mean[nb[j] : nb[j + 1]] for j in range(4)]
    print(
        "mean histogram maxima (H0 life, H1 life, H0 birth, H1 birth): "
        + ', '.join(f'{c.max():.4g}' if c.size else '-' for c in curves)
    )
    from util.plot.ph_plot import hist_mean_png

    name = 'hist_mean.png' if n == 1 else f'hist_mean.shard-{k}-of-{n}.png'
    hist_mean_png(os.path.join(out_dir, name), curves, count)


def _label_stats(args, out_dir):
    """--label_norm standard: the statistics of the whole label matrix, into its json."""
    if args.label_type and args.label_norm == 'standard':
        if label_norm.add_stats_to_json(out_dir, args.label_type, args.label_norm_floor) is not None:
            print(f"label statistics (--label_norm standard) in {label_names(args.label_type)[2]}")
    if args.label_type and args.label_norm == 'whiten':
        rec = label_norm.add_whiten_to_json(out_dir, args.label_type, args.label_norm_components, args.label_norm_floor)
        if rec is not None:  # its k: the directions kept (at most the rows - 1)
            print(f"label whitening (--label_norm whiten, {rec['k']} directions) in {label_names(args.label_type)[2]}")


def _random_labels(run):
    """--label_type random: the random-target matrix of the listed files (no PH is computed)."""
    args, files, out_dir, k, n = run.args, run.files, run.out_dir, run.k, run.n
    if args.compute_hist or args.compute_persistence_image or args.plot:
        raise UserError(
            "--label_type random computes no persistent homology: drop -ch, -cpi and --plot (run "
            "PHdict.py separately for them)"
        )
    info = dict(
        label_type=sources.RANDOM,
        params={'seed': args.seed, 'distribution': 'standard normal', 'key': 'relative path without extension'},
        filtration=None,
        imgtype=args.imgtype,
        gradient=False,
    )
    names = label_names(sources.RANDOM, k, n)
    if label_matrix_complete(out_dir, names, files, info):
        print(f"label matrix {names[0]} is complete; kept")
    else:
        keys = [sources.image_key(f) for f in files]
        write_label_matrix(out_dir, names, sources.random_matrix(args.seed, keys, args.numof_dims), files, info)
        print(f"label matrix {names[0]}: {len(files)} x {args.numof_dims} random targets (seed {args.seed})")
    if n > 1:
        merge_label_shards(out_dir, sources.RANDOM, n, info, run.all_files)
    _label_stats(args, out_dir)
    return 0


def _write_labels(run, label_info, res):
    """Write this run's (shard's) label matrix, and merge the shards once all are there."""
    args, out_dir, n = run.args, run.out_dir, run.n
    if res.failures and not args.skip_bad:
        print(
            f"label matrix not written: {len(res.failures)} inputs failed (rerun after fixing them, or give "
            "--skip_bad to leave them out)",
            file=sys.stderr,
        )
        return
    keep = np.flatnonzero(res.ok)
    paths = [run.files[i] for i in keep]
    names = label_names(args.label_type, run.k, n)
    entries = source_entries([run.fingerprints[i] for i in keep])
    write_label_matrix(out_dir, names, res.matrix[keep], paths, label_info, entries)
    print(f"label matrix {names[0]}: {len(paths)} x {res.matrix.shape[1]} float32 (paths in {names[1]})")
    if n > 1:
        merged = merge_label_shards(out_dir, args.label_type, n, label_info, None if args.skip_bad else run.all_files)
        if merged is not None:
            print(f"merged {n} shards into {label_names(args.label_type)[0]} ({merged} rows)")
        else:
            print(
                f"other shards not finished yet: {label_names(args.label_type)[0]} is written by the shard "
                "that finds all parts present"
            )


def _plots(run, ok, fallback_vec):
    """``plots/<stem>.png`` for the first ``--plot`` inputs that were read successfully."""
    args, files, outs, target_dir, out_dir = run.args, run.files, run.outs, run.target_dir, run.out_dir
    vec = vectoriser_from_args(args, args.numof_dims) if args.label_type else fallback_vec
    if vec is None:
        vec = _histogram_vectoriser(args)
    from util.plot.ph_plot import plot_ph

    plot_dir = os.path.join(out_dir, 'plots')
    for i, rel in enumerate(files[: args.plot]):
        if not ok[i]:
            continue
        src = os.path.join(target_dir, *rel.split('/'))
        path = os.path.join(plot_dir, *os.path.splitext(rel)[0].split('/')) + '.png'
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if outs.from_npy:
            dgm = np.load(src)
            image = filtration = np.zeros((2, 2))
            title = rel + ' (diagram only)'
        else:
            from util.io.fileio import load_image

            im = load_image(src, 'RGB')
            filtration = ph.compute_filtration(im, args.filtration, gradient=args.gradient)
            dgm_path = outs.diagram(rel)
            dgm = (
                np.load(dgm_path) if os.path.exists(dgm_path) else ph.diagram_of_filtration(filtration, args.ph_engine)
            )
            image, title = np.asarray(im), rel
        plot_ph(path, image, filtration, dgm, vec(dgm), title=title, vector_label=f'{vec.label_type} ({vec.dim})')
    print(f"plots of the first {min(args.plot, len(files))} inputs in {plot_dir}")
    if args.label_type:
        _diagnostics_plot(run, plot_dir)


def _diagnostics_plot(run, plot_dir):
    """``plots/diagnostics.png``: the variance spectrum and diagnostics of the label matrix (whole or shard)."""
    from util.plot.plotting import label_diagnostics_png

    for names in (label_names(run.args.label_type), label_names(run.args.label_type, run.k, run.n)):
        npy, _, js = (os.path.join(run.out_dir, x) for x in names)
        diag = (read_json(js) or {}).get(diagnostics.JSON_KEY)
        if diag and os.path.isfile(npy):
            matrix = np.load(npy, mmap_mode='r', allow_pickle=False)
            rows = diagnostics.sample_rows(matrix.shape[0])
            label_diagnostics_png(os.path.join(plot_dir, 'diagnostics.png'), matrix[rows], diag, title=names[0])
            print(f"label diagnostics plot: {os.path.join(plot_dir, 'diagnostics.png')}")
            return


def _diagram_path(run, rel):
    """Where the diagram of input ``rel`` is: the input itself (-it npy) or the one this script saved."""
    if run.args.imgtype == 'npy':
        return os.path.join(run.target_dir, *rel.split('/'))
    return os.path.join(run.diagram_dir or run.out_dir, *os.path.splitext(rel)[0].split('/')) + '.npy'


def _diagnose(run):
    """The label diagnostics (util/ph/diagnostics.py) of the label matrices this run wrote or kept: into their
    json under ``diagnostics``, one line printed, and a warning for a degenerate label."""
    label_type = run.args.label_type
    wanted = [label_names(label_type, run.k, run.n)] + ([label_names(label_type)] if run.n > 1 else [])
    for names in wanted:
        npy, txt, js = (os.path.join(run.out_dir, x) for x in names)
        meta = read_json(js)
        if meta is None or not os.path.isfile(npy):
            continue
        diag = meta.get(diagnostics.JSON_KEY)
        settings = _levers_in_use(run.args)
        if not diag or any(
            diag.get(k) != v
            for k, v in (('rows', meta.get('count')), ('label_norm', run.args.label_norm), ('settings', settings))
        ):
            diag = _label_diagnostics(run, npy, txt, meta)
            diag['settings'] = settings  # the levers in use: the warnings suggest only the others
            write_json(js, dict(meta, **{diagnostics.JSON_KEY: diag}))
        print(f"{names[0]}: {diagnostics.summary_line(diag)}")
        if diag.get('after_label_norm'):
            print(f"  after --label_norm {run.args.label_norm}: {diagnostics.summary_line(diag['after_label_norm'])}")
        for warning in diagnostics.degeneracy_warnings(diag.get('after_label_norm') or diag, settings):  # regressed
            print(f"warning: {warning}", file=sys.stderr)


def _levers_in_use(args):
    """What the degeneracy warnings need to know of this run's label settings (util.ph.diagnostics)."""
    auto = set(getattr(args, 'auto_fitted', None) or ())
    auto |= {n for n in ('max_life', 'max_birth', 'min_birth', 'sigma') if 'auto' in _values(getattr(args, n, None))}
    return dict(
        label_type=args.label_type,
        auto=sorted(auto),
        size_normalise=bool(args.size_normalise),
        filtration=args.filtration,
        label_norm=args.label_norm,
    )


def _normalised(run, meta, rows):
    """The label rows as pretraining --label_norm sees them (the statistics in ``meta``), or None."""
    if run.args.label_norm == 'standard' and meta.get(label_norm.JSON_KEY):
        rec = meta[label_norm.JSON_KEY]
        return (rows - np.asarray(rec['mean'])) / np.asarray(rec['std'])
    if run.args.label_norm == 'whiten' and meta.get(label_norm.WHITEN_KEY):
        mean, mapping = label_norm.whiten_from_record(meta[label_norm.WHITEN_KEY], rows.shape[1], 'label json')
        return (rows - mean) @ mapping
    return None


def _label_diagnostics(run, npy, txt, meta):
    matrix = np.load(npy, mmap_mode='r', allow_pickle=False)
    names = read_paths(txt)
    rows = diagnostics.sample_rows(len(names))
    picked = [names[i] for i in rows]
    try:
        counts = diagnostics.diagram_counts([np.load(_diagram_path(run, rel)) for rel in picked])
    except (OSError, ValueError):
        counts = None  # a diagram gone since: the count fit is left out
    params = diagnostics.generator_features(picked, run.target_dir) if run.args.imgtype != 'npy' else None
    labels = np.asarray(matrix[rows], dtype=np.float64)
    diag = diagnostics.compute(labels, counts, params)
    diag['rows'] = len(names)
    diag['label_norm'] = run.args.label_norm
    normalised = _normalised(run, meta, labels)
    if normalised is not None:  # what the network regresses under --label_norm
        diag['after_label_norm'] = diagnostics.compute(normalised, counts, params)
    return diag


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
