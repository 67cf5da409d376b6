"""Errors a user can fix, and the one place that turns them into a one-line message.

Library code raises :class:`UserError` (never calls ``exit``); each script wraps its ``main`` with
:func:`run_cli`, which prints ``error: <message>`` on one line and exits with status 2.
"""
import errno
import sys

_FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class UserError(Exception):
    """A problem with the user's input or environment that they can fix (bad flag, missing folder, ...).

    The message must name the offending file or flag and, where possible, say what to do.
    """


class BadImageError(UserError):
    """An image file that cannot be decoded (truncated, zero bytes, not an image)."""


def run_cli(main, args):
    """Run ``main(args)``; turn a :class:`UserError` into one line on stderr and exit status 2."""
    try:
        result = main(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except OSError as e:  # the file system refused (disk full, read-only, ...) outside util.fileio's writers
        if e.errno not in _FS_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ''
        print(f"error: file system error{where}: {e.strerror}; make room on that disk or choose other "
              f"folders, then run again", file=sys.stderr, flush=True)
        sys.exit(2)
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
