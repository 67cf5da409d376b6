"""MedMNIST (v2/v3): the 2-D biomedical classification sets, as ``<data_dir>/<name>/{train,val,test}/<class>/``.

Each set is one ``.npz`` per image size (28, 64, 128 or 224 pixels) published on Zenodo with an md5, holding
``{train,val,test}_images`` (N, S, S) or (N, S, S, 3) uint8 and ``{train,val,test}_labels`` (N, 1).  The
archive is verified like every other download before it is opened; it is then read with numpy's ``.npy``
header functions member by member, a few hundred images at a time (never ``allow_pickle``; the large sizes
hold gigabytes of pixels and are not loaded whole), and written as PNGs by
:func:`~util.io.download.converters.write_array_split`, which makes each split resumable.  A member that turns
out damaged while it is read (bad CRC-32: the checksum of the source table was taken of a damaged file) is
named in one UserError and the split being written is removed, marker included.  The official
validation split becomes ``val/`` and the official test split ``test/``.

Class folders are named from the set's own label table (:data:`MEDMNIST`, as MedMNIST's ``INFO`` gives it),
prefixed by the zero-padded label index so that the alphabetical folder order (what ``ImageFolder`` uses) is
the official label order: ``0_adipose``, ``1_background``, ... (``00_bladder`` ... ``10_spleen`` for 11 classes).
ChestMNIST is multi-label (any number of its 14 findings per X-ray) and cannot be class folders: it is refused.
The 3-D sets (``*mnist3d``) are volumes, not images, and are not offered.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from collections import namedtuple

import numpy as np
from numpy.lib import format as npy_format

from util.errors import UserError
from util.io.download import converters

SIZES = (28, 64, 128, 224)
SPLITS = ('train', 'val', 'test')
#: MedMNIST v3's Zenodo record: the URLs and md5s below are those of the INFO table of the medmnist package 3.0.2
ZENODO = 'https://zenodo.org/records/10519652/files/'
#: images read from the .npz at a time
BATCH = 256

MedSet = namedtuple('MedSet', 'task channels labels md5')

# the 11 organs of the three OrganMNIST views (axial, coronal, sagittal)
ORGAN_CLASSES = (
    'bladder',
    'femur-left',
    'femur-right',
    'heart',
    'kidney-left',
    'kidney-right',
    'liver',
    'lung-left',
    'lung-right',
    'pancreas',
    'spleen',
)

#: name -> (task, channels, label names in label order, {size: md5 of <name>[_<size>].npz}), from MedMNIST's INFO
MEDMNIST = {
    'pathmnist': MedSet(
        'multi-class',
        3,
        (
            'adipose',
            'background',
            'debris',
            'lymphocytes',
            'mucus',
            'smooth muscle',
            'normal colon mucosa',
            'cancer-associated stroma',
            'colorectal adenocarcinoma epithelium',
        ),
        {
            28: 'a8b06965200029087d5bd730944a56c1',
            64: '55aa9c1e0525abe5a6b9d8343a507616',
            128: 'ac42d08fb904d92c244187169d1fd1d9',
            224: '2c51a510bcdc9cf8ddb2af93af1eadec',
        },
    ),
    'chestmnist': MedSet(
        'multi-label, binary-class',
        1,
        (
            'atelectasis',
            'cardiomegaly',
            'effusion',
            'infiltration',
            'mass',
            'nodule',
            'pneumonia',
            'pneumothorax',
            'consolidation',
            'edema',
            'emphysema',
            'fibrosis',
            'pleural',
            'hernia',
        ),
        {
            28: '02c8a6516a18b556561a56cbdd36c4a8',
            64: '9de6cd0b934ebb5b7426cfba5efbae16',
            128: 'db107e5590b27930b62dbaf558aebee3',
            224: '45bd33e6f06c3e8cdb481c74a89152aa',
        },
    ),
    'dermamnist': MedSet(
        'multi-class',
        3,
        (
            'actinic keratoses and intraepithelial carcinoma',
            'basal cell carcinoma',
            'benign keratosis-like lesions',
            'dermatofibroma',
            'melanoma',
            'melanocytic nevi',
            'vascular lesions',
        ),
        {
            28: '0744692d530f8e62ec473284d019b0c7',
            64: 'b70a2f5635c6199aeaa28c31d7202e1f',
            128: '2defd784463fa5243564e855ed717de1',
            224: '8974907d8e169bef5f5b96bc506ae45d',
        },
    ),
    'octmnist': MedSet(
        'multi-class',
        1,
        ('choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'),
        {
            28: 'c68d92d5b585d8d81f7112f81e2d0842',
            64: 'e229e9440236b774d9f0dfef9d07bdaf',
            128: '0a97e76651ace45c5d943ee3f65b63ae',
            224: 'abc493b6d529d5de7569faaef2773ba3',
        },
    ),
    'pneumoniamnist': MedSet(
        'binary-class',
        1,
        ('normal', 'pneumonia'),
        {
            28: '28209eda62fecd6e6a2d98b1501bb15f',
            64: '8f4eceb4ccffa70c672198ea285246c6',
            128: '05b46931834c231683c68f40c47b2971',
            224: 'd6a3c71de1b945ea11211b03746c1fe1',
        },
    ),
    'retinamnist': MedSet(
        'ordinal-regression',
        3,
        ('0', '1', '2', '3', '4'),
        {
            28: 'bd4c0672f1bba3e3a89f0e4e876791e4',
            64: 'afda852cc34dcda56f86ad2b2457dbcc',
            128: 'e48e916a24454daf90583d4e6efb1a18',
            224: 'eae7e3b6f3fcbda4ae613ebdcbe35348',
        },
    ),
    'breastmnist': MedSet(
        'binary-class',
        1,
        ('malignant', 'normal, benign'),
        {
            28: '750601b1f35ba3300ea97c75c52ff8f6',
            64: '742edef2a1fd1524b2efff4bd7ba9364',
            128: '363e4b3f8d712e9b5de15470a2aaadf1',
            224: 'b56378a6eefa9fed602bb16d192d4c8b',
        },
    ),
    'bloodmnist': MedSet(
        'multi-class',
        3,
        (
            'basophil',
            'eosinophil',
            'erythroblast',
            'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)',
            'lymphocyte',
            'monocyte',
            'neutrophil',
            'platelet',
        ),
        {
            28: '7053d0359d879ad8a5505303e11de1dc',
            64: '2b94928a2ae4916078ca51e05b6b800b',
            128: 'adace1e0ed228fccda1f39692059dd4c',
            224: 'b718ff6835fcbdb22ba9eacccd7b2601',
        },
    ),
    'tissuemnist': MedSet(
        'multi-class',
        1,
        (
            'Collecting Duct, Connecting Tubule',
            'Distal Convoluted Tubule',
            'Glomerular endothelial cells',
            'Interstitial endothelial cells',
            'Leukocytes',
            'Podocytes',
            'Proximal Tubule Segments',
            'Thick Ascending Limb',
        ),
        {
            28: 'ebe78ee8b05294063de985d821c1c34b',
            64: '123ece2eba09d0aa5d698fda57103344',
            128: '61b955355d7425a89687b06cca3ce0c2',
            224: 'b077128c4a949f0a4eb01517f9037b9c',
        },
    ),
    'organamnist': MedSet(
        'multi-class',
        1,
        ORGAN_CLASSES,
        {
            28: '68e3f8846a6bd62f0c9bf841c0d9eacc',
            64: '2dcccc29b88e6da5a01161ef20cda288',
            128: 'eeae80d0a227a8d099027e1b3cfd3b60',
            224: '50747347e05c87dd3aaf92c49f9f3170',
        },
    ),
    'organcmnist': MedSet(
        'multi-class',
        1,
        ORGAN_CLASSES,
        {
            28: 'b9ceb9546e10131b32923c5bbeaea2b1',
            64: '3ce34a8724ea6f548e6db4744d03b6a9',
            128: '773c1f009daa3fe5d9a2a201b2a7ed94',
            224: '050f5e875dc056f6768abf94ec9995d1',
        },
    ),
    'organsmnist': MedSet(
        'multi-class',
        1,
        ORGAN_CLASSES,
        {
            28: '9ab87b696fb54e2a387ebe992d6ed5f1',
            64: '53a6d115339d874c25e309a994ff46d3',
            128: 'ded0c5fa01a95dc4978b956f613e9b8e',
            224: 'b354719e553fbbb2513d5533f52a4cb1',
        },
    ),
}
NAMES = tuple(MEDMNIST)


def key(name: str, size: int = 28) -> str:
    """The published file stem and our folder name: ``pathmnist`` (28 pixels), ``pathmnist_64``, ..."""
    return name if size == 28 else f'{name}_{size}'


def sources() -> dict[str, list[tuple[str, str, str]]]:
    """Source-table entries ``{key: [(url, '<key>.npz', md5)]}`` for every set and size."""
    return {
        key(name, size): [(f'{ZENODO}{key(name, size)}.npz?download=1', f'{key(name, size)}.npz', info.md5[size])]
        for name, info in MEDMNIST.items()
        for size in SIZES
    }


def check_usable(name: str, size: int) -> None:
    """UserError for a size MedMNIST does not publish or a set that cannot become class folders."""
    if size not in SIZES:
        raise UserError(f"--size {size}: MedMNIST is published at {', '.join(map(str, SIZES))} pixels")
    task = MEDMNIST[name].task
    if task.startswith('multi-label'):
        raise UserError(
            f"{name} is multi-label ({task}: an image has any number of its {len(MEDMNIST[name].labels)} findings "
            f"at once), so it cannot be laid out as one folder per class for single-label fine-tuning; "
            f"choose a single-label set such as pneumoniamnist"
        )


def class_folders(name: str) -> list[str]:
    """Folder names of the classes, in label order (index-prefixed, see the module docstring)."""
    labels = MEDMNIST[name].labels
    width = len(str(len(labels) - 1))
    return [f'{i:0{width}d}_' + converters.safe_class_name(c.replace(' ', '_'), name) for i, c in enumerate(labels)]


class NpyImages:
    """The images of one ``.npy`` member of an ``.npz``, indexed in order without loading them all.

    ``images[i]`` must be asked for with ``i`` increasing (what the split writer does); the member is read
    ``BATCH`` images at a time.  Only uint8 C-order arrays of shape (N, H, W) or (N, H, W, 3) are accepted.
    """

    def __init__(self, archive, member, what):
        self.what = what
        self.f = archive.open(member)
        readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
        try:
            version = npy_format.read_magic(self.f)
            if version not in readers:
                raise UserError(f"{what}: unsupported .npy version {version}")
            shape, fortran, dtype = readers[version](self.f)
        except ValueError as e:  # not an .npy header
            self.f.close()
            raise UserError(f"{what}: {e}") from None
        if dtype != np.uint8 or fortran or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
            raise UserError(f"{what}: expected uint8 images (N, H, W) or (N, H, W, 3), got {dtype} {shape}")
        self.shape, self.item = shape, int(np.prod(shape[1:]))
        self.start, self.block = 0, np.empty((0,) + tuple(shape[1:]), np.uint8)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, i):
        if not self.start <= i < self.start + len(self.block):
            if i != self.start + len(self.block):
                raise IndexError(f"{self.what}: images are read in order (asked {i} after {self.start})")
            n = min(BATCH, len(self) - i)
            data = self.f.read(n * self.item)
            if len(data) != n * self.item:
                raise UserError(f"{self.what}: truncated ({i + len(data) // self.item} of {len(self)} images)")
            if i + n == len(self) and self.f.read(1):  # reading to the member's end also checks its CRC-32
                raise UserError(f"{self.what}: more bytes than its {len(self)} images")
            self.start, self.block = i, np.frombuffer(data, np.uint8).reshape((n,) + tuple(self.shape[1:]))
        return self.block[i - self.start]

    def close(self):
        self.f.close()


def _labels(archive, member, what, n_images, n_classes):
    with archive.open(member) as f:
        try:
            labels = npy_format.read_array(f, allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{what}: {e}") from None
    if labels.dtype.kind not in 'iu' or labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        raise UserError(f"{what}: expected one integer label per image, got {labels.dtype} {labels.shape}")
    labels = labels.reshape(-1)
    if len(labels) != n_images:
        raise UserError(f"{what}: {len(labels)} labels for {n_images} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{what}: labels go from {labels.min()} to {labels.max()}, expected 0..{n_classes - 1}")
    return labels


#: what a damaged member raises while it is read (a bad CRC-32, deflate data that does not decode, a cut stream)
DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)


def _damaged(npz_path, detail):
    return UserError(
        f"{npz_path} is damaged ({detail}) although its checksum matches the source table; "
        f"delete it and run this again to download it anew"
    )


def _drop_unfinished(out_root, split):
    """Remove the output of a split this module began and did not finish (its folder and ``.partial`` marker)."""
    partial = os.path.join(out_root, f'.{split}.partial')
    if os.path.exists(partial) and not converters.split_done(out_root, split):
        shutil.rmtree(os.path.join(out_root, split), ignore_errors=True)
        os.unlink(partial)


def convert(name: str, npz_path: str, out_root: str, progress: bool = True) -> dict[str, dict[str, int] | None]:
    """Write the three splits of a verified ``.npz`` of set ``name``; returns {split: counts or None (done)}.

    A split that fails (a damaged member, a full disk, an interrupt) leaves nothing: its folder and marker are
    removed; splits finished before it are kept, and ``out_root`` is removed when that leaves it empty.
    """
    try:
        return _convert(name, npz_path, out_root, progress)
    except BaseException:
        if os.path.isdir(out_root) and not os.listdir(out_root):
            os.rmdir(out_root)
        raise


def _convert(name, npz_path, out_root, progress):
    folders = class_folders(name)
    try:
        archive = zipfile.ZipFile(npz_path)
    except zipfile.BadZipFile as e:
        raise UserError(f"cannot open {npz_path} as an .npz file ({e}); delete it and run this again") from None
    except OSError as e:
        raise UserError(f"cannot read {npz_path}: {e.strerror or e}") from None
    counts = {}
    with archive:
        members = set(archive.namelist())
        for split in SPLITS:
            for kind in ('images', 'labels'):
                if f'{split}_{kind}.npy' not in members:
                    raise UserError(f"{npz_path} has no {split}_{kind} array; is it a MedMNIST file?")
        for split in SPLITS:
            if converters.split_done(out_root, split):
                counts[split] = None
                continue
            images = None
            try:
                images = NpyImages(archive, f'{split}_images.npy', f'{npz_path}:{split}_images')
                labels = _labels(
                    archive, f'{split}_labels.npy', f'{npz_path}:{split}_labels', len(images), len(folders)
                )
                counts[split] = converters.write_array_split(out_root, split, images, labels, folders, progress)
            except DAMAGED as e:
                _drop_unfinished(out_root, split)
                raise _damaged(npz_path, e) from None
            except BaseException:
                _drop_unfinished(out_root, split)
                raise
            finally:
                if images is not None:
                    images.close()
    return counts
