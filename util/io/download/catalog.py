"""The downloader's table of datasets and its two entry points.

:data:`SOURCES` maps a dataset name to a list of ``(url, filename, checksum)``; ``url`` may also be a list of
mirrors tried in order, ``checksum`` is a hex md5 (32 digits) or sha256 (64 digits).  Every function that uses
it accepts a replacement table (``sources=``), which is how the tests serve small archives from a loopback
server.

:func:`download_dataset` (one dataset, e.g. ``'CIFAR100'``): every file of the dataset is fetched and verified
by :func:`util.io.download.network.download_file` *before anything reads it*, then converted by
:mod:`util.io.download.converters`.  :func:`setup_local_dataset` splits the original's ``animal`` set, which
can no longer be downloaded, from folders the user provides.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from typing import TYPE_CHECKING, Any

from util.errors import UserError
from util.io.download import converters, medmnist, network, omniglot
from util.io.download.converters import MNIST_FILES
from util.io.download.network import checksum_algorithm
from util.io.fileio import ensure_dir

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_MNIST_MIRRORS = ('https://ossci-datasets.s3.amazonaws.com/mnist/', 'http://yann.lecun.com/exdb/mnist/')
_FASHION_BASE = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
_OMNIGLOT_BASE = 'https://raw.githubusercontent.com/brendenlake/omniglot/master/python/'

#: dataset name -> list of (url or list of mirror urls, file name in the raw folder, published checksum).
#: md5 values are those published with the datasets and used by torchvision's dataset classes.
SOURCES = {
    'CIFAR10': [
        (
            'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
            'cifar-10-python.tar.gz',
            'c58f30108f718f92721af3b95e74349a',
        )
    ],
    'CIFAR100': [
        (
            'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
            'cifar-100-python.tar.gz',
            'eb9058c3a382ffc7106e4002c42a8d85',
        )
    ],
    'MNIST': [
        ([m + f for m in _MNIST_MIRRORS], f, md5)
        for f, md5 in zip(
            MNIST_FILES,
            (
                'f68b3c2dcbeaaa9fbdd348bbdeb94873',
                'd53e105ee54ea40749a09fcbcd1e9432',
                '9fb629c4189551a2d022fa330f9573f3',
                'ec29112dd5afa0611ce80d1b7f02629c',
            ),
        )
    ],
    'fashionMNIST': [
        (_FASHION_BASE + f, f, md5)
        for f, md5 in zip(
            MNIST_FILES,
            (
                '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
                '25c81989df183df01b3e8a0aad5dffbe',
                'bef4ecab320f06d8554ea6380940ec79',
                'bb300cfdad3c16e7a12a480ee83cd310',
            ),
        )
    ],
    'omniglot': [
        (_OMNIGLOT_BASE + 'images_background.zip', 'images_background.zip', '68d2efa1b9178cc56df9314c21c6e718'),
        (_OMNIGLOT_BASE + 'images_evaluation.zip', 'images_evaluation.zip', '6b91aef0f799c5bb55b94e3f2daec811'),
    ],
    # the two small background sets (8 alphabets, 242 characters; Greek and Latin in both): split by drawer
    'omniglot_small': [
        (_OMNIGLOT_BASE + f, f, md5)
        for f, md5 in zip(omniglot.ARCHIVES, ('e704a628b5459e08445c13499850abc4', 'b75a71a51d3b13f821f212756fe481fd'))
    ],
    'caltech101': [
        (
            'https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip',
            'caltech-101.zip',
            '3138e1922a9193bfa496528edbbc45d0',
        )
    ],
    'caltech256': [
        (
            'https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar',
            '256_ObjectCategories.tar',
            '67b4f42ca05d46448c6bb8ecd2220f6d',
        )
    ],
}

DATASET_NAMES = tuple(SOURCES) + medmnist.NAMES
#: MedMNIST's 2-D sets at every size: 'pathmnist' (28 pixels), 'pathmnist_64', ... (see :func:`dataset_key`)
SOURCES.update(medmnist.sources())
Source = namedtuple('Source', 'urls filename checksum')


# ----------------------------------------------------------------------------------------------------
# source tables
# ----------------------------------------------------------------------------------------------------


def normalize_sources(entries: Sequence, name: str = 'dataset') -> list[Source]:
    """Check a list of ``(url or [urls], filename, checksum)`` and return it as :class:`Source` tuples.

    File names must be plain names (they are joined to the raw folder); every entry needs a hex
    md5 or sha256 checksum.  Raises :class:`UserError` naming the bad entry.
    """
    if not isinstance(entries, (list, tuple)) or not entries:
        raise UserError(f"sources for {name} must be a non-empty list of [url, filename, checksum]")
    out = []
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise UserError(f"source entry {entry!r} for {name} is not [url, filename, checksum]")
        urls, filename, checksum = entry
        urls = (urls,) if isinstance(urls, str) else tuple(urls)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise UserError(f"source entry {entry!r} for {name} has no url")
        if (
            not isinstance(filename, str)
            or filename in ('', '.', '..')
            or '/' in filename
            or '\\' in filename
            or '\x00' in filename
        ):
            raise UserError(f"source file name {filename!r} for {name} must be a plain file name")
        if checksum_algorithm(checksum) is None:
            raise UserError(
                f"source {filename!r} for {name} needs a hex md5 (32 digits) or sha256 (64 digits) "
                f"checksum, got {checksum!r}"
            )
        out.append(Source(urls, filename, checksum.lower()))
    return out


def load_sources_file(path: str | os.PathLike) -> dict[str, list]:
    """Read a JSON source table ``{"CIFAR100": [[url, filename, md5], ...], ...}`` (for ``--sources``)."""
    try:
        with open(path, encoding='utf-8') as f:
            table = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read sources file {path!r} (--sources): {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"sources file {path!r} (--sources) is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise UserError(f"sources file {path!r} (--sources) must hold an object mapping dataset names to lists")
    for key, entries in table.items():
        normalize_sources(entries, key)
    return table


# ----------------------------------------------------------------------------------------------------
# downloadable datasets
# ----------------------------------------------------------------------------------------------------


def dataset_key(name: str, size: int | None = None) -> str:
    """The source-table key and output folder name of ``name``: the name itself, or for a MedMNIST set at
    ``size`` pixels (default 28) ``<name>`` / ``<name>_<size>``.  UserError for a --size the set lacks, a size
    given for another dataset, or a set that cannot be class folders (multi-label ChestMNIST)."""
    if name in medmnist.NAMES:
        size = 28 if size is None else size
        medmnist.check_usable(name, size)
        return medmnist.key(name, size)
    if size is not None:
        raise UserError(f"--size is for the MedMNIST sets ({', '.join(medmnist.NAMES)}); {name} has one size")
    return name


def download_dataset(
    name: str,
    raw_dir: str,
    data_dir: str,
    sources: Mapping[str, Sequence] | None = None,
    val_ratio: float = 0.2,
    progress: bool = True,
    size: int | None = None,
) -> dict[str, Any]:
    """Download, verify and convert dataset ``name`` into ``<data_dir>/<name>/{train,val}/<class>/``.

    MedMNIST sets (``pathmnist``, ...) go to ``<data_dir>/<key>/{train,val,test}/<class>/`` with ``key`` from
    :func:`dataset_key` (``size``: 28, 64, 128 or 224 pixels; default 28).

    ``raw_dir``: where the archives are kept (and unpacked, for the folder datasets).
    ``sources``: a table like :data:`SOURCES` (only the entry for ``name`` is used); default SOURCES.
    ``val_ratio``: fraction of each class put in ``val/`` for datasets without an official test split
    (caltech101, caltech256, omniglot; omniglot_small: that fraction of its 20 drawers, see
    :mod:`util.io.download.omniglot`); ignored for the others.
    Returns ``{'path': <data_dir>/<name>, 'train': {class: count} or None, 'val': ...}`` where None
    means the split had already been written by an earlier run.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r} (--dataset); choose one of {', '.join(DATASET_NAMES)}")
    if not 0 <= val_ratio < 1:
        raise UserError(f"--validation_ratio must be in [0, 1), got {val_ratio}")
    key = dataset_key(name, size)
    table = SOURCES if sources is None else sources
    if key not in table:
        raise UserError(f"the source table has no entry for {key}")
    entries = normalize_sources(table[key], key)
    splits = medmnist.SPLITS if name in medmnist.NAMES else converters.SPLITS
    out_root, result = converters.open_output(data_dir, key, splits)
    if result is None:
        return {'path': out_root, **dict.fromkeys(splits)}
    ensure_dir(raw_dir, what='raw file folder (--raw_file_path)')
    raw_paths = {}
    for src in entries:
        raw_paths[src.filename] = network.download_file(
            src.urls, os.path.join(raw_dir, src.filename), md5=src.checksum, progress=progress
        )
    if name in medmnist.NAMES:
        if f'{key}.npz' not in raw_paths:
            raise UserError(f"the sources of {key} must include a file named {key + '.npz'!r}")
        result.update(medmnist.convert(name, raw_paths[f'{key}.npz'], out_root, progress))
    elif name == omniglot.NAME:
        result.update(omniglot.convert(raw_paths, raw_dir, out_root, val_ratio, progress))
    else:
        result.update(converters.convert_dataset(name, raw_paths, raw_dir, out_root, val_ratio, progress))
    return result


