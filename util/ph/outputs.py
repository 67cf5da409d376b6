"""Where PHdict's outputs go (:class:`Outputs`), which inputs a run reads (:func:`list_inputs`, its shard) and the
refusals about folders made before anything is written."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from util.errors import UserError
from util.io.fileio import list_images
from util.io.provenance import SourceLog
from util.ph.labels import label_file_re, read_json
from util.ph.phconfig import PHConfig
from util.ph.settings import SETTINGS_FILE

HIST_SUFFIX = 'hist.npy'
PERSIMG_SUFFIX = '_persImg.npy'


class Outputs:
    """Where each input's outputs go, and which of them are still missing."""

    def __init__(self, cfg: PHConfig, target_dir: str, out_dir: str):
        self.cfg, self.target_dir, self.out_dir = cfg, target_dir, out_dir
        self.from_npy = cfg.imgtype == 'npy'
        self._dirs = set()

    def stem(self, rel: str) -> str:
        return os.path.join(self.out_dir, *os.path.splitext(rel)[0].split('/'))

    def diagram(self, rel: str) -> str | None:
        return None if self.from_npy else self.stem(rel) + '.npy'

    def hist(self, rel: str) -> str | None:
        return self.stem(rel) + HIST_SUFFIX if self.cfg.compute_hist else None

    def pimg(self, rel: str) -> str | None:
        if not self.cfg.compute_persistence_image:
            return None
        return self.stem(rel) + ('.npy' if self.from_npy else PERSIMG_SUFFIX)

    def wanted(self, rel: str) -> list[str]:
        return [p for p in (self.diagram(rel), self.hist(rel), self.pimg(rel)) if p is not None]

    def kinds(self, rel: str) -> dict:
        """{kind: path} of the per-file outputs this run writes for ``rel`` (kinds as in sources.jsonl)."""
        paths = {'diagram': self.diagram(rel), 'hist': self.hist(rel), 'persistence_image': self.pimg(rel)}
        return {k: p for k, p in paths.items() if p is not None}

    def key(self, path: str) -> str:
        """An output's path relative to the output folder (the key of its sources.jsonl record)."""
        return os.path.relpath(path, self.out_dir).replace(os.sep, '/')

    def makedirs(self, path: str) -> None:
        d = os.path.dirname(path)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)


def parse_shard(spec: str | None, environ: Mapping = os.environ) -> tuple[int, int]:
    """``(K, N)`` from ``'K/N'``, or from torchrun's RANK / WORLD_SIZE, or ``(0, 1)``."""
    if spec is None:
        world = environ.get('WORLD_SIZE')
        if world is None or int(world) <= 1:
            return 0, 1
        spec = f"{environ.get('RANK', '0')}/{world}"
    m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(spec))
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard {spec!r} must be K/N with 0 <= K < N (e.g. --shard 0/4)")
    return int(m.group(1)), int(m.group(2))


def list_inputs(target_dir: str, imgtype: str, out_dir: str | None = None) -> list[str]:
    """Sorted relative paths of the ``*.imgtype`` files below ``target_dir``.

    Files below ``out_dir``, when it is a sub-folder of ``target_dir``, are left out.  For ``npy`` so are the
    files this script derives from diagrams: ``Xhist.npy`` and ``X_persImg.npy`` beside an ``X.npy``, and
    top-level ``labels_*.npy`` matrices.
    """
    found = list_images(target_dir, extensions=('.' + imgtype,))
    if out_dir is not None:
        inner = os.path.relpath(os.path.realpath(out_dir), os.path.realpath(target_dir)).replace(os.sep, '/')
        if inner != '.' and not inner.startswith('../') and inner != '..':
            found = [f for f in found if not f.startswith(inner + '/')]
    if imgtype != 'npy':
        return found
    present = set(found)
    labels = label_file_re()
    keep = []
    for rel in found:
        if '/' not in rel and labels.fullmatch(rel):
            continue
        derived = False
        for suffix in (HIST_SUFFIX, PERSIMG_SUFFIX):
            if rel.endswith(suffix) and rel[: -len(suffix)] + '.npy' in present:
                derived = True
        if not derived:
            keep.append(rel)
    return keep


def shard_of(files: list[str], k: int, n: int) -> list[str]:
    """The files of shard ``k`` of ``n``: every ``n``-th of the sorted list starting at ``k``."""
    return files[k::n]


def refuse_shared_stems(files: list[str]) -> None:
    """Two inputs that differ only in their extension (``x.jpg``, ``x.JPG``, ``x.png``) would write one output."""
    seen = {}
    for rel in files:
        stem = os.path.splitext(rel)[0]
        if stem in seen:
            raise UserError(
                f"{seen[stem]} and {rel} would write the same outputs ({stem}.npy); rename one, or "
                "choose the extension with -it"
            )
        seen[stem] = rel


def refuse_mixed_folder(output: str, several: bool) -> None:
    """A folder holds the outputs of one filtration (diagrams, settings.json, labels_TYPE.*) or those of several
    (filtration_NAME/ parts and their concatenated labels_TYPE.*), never both: a run of the other kind into it
    is refused before anything is written (else its label files and settings.json would contradict each
    other, and pretraining -pd would read the one or the other)."""
    if not os.path.isdir(output):
        return
    labels = {}
    for name in sorted(os.listdir(output)):
        if name.startswith('labels_') and name.endswith('.json'):
            meta = read_json(os.path.join(output, name))
            if isinstance(meta, dict) and meta.get('filtration') is not None:
                labels[name] = meta['filtration']
    if several:
        kinds = [
            k
            for k in (read_json(os.path.join(output, SETTINGS_FILE)) or {})
            if k in ('diagram', 'hist', 'persistence_image')
        ]
        single = {n: f for n, f in labels.items() if not isinstance(f, list)}
        if kinds or single:
            what = ', '.join([f'{k} outputs ({SETTINGS_FILE})' for k in kinds] + list(single))
            raise UserError(
                f"-o {output} holds the outputs of one filtration ({what}); several --filtration values write "
                "filtration_NAME/ parts and a concatenated label matrix, which must not mix with them: choose "
                "another -o (or delete those outputs first)"
            )
        return
    multi = {n: f for n, f in labels.items() if isinstance(f, list)}
    if multi:
        name, filtrations = next(iter(multi.items()))
        raise UserError(
            f"-o {output} holds a label matrix of several filtrations ({name}: --filtration {' '.join(filtrations)}); "
            "the outputs of one filtration must not mix with it: choose another -o, or give --filtration "
            f"{' '.join(filtrations)} to resume that run"
        )


@dataclass
class Run:
    """What one PHdict run works on; the steps of :func:`main` take it instead of long argument lists."""

    cfg: PHConfig
    target_dir: str
    out_dir: str
    k: int  # this shard ...
    n: int  # ... of n
    all_files: list  # every input (sorted), files: those of this shard
    files: list
    fingerprints: list = None
    outs: Outputs = None
    log: SourceLog = None
    diagram_dir: str = None  # where the diagrams are when not in out_dir (the first part of concatenated labels)

    @property
    def shard_note(self):
        return f" (shard {self.k}/{self.n} of {len(self.all_files)})" if self.n > 1 else ''


@dataclass
class Results:
    """What the PH loop produced."""

    ok: np.ndarray
    complete: set
    matrix: np.ndarray = None
    hist_sum: np.ndarray = None
    hist_count: int = 0
    earlier_hist: list = field(default_factory=list)
    failures: list = field(default_factory=list)
