"""The GPU bench's clock, machine facts, steady-state timing of a loader and its results file.

:class:`Clock` (the run's deadline), :func:`sync` (wait for the device before reading a clock),
:func:`machine_info`, :func:`steady_skip` and :class:`TimedBatches` (images/s once the loader's prefetch is
consumed), :class:`Results` (the results dict, rewritten after every update so a timeout keeps it), :func:`say`
(one timestamped line).
"""

import datetime
import os
import platform
import time

from bench.common import write_result
from bench.cpu_bench import cpu_model


class Clock:
    """Seconds since the start of the run, and what is left before ``deadline``."""

    def __init__(self, deadline):
        self.t0 = time.perf_counter()
        self.deadline = deadline

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return self.deadline - self.elapsed()


def sync(device):
    import torch

    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def machine_info(device):
    import numpy
    import torch
    import torchvision

    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        cpu_model=cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=numpy.__version__,
        device=str(device),
    )
    if str(device).startswith('cuda'):
        info['device_name'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    else:
        info['device_name'] = f"CPU: {info['cpu_model']}"
    try:
        from importlib.metadata import version

        info['cripser'] = version('cripser')
    except Exception:  # not installed as a distribution (e.g. unpacked wheel on PYTHONPATH without metadata)
        pass
    try:
        info['load_average'] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def steady_skip(workers):
    """Batches to let pass before the clock starts: every batch the loader may have prepared ahead
    (``workers x PREFETCH``, piled up while the model was starting), plus one.  Timing any earlier counts that
    backlog as throughput (about 10% too high at 14 workers)."""
    from util.train.loaders import PREFETCH

    return max(1, workers * PREFETCH + 1) if workers > 0 else 2


class TimedBatches:
    """Iterate a DataLoader of ``(inputs, targets, dropped)``, stamping each batch; stop after ``seconds``.

    The clock starts when ``skip`` batches have arrived (each worker has then delivered one: start-up is
    over).  :meth:`rate` gives images/s over the later batches.
    """

    def __init__(self, loader, seconds, skip):
        self.loader, self.seconds, self.skip = loader, seconds, max(1, skip)
        self.stamps, self.sizes = [], []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        t_start = None
        for batch in self.loader:
            now = time.perf_counter()
            self.stamps.append(now)
            self.sizes.append(0 if batch[0] is None else int(batch[0].shape[0]))
            if len(self.stamps) == self.skip:
                t_start = now
            if t_start is not None and now - t_start >= self.seconds:
                return
            yield batch

    def rate(self):
        """(images/s in steady state, images counted, seconds); falls back to the whole pass if too short."""
        if len(self.stamps) > self.skip:
            counted = sum(self.sizes[self.skip :])
            dt = self.stamps[-1] - self.stamps[self.skip - 1]
        else:
            counted, dt = sum(self.sizes), (self.stamps[-1] - self.stamps[0]) if len(self.stamps) > 1 else float('nan')
        return counted / dt if dt > 0 else float('nan'), counted, dt


class Results:
    """The results dict, rewritten to every output path after each update (so a timeout keeps them)."""

    def __init__(self, paths, info):
        self.paths = paths
        self.data = dict(info, stages={}, stage_seconds={}, notes=[])

    def set(self, stage, key, value):
        self.data['stages'].setdefault(stage, {})[key] = value
        self.save()

    def save(self):
        write_result(self.paths, self.data)


def say(clock, msg):
    print(f"[{clock.elapsed():6.1f} s] {msg}", flush=True)
