"""The per-epoch log of a training run (``log.jsonl`` in its folder): :class:`RunLogger` writes it (rank 0 of
:func:`util.train.engine.fit`), :func:`read_log` and :func:`log_series` read it back (the curves of
:mod:`util.plot.plotting`, the quickstart page, tests).  Here, below both the training and the plotting
layers, so that the writer and its readers share one definition of the format."""

from __future__ import annotations

import errno
import json
import math
import numbers
import os

import numpy as np

from util.errors import UserError
from util.io import fileio

LOG_NAME = 'log.jsonl'


class RunLogger:
    """Per-epoch JSON-lines log, rank 0 only (TensorBoard, when asked: :mod:`util.train.tensorboard_log`)."""

    def __init__(self, run_dir: str, enabled: bool = True):
        self.path = os.path.join(run_dir, LOG_NAME)
        self.enabled = enabled

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        data = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    os.ftruncate(fd, start)  # never leave half a record for the next one to be glued to
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            raise UserError(
                f"cannot write {self.path}: {e.strerror}; make room, then continue with --resume "
                f"{os.path.dirname(self.path)}"
            ) from None

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (a resumed run repeats them)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        keep = []
        with open(self.path, encoding='utf-8') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get('epoch', 0) <= epoch:
                    keep.append(json.dumps(rec, sort_keys=True))
        fileio.write_text(self.path, ''.join(k + '\n' for k in keep))

    def close(self) -> None:
        pass


def read_log(log_path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines log, one dict per line, keyed by epoch (later lines win).

    Lines that are blank, not valid JSON (e.g. a last line still being written) or not a dict are
    skipped. A record without 'epoch' is numbered by its position. Returns a list of dicts sorted by
    epoch, so a resumed run that re-logs epochs is drawn once. Raises :class:`UserError` if the file
    cannot be read.
    """
    try:
        with open(log_path, 'r', encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"cannot read training log {os.fspath(log_path)!r}: {e.strerror}") from None
    by_epoch = {}
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        epoch = record.get('epoch', i)
        if not _is_number(epoch):
            epoch = i
        by_epoch[float(epoch)] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _is_number(v):
    """True for finite real numbers (not bools, not NaN/inf, not strings)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


BOOKKEEPING_KEYS = ('epoch', 'seconds', 'images', 'skipped_bad')


def _is_bookkeeping(key):
    """Log fields that count or time things rather than measure learning (not drawn by default)."""
    return key in BOOKKEEPING_KEYS or key.endswith(('_images', '_skipped_bad', '_seconds'))


def log_series(records: list[dict], keys: list | None = None) -> dict:
    """Numeric series of a log: {key: (epochs [n], values [n])}, each over the epochs where it is a number.

    ``records``: as from :func:`read_log`. ``keys``: metrics to keep (default: every key with at least
    one numeric value, except 'epoch' and bookkeeping such as image counts and timings). Missing,
    non-numeric and non-finite values are skipped.
    """
    if keys is None:
        keys = []
        for r in records:
            keys.extend(k for k, v in r.items() if k not in keys and not _is_bookkeeping(k) and _is_number(v))
    series = {}
    for key in keys:
        xs, ys = [], []
        for i, r in enumerate(records):
            v = r.get(key)
            if _is_number(v):
                e = r.get('epoch', i)
                xs.append(float(e) if _is_number(e) else float(i))
                ys.append(float(v))
        if xs:
            series[key] = (np.array(xs), np.array(ys))
    return series
