"""Download, verify, safely unpack and convert the public image datasets used for fine-tuning.

Pipeline of :func:`download_dataset` (one dataset, e.g. ``'CIFAR100'``):

1. every archive of the dataset is fetched with :func:`download_file` into the raw folder
   (urllib, tqdm progress bar, resume of a ``<file>.part`` with an HTTP ``Range`` request);
2. it is checked against its published checksum (:func:`verify_checksum`) *before anything reads it*;
   a mismatching file is kept as ``<file>.bad`` (so it can be inspected; the next run downloads again)
   and a one-line :class:`~util.errors.UserError` is raised;
3. the verified archive is converted into ``<data_dir>/<name>/{train,val}/<class>/<image>``:

   * CIFAR (python version): the pickled batches are read straight from the ``.tar.gz`` with a
     *restricted* unpickler (:class:`RestrictedUnpickler`) that can build nothing but the numpy
     arrays, lists, dicts and strings these files contain; no code from the file can run, even if
     a checksum were ever wrong.  Images are written as ``00000.png``, ``00001.png``, ... (index
     within the split) into folders named after the label names of the meta file.
   * MNIST / Fashion-MNIST: the gzipped IDX files are parsed with numpy (:func:`read_idx`).
     Class folders: MNIST ``'0'``..``'9'``; Fashion-MNIST ``'0_T-shirt_top'``..``'9_Ankle_boot'``
     (the digit prefix keeps the alphabetical folder order equal to the official label order).
   * Caltech-101 / Caltech-256 / Omniglot: the archives are unpacked with :func:`safe_extract`
     (all members validated first, then written into a temporary folder that is renamed at the end)
     and the image files are copied byte for byte (JPEG/PNG as published).

The official test split becomes ``val/`` (what ``finetuning.py -val`` reads).  Datasets without an
official split (Caltech-101, Caltech-256, Omniglot with both its background and evaluation sets,
alphabets being disjoint) are split per class and deterministically: the files of a class are ordered
by the md5 of ``"<class>/<file name>"`` and the first ``round(val_ratio * n)`` of them (at least one
and at most ``n - 1`` when the class has two or more images) go to ``val/``.  Caltech's clutter classes
(``BACKGROUND_Google``, ``257.clutter``) are left out, as are non-image files.

Every image goes through the atomic helpers of :mod:`util.io.fileio`.  A split is marked by
``<data_dir>/<name>/.<split>.partial`` while it is written and by ``.<split>.done`` (JSON with counts)
when it is complete; a rerun skips done splits, rewrites an interrupted one, and refuses to write into
a ``train``/``val`` folder it did not create (e.g. the output of another tool), so that images are
never mixed or duplicated.

The URL/checksum table :data:`SOURCES` maps a dataset name to a list of ``(url, filename, checksum)``;
``url`` may also be a list of mirrors tried in order, ``checksum`` is a hex md5 (32 digits) or sha256
(64 digits).  Every function that uses it accepts a replacement table (``sources=``), which is how
the tests serve small archives from a loopback server.
"""

import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
import zipfile
from collections import namedtuple

import numpy as np
from tqdm import tqdm

from util.errors import UserError
from util.io.fileio import IMG_EXTENSIONS, TMP_MARK, atomic_open, ensure_dir, save_image, write_json

SPLITS = ('train', 'val')
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = 'PretrainCNNwithNoData-ImageDatasetsDownloader/1.0 (python urllib)'

_MNIST_FILES = (
    'train-images-idx3-ubyte.gz',
    'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz',
    't10k-labels-idx1-ubyte.gz',
)
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
            _MNIST_FILES,
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
            _MNIST_FILES,
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

DATASET_NAMES = tuple(SOURCES)
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

Source = namedtuple('Source', 'urls filename checksum')


# ----------------------------------------------------------------------------------------------------
# source tables
# ----------------------------------------------------------------------------------------------------


def _checksum_algorithm(checksum):
    """'md5' or 'sha256' from the length of a hex digest; None if it is not one."""
    if isinstance(checksum, str) and re.fullmatch(r'[0-9a-fA-F]+', checksum or ''):
        return {32: 'md5', 64: 'sha256'}.get(len(checksum))
    return None