# ----------------------------------------------------------------------------------------------------
# the original's 'animal' choice: its source (a Google Pages site) is gone, so the files must be local
# ----------------------------------------------------------------------------------------------------

LOCAL_ONLY = ('animal',)
ANIMAL_SETS = ('non_rigid_shape_A', 'non_rigid_shape_B')


def setup_local_dataset(
    name: str, raw_dir: str, data_dir: str, val_ratio: float = 0.2, progress: bool = True
) -> dict[str, Any]:
    """``animal`` (the original's non-rigid shape dataset): split the class folders found in ``raw_dir``
    (``non_rigid_shape_A/<class>/<image>`` and/or ``non_rigid_shape_B/<class>/<image>``, as the original
    expected them unpacked) into ``<data_dir>/animal/{train,val}/<class>/``; returns as :func:`download_dataset`."""
    roots = [os.path.join(raw_dir, s) for s in ANIMAL_SETS if os.path.isdir(os.path.join(raw_dir, s))]
    if not roots:
        raise UserError(
            f"{name} is not downloadable (the original's source, xiang.bai.googlepages.com, is gone): "
            f"put its unpacked folders {ANIMAL_SETS[0]}/<class>/<image> and/or "
            f"{ANIMAL_SETS[1]}/<class>/<image> in {raw_dir} (--raw_file_path) and run this again"
        )
    if not 0 <= val_ratio < 1:
        raise UserError(f"--validation_ratio must be in [0, 1), got {val_ratio}")
    classes = {}
    for root in roots:
        for c, files in converters.caltech_classes(root).items():
            classes.setdefault(c, []).extend(files)
    for c, files in classes.items():
        names = [os.path.basename(f) for f in files]
        if len(set(names)) != len(names):
            dup = sorted(n for n in set(names) if names.count(n) > 1)[0]
            raise UserError(f"class {c!r} has two images named {dup!r} in {' and '.join(roots)}; rename one")
    if not classes:
        raise UserError(f"no images found in {' or '.join(roots)}")
    out_root, result = converters.open_output(data_dir, name)
    if result is None:
        return {'path': out_root, 'train': None, 'val': None}
    for split, items in converters.split_folder_classes(classes, val_ratio).items():
        result[split] = converters.write_folder_split(out_root, split, items, progress)
    return result
