"""What a derived file was computed from: fingerprints of source images, so stale outputs are never trusted.

A *fingerprint* of a file is ``{'size', 'mtime_ns', 'hash'}``: its byte size, its modification time and a
BLAKE2b digest of its content (the whole file up to :data:`WHOLE_FILE_LIMIT` bytes; beyond that the size
plus the first and last :data:`EDGE_BYTES` bytes, which still changes with any re-encoding or swap). Two
fingerprints name the same content when size and hash agree; the modification time is kept for the record
only, so copying a folder (which resets times) does not make its outputs stale.

:class:`SourceLog` is an append-only JSON-lines file (one record per derived file, written right after the
derived file itself was renamed into place): a run killed between the two leaves an output without a
record, which the next run recomputes; a torn last line is ignored. Later lines override earlier ones.

Pure standard library: importing this module loads neither numpy nor torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence

from util.errors import UserError

WHOLE_FILE_LIMIT = 1 << 20  # files up to 1 MiB are hashed whole (every generated or typical image)
EDGE_BYTES = 1 << 18  # larger files: size + first and last 256 KiB
SOURCES_FILE = 'sources.jsonl'


def fingerprint(path: str | os.PathLike[str]) -> dict:
    """``{'size': int, 'mtime_ns': int, 'hash': str}`` of the file ``path`` (raises OSError if unreadable)."""
    st = os.stat(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, 'rb') as f:
        if st.st_size <= WHOLE_FILE_LIMIT:
            h.update(f.read())
        else:
            h.update(f.read(EDGE_BYTES))
            f.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(f.read(EDGE_BYTES))
    return {'size': int(st.st_size), 'mtime_ns': int(st.st_mtime_ns), 'hash': h.hexdigest()}


def fingerprint_below(root: str, rel: str) -> dict | None:
    """:func:`fingerprint` of the file ``rel`` (POSIX-relative) below ``root``, or None if it cannot be read."""
    try:
        return fingerprint(os.path.join(root, *rel.split('/')))
    except OSError:
        return None


def same_content(recorded: Mapping | None, current: Mapping | None) -> bool:
    """True when two fingerprints (dicts as :func:`fingerprint` returns, or None) describe the same bytes."""
    if not recorded or not current:
        return False
    return recorded.get('size') == current.get('size') and recorded.get('hash') == current.get('hash')


def changed_sources(
    records: Mapping[str, Mapping | None] | Sequence[Mapping | None], root: str, rel_paths: Sequence[str]
) -> list[str]:
    """The entries of ``rel_paths`` (relative to ``root``) whose current content differs from ``records``
    (a mapping rel -> fingerprint, or a list aligned with ``rel_paths``), or that have no record."""
    changed = []
    for i, rel in enumerate(rel_paths):
        old = records[i] if isinstance(records, list) else records.get(rel)
        if not same_content(old, fingerprint_below(root, rel)):
            changed.append(rel)
    return changed


def describe(names: Sequence[str], total: int, limit: int = 3) -> str:
    """``'2 of 10 (first: a.jpg, b.jpg)'`` for messages."""
    shown = ', '.join(names[:limit]) + (', ...' if len(names) > limit else '')
    return f"{len(names)} of {total} (first: {shown})"


class SourceLog:
    """What each per-file output in one output folder was computed from (``sources.jsonl``).

    ``records[output]`` = ``{'output', 'source', 'size', 'mtime_ns', 'hash'}``, keyed by the output file's path
    relative to the output folder (``cat/x.npy``, ``cat/xhist.npy``); ``source`` is the input it was computed
    from (so ``x.jpg`` and ``x.png``, which would write the same file, are told apart) with its fingerprint.
    """

    def __init__(self, out_dir, name=SOURCES_FILE):
        self.path = os.path.join(out_dir, name)
        self.exists = os.path.exists(self.path)
        self.records = self._read(self.path)
        self._fh = None

    @staticmethod
    def _read(path):
        records = {}
        try:
            with open(path, encoding='utf-8') as f:
                lines = f.read().split('\n')
        except FileNotFoundError:
            return records
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}; delete it to recompute every output") from None
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                records[rec['output']] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run: that output is recomputed
        return records

    def fresh(self, output, source_rel, fp):
        """True if ``output`` was recorded as computed from ``source_rel`` with the content ``fp`` it has now."""
        rec = self.records.get(output)
        return rec is not None and rec.get('source') == source_rel and same_content(rec, fp)

    def source_of(self, output):
        rec = self.records.get(output)
        return None if rec is None else rec.get('source')

    def record(self, output, source_rel, fp):
        """Append one record (flushed at once, so a kill loses at most the line being written)."""
        rec = dict(fp or {}, output=output, source=source_rel)
        if self._fh is None:
            try:
                self._fh = open(self.path, 'a', encoding='utf-8')
                if self._fh.tell() > 0 and not self._ends_with_newline():
                    self._fh.write('\n')  # close a line torn by a killed run before appending
            except OSError as e:
                raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        try:
            self._fh.write(json.dumps(rec, sort_keys=True) + '\n')
            self._fh.flush()
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}; make room on that disk, then run again") from None
        self.records[output] = rec
        self.exists = True

    def _ends_with_newline(self):
        with open(self.path, 'rb') as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b'\n'

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
