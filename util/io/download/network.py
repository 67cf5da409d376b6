"""The network end of the downloader: HTTP downloads that resume, and checksums checked before a file is used.

:func:`download_file` fetches one file (urllib, tqdm progress bar) into ``<file>.part``, resuming an interrupted
transfer with an HTTP ``Range`` request, and renames it to ``<file>`` only once its published checksum (hex md5,
32 digits, or sha256, 64 digits) matches.  A mismatching file is kept as ``<file>.bad`` (so it can be inspected;
the next run downloads again) and a one-line :class:`~util.errors.UserError` is raised: nothing downstream ever
opens an unverified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from tqdm import tqdm

from util.errors import UserError
from util.io.fileio import ensure_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = 'PretrainCNNwithNoData-ImageDatasetsDownloader/1.0 (python urllib)'


def checksum_algorithm(checksum: object) -> str | None:
    """'md5' or 'sha256' from the length of a hex digest; None if it is not one."""
    if isinstance(checksum, str) and re.fullmatch(r'[0-9a-fA-F]+', checksum or ''):
        return {32: 'md5', 64: 'sha256'}.get(len(checksum))
    return None


def file_digest(path: str | os.PathLike, algorithm: str = 'md5') -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str) -> bool:
    """True when the file's md5 (32 hex digits) or sha256 (64 hex digits) equals ``checksum``."""
    algorithm = checksum_algorithm(checksum)
    if algorithm is None:
        raise UserError(f"checksum {checksum!r} for {path} is neither a hex md5 nor a sha256")
    return file_digest(path, algorithm) == checksum.lower()


def _refuse(path, dest, checksum, what):
    """Keep a file that failed verification as ``<dest>.bad`` and raise a one-line UserError."""
    algorithm = checksum_algorithm(checksum)
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
            # read1 returns what has arrived (up to CHUNK) instead of waiting for a whole CHUNK, so a transfer
            # that stalls keeps every byte received before the timeout (in the count and in the .part file)
            read = getattr(resp, 'read1', resp.read)
            while True:
                try:
                    chunk = read(CHUNK)
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


def download_file(
    url: str | Sequence[str], dest: str | os.PathLike, md5: str | None = None, progress: bool = True
) -> str:
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
