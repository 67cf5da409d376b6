"""The numba set-up of the PH kernels (:mod:`util.ph.unionfind`, :mod:`util.ph.distance`).

Numba compiles with ``cache=True``: the first process compiles (seconds) and writes the machine code next to
the kernel's file (``__pycache__``), or, where that is read-only, to numba's user cache dir; every later process
(pool workers, DataLoader workers) loads it in well under a second.  If no cache location is writable the
functions are compiled in memory in each process (slower start, same results); nothing raises.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from typing import TYPE_CHECKING


def _writable_dir(path):
    """True if files can be created in ``path`` (made if missing) -- the test numba's cache locators make."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _numba_cache_fallback():
    """Point numba at a writable cache dir when neither this folder nor numba's user cache dir is writable.

    Numba caches beside the source (``__pycache__``), else in the user-wide cache dir (``~/.cache/numba``);
    if neither can be written (a read-only install and home), ``NUMBA_CACHE_DIR`` is set to a per-user dir
    under the system temporary dir, if that one can.  Must run before numba is imported (numba reads the
    variable once).  If nothing is writable, :func:`jit` compiles in memory.
    """
    if os.environ.get('NUMBA_CACHE_DIR'):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if _writable_dir(os.path.join(here, '__pycache__')):
        return
    home_cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    if _writable_dir(os.path.join(home_cache, 'numba')):
        return
    uid = os.getuid() if hasattr(os, 'getuid') else 'user'
    tmp = os.path.join(tempfile.gettempdir(), f'numba-cache-{uid}')
    if _writable_dir(tmp):
        os.environ['NUMBA_CACHE_DIR'] = tmp


if 'numba' not in sys.modules:
    _numba_cache_fallback()

import numba  # noqa: E402 (after the cache-dir fallback above)

if TYPE_CHECKING:
    from collections.abc import Callable

UNCACHED = []  # names of the kernels compiled in memory (no writable cache location)


def jit(fn: Callable) -> Callable:
    """``numba.njit(cache=True, nogil=True)``, or in-memory compilation where numba finds no cache location (one
    warning per process)."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except Exception as e:  # numba raises RuntimeError("cannot cache function ...") at decoration time
        if not UNCACHED:
            warnings.warn(
                f"numba finds no writable cache dir ({e}); the PH kernels are compiled in "
                "memory in each process (set NUMBA_CACHE_DIR to a writable folder to keep it)",
                RuntimeWarning,
            )
        UNCACHED.append(fn.__name__)
        return numba.njit(cache=False, nogil=True)(fn)
