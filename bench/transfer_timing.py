"""bench/transfer.py's clock: the measured durations of finished runs, kept in the work folder
(``<work>/timings.json``) so that the next evaluation's estimate is calibrated on this machine, the rates the
estimate uses (measured here, else the built-in ones), and the progress line printed as each run finishes.

A record is one finished (not cached) run: its ``kind`` (pretraining, finetuning, probe, prepare), its seconds,
its size in the kind's ``units`` and what it ran on (arch, device, jobs, threads); its rate is seconds per unit.
Units: pretraining, 1000 image-epochs at 40-px crops (scaled by crop area; a -lm contrastive run counts
CONTRASTIVE_COST times); finetuning, 1000 image-epochs at 32 px; probe, one network x (level x 10 subsets);
prepare (images, PH labels and the controls' targets made from nothing), 1000 images."""

import datetime
import json
import os
import statistics
import threading
import time

from bench.transfer_presets import BUILT_IN_RATES as BUILT_IN
from bench.transfer_presets import CONTRASTIVE_COST, CONTRASTIVE_INITS
from util.io import fileio

TIMINGS = 'timings.json'
KEEP = 500  # records kept (the newest)
KINDS = ('pretraining', 'finetuning', 'probe')


def pretraining_units(cfg, init):
    cost = CONTRASTIVE_COST if init in CONTRASTIVE_INITS else 1.0
    return cfg['n_images'] * cfg['pre_epochs'] / 1000 * cfg['pre_crop'] ** 2 / 40**2 * cost


def finetuning_units(cfg, n_train, epochs):
    return n_train * epochs / 1000 * cfg['ft_img'] ** 2 / 32**2


def probe_units(cfg):
    return len(cfg['labels']) * cfg['subsets'] / 10


def _machine(cfg):
    return {'arch': cfg['arch'], 'device': cfg.get('device'), 'jobs': cfg['jobs'], 'threads': cfg['threads']}


def read_timings(work):
    """The records of ``<work>/timings.json`` ([] if none or unreadable)."""
    try:
        with open(os.path.join(work, TIMINGS), encoding='utf-8') as f:
            records = json.load(f)
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


_write_lock = threading.Lock()


def record_timing(work, cfg, kind, seconds, units, **extra):
    """Add one finished run's duration to ``<work>/timings.json`` (rewritten whole, atomically, under the work
    folder's lock so that two evaluations sharing --work keep both their records)."""
    if not seconds or not units or units <= 0:
        return
    from bench.transfer_runner import run_lock

    rec = dict(
        kind=kind,
        seconds=round(float(seconds), 3),
        units=float(units),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        **_machine(cfg),
        **extra,
    )
    with _write_lock, run_lock(os.path.join(work, TIMINGS + '.lock'), 'timings', lambda msg: None):
        records = read_timings(work) + [rec]
        fileio.write_json(os.path.join(work, TIMINGS), records[-KEEP:])


def measured_rates(records, cfg):
    """({kind: seconds per unit}, {kind: how it was found}): the median rate of the records of each kind that ran
    as this evaluation will (same arch, device, jobs and threads), else the built-in rate (pretraining, prepare,
    probe; none for fine-tuning)."""
    here = _machine(cfg)
    rates, basis = {}, {}
    for kind in ('pretraining', 'finetuning', 'probe', 'prepare'):
        same = [
            r['seconds'] / r['units']
            for r in records
            if r.get('kind') == kind and r.get('units') and all(r.get(k) == v for k, v in here.items())
        ]
        if same:
            rates[kind] = statistics.median(same)
            basis[kind] = f"measured here ({len(same)} run{'s' if len(same) > 1 else ''})"
        elif kind in BUILT_IN:
            rates[kind] = BUILT_IN[kind]
            basis[kind] = 'built-in rate (not measured here yet)'
    return rates, basis


def basis_text(rates, basis):
    names = {'pretraining': 's per 1000 image-epochs', 'prepare': 's per 1000 images', 'probe': 's per network'}
    return '; '.join(f"{k} {rates[k]:.1f} {names[k]}: {basis[k]}" for k in ('pretraining', 'prepare', 'probe'))


class Progress:
    """Prints a line as each run finishes: what it was, how long it took, how many runs are left and the
    expected end (clock time).  The expected end adds, per kind, the runs left times the mean duration of this
    evaluation's finished runs of that kind (before one finishes: its rate times its size), divided by the runs
    made at a time (``parallel[kind]``)."""

    def __init__(self, plan, fallback, parallel, log, clock=time.time):
        self.plan = dict(plan)  # {kind: runs planned}
        self.fallback = dict(fallback)  # {kind: seconds per run, or None if unknown}
        self.parallel = dict(parallel)
        self.log = log
        self.clock = clock
        self.finished = {k: 0 for k in self.plan}
        self.durations = {k: [] for k in self.plan}
        self._lock = threading.Lock()

    def total(self):
        return sum(self.plan.values())

    def left(self):
        return sum(self.plan[k] - self.finished[k] for k in self.plan)

    def remaining_seconds(self):
        """(seconds expected for the runs left, kinds left whose duration is not known yet)."""
        secs, unknown = 0.0, []
        for k, n in self.plan.items():
            todo = n - self.finished[k]
            if todo <= 0:
                continue
            per = statistics.mean(self.durations[k]) if self.durations[k] else self.fallback.get(k)
            if per is None:
                unknown.append(k)
                continue
            secs += todo * per / max(1, min(self.parallel.get(k, 1), todo))
        return secs, unknown

    def done(self, kind, what, seconds):
        """Count one finished run of ``kind`` (``seconds`` None: reused from the cache) and print its line."""
        with self._lock:
            self.finished[kind] = self.finished.get(kind, 0) + 1
            self.plan.setdefault(kind, self.finished[kind])
            if seconds is not None:
                self.durations.setdefault(kind, []).append(float(seconds))
            n, left = self.total() - self.left(), self.left()
            took = 'cached' if seconds is None else f"took {_duration(seconds)}"
            line = f"progress {n}/{self.total()}: {kind} ({what}) {took}; {left} left"
            if left:
                secs, unknown = self.remaining_seconds()
                end = time.strftime('%H:%M', time.localtime(self.clock() + secs))
                line += (
                    f", expected end {end}"
                    if not unknown
                    else f", expected end after {end} (" + ', '.join(unknown) + " not timed yet)"
                )
            self.log(line)


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
