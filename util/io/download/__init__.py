"""Download, verify, safely unpack and convert the public image datasets used for fine-tuning.

One module per concern:

* :mod:`~util.io.download.network`: HTTP downloads that resume (``Range``), checksums checked before use;
* :mod:`~util.io.download.archives`: validated extraction of tar/zip archives, the restricted unpickler;
* :mod:`~util.io.download.converters`: readers of the published formats (CIFAR pickles, IDX), the split
  writers with their ``.partial``/``.done`` markers, the per-dataset layouts;
* :mod:`~util.io.download.medmnist`: the MedMNIST 2-D sets (their table, the streaming ``.npz`` reader);
* :mod:`~util.io.download.catalog`: the URL/checksum table and the entry points :func:`download_dataset`
  and :func:`setup_local_dataset`.

The names below are the package's public interface (``from util.io.download import download_dataset``).
Tests that replace a function patch it in the module that looks it up (e.g. ``converters.read_cifar``).
"""

from util.io.download.archives import RestrictedUnpickler, extract_once, open_archive, restricted_loads, safe_extract
from util.io.download.catalog import (
    ANIMAL_SETS,
    DATASET_NAMES,
    LOCAL_ONLY,
    SOURCES,
    Source,
    dataset_key,
    download_dataset,
    load_sources_file,
    normalize_sources,
    setup_local_dataset,
)
from util.io.download.converters import (
    FASHION_MNIST_CLASSES,
    SKIPPED_CLASSES,
    SPLITS,
    read_cifar,
    read_idx,
    read_mnist,
    split_done,
    split_folder_classes,
    write_array_split,
    write_folder_split,
)
from util.io.download.network import checksum_algorithm, download_file, file_digest, verify_checksum

__all__ = [
    'ANIMAL_SETS',
    'DATASET_NAMES',
    'FASHION_MNIST_CLASSES',
    'LOCAL_ONLY',
    'SKIPPED_CLASSES',
    'SOURCES',
    'SPLITS',
    'RestrictedUnpickler',
    'Source',
    'checksum_algorithm',
    'dataset_key',
    'download_dataset',
    'download_file',
    'extract_once',
    'file_digest',
    'load_sources_file',
    'normalize_sources',
    'open_archive',
    'read_cifar',
    'read_idx',
    'read_mnist',
    'restricted_loads',
    'safe_extract',
    'setup_local_dataset',
    'split_done',
    'split_folder_classes',
    'verify_checksum',
    'write_array_split',
    'write_folder_split',
]
