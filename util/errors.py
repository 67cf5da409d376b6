"""Errors a user can fix, and the one place that turns them into a one-line message.

Library code raises :class:`UserError` (never calls ``exit``); each script wraps its ``main`` with
:func:`run_cli`, which prints ``error: <message>`` on one line and exits with status 2.

:func:`run_cli` is also the one place that handles SIGINT (Ctrl-C) and SIGTERM: the first one raises
``KeyboardInterrupt`` in the main process (a temporary file being written is dropped, see
:func:`util.io.fileio.atomic_open`; completed files stay), later ones are ignored while it winds down, and the run
ends with one line saying how to resume and exit status 130 (SIGINT) or 143 (SIGTERM) -- also when a library
swallowed or wrapped the interrupt (a DataLoader worker forking, ``torch.save``).
"""

import contextlib
import errno
import os
import signal
import sys

_FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class UserError(Exception):
    """A problem with the user's input or environment that they can fix (bad flag, missing folder, ...).

    The message must name the offending file or flag and, where possible, say what to do.
    """


class BadImageError(UserError):
    """An image file that cannot be decoded (truncated, zero bytes, not an image)."""


_SIGNALLED = []  # signals received by the process that called run_cli (in order)
_MAIN_PID = [None]
_DEFER = [0]  # > 0 inside signals_deferred()


@contextlib.contextmanager
def signals_deferred():
    """Finish the block before acting on SIGINT/SIGTERM (a checkpoint being written is completed, not lost)."""
    _DEFER[0] += 1
    try:
        yield
    finally:
        _DEFER[0] -= 1
    if _DEFER[0] == 0 and len(_SIGNALLED) == 1 and os.getpid() == _MAIN_PID[0]:
        raise KeyboardInterrupt


def _on_signal(signum, frame):
    if os.getpid() != _MAIN_PID[0]:  # a child forked before it set its own handlers
        if signum == signal.SIGINT:
            return  # Ctrl-C reaches the parent too, which winds the child down
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # SIGTERM (the parent stopping its pool): end as by default
        return
    _SIGNALLED.append(signum)
    if len(_SIGNALLED) == 1 and not _DEFER[0]:
        raise KeyboardInterrupt


def _install_signal_handlers():
    del _SIGNALLED[:]
    _MAIN_PID[0] = os.getpid()
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread
            pass
    return old


def _interrupted(args):
    sig = _SIGNALLED[0] if _SIGNALLED else signal.SIGINT
    how = (
        "add --resume <run folder> to the same command (it continues after the last finished epoch)"
        if hasattr(args, 'resume')
        else "run the same command again"
    )
    print(
        f"interrupted by {signal.Signals(sig).name}: completed outputs are kept and nothing is half-written; "
        f"to resume, {how}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(128 + sig)


def run_cli(main, args):
    """Run ``main(args)``; turn a :class:`UserError` into one line on stderr and exit status 2.

    SIGINT/SIGTERM end the run with one line and exit status 130/143 (see the module's description).
    """
    old_handlers = _install_signal_handlers()
    try:
        return _run(main, args)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _run(main, args):
    try:
        result = main(args)
    except UserError as e:
        if _SIGNALLED:
            _interrupted(args)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except WorkerDied as e:
        if _SIGNALLED:  # the workers got the same signal
            _interrupted(args)
        print(
            f"error: {one_line(e)}; the finished outputs are kept: run the same command again to resume "
            f"(with fewer workers, -nw, if memory ran out)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted(args)
    except OSError as e:  # the file system refused (disk full, read-only, ...) outside util.io.fileio's writers
        if _SIGNALLED:
            _interrupted(args)
        if e.errno not in _FS_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ''
        print(
            f"error: file system error{where}: {e.strerror}; make room on that disk or choose other "
            f"folders, then run again",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)
    except Exception:
        if _SIGNALLED:  # the interrupt came back wrapped (e.g. RuntimeError from torch.save, a worker)
            _interrupted(args)
        raise
    if _SIGNALLED:  # the interrupt was swallowed on the way (e.g. while a DataLoader worker forked)
        _interrupted(args)
    if isinstance(result, int) and result != 0:
        sys.exit(result)
    return result


def one_line(exc):
    """The user-facing line of an exception, also when a DataLoader worker wrapped it with a traceback."""
    msg = str(exc).strip()
    if 'Original Traceback' in msg:  # re-raised from a DataLoader worker: keep the original message
        last = msg.splitlines()[-1]
        msg = last.split(': ', 1)[1] if ': ' in last else last
    return msg


class WorkerDied(Exception):
    """A worker process ended (killed by a signal, e.g. the out-of-memory killer) while it held work.

    :func:`run_cli` prints it as one line (how to resume) and exits with status 1: the finished outputs are
    complete (atomic writes), so running the same command again resumes.
    """
