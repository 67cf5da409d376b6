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

from util.cli import compat, label_flags, ph_build
from util.cli.label_flags import add_label_args
from util.cli.ph_flags import add_ph_args
from util.cli.strict_args import PHDICT_FLAGS, StrictArgumentParser
from util.errors import run_cli
from util.io.fileio import add_max_pixels_arg
from util.ph import cubical as ph
from util.ph.phconfig import PHConfig
from util.ph.vectorise import LABEL_TYPES

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
  labels_ph_class.{npy,txt,json}
                          --label_type ph_class: int64 [N] class ids (k-means of labels_<--ph_class_of>.npy,
                          whitened); the json holds the whitening and centroids that assign fresh images
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
    p.add_argument('--output', '-o', default=PHConfig.output, help="output folder (default: %(default)s)")
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
        default=list(PHConfig().num_bins),
        metavar=('LIFE0', 'LIFE1', 'BIRTH0', 'BIRTH1'),
        help="-ch histogram bins: H0 lifetimes, H1 lifetimes, H0 births, H1 births (default: 50 50 50 50)",
    )
    p.add_argument(
        '--num_workers',
        '-nw',
        type=int,
        default=PHConfig.num_workers,
        help="worker processes computing diagrams; 0 or 1: this process only (default: %(default)s)",
    )
    add_ph_args(
        p,
        {
            'filtration': "filtration of the binarised image (see util/ph/cubical.py); 'none' = raw grey values "
            "(sublevel sets), 'none_inv' = their superlevel sets.  Several (e.g. signed_distance none none_inv) "
            "with --label_type: each is computed into -o/filtration_NAME/ and the label matrices are concatenated "
            "into -o/labels_TYPE.* (length = their number x --numof_dims) (default: %(default)s)",
            'gradient': "take the filtration of the Canny edge map of the denoised image instead of the Otsu "
            "binarisation (thresholds from the median grey value; see util/ph/cubical.py) (default: off)",
            'size_normalise': "multiply the filtration values (births, deaths) by "
            f"{ph.SIZE_REFERENCE}/SIZE, SIZE = the image's longer side, as the original's later version does to "
            "distances: a shape gives the same diagram at every image size (filtrations in pixel units only; not "
            "with -it npy) (default: off)",
            'ph_engine': "PH engine: unionfind (exact, fast, 2-D images), cripser, or auto = unionfind for 2-D "
            "images; both give the same pairs (birth, death) -- tests/test_ph_unionfind.py checks "
            "it -- so diagrams and a label matrix made by one engine are accepted by a rerun with "
            "the other (the engines are recorded in settings.json and labels_TYPE.json); only row "
            "order and the pixel named among tied ones may differ (default: %(default)s)",
        },
        unique=True,
    )
    p.add_argument(
        '--numof_dims',
        type=int,
        default=PHConfig.numof_dims,
        help="length D of the --label_type vectors (default: %(default)s)",
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
    label_flags.allow_ph_class_choice(
        group,
        "--ph_classes K pseudo-classes, k-means on the whitened (--label_norm_components, --label_norm_floor) "
        "--ph_class_of label vectors, seeded by --seed: labels_ph_class.npy holds the class id int64 [N] per "
        "image, labels_ph_class.json the whitening and centroids (pretraining -pd -pc trains them with "
        "cross-entropy, -nc K)",
    )
    group.add_argument(
        '--seed',
        type=int,
        default=PHConfig.seed,
        help="--label_type random: the seed of the targets; "
        "pretraining.py --seed with the same value makes the same ones; --label_type ph_class: the seed of "
        "its k-means (default: %(default)s)",
    )
    group.add_argument(
        '--ph_classes',
        type=int,
        default=PHConfig.ph_classes,
        metavar='K',
        help="--label_type ph_class: the number of classes, 2 to the number of images (default: %(default)s)",
    )
    group.add_argument(
        '--ph_class_of',
        choices=LABEL_TYPES,
        default=PHConfig.ph_class_of,
        help="--label_type ph_class: the label type whose vectors (length --numof_dims, written as "
        "labels_TYPE.* too) are clustered (default: %(default)s)",
    )
    label_flags.add_norm_args(
        group,
        {
            'label_norm': "standard: also write the per-component mean and floored std of the label matrix "
            "into labels_TYPE.json, for pretraining.py --label_norm standard; whiten: its top "
            "--label_norm_components principal directions and their floored std (label_whiten), for "
            "pretraining.py --label_norm whiten (the matrix stays raw) (default: %(default)s)",
            'label_norm_floor': "std floor of --label_norm standard, relative to the RMS of the components' std "
            "(default: %(default)s)",
        },
    )
    p.set_defaults(label_type=None)
    compat.phdict_compat(p)  # the original's later names and value shapes (docs/compat.md)
    return p


def main(args):
    """Run PHdict on the parsed flags (the configuration is built once, in util/cli); returns the exit status."""
    return ph_build.run_phdict(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
