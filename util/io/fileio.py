"""Files written safely (temporary name, then rename) and images read robustly.

Nothing written through this module ever appears under its final name half-written: a killed process
leaves at most a ``.tmp-*`` file beside it, which the next run ignores (and may delete, since it is ours).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from util.errors import BadImageError, UserError, signals_deferred

if TYPE_CHECKING:
    import argparse

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
TMP_MARK = '.tmp-'
# errors of the file system rather than of the data: reported as one line naming the file being written
DISK_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
    }
)


def _disk_error(exc):
    """The file-system ``OSError`` behind ``exc`` (also when ``torch.save`` wrapped it in a RuntimeError), or None."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e
    return None


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp makes it 0600)


def _write_error(path, e):
    return UserError(
        f"cannot write {path}: {e.strerror}; make room on that disk or choose another output folder, then run again"
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'wb', fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it is renamed to ``path``, on error removed.

    A killed process never leaves a partial file under ``path``; a write the file system refuses (disk full,
    file too large, read-only) raises :class:`UserError` naming ``path``. ``fsync=True`` also flushes the data
    to the disk before the rename, so that a power cut cannot leave an empty file either (checkpoints use it;
    it costs about a millisecond per file, too much for millions of images).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or '.'
    base = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=base + TMP_MARK, dir=directory)
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise _write_error(path, e) from None
        raise
    try:
        with contextlib.suppress(OSError):  # (some file systems have no permission bits)
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield _WriteThrough(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        disk = _disk_error(exc) if isinstance(exc, Exception) and not isinstance(exc, UserError) else None
        if disk is not None:  # disk full, file too large, read-only, ...: one line naming the file
            raise _write_error(path, disk) from None
        raise


class _WriteThrough:
    """The temporary file as :func:`atomic_open` hands it out: the file without ``fileno``.

    Given a descriptor, PIL (also under matplotlib) writes to it directly and ignores short writes, so a
    disk that fills up can leave a truncated image without any error; numpy uses ``ndarray.tofile``, whose
    failure carries no errno. Without one, both write through ``write``, which finishes or raises the
    file system's error (ENOSPC, EFBIG, ...).
    """

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def write(self, data):
        return self._f.write(data)

    def fileno(self):
        raise io.UnsupportedOperation('fileno')


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    with atomic_open(path, 'wb') as f:
        np.save(f, array)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, 'wb') as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode('utf-8'))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]]) -> None:
    """Write ``rows`` (lists of cells) as CSV through the csv module (cells with commas, quotes or newlines are
    quoted), atomically."""
    import csv

    buf = io.StringIO()
    csv.writer(buf, lineterminator='\n').writerows(rows)
    write_text(path, buf.getvalue())


def save_image(path: str | os.PathLike, image: Image.Image | np.ndarray, fmt: str | None = None, **params: Any) -> None:
    """Save a PIL image or uint8 array atomically; ``fmt`` defaults to the file extension."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if fmt is None:
        fmt = os.path.splitext(path)[1].lstrip('.').lower()
    fmt = {'jpg': 'JPEG', 'jpeg': 'JPEG'}.get(fmt.lower(), fmt.upper())
    with atomic_open(path, 'wb') as f:
        image.save(f, format=fmt, **params)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (a killed run never leaves a truncated ``.pth``), every tensor as a CPU copy.

    torch.save records each storage's device: a state dict saved as it is from a GPU would need that GPU (or a
    ``map_location``) to load, so the README's plain ``torch.load(path, weights_only=True)`` would fail on a
    machine without CUDA.  Tensors are copied to fresh CPU memory (nested dicts, lists and tuples followed, a
    state dict's ``_metadata`` kept), whatever device they are on."""
    import torch

    obj = _cpu_copy(obj, torch)
    with signals_deferred(), atomic_open(path, 'wb', fsync=True) as f:  # Ctrl-C: finished first
        torch.save(obj, f)


def _cpu_copy(obj, torch):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        # a shallow copy refilled item by item, not type(obj)(pairs) (Counter(pairs) counts the pairs: a
        # MultiStepLR's milestones came back as {(epoch, 1): 1}); the copy keeps a state dict's _metadata too
        out = copy.copy(obj)
        out.clear()
        for k, v in obj.items():
            out[k] = _cpu_copy(v, torch)
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(_cpu_copy(v, torch) for v in obj)
    return obj


def is_temp_file(name: str) -> bool:
    return TMP_MARK in os.path.basename(name)