def normalize_sources(entries, name='dataset'):
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
        if _checksum_algorithm(checksum) is None:
            raise UserError(
                f"source {filename!r} for {name} needs a hex md5 (32 digits) or sha256 (64 digits) "
                f"checksum, got {checksum!r}"
            )
        out.append(Source(urls, filename, checksum.lower()))
    return out


def load_sources_file(path):
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
# download and verification
# ----------------------------------------------------------------------------------------------------


def file_digest(path, algorithm='md5'):
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path, checksum):
    """True when the file's md5 (32 hex digits) or sha256 (64 hex digits) equals ``checksum``."""
    algorithm = _checksum_algorithm(checksum)
    if algorithm is None:
        raise UserError(f"checksum {checksum!r} for {path} is neither a hex md5 nor a sha256")
    return file_digest(path, algorithm) == checksum.lower()


def _refuse(path, dest, checksum, what):
    """Keep a file that failed verification as ``<dest>.bad`` and raise a one-line UserError."""
    algorithm = _checksum_algorithm(checksum)
    actual = file_digest(path, algorithm)
    bad = dest + '.bad'
    os.replace(path, bad)
    raise UserError(
        f"{what} {dest} has {algorithm} {actual}, not the published {checksum}; "
        f"it was not opened and is kept as {bad}; rerun to download it again "
        f"(or put a correct copy at {dest})"
    )


class _NetError(Exception):
    """A failed transfer (network, HTTP status, connection closed early); turned into a UserError."""


def _content_range_start(header):
    m = re.match(r'\s*bytes\s+(\d+)-', header or '')
    return int(m.group(1)) if m else None


