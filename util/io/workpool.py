"""A process pool that notices when a worker dies.

``multiprocessing.Pool`` replaces a worker killed by a signal (the out-of-memory killer, ``kill -9``) but
loses the task it held, so ``imap`` then waits forever.  :func:`imap_unordered` hands each worker its chunk
through its own pipe, gets every result back as soon as it is computed, and watches the workers' sentinels:
a worker that dies while holding work raises :class:`util.errors.WorkerDied` naming the item it was on (the
first of its chunk not yet returned).  Results already yielded are the caller's to keep; nothing else is lost.

Workers ignore SIGINT: Ctrl-C reaches the parent (``KeyboardInterrupt``), which stops them on the way out.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from util.errors import WorkerDied


def _worker(conn, fn):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        while True:
            try:
                chunk = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if chunk is None:
                return
            for item in chunk:
                conn.send(fn(item))
            conn.send(_DONE)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        return


_DONE = '__chunk_done__'


def _death(process):
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f'signal {-code}'
        hint = ', perhaps the out-of-memory killer' if -code == signal.SIGKILL else ''
        return f"killed by {name}{hint}"
    return f"exit status {code}"


def imap_unordered(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    chunksize: int = 1,
    name_of: Callable[[Any], str] = str,
    context: multiprocessing.context.BaseContext | None = None,
) -> Iterator[Any]:
    """Yield ``fn(item)`` for every item of ``items`` (a list), in completion order, from ``workers`` processes.

    Raises :class:`WorkerDied` if a worker process ends while it holds items; ``name_of(item)`` names the
    item it was on in the message.  ``fn`` must not raise (report errors in its result).
    """
    ctx = context or multiprocessing.get_context()
    chunks = [items[i : i + chunksize] for i in range(0, len(items), max(1, chunksize))]
    chunks.reverse()  # pop() hands them out in order
    pool = []  # [process, connection, chunk or None, next index]
    try:
        for _ in range(min(workers, len(chunks))):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, fn), daemon=True)
            p.start()
            child.close()
            pool.append([p, parent, None, 0])
        for slot in pool:
            _assign(slot, chunks)
        while any(slot[2] is not None for slot in pool):
            busy = [slot for slot in pool if slot[2] is not None]
            ready = multiprocessing.connection.wait([s[1] for s in busy] + [s[0].sentinel for s in busy])
            for slot in busy:
                p, conn = slot[0], slot[1]
                lost = False
                try:
                    while slot[2] is not None and conn.poll():
                        msg = conn.recv()
                        if isinstance(msg, str) and msg == _DONE:
                            _assign(slot, chunks)
                        else:
                            slot[3] += 1
                            yield msg
                except (EOFError, OSError):  # the worker is gone (mid-message, or idle)
                    lost = True
                if slot[2] is not None and (lost or p.sentinel in ready and not p.is_alive()):
                    p.join(1)
                    chunk, k = slot[2], slot[3]
                    item = chunk[min(k, len(chunk) - 1)]
                    raise WorkerDied(
                        f"a worker process (pid {p.pid}) died ({_death(p)}) while computing {name_of(item)}"
                    )
    finally:
        for p, conn, chunk, _ in pool:
            if p.is_alive():
                try:
                    conn.send(None)
                except OSError:
                    pass
        for p, conn, chunk, _ in pool:
            p.join(0.5 if chunk is None else 0)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
            conn.close()


def _assign(slot, chunks):
    slot[2], slot[3] = (chunks.pop(), 0) if chunks else (None, 0)
    if slot[2] is not None:
        slot[1].send(slot[2])