def ensure_dir(path: str | os.PathLike, what: str = 'output directory') -> str | os.PathLike:
    """Create ``path`` if needed and check that we can write there; raise :class:`UserError` if not."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path!r}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"{what} {path!r} exists but is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-test' + TMP_MARK, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {path!r}: {e.strerror}; choose another with -o") from None
    return path


def require_dir(
    path: str | os.PathLike | None, what: str = 'input directory', flag: str | None = None
) -> str | os.PathLike:
    """Raise :class:`UserError` unless ``path`` is an existing directory."""
    hint = f" (given by {flag})" if flag else ''
    if path is None or not os.path.exists(path):
        raise UserError(f"{what} {path!r}{hint} does not exist")
    if not os.path.isdir(path):
        raise UserError(f"{what} {path!r}{hint} is not a directory")
    return path


def _warn(msg):
    import sys

    print(f"warning: {msg}", file=sys.stderr, flush=True)


def refuse_output_inside(
    output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]], flag: str = '-o'
) -> None:
    """Raise :class:`UserError` if the folder ``output`` is, or is inside, one of ``inputs`` ``[(flag, folder)]``
    (what it writes would be read back as input by the next run, or overwrite the input's own files)."""
    out = os.path.realpath(output)
    for in_flag, path in inputs:
        if not path or not os.path.isdir(path):
            continue
        src = os.path.realpath(path)
        if out == src or out.startswith(src.rstrip(os.sep) + os.sep):
            where = 'the same folder as' if out == src else 'inside'
            raise UserError(
                f"{flag} {output!r} is {where} the input folder {in_flag} {path!r}: its outputs would "
                f"be mixed with (and read back as) inputs; choose an output folder outside it"
            )


def list_images(
    root: str | os.PathLike,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    warn: Callable[[str], None] = _warn,
    seen: set[tuple[int, int]] | None = None,
) -> list[str]:
    """Relative paths (POSIX separators) of all image files below ``root``, sorted, temp files skipped.

    Symbolic links are followed, but each real folder is listed at most once: a link back into a folder
    already listed (a loop, or a second link to it) is skipped with a warning.  FIFOs, sockets and devices are
    skipped with a warning and never opened (reading one could block for ever).  ``seen``: a set of
    ``(st_dev, st_ino)`` of folders not to enter (``root`` itself is always listed); it is updated.
    """
    import stat

    found, seen = [], set() if seen is None else seen
    stack = [(os.fspath(root), '')]
    while stack:
        path, rel_dir = stack.pop()
        try:
            st = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            warn(f"skipped folder {path}: {e.strerror}")
            continue
        if (st.st_dev, st.st_ino) in seen and rel_dir:
            warn(
                f"skipped {path}: it leads to the folder {os.path.realpath(path)}, already listed (symbolic "
                "link loop or a second link to it)"
            )
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs = []
        for entry in entries:
            name = entry.name
            rel = name if not rel_dir else rel_dir + '/' + name
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                mode = None  # a dangling link: reported when read, as before
            if mode is not None and stat.S_ISDIR(mode):
                subdirs.append((entry.path, rel))
                continue
            if mode is not None and not stat.S_ISREG(mode):
                warn(f"skipped {entry.path}: not a regular file (FIFO, socket or device); never opened")
                continue
            if name.lower().endswith(extensions) and not is_temp_file(name) and not name.startswith('.'):
                found.append(rel)
        stack.extend(reversed(subdirs))
    odd = [r for r in found if not storable_name(r)]
    if odd:
        raise UserError(
            f"{len(odd)} file name(s) below {root} hold a line break or bytes that are not UTF-8, "
            f"which the label and prediction files cannot hold, first: {ascii(odd[0])}; rename them"
        )
    found.sort()
    return found


def storable_name(name: str) -> bool:
    """True if ``name`` can be one line of a UTF-8 text or CSV file (no line break, no undecodable bytes)."""
    if any(c in name for c in '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'):  # str.splitlines() breaks
        return False
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:  # os.fsdecode() of bytes that are not UTF-8 (surrogate escapes)
        return False
    return True


def class_samples(
    directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> list[tuple[str, int]]:
    """``[(path, class index)]`` of a class-folder tree (torchvision's ``make_dataset``) via :func:`list_images`;
    a class folder without any image is refused by name."""
    samples = []
    seen = set()  # no link from one class folder into the root or another class (that label is not its)
    for path in [directory] + [os.path.join(directory, c) for c in class_to_idx]:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            seen.add((st.st_dev, st.st_ino))
    for cls in sorted(class_to_idx, key=class_to_idx.get):
        folder = os.path.join(directory, cls)
        rel = list_images(folder, extensions, seen=seen)
        if not rel:
            raise UserError(
                f"class folder {folder} holds no valid file (no image: "
                f"{', '.join(e[1:] for e in extensions)}); every class folder needs at least one image"
            )
        samples += [(os.path.join(folder, *r.split('/')), class_to_idx[cls]) for r in rel]
    return samples


DEFAULT_MAX_PIXELS = 8192 * 8192
_MAX_PIXELS_ENV = 'PRETRAINCNN_MAX_PIXELS'  # the environment carries the limit to worker processes


def add_max_pixels_arg(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--max_pixels`` (the largest image, width x height, that is decoded) to a parser or group."""
    group.add_argument(
        '--max_pixels',
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar='N',
        help="images with more pixels (width x height, read from the file's header) are bad "
        "images, never decoded (default: 8192 x 8192 = %(default)s)",
    )


def check_max_pixels(n: int | None) -> None:
    """Refuse a ``--max_pixels`` below 1."""
    if n is None or n < 1:
        raise UserError(f"--max_pixels must be at least 1, got {n}")


def set_max_pixels(n: int | None) -> None:
    """Set the default limit of :func:`load_image` for this process and the worker processes it starts (the
    training scripts pass theirs to :func:`load_image` instead, from the run configuration)."""
    check_max_pixels(n)
    os.environ[_MAX_PIXELS_ENV] = str(int(n))


def max_pixels() -> int:
    try:
        return int(os.environ.get(_MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def load_image(path: str | os.PathLike, mode: str = 'RGB', limit: int | None = None) -> Image.Image:
    """Decode an image file into a PIL image of ``mode`` ('RGB' or 'L').

    Handles 16-bit, palette, RGBA (alpha dropped) and greyscale inputs.
    Raises :class:`BadImageError` naming the file when it cannot be decoded, or when it has more pixels than
    ``limit`` (``--max_pixels``; None: :func:`max_pixels`), checked from the header, before anything is decoded
    (decompression bombs included).
    """
    limit = max_pixels() if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise BadImageError(
                        f"image {path} is {w} x {h} = {w * h} pixels, more than --max_pixels "
                        f"{limit}; not decoded (raise --max_pixels if it is meant)"
                    )
                im.load()
                return convert_image(im, mode)
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image {path} is too large to decode safely ({e}); not decoded") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from None


_SCALED_NOTE = []  # an image was scaled by its range in this process (the note is printed once)


def convert_image(im: Image.Image, mode: str = 'RGB') -> Image.Image:
    """Convert any PIL image (1, L, P, RGBA, I;16, I, F, ...) to 'RGB' or 'L' without wrapping values.

    Images of more than 8 bits (16-bit, 32-bit integer, float: a float TIFF in [0, 1], a 12-bit scan stored in
    16 bits) are scaled by their own range: min -> 0, max -> 255 (a constant one: its value on the type's scale,
    16-bit / 257, float in [0, 1] x 255), so that neither the network nor PH sees a handful of grey levels; the
    first such image of a process is noted on stderr.
    """
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        a = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.where(finite, a, lo)  # NaN / inf pixels (float files) count as the minimum
        if hi == lo:  # constant: its value on the type's own scale (16-bit /257, float [0, 1] x 255)
            a = a / 257.0 if im.mode.startswith('I;16') else a * 255.0 if im.mode == 'F' and 0 <= lo <= 1 else a
        else:
            a = (a - lo) / (hi - lo) * 255.0
        if not _SCALED_NOTE and hi > lo:
            _SCALED_NOTE.append(True)
            kind = {'F': 'float', 'I': '32-bit'}.get(im.mode, '16-bit')
            print(
                f"note: a {kind} image scaled by its own range ({lo:g}..{hi:g} -> 0..255), as every image of more "
                "than 8 bits is (16-bit, 32-bit, float)",
                file=sys.stderr,
                flush=True,
            )
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), 'L')
    if im.mode == 'P':
        im = im.convert('RGBA')
    if im.mode in ('RGBA', 'LA', 'PA'):
        im = im.convert('RGB' if mode == 'RGB' else 'L')
    return im.convert(mode) if im.mode != mode else im
