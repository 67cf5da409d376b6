"""Converting verified downloads into ``<data_dir>/<name>/{train,val}/<class>/<image>`` folders.

* CIFAR (python version): the pickled batches are read straight from the ``.tar.gz`` with the restricted
  unpickler of :mod:`util.io.download.archives`.  Images are written as ``00000.png``, ``00001.png``, ...
  (index within the split) into folders named after the label names of the meta file.
* MNIST / Fashion-MNIST: the gzipped IDX files are parsed with numpy (:func:`read_idx`).  Class folders: MNIST
  ``'0'``..``'9'``; Fashion-MNIST ``'0_T-shirt_top'``..``'9_Ankle_boot'`` (the digit prefix keeps the
  alphabetical folder order equal to the official label order).
* Caltech-101 / Caltech-256 / Omniglot: the archives are unpacked with ``archives.safe_extract`` and the image
  files are copied byte for byte (JPEG/PNG as published).

The official test split becomes ``val/`` (what ``finetuning.py -val`` reads).  Datasets without an official
split (Caltech-101, Caltech-256, Omniglot with both its background and evaluation sets, alphabets being
disjoint) are split per class and deterministically: the files of a class are ordered by the md5 of
``"<class>/<file name>"`` and the first ``round(val_ratio * n)`` of them (at least one and at most ``n - 1``
when the class has two or more images) go to ``val/``.  Caltech's clutter classes (``BACKGROUND_Google``,
``257.clutter``) are left out, as are non-image files.

Every image goes through the atomic helpers of :mod:`util.io.fileio`.  A split is marked by
``<data_dir>/<name>/.<split>.partial`` while it is written and by ``.<split>.done`` (JSON with counts) when it
is complete; a rerun skips done splits, rewrites an interrupted one, and refuses to write into a split folder
it did not create (e.g. the output of another tool), so that images are never mixed or duplicated.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from util.errors import UserError
from util.io.download import archives
from util.io.download.network import CHUNK
from util.io.fileio import IMG_EXTENSIONS, atomic_open, ensure_dir, save_image, write_json

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Iterator, Mapping, Sequence

SPLITS = ('train', 'val')
MNIST_FILES = (
    'train-images-idx3-ubyte.gz',
    'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz',
    't10k-labels-idx1-ubyte.gz',
)
FASHION_MNIST_CLASSES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
#: classes of the folder datasets that are not object categories and are left out
SKIPPED_CLASSES = {'caltech101': ('BACKGROUND_Google',), 'caltech256': ('257.clutter',)}


def safe_class_name(name: object, what: object) -> str:
    """A class label usable as one folder name (path separators replaced); UserError if empty/'..'."""
    if isinstance(name, bytes):
        name = name.decode('latin1')
    name = str(name).replace('/', '_').replace('\\', '_').replace('\x00', '').strip()
    if name in ('', '.', '..'):
        raise UserError(f"{what} has an unusable class name {name!r}")
    return name


def _cifar_layout(name):
    """(folder inside the archive, meta file, label key, label-name key, train files, test files)."""
    if name == 'CIFAR10':
        return (
            'cifar-10-batches-py',
            'batches.meta',
            'labels',
            'label_names',
            [f'data_batch_{i}' for i in range(1, 6)],
            ['test_batch'],
        )
    return 'cifar-100-python', 'meta', 'fine_labels', 'fine_label_names', ['train'], ['test']


def read_cifar(
    archive: str | os.PathLike, name: str = 'CIFAR100'
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Read a verified CIFAR python archive without unpacking it to disk.

    Returns ``(class_names, {'train': (images, labels), 'val': (images, labels)})`` with images of
    shape (N, 32, 32, 3) uint8 (HWC, RGB) and labels of shape (N,) int64; ``val`` is the official test
    set.  CIFAR-100 uses the 100 fine labels.  Pickles are read with :func:`restricted_loads`.
    """
    folder, meta_file, label_key, names_key, train_files, test_files = _cifar_layout(name)
    kind, handle = archives.open_archive(archive)
    if kind != 'tar':
        handle.close()
        raise UserError(f"{archive} is not the tar.gz archive of the {name} python version")

    def load(member_name):
        path = f'{folder}/{member_name}'
        try:
            member = handle.getmember(path)
        except KeyError:
            raise UserError(f"{archive} has no member {path}; is it the {name} python version?") from None
        if not member.isreg():
            raise UserError(f"refusing {archive}: member {path!r} is not a regular file")
        with handle.extractfile(member) as f:
            obj = archives.restricted_loads(f.read(), f'{archive}:{path}')
        if not isinstance(obj, dict):
            raise UserError(f"{archive}:{path} does not hold a dict")
        return obj, f'{archive}:{path}'

    with handle:
        meta, where = load(meta_file)
        names = meta.get(names_key)
        if not isinstance(names, list) or not names:
            raise UserError(f"{where} has no list {names_key!r}")
        class_names = [safe_class_name(n, where) for n in names]
        if len(set(class_names)) != len(class_names):
            raise UserError(f"{where} has repeated class names")
        splits = {}
        for split, files in (('train', train_files), ('val', test_files)):
            images, labels = [], []
            for fname in files:
                batch, where = load(fname)
                data, lab = batch.get('data'), batch.get(label_key)
                if not (
                    isinstance(data, np.ndarray)
                    and data.dtype == np.uint8
                    and data.ndim == 2
                    and data.shape[1] == 3 * 32 * 32
                ):
                    raise UserError(f"{where}: 'data' is not an (N, 3072) uint8 array")
                try:
                    lab = np.asarray(lab, dtype=np.int64).reshape(-1)
                except (TypeError, ValueError):
                    raise UserError(f"{where}: {label_key!r} is not a list of integers") from None
                if len(lab) != len(data) or (len(lab) and (lab.min() < 0 or lab.max() >= len(class_names))):
                    raise UserError(f"{where}: {label_key!r} does not match the images or the class names")
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(lab)
            splits[split] = (np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
    return class_names, splits


def read_idx(path: str | os.PathLike, max_items: int = 10**8) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (MNIST format) into an array of its declared shape.

    Header: two zero bytes, type code 0x08 (uint8), number of dimensions, then each dimension as a
    big-endian int32.  Returns e.g. (N, 28, 28) uint8 for images, (N,) uint8 for labels.
    """
    try:
        with gzip.open(path, 'rb') as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b'\x00\x00' or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise UserError(f"{path} is not an IDX file of unsigned bytes (bad header {head!r})")
            raw_dims = f.read(4 * head[3])
            if len(raw_dims) != 4 * head[3]:
                raise UserError(f"{path} is truncated (incomplete IDX header)")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype='>i4'))
            count = int(np.prod(dims, dtype=np.int64))
            if min(dims) < 0 or count > max_items:
                raise UserError(f"{path} declares an implausible shape {dims}")
            body = f.read(count)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(body) != count:
        raise UserError(f"{path} is truncated: {len(body)} of {count} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_mnist(raw_paths: Mapping[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{'train': (images, labels), 'val': (images, labels)}`` from the four verified MNIST-format files.

    ``raw_paths`` maps the published file names (``train-images-idx3-ubyte.gz``, ...) to paths.
    Images are (N, 28, 28) uint8, labels (N,) uint8; ``val`` is the official t10k test set.
    """
    out = {}
    for split, prefix in (('train', 'train'), ('val', 't10k')):
        images = read_idx(raw_paths[f'{prefix}-images-idx3-ubyte.gz'])
        labels = read_idx(raw_paths[f'{prefix}-labels-idx1-ubyte.gz'])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{prefix} images {images.shape} and labels {labels.shape} of MNIST format do not match")
        out[split] = (images, labels)
    return out


# ----------------------------------------------------------------------------------------------------
# output folders
# ----------------------------------------------------------------------------------------------------


def _marker(out_root, split, state):
    return os.path.join(out_root, f'.{split}.{state}')


def split_done(out_root: str, split: str) -> bool:
    """True when ``<out_root>/<split>`` was completely written by :func:`download_dataset`."""
    return os.path.exists(_marker(out_root, split, 'done'))


def _check_output(out_root, splits=SPLITS):
    """Refuse to write into a split folder that exists but was not started by this module."""
    for split in splits:
        folder = os.path.join(out_root, split)
        if (
            os.path.exists(folder)
            and not split_done(out_root, split)
            and not os.path.exists(_marker(out_root, split, 'partial'))
        ):
            raise UserError(
                f"{folder} already exists but was not written by this downloader; "
                f"remove it or choose another --data_file_path"
            )


def _begin_split(out_root, split):
    """Prepare ``<out_root>/<split>`` for writing; False if it is already done (nothing to do)."""
    if split_done(out_root, split):
        return False
    folder = os.path.join(out_root, split)
    if os.path.exists(folder):  # left by an interrupted run of ours (checked by _check_output)
        print(f"{folder}: removing the incomplete output of an interrupted run", file=sys.stderr)
        shutil.rmtree(folder)
    ensure_dir(out_root, what='output folder (--data_file_path)')
    with atomic_open(_marker(out_root, split, 'partial'), 'wb'):
        pass
    os.makedirs(folder)
    return True


def _finish_split(out_root, split, counts):
    write_json(_marker(out_root, split, 'done'), {'images': int(sum(counts.values())), 'classes': counts})
    os.unlink(_marker(out_root, split, 'partial'))


def write_array_split(
    out_root: str,
    split: str,
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    progress: bool = True,
) -> dict[str, int] | None:
    """Write ``images`` (N, H, W) or (N, H, W, 3) uint8 as ``<out_root>/<split>/<class>/<index>.png``.

    ``labels`` (N,) index ``class_names``; file names are the zero-padded index within the split.
    Skips a split that is already done; returns {class name: image count}.
    """
    if not _begin_split(out_root, split):
        return None
    folder = os.path.join(out_root, split)
    for c in class_names:
        os.makedirs(os.path.join(folder, c), exist_ok=True)
    width = max(5, len(str(len(images) - 1)))
    counts = dict.fromkeys(class_names, 0)
    for i in tqdm(
        range(len(images)),
        desc=f"{os.path.basename(out_root)} {split}",
        unit='img',
        disable=not progress,
        file=sys.stderr,
    ):
        c = class_names[int(labels[i])]
        save_image(os.path.join(folder, c, f'{i:0{width}d}.png'), images[i])
        counts[c] += 1
    _finish_split(out_root, split, counts)
    return counts


def _val_files(class_name, file_names, val_ratio):
    """The file names of one class that go to val/ (deterministic, see the module docstring)."""
    n = len(file_names)
    n_val = int(round(val_ratio * n))
    if val_ratio > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = sorted(
        file_names,
        key=lambda f: (hashlib.md5(f'{class_name}/{f}'.encode('utf-8'), usedforsecurity=False).hexdigest(), f),
    )
    return set(order[:n_val])


def split_folder_classes(
    classes: Mapping[str, Sequence[str]], val_ratio: float
) -> dict[str, list[tuple[str, str, str]]]:
    """``{'train': [(class, src path, file name)], 'val': [...]}`` from ``{class: [src paths]}``.

    With ``val_ratio > 0`` a class with a single image is left out (with a warning): it could not be
    in both splits, and a class folder missing from ``val/`` would shift the label indices there.
    """
    out = {s: [] for s in SPLITS}
    for c in sorted(classes):
        paths = {os.path.basename(p): p for p in classes[c]}
        if val_ratio > 0 and len(paths) < 2:
            print(f"warning: class {c!r} has only {len(paths)} image; left out", file=sys.stderr)
            continue
        val = _val_files(c, list(paths), val_ratio)
        for fname in sorted(paths):
            out['val' if fname in val else 'train'].append((c, paths[fname], fname))
    return out


def write_folder_split(
    out_root: str, split: str, items: Iterable[tuple[str, str, str]], progress: bool = True
) -> dict[str, int] | None:
    """Copy ``items`` [(class, src path, file name)] byte for byte to ``<out_root>/<split>/<class>/<name>``."""
    if not _begin_split(out_root, split):
        return None
    folder = os.path.join(out_root, split)
    counts = {}
    for c, src, fname in tqdm(
        items, desc=f"{os.path.basename(out_root)} {split}", unit='img', disable=not progress, file=sys.stderr
    ):
        os.makedirs(os.path.join(folder, c), exist_ok=True)
        with open(src, 'rb') as fin, atomic_open(os.path.join(folder, c, fname), 'wb') as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
        counts[c] = counts.get(c, 0) + 1
    _finish_split(out_root, split, counts)
    return counts


def _image_files(folder):
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith('.') and os.path.isfile(os.path.join(folder, f))
    )


