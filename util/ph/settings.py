"""The settings guard shared by util/random_image.py (the generator's args.json) and PHdict.py (settings.json):
a folder's recorded settings are compared with this run's before anything is added to it, so that outputs made
differently are never kept or mixed silently (:func:`changed_settings`, :func:`read_settings`).  PHdict's
per-kind record is here too (:func:`output_settings`, :func:`check_settings`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from util.errors import UserError
from util.io.fileio import write_json
from util.ph import cubical as ph

if TYPE_CHECKING:
    from util.ph.phconfig import PHConfig

SETTINGS_FILE = 'settings.json'

# Settings recorded in settings.json but not compared: the PH engines that made the diagrams there (lists,
# merged over runs).  Diagrams (and so every vector made from them) of either engine hold the same pairs.
RECORDED_ONLY = ('ph_engines',)


def as_json(value: object) -> object:
    """``value`` as it reads back from a JSON file (tuples become lists ...): how recorded settings compare."""
    return json.loads(json.dumps(value))


def read_settings(path: str) -> dict | None:
    """The settings recorded in the JSON file ``path``, or None (no file, unreadable, not an object)."""
    try:
        with open(path, encoding='utf-8') as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def changed_settings(before: Mapping, now: Mapping, keys: Iterable[str]) -> list[str]:
    """The names among ``keys`` whose recorded value (``before``, read from JSON) differs from this run's."""
    return [k for k in keys if before.get(k) != as_json(now.get(k))]


def output_settings(cfg: PHConfig) -> dict:
    """The settings each kind of per-file output depends on (only the kinds this run writes)."""
    kinds = {}
    if cfg.imgtype != 'npy':
        kinds['diagram'] = dict(filtration=cfg.filtration)
        if cfg.gradient:  # recorded only when on: older outputs stay compatible
            kinds['diagram']['gradient'] = True
        if cfg.size_normalise:  # recorded only when on, like gradient
            kinds['diagram']['size_normalise'] = ph.SIZE_REFERENCE
        # recorded, never compared (RECORDED_ONLY): both engines give equal pairs, so a folder may mix them
        kinds['diagram']['ph_engines'] = [ph.resolve_engine(cfg.ph_engine, 2)]
    if cfg.compute_hist:
        kinds['hist'] = dict(
            num_bins=list(cfg.num_bins), max_life=cfg.max_life, max_birth=cfg.max_birth, bandwidth=cfg.bandwidth
        )
    if cfg.compute_persistence_image:
        kinds['persistence_image'] = dict(
            max_life=cfg.max_life,
            max_birth=cfg.max_birth,
            min_birth=cfg.min_birth,
            sigma=cfg.sigma,
            power=cfg.power,
        )
    return kinds


def check_settings(out_dir: str, kinds: dict) -> None:
    """Refuse to resume into ``out_dir`` when its ``settings.json`` records other settings for the same kind
    of output (existing files would be kept although they were made differently); else record ``kinds``
    (the lists in :data:`RECORDED_ONLY` are merged with the recorded ones, not compared)."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    old = read_settings(path) or {}
    kinds = as_json(kinds)
    for kind, settings in kinds.items():
        for key in RECORDED_ONLY:
            if key in settings:
                settings[key] = sorted(set(settings[key]) | set((old.get(kind) or {}).get(key) or ()))
    for kind, settings in kinds.items():
        if old.get(kind) is None:
            continue
        before = {k: v for k, v in old[kind].items() if k not in RECORDED_ONLY}
        now = {k: v for k, v in settings.items() if k not in RECORDED_ONLY}
        changed = changed_settings(before, now, sorted(set(before) | set(now)))
        if changed:
            diff = ', '.join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise UserError(
                f"{out_dir} holds {kind} outputs made with other settings ({diff}; see {path}); "
                "choose another output folder with -o, or delete those outputs"
            )
    if any(old.get(k) != as_json(v) for k, v in kinds.items()):
        write_json(path, dict(old, **kinds))
