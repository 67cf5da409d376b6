"""Opening downloaded archives safely: validated extraction and a restricted unpickler.

:func:`safe_extract` checks every member of a tar or zip archive (absolute names, ``..``, links, devices, fifos)
before anything is written, then unpacks into a temporary sibling folder renamed at the end.
:func:`restricted_loads` reads the CIFAR python pickles with :class:`RestrictedUnpickler`, which can build
nothing but the numpy arrays, lists, dicts and strings those files hold, so no code from a file can run.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import stat
import sys
import tarfile
import uuid
import zipfile
from typing import Any

import numpy as np
from tqdm import tqdm

from util.errors import UserError
from util.io.download.network import CHUNK
from util.io.fileio import TMP_MARK


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


def open_archive(archive: str | os.PathLike) -> tuple[str, tarfile.TarFile | zipfile.ZipFile]:
    """('tar', TarFile) or ('zip', ZipFile); UserError for anything else."""
    try:
        if zipfile.is_zipfile(archive):
            return 'zip', zipfile.ZipFile(archive)
        return 'tar', tarfile.open(archive, 'r:*')
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"cannot open archive {archive}: {e}") from None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> str:
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
    kind, handle = open_archive(archive)
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


def extract_once(archive: str, raw_dir: str | os.PathLike, progress: bool = True) -> str:
    """Unpack ``archive`` into ``<raw_dir>/<archive name without extension>`` unless that exists; return it."""
    dest = os.path.join(raw_dir, _archive_stem(os.path.basename(archive)))
    if os.path.isdir(dest):
        return dest
    return safe_extract(archive, dest, progress=progress)


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


def restricted_loads(data: bytes, what: str = 'pickle') -> Any:
    """Unpickle ``data`` (bytes of a python-2 CIFAR pickle) with :class:`RestrictedUnpickler`.

    Strings are decoded as latin-1 (how numpy's python-2 pickles must be read).  Raises
    :class:`UserError` naming ``what`` if the pickle is malformed or asks for anything else.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"refusing to read {what}: not a plain CIFAR pickle ({e})") from None