def _find_dir(root, name, what):
    """``root/name``, or the first folder called ``name`` below ``root``; UserError if there is none."""
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if name in dirnames:
            return os.path.join(dirpath, name)
    raise UserError(f"{what} does not contain a folder {name!r}")


def caltech_classes(root: str, skip: Container[str] = ()) -> dict[str, list[str]]:
    """``{class: [image paths]}`` from ``root/<class>/<image>`` (non-images and ``skip`` classes left out)."""
    classes = {}
    for c in sorted(os.listdir(root)):
        if c in skip or c.startswith('.') or not os.path.isdir(os.path.join(root, c)):
            continue
        files = _image_files(os.path.join(root, c))
        if files:
            classes[safe_class_name(c, root)] = files
    return classes


def omniglot_characters(root: str) -> Iterator[tuple[str, str, str]]:
    """``(alphabet, character, folder)`` of every ``<root>/<alphabet>/<character>/`` folder, sorted (hidden
    entries and files left out): Omniglot's layout, shared by its full and small sets."""
    for alphabet in sorted(os.listdir(root)):
        a_dir = os.path.join(root, alphabet)
        if alphabet.startswith('.') or not os.path.isdir(a_dir):
            continue
        for char in sorted(os.listdir(a_dir)):
            c_dir = os.path.join(a_dir, char)
            if not char.startswith('.') and os.path.isdir(c_dir):
                yield alphabet, char, c_dir