def _fetch(url, part, progress=True, resume=True):
    """Transfer ``url`` into ``part``, continuing an existing partial file when the server allows it.

    Sends ``Range: bytes=<size>-`` for a non-empty ``part``; a ``206`` answer starting at that offset
    is appended, any other success answer (server ignores ranges) rewrites the file from the start.
    Returns True when bytes from an earlier attempt were kept (the caller retries from scratch if the
    result then fails verification).  Raises :class:`_NetError` on any transfer problem.
    """
    offset = os.path.getsize(part) if resume and os.path.exists(part) else 0
    headers = {'User-Agent': USER_AGENT}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # nothing after our offset: the partial file may already be complete
            return True
        raise _NetError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _NetError(str(e.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _NetError(str(e) or type(e).__name__) from None
    with resp:
        status = getattr(resp, 'status', None)
        if offset and status == 206:
            if _content_range_start(resp.headers.get('Content-Range')) != offset:
                resp.close()
                return _fetch(url, part, progress, resume=False)
            mode = 'ab'
        else:
            offset, mode = 0, 'wb'
        length = resp.headers.get('Content-Length')
        length = int(length) if length and length.isdigit() else None
        received = 0
        try:
            f = open(part, mode)
        except OSError as e:
            raise UserError(f"cannot write {part}: {e.strerror}; check --raw_file_path") from None
        with (
            f,
            tqdm(
                total=None if length is None else offset + length,
                initial=offset,
                unit='B',
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(part)[: -len('.part')],
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _NetError(
                        f"transfer broken after {offset + received} bytes ({e or type(e).__name__}); rerun to resume"
                    ) from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise UserError(f"cannot write {part}: {e.strerror}; check --raw_file_path") from None
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < length:
            raise _NetError(f"connection closed after {offset + received} of {offset + length} bytes; rerun to resume")
    return offset > 0


def download_file(url, dest, md5=None, progress=True):
    """Download ``url`` to the file ``dest`` and verify it; return ``dest``.

    ``url``: one URL or a list of mirrors tried in order.  ``md5``: the published checksum (hex md5,
    or a 64-digit sha256), or None to skip verification.  An existing ``dest`` is only verified.
    Bytes arrive in ``dest + '.part'``; an interrupted download is resumed with an HTTP ``Range``
    request on the next call (a server that ignores ranges makes it start over).  ``dest`` appears only
    once the whole file is there and verified.  On a checksum mismatch a resumed file is downloaded
    once more from scratch; if it still does not match it is kept as ``dest + '.bad'`` and a
    :class:`UserError` is raised.  Network/HTTP failures raise a :class:`UserError` naming the URLs.
    """
    dest = os.fspath(dest)
    urls = (url,) if isinstance(url, str) else tuple(url)
    if os.path.exists(dest):
        if md5 is not None and not verify_checksum(dest, md5):
            _refuse(dest, dest, md5, 'existing file')
        return dest
    ensure_dir(os.path.dirname(dest) or '.', what='raw file folder (--raw_file_path)')
    part = dest + '.part'
    failures = []
    for u in urls:
        try:
            resumed = _fetch(u, part, progress)
            if md5 is not None and resumed and not verify_checksum(part, md5):
                print(
                    f"{os.path.basename(dest)}: resumed download does not verify; downloading it again", file=sys.stderr
                )
                _fetch(u, part, progress, resume=False)
            break
        except _NetError as e:
            failures.append(f"{u} ({e})")
    else:
        raise UserError(
            f"cannot download {os.path.basename(dest)} from "
            + ', '.join(failures)
            + f"; check the network, or place the file yourself at {dest} (--raw_file_path)"
            + (f" (md5 {md5})" if md5 else '')
        )
    if md5 is not None and not verify_checksum(part, md5):
        _refuse(part, dest, md5, 'downloaded file')
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------------
# safe extraction
# ----------------------------------------------------------------------------------------------------


def _member_parts(name, archive):
    """Path components of an archive member name; UserError for absolute paths, '..' or odd names."""
    if '\x00' in name:
        raise UserError(f"refusing {archive}: member {name!r} has a NUL byte in its name")
    norm = name.replace('\\', '/')
    if norm.startswith('/') or re.match(r'[A-Za-z]:', norm):
        raise UserError(f"refusing {archive}: member {name!r} has an absolute path")
    parts = [p for p in norm.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise UserError(f"refusing {archive}: member {name!r} points outside the archive folder ('..')")
    return parts


def _tar_plan(tf, archive):
    """[(parts, is_dir, member)] for every member; UserError on links, devices, fifos, unsafe names."""
    plan = []
    for m in tf.getmembers():
        parts = _member_parts(m.name, archive)
        if m.issym() or m.islnk():
            kind = 'a symbolic link' if m.issym() else 'a hard link'
            raise UserError(f"refusing {archive}: member {m.name!r} is {kind} (to {m.linkname!r})")
        if m.ischr() or m.isblk() or m.isfifo():
            raise UserError(f"refusing {archive}: member {m.name!r} is a device or fifo")
        if not (m.isreg() or m.isdir()):
            raise UserError(f"refusing {archive}: member {m.name!r} has unsupported type {m.type!r}")
        if parts or m.isreg():
            if not parts:
                raise UserError(f"refusing {archive}: member {m.name!r} is a file without a name")
            plan.append((parts, m.isdir(), m))
    return plan


def _zip_plan(zf, archive):
    """Same as :func:`_tar_plan` for a zip file (symlinks are recognised from the unix mode bits)."""
    plan = []
    for info in zf.infolist():
        parts = _member_parts(info.filename, archive)
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode) if info.create_system == 3 else 0
        if ftype == stat.S_IFLNK:
            raise UserError(f"refusing {archive}: member {info.filename!r} is a symbolic link")
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UserError(f"refusing {archive}: member {info.filename!r} is a device, fifo or socket")
        if info.flag_bits & 0x1:
            raise UserError(f"refusing {archive}: member {info.filename!r} is encrypted")
        is_dir = info.is_dir() or ftype == stat.S_IFDIR
        if parts:
            plan.append((parts, is_dir, info))
        elif not is_dir:
            raise UserError(f"refusing {archive}: member {info.filename!r} is a file without a name")
    return plan


def _open_archive(archive):
    """('tar', TarFile) or ('zip', ZipFile); UserError for anything else."""
    try:
        if zipfile.is_zipfile(archive):
            return 'zip', zipfile.ZipFile(archive)
        return 'tar', tarfile.open(archive, 'r:*')
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"cannot open archive {archive}: {e}") from None


def safe_extract(archive, dest, progress=True):
    """Unpack a tar (plain, .gz, .bz2, .xz) or zip archive into the new folder ``dest``; return ``dest``.

    Every member is checked before anything is written: absolute names, ``..`` components, symbolic
    and hard links, devices and fifos make it raise :class:`UserError` naming the member, and then
    nothing at all has been written.  Accepted members are written (regular files and folders only,
    no permission bits or owners taken from the archive) into a temporary sibling folder that is
    renamed to ``dest`` when complete, so ``dest`` exists only for a fully unpacked archive.
    ``dest`` must not exist yet.
    """
    archive, dest = os.fspath(archive), os.fspath(dest)
    if os.path.lexists(dest):
        raise UserError(f"cannot unpack {archive}: {dest} already exists; remove it first")
    kind, handle = _open_archive(archive)
    with handle:
        try:
            plan = _tar_plan(handle, archive) if kind == 'tar' else _zip_plan(handle, archive)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise UserError(f"cannot read archive {archive}: {e}") from None
        parent = os.path.dirname(os.path.abspath(dest))
        base = os.path.basename(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        for leftover in os.listdir(parent):  # temporary folders of an interrupted earlier extraction
            if leftover.startswith(base + TMP_MARK):
                shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
        tmp = os.path.join(parent, f'{base}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}')
        os.mkdir(tmp)  # (not mkdtemp: the unpacked folder gets the usual permissions, not 0700)
        try:
            for parts, is_dir, member in tqdm(
                plan, desc=f"unpack {os.path.basename(archive)}", unit='file', disable=not progress, file=sys.stderr
            ):
                target = os.path.join(tmp, *parts)
                if is_dir:
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                src = handle.extractfile(member) if kind == 'tar' else handle.open(member)
                with src, open(target, 'wb') as out:
                    shutil.copyfileobj(src, out, CHUNK)
            os.rename(tmp, dest)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"cannot unpack {archive} into {dest}: {e}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _archive_stem(filename):
    for ext in ('.tar.gz', '.tar.bz2', '.tar.xz', '.tgz', '.tar', '.zip'):
        if filename.lower().endswith(ext):
            return filename[: -len(ext)]
    return filename + '.d'


def extract_once(archive, raw_dir, progress=True):
    """Unpack ``archive`` into ``<raw_dir>/<archive name without extension>`` unless that exists; return it."""
    dest = os.path.join(raw_dir, _archive_stem(os.path.basename(archive)))
    if os.path.isdir(dest):
        return dest
    return safe_extract(archive, dest, progress=progress)


# ----------------------------------------------------------------------------------------------------
# readers of the published formats
# ----------------------------------------------------------------------------------------------------


def _numpy_reconstruct():
    """The array-rebuilding function numpy puts in its pickles (found without importing private modules)."""
    return np.zeros(1, np.uint8).__reduce__()[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: resolves only the numpy names an array pickle needs.

    A CIFAR batch is a dict of lists, strings and one ``uint8`` array.  Rebuilding the array calls
    ``numpy.core.multiarray._reconstruct`` (``numpy._core`` for pickles written by numpy 2),
    ``numpy.ndarray`` and ``numpy.dtype``; any other global (``os.system``, ``builtins.eval``, ...) makes
    :meth:`find_class` raise ``pickle.UnpicklingError``, so a hostile file cannot run code.
    """

    def find_class(self, module, name):
        allowed = {
            ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct(),
            ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct(),
            ('numpy', 'ndarray'): np.ndarray,
            ('numpy', 'dtype'): np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return allowed[(module, name)]


def restricted_loads(data, what='pickle'):
    """Unpickle ``data`` (bytes of a python-2 CIFAR pickle) with :class:`RestrictedUnpickler`.

    Strings are decoded as latin-1 (how numpy's python-2 pickles must be read).  Raises
    :class:`UserError` naming ``what`` if the pickle is malformed or asks for anything else.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"refusing to read {what}: not a plain CIFAR pickle ({e})") from None


def _safe_class_name(name, what):
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


def read_cifar(archive, name='CIFAR100'):
    """Read a verified CIFAR python archive without unpacking it to disk.

    Returns ``(class_names, {'train': (images, labels), 'val': (images, labels)})`` with images of
    shape (N, 32, 32, 3) uint8 (HWC, RGB) and labels of shape (N,) int64; ``val`` is the official test
    set.  CIFAR-100 uses the 100 fine labels.  Pickles are read with :func:`restricted_loads`.
    """
    folder, meta_file, label_key, names_key, train_files, test_files = _cifar_layout(name)
    kind, handle = _open_archive(archive)
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
            obj = restricted_loads(f.read(), f'{archive}:{path}')
        if not isinstance(obj, dict):
            raise UserError(f"{archive}:{path} does not hold a dict")
        return obj, f'{archive}:{path}'

    with handle:
        meta, where = load(meta_file)
        names = meta.get(names_key)
        if not isinstance(names, list) or not names:
            raise UserError(f"{where} has no list {names_key!r}")
        class_names = [_safe_class_name(n, where) for n in names]
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


def read_idx(path, max_items=10**8):
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


def read_mnist(raw_paths):
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


def split_done(out_root, split):
    """True when ``<out_root>/<split>`` was completely written by :func:`download_dataset`."""
    return os.path.exists(_marker(out_root, split, 'done'))


def _check_output(out_root):
    """Refuse to write into a train/val folder that exists but was not started by this module."""
    for split in SPLITS:
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


def write_array_split(out_root, split, images, labels, class_names, progress=True):
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


def split_folder_classes(classes, val_ratio):
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


def write_folder_split(out_root, split, items, progress=True):
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


def caltech_classes(root, skip=()):
    """``{class: [image paths]}`` from ``root/<class>/<image>`` (non-images and ``skip`` classes left out)."""
    classes = {}
    for c in sorted(os.listdir(root)):
        if c in skip or c.startswith('.') or not os.path.isdir(os.path.join(root, c)):
            continue
        files = _image_files(os.path.join(root, c))
        if files:
            classes[_safe_class_name(c, root)] = files
    return classes


def omniglot_classes(set_roots):
    """``{'<alphabet>_<character>': [png paths]}`` from ``images_background/<alphabet>/<character>/``."""
    classes = {}
    for root in set_roots:
        for alphabet in sorted(os.listdir(root)):
            a_dir = os.path.join(root, alphabet)
            if alphabet.startswith('.') or not os.path.isdir(a_dir):
                continue
            for char in sorted(os.listdir(a_dir)):
                c_dir = os.path.join(a_dir, char)
                if char.startswith('.') or not os.path.isdir(c_dir):
                    continue
                files = _image_files(c_dir)
                if files:
                    classes.setdefault(_safe_class_name(f'{alphabet}_{char}', c_dir), []).extend(files)
    return classes


# ----------------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------------


def _need(raw_paths, filename, name):
    if filename not in raw_paths:
        raise UserError(f"the sources of {name} must include a file named {filename!r}")
    return raw_paths[filename]


def _convert(name, raw_paths, raw_dir, out_root, val_ratio, progress):
    """Turn the verified files of dataset ``name`` into split folders; returns {split: counts}."""
    counts = {}
    if name in ('CIFAR10', 'CIFAR100'):
        archive = _need(raw_paths, f"{'cifar-10-python' if name == 'CIFAR10' else 'cifar-100-python'}.tar.gz", name)
        class_names, splits = read_cifar(archive, name)
        for split, (images, labels) in splits.items():
            counts[split] = write_array_split(out_root, split, images, labels, class_names, progress)
    elif name in ('MNIST', 'fashionMNIST'):
        splits = read_mnist({f: _need(raw_paths, f, name) for f in _MNIST_FILES})
        if name == 'MNIST':
            class_names = [str(i) for i in range(10)]
        else:
            class_names = [
                f'{i}_' + _safe_class_name(c.replace(' ', '_'), name) for i, c in enumerate(FASHION_MNIST_CLASSES)
            ]
        for split, (images, labels) in splits.items():
            if len(labels) and labels.max() >= len(class_names):
                raise UserError(f"{name} {split} labels go up to {labels.max()}, expected 0..{len(class_names) - 1}")
            counts[split] = write_array_split(out_root, split, images, labels, class_names, progress)
    else:
        if name == 'caltech101':
            outer = extract_once(_need(raw_paths, 'caltech-101.zip', name), raw_dir, progress)
            inner_archive = os.path.join(_find_dir(outer, 'caltech-101', outer), '101_ObjectCategories.tar.gz')
            if not os.path.isfile(inner_archive):
                raise UserError(f"{outer} does not contain caltech-101/101_ObjectCategories.tar.gz")
            inner = extract_once(inner_archive, raw_dir, progress)
            classes = caltech_classes(_find_dir(inner, '101_ObjectCategories', inner), SKIPPED_CLASSES[name])
        elif name == 'caltech256':
            inner = extract_once(_need(raw_paths, '256_ObjectCategories.tar', name), raw_dir, progress)
            classes = caltech_classes(_find_dir(inner, '256_ObjectCategories', inner), SKIPPED_CLASSES[name])
        else:  # omniglot
            roots = []
            for set_name in ('images_background', 'images_evaluation'):
                unpacked = extract_once(_need(raw_paths, set_name + '.zip', name), raw_dir, progress)
                roots.append(_find_dir(unpacked, set_name, unpacked))
            classes = omniglot_classes(roots)
        if not classes:
            raise UserError(f"no images found in the {name} archives in {raw_dir}")
        for split, items in split_folder_classes(classes, val_ratio).items():
            counts[split] = write_folder_split(out_root, split, items, progress)
    return counts


def _output_of(data_dir, name):
    """(``data_dir/name``, the result dict to fill) for a dataset still to be written, or (that folder, None)
    when both splits are complete already (said on stdout); the folder is checked and created."""
    out_root = os.path.join(data_dir, name)
    if all(split_done(out_root, s) for s in SPLITS):
        print(f"{out_root}: already complete (remove its .train.done/.val.done to redo it)")
        return out_root, None
    _check_output(out_root)
    ensure_dir(out_root, what='output folder (--data_file_path)')
    return out_root, {'path': out_root, 'train': None, 'val': None}


def download_dataset(name, raw_dir, data_dir, sources=None, val_ratio=0.2, progress=True):
    """Download, verify and convert dataset ``name`` into ``<data_dir>/<name>/{train,val}/<class>/``.

    ``raw_dir``: where the archives are kept (and unpacked, for the folder datasets).
    ``sources``: a table like :data:`SOURCES` (only the entry for ``name`` is used); default SOURCES.
    ``val_ratio``: fraction of each class put in ``val/`` for datasets without an official test split
    (caltech101, caltech256, omniglot); ignored for the others.
    Returns ``{'path': <data_dir>/<name>, 'train': {class: count} or None, 'val': ...}`` where None
    means the split had already been written by an earlier run.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r} (--dataset); choose one of {', '.join(DATASET_NAMES)}")
    if not 0 <= val_ratio < 1:
        raise UserError(f"--validation_ratio must be in [0, 1), got {val_ratio}")
    table = SOURCES if sources is None else sources
    if name not in table:
        raise UserError(f"the source table has no entry for {name}")
    entries = normalize_sources(table[name], name)
    out_root, result = _output_of(data_dir, name)
    if result is None:
        return {'path': out_root, 'train': None, 'val': None}
    ensure_dir(raw_dir, what='raw file folder (--raw_file_path)')
    raw_paths = {}
    for src in entries:
        raw_paths[src.filename] = download_file(
            src.urls, os.path.join(raw_dir, src.filename), md5=src.checksum, progress=progress
        )
    result.update(_convert(name, raw_paths, raw_dir, out_root, val_ratio, progress))
    return result


# ----------------------------------------------------------------------------------------------------
# the original's 'animal' choice: its source (a Google Pages site) is gone, so the files must be local
# ----------------------------------------------------------------------------------------------------

LOCAL_ONLY = ('animal',)
ANIMAL_SETS = ('non_rigid_shape_A', 'non_rigid_shape_B')


def setup_local_dataset(name, raw_dir, data_dir, val_ratio=0.2, progress=True):
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
        for c, files in caltech_classes(root).items():
            classes.setdefault(c, []).extend(files)
    for c, files in classes.items():
        names = [os.path.basename(f) for f in files]
        if len(set(names)) != len(names):
            dup = sorted(n for n in set(names) if names.count(n) > 1)[0]
            raise UserError(f"class {c!r} has two images named {dup!r} in {' and '.join(roots)}; rename one")
    if not classes:
        raise UserError(f"no images found in {' or '.join(roots)}")
    out_root, result = _output_of(data_dir, name)
    if result is None:
        return {'path': out_root, 'train': None, 'val': None}
    for split, items in split_folder_classes(classes, val_ratio).items():
        result[split] = write_folder_split(out_root, split, items, progress)
    return result