def omniglot_classes(set_roots: Iterable[str]) -> dict[str, list[str]]:
    """``{'<alphabet>_<character>': [png paths]}`` from ``images_background/<alphabet>/<character>/``."""
    classes = {}
    for root in set_roots:
        for alphabet, char, c_dir in omniglot_characters(root):
            files = _image_files(c_dir)
            if files:
                classes.setdefault(safe_class_name(f'{alphabet}_{char}', c_dir), []).extend(files)
    return classes


def _need(raw_paths, filename, name):
    if filename not in raw_paths:
        raise UserError(f"the sources of {name} must include a file named {filename!r}")
    return raw_paths[filename]


def convert_dataset(
    name: str, raw_paths: Mapping[str, str], raw_dir: str, out_root: str, val_ratio: float, progress: bool
) -> dict[str, dict[str, int] | None]:
    """Turn the verified files of dataset ``name`` into split folders; returns {split: counts}."""
    counts = {}
    if name in ('CIFAR10', 'CIFAR100'):
        archive = _need(raw_paths, f"{'cifar-10-python' if name == 'CIFAR10' else 'cifar-100-python'}.tar.gz", name)
        class_names, splits = read_cifar(archive, name)
        for split, (images, labels) in splits.items():
            counts[split] = write_array_split(out_root, split, images, labels, class_names, progress)
    elif name in ('MNIST', 'fashionMNIST'):
        splits = read_mnist({f: _need(raw_paths, f, name) for f in MNIST_FILES})
        if name == 'MNIST':
            class_names = [str(i) for i in range(10)]
        else:
            class_names = [
                f'{i}_' + safe_class_name(c.replace(' ', '_'), name) for i, c in enumerate(FASHION_MNIST_CLASSES)
            ]
        for split, (images, labels) in splits.items():
            if len(labels) and labels.max() >= len(class_names):
                raise UserError(f"{name} {split} labels go up to {labels.max()}, expected 0..{len(class_names) - 1}")
            counts[split] = write_array_split(out_root, split, images, labels, class_names, progress)
    else:
        if name == 'caltech101':
            outer = archives.extract_once(_need(raw_paths, 'caltech-101.zip', name), raw_dir, progress)
            inner_archive = os.path.join(_find_dir(outer, 'caltech-101', outer), '101_ObjectCategories.tar.gz')
            if not os.path.isfile(inner_archive):
                raise UserError(f"{outer} does not contain caltech-101/101_ObjectCategories.tar.gz")
            inner = archives.extract_once(inner_archive, raw_dir, progress)
            classes = caltech_classes(_find_dir(inner, '101_ObjectCategories', inner), SKIPPED_CLASSES[name])
        elif name == 'caltech256':
            inner = archives.extract_once(_need(raw_paths, '256_ObjectCategories.tar', name), raw_dir, progress)
            classes = caltech_classes(_find_dir(inner, '256_ObjectCategories', inner), SKIPPED_CLASSES[name])
        else:  # omniglot
            roots = []
            for set_name in ('images_background', 'images_evaluation'):
                unpacked = archives.extract_once(_need(raw_paths, set_name + '.zip', name), raw_dir, progress)
                roots.append(_find_dir(unpacked, set_name, unpacked))
            classes = omniglot_classes(roots)
        if not classes:
            raise UserError(f"no images found in the {name} archives in {raw_dir}")
        for split, items in split_folder_classes(classes, val_ratio).items():
            counts[split] = write_folder_split(out_root, split, items, progress)
    return counts


def open_output(data_dir: str, name: str, splits: Sequence[str] = SPLITS) -> tuple[str, dict[str, Any] | None]:
    """(``data_dir/name``, the result dict to fill) for a dataset still to be written, or (that folder, None)
    when all its ``splits`` are complete already (said on stdout); the folder is checked and created."""
    out_root = os.path.join(data_dir, name)
    if all(split_done(out_root, s) for s in splits):
        markers = '/'.join(f'.{s}.done' for s in splits)
        print(f"{out_root}: already complete (remove its {markers} to redo it)")
        return out_root, None
    _check_output(out_root, splits)
    ensure_dir(out_root, what='output folder (--data_file_path)')
    return out_root, {'path': out_root, **dict.fromkeys(splits)}
