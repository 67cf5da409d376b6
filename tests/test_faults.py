"""One fault matrix across every script: script x fault -> expected outcome.

Each row runs a script as a user would (``util/random_image.py`` and ``PHdict.py`` and the downloader as
subprocesses; ``pretraining.py`` and ``finetuning.py`` [``--evaluate``] in this process through the same
``run_cli(main, get_args_parser().parse_args(argv))`` as their ``__main__``, because importing torch costs
seconds per process), with a fault injected, and asserts the outcome:

* ``exit 2``  -- one line ``error: ...`` naming the file or flag and what to do, no traceback;
* ``exit 1``  -- PHdict: the unreadable inputs are named, all others are processed (``--skip_bad``: 0);
* ``skip``    -- training: an undecodable image is warned about by name, skipped and counted in log.jsonl
  (``skipped_bad``); evaluation counts it in ``val_skipped_bad``;
* ``ok``      -- the odd input (16-bit, RGBA, palette, constant, 1 x 4096) is converted and used correctly.

After every row: no input file was removed or changed ("files lost") and every file under the outputs
decodes completely under its final name (images, .npy, .pth with ``weights_only=True``, .json[l]) --
only ``*.tmp-*`` leftovers of a killed process are allowed ("half-written").  The module prints a grid of
the matrix and the line ``N faults tried, N handled, 0 files lost, 0 half-written`` at the end.

How faults are simulated (we may run as root, for whom permission bits mean nothing):

* read-only output: an output path *below a regular file* (cannot be created by anyone), and a tmpfs
  mounted read-only when mounting is permitted (root), else a ``chmod 500`` folder (non-root), else skipped;
* disk full: a small tmpfs (``mount -t tmpfs -o size=...``; ENOSPC) when mounting is permitted, and in
  any case ``RLIMIT_FSIZE`` (writes beyond the limit fail with EFBIG; Python ignores SIGXFSZ);
* SIGKILL: ``Popen``, poll until outputs appear, ``kill -9``, check, rerun, compare with an uninterrupted run.
"""

import argparse
import ast
import contextlib
import csv
import datetime
import functools
import glob
import gzip
import hashlib
import importlib
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
import traceback
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

TMP_MARK = '.tmp-'
SCRIPT_FILES = {
    'random_image': 'util/random_image.py',
    'PHdict': 'PHdict.py',
    'pretraining': 'pretraining.py',
    'finetuning': 'finetuning.py',
    'evaluation': 'finetuning.py',
    'downloader': 'util/ImageDatasetsDownloader.py',
    'predict': 'predict.py',
}
IN_PROCESS = {'pretraining.py': 'pretraining', 'finetuning.py': 'finetuning'}
SCRIPTS = ('random_image', 'PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader')
TINY = ['-u', 'resnet18', '--img_size', '48', '--crop_size', '32', '-nw', '0']
PT_DIM = 40  # label dimension of the pretraining rows (histogram: 4 x 10 bins)


# ====================================================================================================
# running scripts
# ====================================================================================================


class Result:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self):
        return f"exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def _env():
    env = dict(os.environ, PYTHONHASHSEED='0', OMP_NUM_THREADS='1')
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        env.pop(k, None)
    return env


def _fsize_limiter(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal

    return apply


@contextlib.contextmanager
def _fsize_limit_here(limit):
    """RLIMIT_FSIZE for this process for the duration of the block (SIGXFSZ ignored: writes get EFBIG)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def run(script, *argv, fsize=None, timeout=300):
    """Run ``script`` (a key of SCRIPT_FILES or a path) with ``argv``; return a :class:`Result`.

    ``fsize``: RLIMIT_FSIZE in bytes for the run.  pretraining.py / finetuning.py run in this process.
    """
    path = SCRIPT_FILES.get(script, script)
    argv = [str(a) for a in argv]
    if path in IN_PROCESS:
        limit = _fsize_limit_here(fsize) if fsize else contextlib.nullcontext()
        with limit:
            return _run_in_process(IN_PROCESS[path], argv)
    cmd = [sys.executable, os.path.join(ROOT, path), *argv]
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_fsize_limiter(fsize) if fsize else None,
    )
    return Result(res.returncode, res.stdout, res.stderr)


def _run_in_process(module_name, argv):
    """What ``python <script> argv`` does, in this process: parse, ``run_cli(main, args)``, exit status."""
    mod = importlib.import_module(module_name)
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    saved = {k: os.environ.pop(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK') if k in os.environ}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                mod.run_cli(mod.main, mod.get_args_parser().parse_args(argv))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what the interpreter would print for an uncaught exception
                traceback.print_exc(file=err)
                rc = 1
    finally:
        os.environ.update(saved)
    return Result(rc, out.getvalue(), err.getvalue())


def popen(script, *argv):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPT_FILES.get(script, script)), *map(str, argv)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(proc, ready, timeout=180, poll=0.01):
    """SIGKILL ``proc`` as soon as ``ready()`` is true; return True if it was killed while running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            assert proc.returncode == 0, f"{proc.args} failed before it could be killed:\n{err[-3000:]}"
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            return True
        time.sleep(poll)
    proc.kill()
    proc.communicate()
    raise AssertionError(f"{proc.args}: the awaited outputs never appeared")


# ====================================================================================================
# expected outcomes
# ====================================================================================================


def expect_error(res, *words, rc=2):
    """Exit ``rc``; the last stderr line is ``error: ...`` holding every word of ``words``; no traceback."""
    assert res.rc == rc, res
    assert 'Traceback' not in res.err, res
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith('error: '), res
    assert sum(ln.startswith('error: ') for ln in lines) == 1, res
    for w in words:
        assert str(w) in lines[-1], f"{w!r} not in {lines[-1]!r}"
    return lines[-1]


def expect_ok(res):
    assert res.rc == 0, res
    assert 'Traceback' not in res.err, res
    return res


def only_run_dir(output, exclude=()):
    runs = [d for d in sorted(glob.glob(os.path.join(str(output), '*'))) if os.path.isdir(d) and d not in exclude]
    assert len(runs) == 1, runs
    return runs[0]


def read_log(run_dir):
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def files_under(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha1(f.read()).hexdigest()


def tree_digests(root, skip_tmp=True, only=None):
    """{relative path: sha1} of the files below ``root`` (temp files left out)."""
    return {
        os.path.relpath(p, root): digest(p)
        for p in files_under(root)
        if not (skip_tmp and TMP_MARK in os.path.basename(p)) and (only is None or p.endswith(only))
    }


def half_written(root):
    """Files under ``root`` that do not decode completely under their final name (temp files are skipped)."""
    import torch

    bad = []
    for p in files_under(root):
        name = os.path.basename(p)
        if TMP_MARK in name:
            continue
        ext = name.rsplit('.', 1)[-1].lower()
        try:
            if ext in ('jpg', 'jpeg', 'png'):
                with Image.open(p) as im:
                    im.load()
            elif ext == 'npy':
                np.load(p, allow_pickle=False)
            elif ext == 'pth':
                torch.load(p, map_location='cpu', weights_only=True)
            elif ext == 'json' or name.startswith('.') and name.endswith('.done'):
                with open(p) as f:
                    json.load(f)
            elif ext == 'jsonl':
                with open(p) as f:
                    [json.loads(line) for line in f]
            elif ext in ('txt', 'csv'):
                with open(p, encoding='utf-8') as f:
                    text = f.read()
                assert text == '' or text.endswith('\n')
        except Exception as e:  # noqa: BLE001 - any failure to decode is what we count
            bad.append(f"{p} ({type(e).__name__}: {e})")
    return bad


def temp_files(root):
    return [p for p in files_under(root) if TMP_MARK in os.path.basename(p)]


# ====================================================================================================
# the matrix
# ====================================================================================================

CASES = {}  # (script, fault) -> (function, expected outcome, xfail reason or None)


def case(scripts, fault, expect, xfail=None):
    """Register ``fn(ctx, script)`` as the row (script, fault) for each of ``scripts``."""
    scripts = (scripts,) if isinstance(scripts, str) else scripts

    def deco(fn):
        for s in scripts:
            reason = xfail.get(s) if isinstance(xfail, dict) else xfail
            CASES[(s, fault)] = (
                functools.partial(fn, script=s),
                expect if isinstance(expect, str) else expect[s],
                reason,
            )
        return fn

    return deco


class Ledger:
    """What the rows did: tried / handled / known failures, files lost, files half-written."""

    def __init__(self):
        self.status = {}
        self.lost = 0
        self.half = 0

    def summary(self):
        tried = len(self.status)
        handled = sum(v == 'handled' for v in self.status.values())
        line = f"{tried} faults tried, {handled} handled, {self.lost} files lost, {self.half} half-written"
        known = sorted(f"{s}/{f}" for (s, f), v in self.status.items() if v == 'xfail')
        if known:
            line += f" (known unhandled, xfail: {', '.join(known)})"
        return line

    def grid(self):
        faults = list(dict.fromkeys(f for _, f in CASES))
        scripts = list(dict.fromkeys(s for s, _ in CASES))
        mark = {'handled': 'ok', 'failed': 'FAIL', 'xfail': 'xfail', None: '-'}
        width = max(len(f) for f in faults)
        lines = [' ' * width + ' | ' + ' | '.join(f'{c:>12}' for c in scripts)]
        for f in faults:
            cells = []
            for s in scripts:
                if (s, f) not in CASES:
                    cells.append(f"{'':>12}")
                else:
                    cells.append(f"{mark.get(self.status.get((s, f)), '-'):>12}")
            lines.append(f'{f:<{width}} | ' + ' | '.join(cells))
        return '\n'.join(lines)


_LEDGER = Ledger()


@pytest.fixture(scope='module')
def ledger(request):
    yield _LEDGER
    if not _LEDGER.status:
        return
    text = (
        'fault matrix (rows: faults, columns: scripts; blank = not applicable)\n'
        + _LEDGER.grid()
        + '\n'
        + _LEDGER.summary()
    )
    capture = request.config.pluginmanager.get_plugin('capturemanager')
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print('\n' + text, flush=True)


class Ctx:
    """What a row gets: a fresh folder, the shared data, and the lists of its inputs and outputs."""

    def __init__(self, tmp_path, data):
        self.tmp = tmp_path
        self.data = data
        self._inputs = {}
        self._outputs = []
        self._cleanup = []

    def inputs(self, *roots):
        """Remember the files below ``roots`` now; the row fails if any is removed or changed later."""
        for r in roots:
            for p in files_under(str(r)) if os.path.isdir(r) else [str(r)]:
                self._inputs[p] = digest(p)

    def outputs(self, *roots):
        """Folders whose files must all decode completely (checked after the row)."""
        self._outputs += [str(r) for r in roots]

    def lost(self):
        return [p for p, h in self._inputs.items() if not os.path.exists(p) or digest(p) != h]

    def half_written(self):
        return [b for r in self._outputs if os.path.isdir(r) for b in half_written(r)]

    def mount_tmpfs(self, path, size, ro=False):
        """Mount a tmpfs of ``size`` at ``path`` (unmounted after the row); False when not permitted."""
        os.makedirs(path, exist_ok=True)
        opts = f'size={size}' + (',ro' if ro else '')
        res = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(path)], capture_output=True)
        if res.returncode != 0:
            return False
        self._cleanup.append(lambda: subprocess.run(['umount', '-l', str(path)], capture_output=True))
        return True

    def resize_tmpfs(self, path, size):
        subprocess.run(['mount', '-o', f'remount,size={size}', str(path)], check=True, capture_output=True)

    def close(self):
        for fn in reversed(self._cleanup):
            fn()


def _matrix_params():
    params = []
    for (script, fault), (_, expect, reason) in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(script, fault, id=f'{script}|{fault}', marks=marks))
    return params


# ====================================================================================================
# shared data (built once per module, lazily)
# ====================================================================================================


def smooth_noise(rng, h, w, sigma=2.0):
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.random((h, w)), sigma)
    a = (a - a.min()) / (a.max() - a.min())
    return (a * 255).astype(np.uint8)


def jpeg_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format='JPEG', quality=90)
    return buf.getvalue()


def closed_port_url(path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}{path}'


def idx_gz(arr):
    head = bytes([0, 0, 8, arr.ndim]) + struct.pack('>' + 'i' * arr.ndim, *arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes(), mtime=0)


class Data:
    """Inputs shared by the rows; each is made on first use."""

    def __init__(self, root):
        self.root = root
        self._cache = {}

    def once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # --- synthetic images and their diagrams
    @property
    def gen(self):
        """16 generated 48-px JPEGs."""

        def make():
            out = self.root / 'gen'
            expect_ok(
                run('random_image', '-o', out, '-n', 16, '-is', 48, '-pb', 0.5, '-pc', 0.5, '-nw', 1, '--preview', 0)
            )
            return out

        return self.once('gen', make)

    @property
    def gen_ph(self):
        """Diagrams of ``gen`` written by PHdict (the -pd folder of pretraining)."""

        def make():
            out = self.root / 'gen_ph'
            expect_ok(run('PHdict', self.gen, '-o', out, '-it', 'jpg', '-nw', 1))
            return out

        return self.once('gen_ph', make)

    @property
    def gen64(self):
        """64 generated 48-px JPEGs (the long PHdict runs: kill, shards)."""

        def make():
            out = self.root / 'gen64'
            expect_ok(run('random_image', '-o', out, '-n', 64, '-is', 48, '-pb', 0.5, '-nw', 1, '--preview', 0))
            return out

        return self.once('gen64', make)

    PH64_ARGS = ('-it', 'jpg', '-nw', '1', '--label_type', 'histogram', '--numof_dims', '20')

    @property
    def ph64_ref(self):
        """An uninterrupted single-process PHdict run over ``gen64`` (with a label matrix)."""

        def make():
            out = self.root / 'ph64_ref'
            expect_ok(run('PHdict', self.gen64, '-o', out, *self.PH64_ARGS))
            return out

        return self.once('ph64_ref', make)

    # --- odd images
    @property
    def odd(self):
        """A folder of awkward inputs: see :meth:`_make_odd` (11 files, 9 decodable)."""
        return self.once('odd', lambda: self._make_odd(self.root / 'odd'))

    def _make_odd(self, d, rng_seed=0):
        rng = np.random.default_rng(rng_seed)
        d.mkdir(parents=True)
        src = {}
        src['good1'] = np.stack([smooth_noise(rng, 48, 48)] * 3, -1)
        src['good2'] = smooth_noise(rng, 48, 48)
        Image.fromarray(src['good1']).save(d / 'good1.png')
        Image.fromarray(src['good2']).save(d / 'good2.png')
        good = np.dstack([smooth_noise(rng, 48, 48) for _ in range(3)])
        (d / 'good.jpg').write_bytes(jpeg_bytes(good))
        broken = jpeg_bytes(np.dstack([smooth_noise(rng, 48, 48) for _ in range(3)]))
        (d / 'truncated.jpg').write_bytes(broken[: len(broken) // 2])
        (d / 'zero.jpg').write_bytes(b'')
        src['sixteen'] = smooth_noise(rng, 48, 48)
        Image.fromarray(src['sixteen'].astype(np.uint16) * 257).save(d / 'sixteen.png')  # mode I;16
        src['rgba'] = np.dstack([smooth_noise(rng, 48, 48) for _ in range(3)])
        Image.fromarray(np.dstack([src['rgba'], np.full((48, 48), 100, np.uint8)]), 'RGBA').save(d / 'rgba.png')
        Image.fromarray(np.dstack([smooth_noise(rng, 48, 48) for _ in range(3)])).convert(
            'P', palette=Image.ADAPTIVE, colors=16
        ).save(d / 'palette.png')
        Image.fromarray(np.full((48, 48, 3), 77, np.uint8)).save(d / 'constant.png')
        src['wide'] = smooth_noise(rng, 1, 4096, sigma=(0, 8))
        src['tall'] = smooth_noise(rng, 4096, 1, sigma=(8, 0))
        Image.fromarray(src['wide']).save(d / 'wide.png')  # 4096 wide, 1 high
        Image.fromarray(src['tall']).save(d / 'tall.png')  # 1 wide, 4096 high
        self._cache.setdefault('odd_src', src)
        return d

    @property
    def odd_src(self):
        self.odd
        return self._cache['odd_src']

    @property
    def odd_task(self):
        """Class folders train/{a,b}, val/{a,b}: the odd files in class a (train and val), good images elsewhere."""

        def make():
            root = self.root / 'odd_task'
            for split in ('train', 'val'):
                shutil.copytree(self.odd, root / split / 'a')
                b = root / split / 'b'
                b.mkdir(parents=True)
                rng = np.random.default_rng(1 if split == 'train' else 2)
                for i in range(3):
                    Image.fromarray(smooth_noise(rng, 40, 40)).save(b / f'{i}.png')
            return root

        return self.once('odd_task', make)

    @property
    def task(self):
        """An easy two-class folder task: train/{dark,bright} x 4, val/{dark,bright} x 2, 40 px PNGs."""

        def make():
            root = self.root / 'task'
            rng = np.random.default_rng(3)
            for split, n in (('train', 4), ('val', 2)):
                for cls, (lo, hi) in (('bright', (150, 255)), ('dark', (0, 100))):
                    folder = root / split / cls
                    folder.mkdir(parents=True)
                    for i in range(n):
                        Image.fromarray(rng.integers(lo, hi, (40, 40, 3), dtype=np.uint8)).save(folder / f'{i}.png')
            return root

        return self.once('task', make)

    # --- weights
    def _weights(self, name, classes):
        def make():
            import torch
            import torchvision

            path = self.root / 'weights' / name
            path.parent.mkdir(exist_ok=True)
            torch.manual_seed(0)
            torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), path)
            return path

        return self.once(name, make)

    @property
    def pretrained(self):
        """A pretraining-style state dict: resnet18 with a 10-output head."""
        return self._weights('resnet18_epoch1.pth', 10)

    @property
    def finetuned(self):
        """Weights for the two-class tasks (resnet18, 2 outputs), as finetuning.py writes them."""
        return self._weights('ft_resnet18_epoch1.pth', 2)

    # --- the downloader, offline: MNIST files placed by hand, a source table pointing at a closed port
    @property
    def mnist(self):
        """(raw folder holding the four MNIST files, sources.json) for offline downloader runs."""

        def make():
            rng = np.random.default_rng(5)
            raw = self.root / 'mnist_raw'
            raw.mkdir()
            table = []
            for split, prefix, n in (('train', 'train', 12), ('val', 't10k', 10)):
                files = {
                    f'{prefix}-images-idx3-ubyte.gz': idx_gz(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                    f'{prefix}-labels-idx1-ubyte.gz': idx_gz(np.arange(n, dtype=np.uint8) % 10),
                }
                for name, blob in files.items():
                    (raw / name).write_bytes(blob)
                    table.append([closed_port_url('/mnist/' + name), name, hashlib.md5(blob).hexdigest()])
            sources = self.root / 'mnist_sources.json'
            sources.write_text(json.dumps({'MNIST': table}))
            return raw, sources

        return self.once('mnist', make)

    @property
    def mnist_ref(self):
        """An undisturbed downloader run (the reference for reruns)."""

        def make():
            raw, sources = self.mnist
            out = self.root / 'mnist_ref'
            expect_ok(
                run(
                    'downloader',
                    '-d',
                    'MNIST',
                    '--sources',
                    sources,
                    '--raw_file_path',
                    raw,
                    '-o',
                    out,
                    '--no_progress',
                )
            )
            return out

        return self.once('mnist_ref', make)

    def cached_run(self, key, make):
        return self.once(('run', key), make)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return Data(tmp_path_factory.mktemp('fault_data'))


# ====================================================================================================
# the command of each script, writing into ``out`` (the baseline every generic fault modifies)
# ====================================================================================================


def base_argv(script, data, out):
    if script == 'random_image':
        return ['-o', out, '-n', 8, '-is', 48, '-nw', 1, '--preview', 0]
    if script == 'PHdict':
        return [data.gen, '-o', out, '-it', 'jpg', '-nw', 1]
    if script == 'pretraining':
        return ['-t', data.gen, '-pd', data.gen_ph, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    if script == 'finetuning':
        return ['-t', data.task / 'train', '-val', data.task / 'val', '-o', out, '-nc', 2, '-e', 1, '-b', 8, *TINY]
    if script == 'evaluation':
        return ['--evaluate', '-val', data.task / 'val', '-pw', data.finetuned, '-o', out, '-nc', 2, '-b', 8, *TINY]
    if script == 'downloader':
        raw, sources = data.mnist
        return ['-d', 'MNIST', '--sources', sources, '--raw_file_path', raw, '-o', out, '--no_progress']
    raise KeyError(script)


def base_inputs(script, data):
    return {
        'random_image': [],
        'PHdict': [data.gen],
        'pretraining': [data.gen, data.gen_ph],
        'finetuning': [data.task],
        'evaluation': [data.task, data.finetuned],
        'downloader': list(data.mnist),
    }[script]


# ====================================================================================================
# the test
# ====================================================================================================


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == 'test_fault':  # after the whole module, so every row is registered
        metafunc.parametrize('script,fault', _matrix_params())


def test_fault(script, fault, tmp_path, data, ledger):
    fn, expect, reason = CASES[(script, fault)]
    ctx = Ctx(tmp_path, data)
    ledger.status[(script, fault)] = 'xfail' if reason else 'failed'
    try:
        try:
            fn(ctx)
        except pytest.skip.Exception:
            del ledger.status[(script, fault)]
            raise
        lost, half = ctx.lost(), ctx.half_written()
        ledger.lost += len(lost)
        ledger.half += len(half)
        assert not lost, f"input files removed or changed: {lost}"
        assert not half, f"half-written files under a final name: {half}"
    finally:
        ctx.close()
    if not reason:
        ledger.status[(script, fault)] = 'handled'


# ====================================================================================================
# input faults
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'missing input dir',
    'exit 2: names the missing folder/file; nothing created',
)
def _missing_input(ctx, script):
    out = ctx.tmp / 'out'
    missing = ctx.tmp / 'no_such_dir'
    argv = base_argv(script, ctx.data, out)
    ctx.inputs(*base_inputs(script, ctx.data))
    if script == 'PHdict':
        argv[0] = missing
    elif script in ('pretraining', 'finetuning'):
        argv[argv.index('-t') + 1] = missing
    elif script == 'evaluation':
        argv[argv.index('-val') + 1] = missing
    elif script == 'downloader':
        missing = ctx.tmp / 'no_such_sources.json'
        argv[argv.index('--sources') + 1] = missing
    expect_error(run(script, *argv), missing, 'does not exist' if script != 'downloader' else '--sources')
    assert not out.exists()


def _make_empty_input(ctx, script, non_images):
    """A folder with nothing usable: empty, or holding only non-image files (and, for class folders, classes)."""
    d = ctx.tmp / 'inp'
    d.mkdir()
    if script in ('finetuning', 'evaluation'):
        for cls in ('a', 'b'):
            (d / cls).mkdir()
            if non_images:
                (d / cls / 'notes.txt').write_text('not an image\n')
                (d / cls / 'table.csv').write_text('1,2\n')
    elif non_images:
        (d / 'notes.txt').write_text('not an image\n')
        (d / 'image.jpg.txt').write_text('not an image either\n')
        (d / 'sub').mkdir()
        (d / 'sub' / 'data.npz').write_bytes(b'PK\x05\x06' + b'\0' * 18)
    return d


def _nothing_usable(ctx, script, non_images):
    out = ctx.tmp / 'out'
    argv = base_argv(script, ctx.data, out)
    ctx.inputs(*base_inputs(script, ctx.data))
    if script == 'downloader':
        raw = ctx.tmp / 'raw'
        raw.mkdir()
        if non_images:  # a text file where the archive should be: checksum refused, file kept as .bad
            for name in ('train-images-idx3-ubyte.gz',):
                (raw / name).write_text('not an archive\n')
        argv[argv.index('--raw_file_path') + 1] = raw
        res = run(script, *argv)
        if non_images:
            expect_error(res, raw / 'train-images-idx3-ubyte.gz', 'not the published', '.bad')
            assert (raw / 'train-images-idx3-ubyte.gz.bad').read_text() == 'not an archive\n'  # kept, not opened
        else:
            expect_error(res, 'cannot download train-images-idx3-ubyte.gz', '--raw_file_path')
        assert not glob.glob(str(out / 'MNIST' / '*' / '*' / '*.png'))
        return
    d = _make_empty_input(ctx, script, non_images)
    ctx.inputs(d)
    if script == 'PHdict':
        argv[0] = d
        words = (d, 'no *.jpg files', '-it')
    elif script == 'pretraining':
        argv[argv.index('-t') + 1] = d
        words = (d, 'no images', '-t')
    else:
        flag = '-t' if script == 'finetuning' else '-val'
        argv[argv.index(flag) + 1] = d
        words = (d, 'class folder' if not non_images else 'no valid file')
    expect_error(run(script, *argv), *words)
    assert not glob.glob(str(out / '**' / '*.*'), recursive=True)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'empty dir',
    {
        'PHdict': 'exit 2: no *.jpg files under DIR; set -it',
        'pretraining': 'exit 2: no images under DIR (-t)',
        'finetuning': 'exit 2: no class folder in DIR',
        'evaluation': 'exit 2: no class folder in DIR',
        'downloader': 'exit 2 (offline, empty raw dir): cannot download X; place it at --raw_file_path',
    },
)
def _empty_dir(ctx, script):
    _nothing_usable(ctx, script, non_images=False)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'),
    'only non-images',
    {
        'PHdict': 'exit 2: no *.jpg files under DIR',
        'pretraining': 'exit 2: no images under DIR (-t)',
        'finetuning': 'exit 2: no valid file in the class folders of DIR',
        'evaluation': 'exit 2: no valid file in the class folders of DIR',
        'downloader': 'exit 2: non-archive under the archive name: checksum refused, kept as .bad, not opened',
    },
)
def _only_non_images(ctx, script):
    _nothing_usable(ctx, script, non_images=True)


# --- the odd folder, run once per script and shared by the rows below


def _ph_odd(data, ext, skip_bad=False):
    def make():
        out = data.root / f'ph_odd_{ext}{"_skip" if skip_bad else ""}'
        res = run('PHdict', data.odd, '-o', out, '-it', ext, '-nw', 1, '-ch', *(['--skip_bad'] if skip_bad else []))
        return res, out

    return data.cached_run(('ph_odd', ext, skip_bad), make)


def _pt_odd_argv(data, out):
    return ['-t', data.odd, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 11, *TINY]


def _pt_odd(data):
    def make():
        out = data.root / 'pt_odd'
        return run('pretraining', *_pt_odd_argv(data, out)), out

    return data.cached_run('pt_odd', make)


def _ft_odd(data):
    def make():
        out = data.root / 'ft_odd'
        t = data.odd_task
        return run(
            'finetuning', '-t', t / 'train', '-val', t / 'val', '-o', out, '-nc', 2, '-e', 1, '-b', 14, *TINY
        ), out

    return data.cached_run('ft_odd', make)


def _ev_odd(data):
    def make():
        out = data.root / 'ev_odd'
        return run(
            'evaluation',
            '--evaluate',
            '-val',
            data.odd_task / 'val',
            '-pw',
            data.finetuned,
            '-o',
            out,
            '-nc',
            2,
            '-b',
            4,
            *TINY,
        ), out

    return data.cached_run('ev_odd', make)


def _odd_run(ctx, script):
    """The shared run of ``script`` over the odd inputs: (result, output folder), checked for integrity."""
    d = ctx.data
    ctx.inputs(d.odd)
    if script in ('finetuning', 'evaluation'):
        ctx.inputs(d.odd_task)
    res, out = {'pretraining': _pt_odd, 'finetuning': _ft_odd, 'evaluation': _ev_odd}[script](d)
    ctx.outputs(out)
    return res, out


def _bad_file(ctx, script, name):
    """Rows 'truncated JPEG' and 'zero-byte file': named, skipped and counted, the rest processed."""
    d = ctx.data
    if script == 'PHdict':
        ctx.inputs(d.odd)
        res, out = _ph_odd(d, 'jpg')
        ctx.outputs(out)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert name in res.err and 'failed inputs (2)' in res.err, res
        assert '1 done' in res.out and '2 failed of 3 files' in res.out, res
        assert (out / 'good.npy').exists() and not (out / name.replace('.jpg', '.npy')).exists()
        res, out = _ph_odd(d, 'jpg', skip_bad=True)
        ctx.outputs(out)
        assert res.rc == 0 and name in res.err, res
        return
    if script == 'downloader':
        raw, sources = d.mnist
        mine = ctx.tmp / 'raw'
        shutil.copytree(raw, mine)
        target = mine / 't10k-images-idx3-ubyte.gz'
        blob = target.read_bytes()
        blob = blob[: len(blob) // 2] if name == 'truncated.jpg' else b''
        target.write_bytes(blob)
        table = json.loads(sources.read_text())
        for entry in table['MNIST']:  # a source table whose checksum matches the damaged file
            if entry[1] == target.name:
                entry[2] = hashlib.md5(blob).hexdigest()
        (ctx.tmp / 'sources.json').write_text(json.dumps(table))
        ctx.inputs(mine)
        out = ctx.tmp / 'out'
        ctx.outputs(out)
        res = run(
            'downloader',
            '-d',
            'MNIST',
            '--sources',
            ctx.tmp / 'sources.json',
            '--raw_file_path',
            mine,
            '-o',
            out,
            '--no_progress',
        )
        expect_error(res, target, 'cannot read' if blob else 'not an IDX file')
        return
    res, out = _odd_run(ctx, script)
    expect_ok(res)
    assert 'warning: skipped cannot read image' in res.err and name in res.err, res
    run_dir = only_run_dir(out)
    if script == 'evaluation':
        with open(os.path.join(run_dir, 'metrics.json')) as f:
            metrics = json.load(f)
        assert metrics['val_skipped_bad'] == 2 and metrics['val_images'] == 12, metrics
    else:
        (record,) = read_log(run_dir)
        assert record['skipped_bad'] == 2, record
        assert record['images'] == (9 if script == 'pretraining' else 12), record
        assert np.isfinite(record['train_loss'])


BAD_FILE_EXPECT = {
    'PHdict': 'exit 1: file named, others processed, no .npy for it; --skip_bad: exit 0',
    'pretraining': 'skip: warned by name, counted as skipped_bad in log.jsonl',
    'finetuning': 'skip: warned by name, counted as skipped_bad in log.jsonl',
    'evaluation': 'skip: warned by name, counted as val_skipped_bad in metrics.json',
    'downloader': 'exit 2: damaged archive whose checksum matches (--sources): named, no traceback',
}


@case(('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'), 'truncated JPEG', BAD_FILE_EXPECT)
def _truncated(ctx, script):
    _bad_file(ctx, script, 'truncated.jpg')


@case(('PHdict', 'pretraining', 'finetuning', 'evaluation', 'downloader'), 'zero-byte file', BAD_FILE_EXPECT)
def _zero_byte(ctx, script):
    _bad_file(ctx, script, 'zero.jpg')


@case(
    ('pretraining', 'finetuning'),
    'bad image with --bad_images fail',
    'exit 2: names the file and says --bad_images skip; no weights written',
)
def _bad_images_fail(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.inputs(d.odd)
    ctx.outputs(out)
    if script == 'pretraining':
        argv = _pt_odd_argv(d, out)
    else:
        t = d.odd_task
        ctx.inputs(t)
        argv = ['-t', t / 'train', '-val', t / 'val', '-o', out, '-nc', 2, '-e', 1, '-b', 14, *TINY]
    res = run(script, *argv, '--bad_images', 'fail')
    line = expect_error(res, '--bad_images skip')
    assert 'truncated.jpg' in line or 'zero.jpg' in line
    assert not glob.glob(str(out / '*' / '*.pth'))


def _expected_pt_label(data, image):
    import pretraining
    from util.ph.vectorise import vectoriser_from_args
    from util.train.datasets import ComputedLabels

    args = pretraining.get_args_parser().parse_args([str(a) for a in _pt_odd_argv(data, 'unused')])
    return ComputedLabels(vectoriser_from_args(args, PT_DIM), args.filtration).from_image(image)


def _odd_image_ok(ctx, script, name):
    """Rows for 16-bit, RGBA, palette, constant and 1 x 4096 images: converted and used, not skipped."""
    d = ctx.data
    src = d.odd_src
    reference = {
        'sixteen.png': lambda: Image.fromarray(src['sixteen']).convert('RGB'),
        'rgba.png': lambda: Image.fromarray(src['rgba']),
        'palette.png': lambda: Image.open(d.odd / 'palette.png').convert('RGB'),
        'constant.png': lambda: Image.fromarray(np.full((48, 48, 3), 77, np.uint8)),
        'wide.png': lambda: Image.fromarray(src['wide']).convert('RGB'),
        'tall.png': lambda: Image.fromarray(src['tall']).convert('RGB'),
    }[name]()
    if script == 'PHdict':
        from util.ph.cubical import compute_ph

        ctx.inputs(d.odd)
        res, out = _ph_odd(d, 'png')
        ctx.outputs(out)
        expect_ok(res)
        assert name not in res.err
        dgm = np.load(out / name.replace('.png', '.npy'))
        assert dgm.ndim == 2 and dgm.shape[1] == 9 and len(dgm) >= 1 and not np.isnan(dgm).any()
        np.testing.assert_array_equal(dgm, compute_ph(reference))
        if name == 'constant.png':  # one class, born at 0, never dies
            assert len(dgm) == 1 and dgm[0, 0] == 0 and dgm[0, 1] == 0
        if name in ('wide.png', 'tall.png'):
            # a 1-pixel-thick image has the homology of the same row doubled (a product with an interval)
            line = np.asarray(reference.convert('L'))
            doubled = compute_ph(np.concatenate([line, line], axis=0 if name == 'wide.png' else 1))
            assert np.array_equal(dgm[:, :3], doubled[:, :3]), (
                f"{name}: {len(dgm)} pairs, {int((dgm[:, 2] > 1e300).sum())} essential; the doubled line "
                f"has {len(doubled)} pairs, {int((doubled[:, 2] > 1e300).sum())} essential"
            )
            assert int((dgm[:, 2] > 1e300).sum()) == 1 and len(dgm) < 1000  # one component, few local minima
            assert (dgm[:, 3:5] <= [0, 4095] if name == 'wide.png' else dgm[:, 3:5] <= [4095, 0]).all()
        hist = np.load(out / name.replace('.png', 'hist.npy'))
        assert np.isfinite(hist).all()
        return
    import torch

    res, out = _odd_run(ctx, script)
    expect_ok(res)
    assert name not in res.err, res
    if script == 'pretraining':
        import pretraining

        args = pretraining.get_args_parser().parse_args([str(a) for a in _pt_odd_argv(d, ctx.tmp / 'x')])
        train, _ = pretraining.build_pretraining_sets(args)
        image, label = train[train.rel_paths.index(name)]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
        np.testing.assert_allclose(label.numpy(), _expected_pt_label(d, reference), rtol=0, atol=0)
        assert torch.isfinite(label).all()
        return
    import finetuning
    from util.train.datasets import SafeImageFolder, finetune_transforms

    args = finetuning.get_args_parser().parse_args([str(a) for a in TINY])
    from util.cli.build import data_config

    tf = finetune_transforms(data_config(args).augment, train=False)
    folder = SafeImageFolder(d.odd_task / ('train' if script == 'finetuning' else 'val'), tf)
    index = [os.path.basename(p) for p, _ in folder.samples].index(name)
    image, target = folder[index]
    assert target == folder.class_to_idx['a']
    assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
    torch.testing.assert_close(image, tf(reference), rtol=0, atol=0)


ODD_EXPECT = {
    'PHdict': 'ok: converted like the 8-bit source; diagram and -ch histogram finite',
    'pretraining': 'ok: trained on, label = PH of the converted image',
    'finetuning': 'ok: trained on, tensor = that of the converted image',
    'evaluation': 'ok: evaluated, tensor = that of the converted image',
}
ODD_SCRIPTS = ('PHdict', 'pretraining', 'finetuning', 'evaluation')


@case(ODD_SCRIPTS, '16-bit PNG', ODD_EXPECT)
def _sixteen(ctx, script):
    _odd_image_ok(ctx, script, 'sixteen.png')


@case(ODD_SCRIPTS, 'RGBA PNG', ODD_EXPECT)
def _rgba(ctx, script):
    _odd_image_ok(ctx, script, 'rgba.png')


@case(ODD_SCRIPTS, 'palette PNG', ODD_EXPECT)
def _palette(ctx, script):
    _odd_image_ok(ctx, script, 'palette.png')


@case(ODD_SCRIPTS, 'constant image', ODD_EXPECT)
def _constant(ctx, script):
    _odd_image_ok(ctx, script, 'constant.png')


@case(ODD_SCRIPTS, 'huge aspect 4096x1', ODD_EXPECT)
def _wide(ctx, script):
    _odd_image_ok(ctx, script, 'wide.png')


@case(ODD_SCRIPTS, 'huge aspect 1x4096', ODD_EXPECT)
def _tall(ctx, script):
    _odd_image_ok(ctx, script, 'tall.png')


# ====================================================================================================
# output faults (every script)
# ====================================================================================================


def _run_base(ctx, script, out, *extra, fsize=None):
    ctx.inputs(*base_inputs(script, ctx.data))
    return run(script, *base_argv(script, ctx.data, out), *extra, fsize=fsize)


@case(
    SCRIPTS,
    'read-only output (path below a file)',
    'exit 2: cannot create the output folder (names it): Not a directory; nothing written',
)
def _below_a_file(ctx, script):
    blocker = ctx.tmp / 'a_file'
    blocker.write_text('x\n')
    ctx.inputs(blocker)
    out = blocker / 'out'
    expect_error(_run_base(ctx, script, out), out, 'cannot create', 'Not a directory')


@case(
    SCRIPTS,
    'read-only output (read-only mount)',
    'exit 2: cannot create/write to the output folder (names it): Read-only file system',
)
def _read_only_mount(ctx, script):
    out = ctx.tmp / 'ro'
    if ctx.mount_tmpfs(out, '64k', ro=True):
        reason = 'Read-only file system'
    elif os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o500)
        ctx._cleanup.append(lambda: out.chmod(0o700))
        reason = 'Permission denied'
    else:
        pytest.skip('mounting a read-only tmpfs is not permitted here; the path-below-a-file row covers this')
    target = out / 'MNIST' if script == 'downloader' else out
    expect_error(_run_base(ctx, script, out), target, reason)
    assert os.listdir(out) == []


def _fake_earlier_runs(output):
    """Folders named like the run folders of this minute and the next, holding an earlier run's files."""
    import torch

    now = datetime.datetime.now()
    made = []
    for t in (now, now + datetime.timedelta(minutes=1)):
        d = output / t.strftime('%Y_%m%d_%H%M')
        d.mkdir(parents=True, exist_ok=True)
        (d / 'log.jsonl').write_text('{"epoch": 1, "train_loss": 0.5}\n')
        (d / 'args.json').write_text('{"note": "an earlier run"}\n')
        torch.save({'epoch': 1, 'note': 'an earlier run'}, d / 'checkpoint.pth')
        made.append(str(d))
    return made


@case(
    SCRIPTS,
    'output dir already holds a run',
    {
        'random_image': 'ok: same settings -> everything skipped, bytes unchanged; other settings -> exit 2',
        'PHdict': 'ok: same settings -> all skipped, bytes unchanged; other settings -> exit 2',
        'pretraining': 'ok: a new dated run folder; the earlier runs untouched',
        'finetuning': 'ok: a new dated run folder; the earlier runs untouched',
        'evaluation': 'ok: a new dated run folder; the earlier runs untouched',
        'downloader': 'ok: already complete -> nothing redone; a folder it did not write -> exit 2',
    },
)
def _holds_a_run(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script in ('random_image', 'PHdict', 'downloader'):
        expect_ok(_run_base(ctx, script, out))

        def data_mtimes():  # images and arrays are not rewritten (args.json is, with the same bytes)
            return {p: os.stat(p).st_mtime_ns for p in files_under(out) if p.endswith(('.jpg', '.png', '.npy'))}

        before = data_mtimes()
        ctx.inputs(out)  # nothing in it may change from now on
        res = expect_ok(_run_base(ctx, script, out))
        assert data_mtimes() == before and before
        if script == 'random_image':
            assert 'wrote 0 images, skipped 8' in res.out, res
            expect_error(_run_base(ctx, script, out, '--seed', 1), out, 'different settings', '--overwrite')
        elif script == 'PHdict':
            assert '0 done, 16 skipped' in res.out, res
            expect_error(_run_base(ctx, script, out, '--filtration', 'distance'), out, 'other settings', '-o')
        else:
            assert 'already complete' in res.out, res
            foreign = ctx.tmp / 'foreign'
            (foreign / 'MNIST' / 'train' / 'mine').mkdir(parents=True)
            (foreign / 'MNIST' / 'train' / 'mine' / 'keep.png').write_bytes(b'not ours')
            ctx.inputs(foreign)
            expect_error(
                _run_base(ctx, script, foreign),
                foreign / 'MNIST' / 'train',
                'not written by this',
                'remove it or choose another --data_file_path',
            )
        return
    earlier = _fake_earlier_runs(out)
    ctx.inputs(*earlier)
    expect_ok(_run_base(ctx, script, out))
    new = os.path.basename(only_run_dir(out, exclude=earlier))
    stamp = new.rsplit('_', 1)[0] if new.count('_') == 3 else new
    assert re.fullmatch(r'\d{4}_\d{4}_\d{4}(_\d+)?', new), new
    assert (stamp in map(os.path.basename, earlier)) == (new.count('_') == 3), new  # taken names get _2, ...
    produced = {
        'pretraining': 'resnet18_epoch1.pth',
        'finetuning': 'ft_resnet18_epoch1.pth',
        'evaluation': 'metrics.json',
    }[script]
    assert os.path.exists(out / new / produced)


DISK_FULL_EXPECT = {
    'random_image': 'exit 2: cannot write <image>: No space left on device; nothing half-written; after making '
    'room the rerun completes byte-identical to an undisturbed run',
    'PHdict': 'exit 2: cannot write <diagram>.npy: No space left on device; the rerun completes byte-identical',
    'pretraining': 'exit 2: cannot write <run>/checkpoint.pth: No space left on device; no .pth half-written',
    'finetuning': 'exit 2: cannot write <run>/checkpoint.pth: No space left on device; no .pth half-written',
    'evaluation': 'exit 2: cannot write <run>/metrics.json: No space left on device',
    'downloader': 'exit 2: cannot write <png>: No space left on device; the rerun redoes the split, identical',
}
TMPFS_SIZE = {
    'random_image': '12k',
    'PHdict': '16k',
    'pretraining': '1m',
    'finetuning': '1m',
    'evaluation': '8k',
    'downloader': '16k',
}


def _compare_with_reference(ctx, script, out):
    """After a failed run and a rerun in ``out``: the same files, byte for byte, as an undisturbed run."""
    if script == 'random_image':
        ref = ctx.tmp / 'reference'
        expect_ok(run(script, *base_argv(script, ctx.data, ref)))
        assert tree_digests(out, only='.jpg') == tree_digests(ref, only='.jpg')
    elif script == 'PHdict':
        assert tree_digests(out, only='.npy') == tree_digests(ctx.data.gen_ph, only='.npy')
    elif script == 'downloader':
        ref = ctx.data.mnist_ref
        assert tree_digests(out, only='.png') == tree_digests(ref, only='.png')
        assert len(tree_digests(out, only='.png')) == 22


def _disk_full_rerun(ctx, script, out):
    """Rerun ``script`` into ``out`` once there is room; it completes and matches an undisturbed run."""
    if script in ('random_image', 'PHdict', 'downloader'):
        res = expect_ok(_run_base(ctx, script, out))
        _compare_with_reference(ctx, script, out)
        return res


@case(SCRIPTS, 'disk full (small tmpfs, ENOSPC)', DISK_FULL_EXPECT)
def _disk_full_tmpfs(ctx, script):
    out = ctx.tmp / 'small'
    if not ctx.mount_tmpfs(out, TMPFS_SIZE[script]):
        pytest.skip('mounting a tmpfs is not permitted here; the RLIMIT_FSIZE row covers a full disk')
    ctx.outputs(out)
    res = _run_base(ctx, script, out)
    line = expect_error(res, out, 'No space left on device', 'make room')
    _check_disk_error_line(script, line)
    ctx.resize_tmpfs(out, '8m')
    _disk_full_rerun(ctx, script, out)


def _check_disk_error_line(script, line):
    """The file named is the one being written when the disk filled."""
    written = line.split('cannot write ', 1)[1].split(': ', 1)[0]
    if script in ('pretraining', 'finetuning'):
        assert written.endswith('checkpoint.pth') or written.endswith('.pth'), line
    elif script == 'evaluation':
        assert written.endswith(('.csv', '.json')), line
    elif script == 'PHdict':
        assert written.endswith('.npy') or written.endswith('.json'), line
    else:
        assert written.endswith(('.jpg', '.png')), line
    assert not os.path.exists(written) or script == 'evaluation'


FSIZE = {
    'random_image': 1024,
    'PHdict': 1000,
    'pretraining': 2**20,
    'finetuning': 2**20,
    'evaluation': 4096,
    'downloader': 500,
}


@case(
    SCRIPTS,
    'disk full (RLIMIT_FSIZE, EFBIG)',
    dict(
        DISK_FULL_EXPECT,
        evaluation='ok: metrics.json/per_class.csv written; the confusion-matrix picture '
        'that does not fit is skipped with a warning naming it',
        **{
            k: v.replace('No space left on device', 'File too large')
            for k, v in DISK_FULL_EXPECT.items()
            if k != 'evaluation'
        },
    ),
)
def _disk_full_fsize(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    res = _run_base(ctx, script, out, fsize=FSIZE[script])
    if script == 'evaluation':
        expect_ok(res)
        run_dir = only_run_dir(out)
        assert 'could not draw the confusion matrix' in res.err and 'confusion_matrix.png: File too large' in res.err
        assert not os.path.exists(os.path.join(run_dir, 'confusion_matrix.png'))
        assert os.path.exists(os.path.join(run_dir, 'metrics.json'))
        return
    line = expect_error(res, out, 'File too large', 'make room')
    _check_disk_error_line(script, line)
    _disk_full_rerun(ctx, script, out)


# ====================================================================================================
# labels and diagrams
# ====================================================================================================


def _label_dir(ctx, data, matrix, name='labels_histogram', write_txt=True):
    """A -pd folder holding a consolidated label matrix for ``data.gen`` (rows in file order)."""
    from util.io.fileio import list_images

    d = ctx.tmp / 'labels'
    d.mkdir()
    np.save(d / f'{name}.npy', matrix)
    if write_txt:
        (d / f'{name}.txt').write_text(''.join(n + '\n' for n in list_images(str(data.gen))))
    return d


@case(
    ('PHdict', 'pretraining', 'finetuning', 'evaluation'),
    'label dimension mismatch',
    {
        'PHdict': 'ok: an output folder with a label matrix of another --numof_dims is recomputed, not mixed',
        'pretraining': 'exit 2: labels in FILE have dimension D but --numof_classes is N; pass --numof_classes D',
        'finetuning': 'exit 2: -npc N but FILE has a head of M outputs; drop -npc',
        'evaluation': 'exit 2: FILE has a head of M outputs but the folder has K classes: not fine-tuned weights',
    },
)
def _label_dim(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        ctx.inputs(d.gen)
        for dims in (20, 12):
            expect_ok(
                run(
                    'PHdict',
                    d.gen,
                    '-o',
                    out,
                    '-it',
                    'jpg',
                    '-nw',
                    1,
                    '--label_type',
                    'histogram',
                    '--numof_dims',
                    dims,
                )
            )
            matrix = np.load(out / 'labels_histogram.npy')
            assert matrix.shape == (16, dims)
            with open(out / 'labels_histogram.json') as f:
                assert json.load(f)['dim'] == dims
        return
    if script == 'pretraining':
        labels = _label_dir(ctx, d, np.random.default_rng(0).random((16, 20)).astype(np.float32))
        ctx.inputs(d.gen, labels)
        argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
        expect_error(run(script, *argv), labels / 'labels_histogram.npy', 'dimension 20', '--numof_classes 20')
    elif script == 'finetuning':
        ctx.inputs(d.task, d.pretrained)
        res = _run_base(ctx, script, out, '-pw', d.pretrained, '-npc', 7)
        expect_error(res, d.pretrained, '-npc 7', 'head of 10 outputs', 'drop -npc')
    else:
        argv = base_argv(script, d, out)
        argv[argv.index('-pw') + 1] = d.pretrained
        ctx.inputs(d.task, d.pretrained)
        expect_error(run(script, *argv), d.pretrained, 'head of 10 outputs', '2 classes', 'not fine-tuned')
    assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    ('PHdict', 'pretraining'),
    'NaN/inf in a label file',
    {
        'PHdict': 'exit 1: a saved diagram holding NaN is named as a bad input (an infinite death is a valid '
        'essential class and is kept)',
        'pretraining': 'exit 2: label matrix with NaN or inf rows -> non-finite values in N rows (first: NAME); '
        'diagram with NaN -> FILE contains NaN; delete it and rerun PHdict.py',
    },
)
def _nan_labels(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        dg = ctx.tmp / 'diagrams'
        dg.mkdir()
        names = sorted(p for p in os.listdir(d.gen_ph) if p.endswith('.npy'))[:3]
        for n in names:
            shutil.copy(d.gen_ph / n, dg / n)
        a = np.load(dg / names[1])
        a[0, 1] = np.nan
        np.save(dg / names[1], a)
        b = np.load(dg / names[2])
        b[0, 2] = np.inf
        np.save(dg / names[2], b)
        ctx.inputs(dg)
        res = run('PHdict', dg, '-o', out, '-ch', '-nw', 1)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert names[1] in res.err and names[2] not in res.err, res
        assert not (out / names[1].replace('.npy', 'hist.npy')).exists()
        assert np.isfinite(np.load(out / names[2].replace('.npy', 'hist.npy'))).all()
        return
    ctx.inputs(d.gen, d.gen_ph)
    for bad in (np.nan, np.inf):
        matrix = np.random.default_rng(0).random((16, PT_DIM)).astype(np.float32)
        matrix[5, 3] = bad
        labels = _label_dir(ctx, d, matrix)
        argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
        expect_error(
            run(script, *argv), labels / 'labels_histogram.npy', 'non-finite values in 1 rows', 'v00000005.jpg'
        )
        shutil.rmtree(labels)
    ph = ctx.tmp / 'ph_nan'
    shutil.copytree(d.gen_ph, ph)
    a = np.load(ph / 'v00000003.npy')
    a[1, 2] = np.nan
    np.save(ph / 'v00000003.npy', a)
    argv = ['-t', d.gen, '-pd', ph, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), ph / 'v00000003.npy', 'contains NaN', 'rerun PHdict.py')
    assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    'pretraining',
    'missing diagram file',
    'exit 2: N of M images have no diagram in DIR (first: NAME); run PHdict.py -- before any training; '
    'a missing labels_TYPE.txt: no labels_TYPE.npy/.txt in DIR; run PHdict.py ... --label_type TYPE',
)
def _missing_diagram(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ph = ctx.tmp / 'ph'
    shutil.copytree(d.gen_ph, ph)
    os.remove(ph / 'v00000007.npy')
    ctx.inputs(d.gen, ph)
    argv = ['-t', d.gen, '-pd', ph, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), '1 of 16 images have no diagram', ph, 'v00000007.jpg', 'PHdict.py')
    labels = _label_dir(ctx, d, np.zeros((16, PT_DIM), np.float32), write_txt=False)
    argv = ['-t', d.gen, '-pd', labels, '-pc', '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    expect_error(run(script, *argv), 'no labels_histogram.npy/.txt', labels, '--label_type histogram')
    assert not out.exists()


# ====================================================================================================
# SIGKILL in the middle of each long stage, then a rerun
# ====================================================================================================


@case(
    'random_image',
    'SIGKILL mid-run, rerun',
    'only complete images under final names; the rerun skips them and ends byte-identical to an uninterrupted run',
)
def _kill_generation(ctx, script):
    ref, killed = ctx.tmp / 'ref', ctx.tmp / 'killed'
    argv = ['-n', 96, '-is', 48, '-nw', 1, '--preview', 0]
    p_ref = popen(script, '-o', ref, *argv)
    p = popen(script, '-o', killed, *argv)
    ctx.outputs(killed)
    assert kill_when(p, lambda: len(glob.glob(str(killed / '*.jpg'))) >= 24)
    assert p_ref.wait(timeout=300) == 0
    done = len(glob.glob(str(killed / '*.jpg')))
    assert 24 <= done < 96
    assert not half_written(killed)
    res = expect_ok(run(script, '-o', killed, *argv))
    assert f'skipped {done} already present' in res.out, res
    assert tree_digests(killed, only='.jpg') == tree_digests(ref, only='.jpg')
    assert len(tree_digests(ref, only='.jpg')) == 96 and not temp_files(killed)  # its own temp files removed


@case(
    'PHdict',
    'SIGKILL mid-run, rerun',
    'only complete .npy under final names; the rerun computes the rest; diagrams and label matrix '
    'byte-identical to an uninterrupted run',
)
def _kill_ph(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    ref = d.ph64_ref
    killed = ctx.tmp / 'killed'
    ctx.outputs(killed)
    p = popen(script, d.gen64, '-o', killed, *d.PH64_ARGS)
    assert kill_when(p, lambda: len(glob.glob(str(killed / 'v*.npy'))) >= 16)
    present = {os.path.basename(p) for p in glob.glob(str(killed / 'v*.npy'))}
    assert 16 <= len(present) < 64 and not (killed / 'labels_histogram.npy').exists()
    assert not half_written(killed)
    # a diagram counts as done once sources.jsonl records what it was made from (appended right after the
    # rename): a kill between the two leaves at most the one diagram being recorded, which is recomputed
    recorded = set()
    for line in (killed / 'sources.jsonl').read_text().splitlines():
        try:
            recorded.add(json.loads(line)['output'])
        except ValueError:
            pass  # the line the kill tore
    done = len(present & recorded)
    assert len(present) - done <= 1, (sorted(present - recorded), len(present))
    res = expect_ok(run(script, d.gen64, '-o', killed, *d.PH64_ARGS))
    assert f'{64 - done} done, {done} skipped' in res.out, res
    assert tree_digests(killed, only='.npy') == tree_digests(ref, only='.npy')
    assert digest(killed / 'labels_histogram.txt') == digest(ref / 'labels_histogram.txt')


def _same_tensors(a, b, where=''):
    """Nested dicts/lists of tensors and numbers equal element for element (tensors bit for bit)."""
    import torch

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f'{where}/{k}')
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tensors(x, y, f'{where}/{i}')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _same_weights(a, b, keys=None):
    """The weights files (or the ``keys`` entries of the checkpoints) ``a`` and ``b`` hold equal tensors."""
    import torch

    sa = torch.load(a, map_location='cpu', weights_only=True)
    sb = torch.load(b, map_location='cpu', weights_only=True)
    if keys:
        sa, sb = {k: sa[k] for k in keys}, {k: sb[k] for k in keys}
    _same_tensors(sa, sb)


@case(
    'pretraining',
    'SIGKILL mid-run, --resume',
    'checkpoint.pth under its final name always loads; --resume RUN_DIR finishes with weights equal tensor '
    'by tensor (and the same per-epoch losses) to an uninterrupted run',
)
def _kill_training(ctx, script):
    import torch

    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    common = ['-t', d.gen, '-pd', d.gen_ph, '-nc', PT_DIM, '-e', 2, '-b', 8, '-si', 1, *TINY]
    ref_out, out = ctx.tmp / 'ref', ctx.tmp / 'killed'
    ctx.outputs(ref_out, out)
    p_ref = popen(script, '-o', ref_out, *common)
    p = popen(script, '-o', out, *common)
    assert kill_when(p, lambda: glob.glob(str(out / '*' / 'checkpoint.pth')), timeout=400), (
        "the run ended before it could be killed"
    )
    ref_res = p_ref.communicate(timeout=400)
    assert p_ref.returncode == 0, ref_res[1][-3000:]
    run_dir = only_run_dir(out)
    assert not half_written(run_dir)
    epoch = torch.load(os.path.join(run_dir, 'checkpoint.pth'), weights_only=True)['epoch']
    assert epoch == 1  # killed after the first epoch's checkpoint, before the end of the second
    assert not os.path.exists(os.path.join(run_dir, 'resnet18_epoch2.pth'))
    expect_ok(run(script, *common, '--resume', run_dir))
    ref_dir = only_run_dir(ref_out)
    _same_weights(os.path.join(run_dir, 'resnet18_epoch2.pth'), os.path.join(ref_dir, 'resnet18_epoch2.pth'))
    _same_weights(
        os.path.join(run_dir, 'checkpoint.pth'),
        os.path.join(ref_dir, 'checkpoint.pth'),
        keys=('model', 'optimizer', 'lr_scheduler', 'epoch', 'rng'),
    )
    log, ref_log = read_log(run_dir), read_log(ref_dir)
    assert [r['epoch'] for r in log] == [1, 2]
    assert [r['train_loss'] for r in log] == [r['train_loss'] for r in ref_log]


# ====================================================================================================
# security
# ====================================================================================================


class _Payload:
    """Pickles as a call of ``open(marker, 'w')``: loading it with a full unpickler creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _payload_row(ctx, script, flag):
    import torch

    d = ctx.data
    out = ctx.tmp / 'out'
    marker = ctx.tmp / 'PAYLOAD_RAN'
    # prove the payload runs when loaded without weights_only
    live = ctx.tmp / 'live.pth'
    torch.save({'x': _Payload(ctx.tmp / 'live_marker')}, live)
    torch.load(live, weights_only=False)
    assert (ctx.tmp / 'live_marker').exists()
    evil = ctx.tmp / ('evil_checkpoint.pth' if flag == '--resume' else 'evil_weights.pth')
    torch.save(
        {
            'model': {'conv1.weight': torch.zeros(1)},
            'optimizer': {},
            'lr_scheduler': {},
            'epoch': 1,
            'arch': 'resnet18',
            'payload': _Payload(marker),
        }
        if flag == '--resume'
        else {'conv1.weight': torch.zeros(1), 'fc.weight': _Payload(marker)},
        evil,
        _use_new_zipfile_serialization=flag != '--resume',
    )  # the legacy format too
    ctx.inputs(evil)
    argv = base_argv(script, d, out)
    if flag in argv:  # evaluation: -pw is part of its command
        argv[argv.index(flag) + 1] = evil
    else:
        argv += [flag, evil]
    line = expect_error(run(script, *argv), evil)
    assert 'refusing' in line or 'safely' in line, line
    assert not marker.exists(), "the pickled payload ran"
    assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    ('pretraining', 'finetuning', 'evaluation'),
    'pickle payload as -pw weights',
    'exit 2: refusing to load weights file FILE: it contains a pickled Python object (builtins.open); '
    'the payload never runs (weights_only=True)',
)
def _payload_pw(ctx, script):
    _payload_row(ctx, script, '-pw')


@case(
    ('pretraining', 'finetuning'),
    'pickle payload as --resume checkpoint',
    'exit 2: cannot load checkpoint FILE safely: ...; the payload never runs (weights_only=True)',
)
def _payload_resume(ctx, script):
    _payload_row(ctx, script, '--resume')


def _evil_archive(path, fmt, kind, outside):
    target = str(outside / 'target.txt')
    if fmt == 'tar':
        with tarfile.open(path, 'w:gz') as tf:
            ok = tarfile.TarInfo('top/ok.txt')
            ok.size = 2
            tf.addfile(ok, io.BytesIO(b'ok'))
            if kind in ('dotdot', 'absolute'):
                info = tarfile.TarInfo('top/../../escaped.txt' if kind == 'dotdot' else str(outside / 'abs.txt'))
                info.size = 4
                tf.addfile(info, io.BytesIO(b'evil'))
            else:
                info = tarfile.TarInfo('top/evil')
                info.type = {'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE, 'device': tarfile.CHRTYPE}[kind]
                info.linkname = target if kind != 'device' else ''
                tf.addfile(info)
    else:
        with zipfile.ZipFile(path, 'w') as zf:
            zf.writestr('top/ok.txt', b'ok')
            if kind == 'symlink':
                info = zipfile.ZipInfo('top/evil')
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)
            else:
                zf.writestr(
                    zipfile.ZipInfo('top/../../escaped.txt' if kind == 'dotdot' else str(outside / 'abs.txt')), b'evil'
                )


ARCHIVE_ROWS = [
    ('tar', 'dotdot'),
    ('tar', 'absolute'),
    ('tar', 'symlink'),
    ('tar', 'hardlink'),
    ('tar', 'device'),
    ('zip', 'dotdot'),
    ('zip', 'absolute'),
    ('zip', 'symlink'),
]


def _archive_row(ctx, script, fmt, kind):
    from util.errors import UserError
    from util.io import download

    outside = ctx.tmp / 'outside'
    outside.mkdir()
    (outside / 'target.txt').write_text('secret')
    raw = ctx.tmp / 'raw'
    raw.mkdir()
    archive = raw / ('evil.tar.gz' if fmt == 'tar' else 'evil.zip')
    _evil_archive(archive, fmt, kind, outside)
    ctx.inputs(outside, archive)
    with pytest.raises(UserError) as err:
        download.safe_extract(str(archive), str(raw / 'evil'), progress=False)
    assert str(err.value).startswith(f'refusing {archive}: member ') and '\n' not in str(err.value)
    assert sorted(os.listdir(raw)) == [archive.name]  # nothing unpacked, not even a temp folder
    assert sorted(os.listdir(outside)) == ['target.txt'] and not (ctx.tmp / 'escaped.txt').exists()


for _fmt, _kind in ARCHIVE_ROWS:
    case(
        'downloader',
        f'archive member: {_kind} ({_fmt})',
        'refused before anything is written: UserError "refusing ARCHIVE: member NAME ..."; nothing outside touched',
    )(functools.partial(_archive_row, fmt=_fmt, kind=_kind))


def _python_files(include_tests):
    skip = {'.venv', '.git', '__pycache__', 'shared'}
    for dirpath, dirnames, names in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith('.')]
        rel_dir = os.path.relpath(dirpath, ROOT)
        if not include_tests and (rel_dir == 'tests' or rel_dir.startswith('tests' + os.sep)):
            continue
        for n in sorted(names):
            if n.endswith('.py'):
                path = os.path.join(dirpath, n)
                with open(path, encoding='utf-8') as f:
                    yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


def _calls(tree):
    """(dotted callee name, call node, enclosing function name) for every call in ``tree``."""
    out = []

    def name_of(node):
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = name_of(node.value)
            return f'{base}.{node.attr}' if base else f'?.{node.attr}'
        return None

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                out.append((name_of(child.func) or '', child, func))
            visit(child, f)

    visit(tree, '<module>')
    return out


def _kw(call, name):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


@case(
    'repo',
    'torch.load without weights_only=True',
    'none: every torch.load / torch.hub.load_state_dict_from_url call passes weights_only=True (tests may pass '
    'an explicit weights_only=False only to prove that a payload file is live)',
)
def _grep_torch_load(ctx, script):
    found, bad = 0, []
    for rel, tree in _python_files(include_tests=True):
        for name, call, func in _calls(tree):
            if name == 'torch.load' or name.endswith('load_state_dict_from_url'):
                found += 1
                v = _kw(call, 'weights_only')
                ok = isinstance(v, ast.Constant) and (
                    v.value is True or (v.value is False and rel.startswith('tests/'))
                )  # a test proving a payload is live
                if not ok:
                    bad.append(f'{rel}:{call.lineno} {name}')
    assert found >= 3, found
    assert not bad, bad


ALLOWED_UNPICKLERS = {('util/io/download/archives.py', 'restricted_loads', 'RestrictedUnpickler')}
# (file, function, call): pickle use on the program's own in-memory objects, never on a file
ALLOWED_PICKLE = {
    (
        'bench/ph_bench.py',
        'profile_stages',
        'pickle.loads',
    ): 'times pickle.loads(pickle.dumps(diagram)) of its own array (the cost of a pool transfer)'
}


@case(
    'repo',
    'unpickling of unverified downloads',
    'none: no pickle.load(s)/Unpickler, np.load(allow_pickle=True), torch.load(weights_only=False) outside '
    'the restricted CIFAR unpickler (util/io/download/archives.py)',
)
def _grep_pickle(ctx, script):
    bad = []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            short = name.split('.')[-1]
            if name in (
                'pickle.load',
                'pickle.loads',
                'pickle.Unpickler',
                'cPickle.load',
                'dill.load',
                'joblib.load',
                'marshal.load',
                'marshal.loads',
                'shelve.open',
                'yaml.load',
            ):
                if (rel, func, name) not in ALLOWED_PICKLE:
                    bad.append(f'{rel}:{call.lineno} {name}')
            elif short == 'RestrictedUnpickler' and (rel, func, short) not in ALLOWED_UNPICKLERS:
                bad.append(f'{rel}:{call.lineno} {name}')
            elif short == 'load' and name.startswith(('np.', 'numpy.')):
                v = _kw(call, 'allow_pickle')
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f'{rel}:{call.lineno} {name}(allow_pickle=...)')
            elif name == 'torch.load' and not (
                isinstance(_kw(call, 'weights_only'), ast.Constant) and _kw(call, 'weights_only').value is True
            ):
                bad.append(f'{rel}:{call.lineno} {name}')
        for node in ast.walk(tree):  # a class deriving from pickle.Unpickler must be the restricted one
            if isinstance(node, ast.ClassDef) and any('Unpickler' in ast.unparse(b) for b in node.bases):
                if (rel, node.name) != ('util/io/download/archives.py', 'RestrictedUnpickler'):
                    bad.append(f'{rel}:{node.lineno} class {node.name}')
    assert not bad, bad


@case(
    'repo',
    'eval/exec of user input',
    'none: no eval, exec, compile, __import__, os.system/popen or shell=True in non-test code',
)
def _grep_eval(ctx, script):
    bad = []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            if name in (
                'eval',
                'exec',
                'compile',
                '__import__',
                'os.system',
                'os.popen',
                'builtins.eval',
                'builtins.exec',
            ):
                bad.append(f'{rel}:{call.lineno} {name}')
            shell = _kw(call, 'shell')
            if (
                name.startswith('subprocess.')
                and shell is not None
                and not (isinstance(shell, ast.Constant) and shell.value is False)
            ):
                bad.append(f'{rel}:{call.lineno} {name}(shell=...)')
    assert not bad, bad


# Every deletion in non-test code, with why it only removes what the program itself created.
ALLOWED_DELETIONS = {
    ('util/io/fileio.py', 'atomic_open', 'os.unlink'): 'its own temporary file, when the write failed',
    ('util/io/fileio.py', 'ensure_dir', 'os.unlink'): 'the probe file it has just created to test writability',
    (
        'util/ph/generator.py',
        'remove_stale_temps',
        'os.unlink',
    ): 'temp files <prefix>NNNNNNNN.<fmt>.tmp-* that a killed run of this script left',
    (
        'util/io/download/archives.py',
        'safe_extract',
        'shutil.rmtree',
    ): 'its own temporary unpacking folder <dest>.tmp-<pid>-<id> (also one left by an interrupted unpack)',
    (
        'util/io/download/converters.py',
        '_begin_split',
        'shutil.rmtree',
    ): 'a split folder of an interrupted run of its own (only with its .<split>.partial marker; a folder '
    'without markers is refused)',
    ('util/io/download/converters.py', '_finish_split', 'os.unlink'): 'its own .<split>.partial marker',
    ('bench/generator_bench.py', 'run', 'shutil.rmtree'): 'folders it made in its own temporary folder',
    ('bench/ph_bench.py', 'run', 'shutil.rmtree'): 'folders it made in its own temporary folder',
    (
        'bench/ph_engine_bench.py',
        'bench_phdict',
        'shutil.rmtree',
    ): 'its own tempfile.mkdtemp folder and the output folders PHdict wrote in it',
    ('bench/gpu_bench.py', 'main', 'shutil.rmtree'): 'its own tempfile.mkdtemp folder',
    (
        'bench/transfer.py',
        'training_run',
        'shutil.rmtree',
    ): 'an unfinished run folder of its own work folder (no done file: left by a killed earlier call)',
    (
        'bench/transfer.py',
        'make_split',
        'shutil.rmtree',
    ): 'an unfinished split folder of its own work folder (no export.json/split.json: a killed earlier call)',
    (
        'bench/transfer.py',
        '_cap_test',
        'os.remove',
    ): 'test images beyond the cap in the split folder it has just exported into its own work folder',
}
DELETERS = ('shutil.rmtree', 'os.rmdir', 'os.removedirs', 'os.remove', 'os.unlink')


@case(
    'repo',
    'deletes what it did not create',
    'none: every rmtree/rmdir/remove/unlink in non-test code is in ALLOWED_DELETIONS with its justification',
)
def _grep_deletions(ctx, script):
    found, bad = set(), []
    for rel, tree in _python_files(include_tests=False):
        for name, call, func in _calls(tree):
            if name in DELETERS or name.endswith(('.unlink', '.rmdir')) and not name.startswith('os.'):
                key = (rel, func, name)
                found.add(key)
                if key not in ALLOWED_DELETIONS:
                    bad.append(f'{rel}:{call.lineno} {name} in {func}()')
    assert not bad, f"deletions without a justification in ALLOWED_DELETIONS: {bad}"
    assert found, 'the scan found no deletion at all (broken scan?)'


# ====================================================================================================
# concurrency
# ====================================================================================================


def _compare_ph64(out, ref):
    assert tree_digests(out, only='.npy', skip_tmp=True).keys() >= tree_digests(ref, only='.npy').keys()
    for rel, h in tree_digests(ref, only='.npy').items():
        assert tree_digests(out, only=rel)[rel] == h, rel
    assert digest(out / 'labels_histogram.txt') == digest(ref / 'labels_histogram.txt')
    with open(out / 'labels_histogram.json') as f, open(ref / 'labels_histogram.json') as g:
        a, b = json.load(f), json.load(g)
    a.pop('shards', None)
    assert a == b
    names = (ref / 'labels_histogram.txt').read_text().splitlines()
    assert len(names) == 64 == len(set(names))


@case(
    'PHdict',
    'two processes, shards 0/2 and 1/2 at once',
    'both exit 0; every image exactly once; diagrams and merged label matrix byte-identical to one process',
)
def _concurrent_shards(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    ref = d.ph64_ref
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    procs = [popen(script, d.gen64, '-o', out, '--shard', f'{k}/2', *d.PH64_ARGS) for k in (0, 1)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    parts = [(out / f'labels_histogram.shard-{k}-of-2.txt').read_text().splitlines() for k in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) + len(parts[1]) == 64
    _compare_ph64(out, ref)


@case(
    'PHdict',
    'two processes on the same shard at once',
    'both exit 0; no file corrupted; outputs byte-identical to one process',
)
def _concurrent_same(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen64)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    procs = [popen(script, d.gen64, '-o', out, *d.PH64_ARGS) for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    _compare_ph64(out, d.ph64_ref)


# ====================================================================================================
# issue 13: argument parsing -- nothing is ever silently misread
# ====================================================================================================

# The original scripts' option strings (first and later versions) with what each meant there, per script of
# ours that takes over its role.  Where the original gave one string two meanings over time, the first
# version's is kept (-pc alone, -p, -n) and the other is checked separately below; -lrf/-lrp, whose two
# versions swapped them, are refused (no entry here can be a field: the loop then expects a refusal).
_ORIG_TRAINING = {
    '-o': 'output',
    '-is': 'img_size',
    '-j': 'num_workers',
    '-t': 'train',
    '-val': 'val',
    '-t2': 'ph_train',
    '-v2': 'ph_val',
    '-pd': 'path2PHdir',
    '-pw': 'path2weight',
    '-c': 'cache_dir',
    '--cachedir': 'cache_dir',
    '-sf': 'suffix',
    '--suffix': 'suffix',
    '--resume': 'resume',
    '-ar': 'alpha_range',
    '-br': 'beta_range',
    '-n': 'n_samples',
    '-nv': 'n_samples_val',
    '-pb': 'prob_binary',
    '--prob_colour': 'prob_colour',
    '-ml': 'max_life',
    '-maxb': 'max_birth',
    '-minb': 'min_birth',
    '--max_birth': 'max_birth',
    '--min_birth': 'min_birth',
    '-aff': 'affine',
    '-bd': 'bandwidth',
    '--bandwidth': 'bandwidth',
    '-ps': 'sigma',
    '--persImg_sigma': 'sigma',
    '-pp': 'persImg_power',
    '--persImg_power': 'persImg_power',
    '-pn': 'power',
    '--persImg_weight': 'power',
    '--num_landscapes': 'num_landscapes',
    '-lt': 'label_type',
    '--label_type': 'label_type',
    '--label_type_pt': 'label_type',
    '-pat': 'persistence',
    '--persistence_after_transform': 'persistence',
    '-f': 'filtration',
    '--filtration': 'filtration',
    '-g': 'gradient',
    '-u': 'usenet',
    '-nd': 'ph_dims',
    '--numof_dims_pt': 'ph_dims',
    '-lrf': 'refused',
    '-lrp': 'refused',
    '-lrd': 'lr_drop',
    '--lr_drop': 'lr_drop',
    '-m': 'momentum',
    '--momentum': 'momentum',
    '-wd': 'weight_decay',
    '-op': 'optimizer',
    '-fe': 'freeze_encoder',
    '-lm': 'learning_mode',
    '--dist-url': 'dist_url',
    '--dist-backend': 'pidf',
    '-p': 'pidf',
    '-ws': 'world_size',
    '-e': 'epochs',
    '--start_epoch': 'start_epoch',
    '--start-epoch': 'start_epoch',
    '-b': 'batch_size',
    '-is2': 'img_size_pt',
    '--img_size_pt': 'img_size_pt',
    '-cs': 'crop_size',
    '--crop_size': 'crop_size',
    '--img_size': 'img_size',
    '-cp': 'crop_padding',
    '-rs': 'random_scale',
    '-rr': 'random_rotation',
    '-ra': 'aug_plus',
    '--aug-plus': 'aug_plus',
    '--save_interval': 'save_interval',
    '-si': 'save_interval',
    '--save-interval': 'save_interval',
    '--log_interval': 'log_interval',
    '--log-interval': 'log_interval',
    '-s': 'seed',
    '--seed': 'seed',
    '-oti': 'output_training_images',
    '-nc': 'numof_classes',
    '-nc2': 'ph_dims',
    '--numof_classes2': 'ph_dims',
    '--numof_classes_pt': 'ph_dims',
    '-npc': 'numof_pretrained_classes',
    '--numof_fclayer': 'numof_fclayer',
    '-pc': 'precomputed',
    '-ph': 'persistence',
    '-dt': 'filtration',
    '--distance_transform': 'filtration',
    '-gr': 'greyscale',
    '--greyscale': 'greyscale',
    '--train2': 'ph_train',
    '--val2': 'ph_val',
    '-val2': 'ph_val',
    '--train_pt': 'ph_train',
    '--val_pt': 'ph_val',
    '--num_bins': 'num_bins',
    '--usenet': 'usenet',
}
_ORIG_PHDICT = {
    '-o': 'output',
    '-it': 'imgtype',
    '-ch': 'compute_hist',
    '-cpi': 'compute_persistence_image',
    '-n': 'num_bins',
    '-nw': 'num_workers',
    '-j': 'num_workers',
    '-ml': 'max_life',
    '-mb': 'max_birth',
    '-maxb': 'max_birth',
    '-minb': 'min_birth',
    '-b': 'bandwidth',
    '-bd': 'bandwidth',
    '-s': 'sigma',
    '-ps': 'sigma',
    '--persImg_sigma': 'sigma',
    '-pp': 'persImg_power',
    '--persImg_power': 'persImg_power',
    '-pn': 'power',
    '--persImg_weight': 'power',
    '-g': 'gradient',
    '-f': 'filtration',
    '-dt': 'filtration',
    '--distance_transform': 'filtration',
    '-is': 'img_size',
    '--img_size': 'img_size',
    '-sf': 'plot',
    '--save_fig': 'plot',
    '-t': 'label_type',
    '--type': 'label_type',
    '-lt': 'label_type',
    '--label_type_pt': 'label_type',
}
_ORIG_RANDOM = {
    '-o': 'output',
    '-pf': 'prefix',
    '-ar': 'alpha_range',
    '-br': 'beta_range',
    '-n': 'n_samples',
    '-nv': 'n_samples_val',
    '-pb': 'prob_binary',
    '-pc': 'prob_colour',
    '-is': 'img_size',
    '-nw': 'num_workers',
}
_ORIG_DOWNLOADER = {
    '-o': 'data_file_path',
    '--data_file_path': 'data_file_path',
    '-d': 'dataset',
    '--dataset': 'dataset',
    '--raw_file_path': 'raw_file_path',
    '-r': 'validation_ratio',
    '--validation_ratio': 'validation_ratio',
}
_ORIG_PREDICT = {
    '-pw': 'path2weight',
    '-u': 'usenet',
    '-o': 'output',
    '-b': 'batch_size',
    '-is': 'img_size',
    '-cs': 'crop_size',
    '-j': 'num_workers',
    '-t': 'images',
    '-val': 'val',
    '-nc': 'numof_classes',
    '-s': 'seed',
}
_PARSERS = {
    'pretraining': ('pretraining', _ORIG_TRAINING),
    'finetuning': ('finetuning', _ORIG_TRAINING),
    'PHdict': ('PHdict', _ORIG_PHDICT),
    'random_image': ('util.random_image', _ORIG_RANDOM),
    'downloader': ('util.ImageDatasetsDownloader', _ORIG_DOWNLOADER),
    'predict': ('predict', _ORIG_PREDICT),
}


def _parse(parser, argv):
    """(namespace or None, exit status, stderr) of ``parser.parse_args(argv)``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv), 0, err.getvalue()
        except SystemExit as e:
            return None, e.code, err.getvalue()


def _parser(name):
    return importlib.import_module(_PARSERS[name][0]).get_args_parser()


def _positional(name):
    return ['images'] if name == 'predict' else ['folder'] if name == 'PHdict' else []


@pytest.mark.parametrize('name', list(_PARSERS))
def test_original_flags_never_misread(name):
    """Every flag of the original is read with its meaning there, or refused with one line naming ours."""
    table = _PARSERS[name][1]
    for flag, meaning in table.items():
        parser = _parser(name)
        ours = parser._option_string_actions.get(flag)
        if ours is not None and ours.help != argparse.SUPPRESS:
            assert ours.dest == meaning, f"{name}: {flag} is our --{ours.dest}, the original's {meaning}"
            continue
        ns, rc, err = _parse(parser, _positional(name) + [flag, '1'])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f'error: {flag} '), (name, flag, err)
        assert lines[0].split(': ', 2)[-1].strip(), lines[0]  # and what to use instead


@pytest.mark.parametrize('name', list(_PARSERS))
def test_no_abbreviation_is_accepted(name):
    """A proper prefix of an option (``-m`` of ``-ml``, ``--max`` of ``--max_life``) never sets that option."""
    parser = _parser(name)
    options = [s for a in parser._actions for s in a.option_strings]
    prefixes = {s[:k] for s in options for k in range(2, len(s)) if s[:k] not in options and s[:k] not in ('--',)}
    assert prefixes
    for p in sorted(prefixes):
        ns, rc, err = _parse(_parser(name), _positional(name) + [p, '1'])
        assert rc == 2 and 'Traceback' not in err, (name, p, ns)


def test_conflicting_original_meanings_refused():
    """Where the original's versions gave a flag two readings, the value shape decides (-pc alone: the
    switch; -pc P: --prob_colour) and anything else stops the run (exit 2); see tests/test_compat.py."""
    pt = _parser('pretraining')
    ns, rc, err = _parse(pt, ['-pc', '0.5'])  # the later -pc PROB (--prob_colour)
    assert rc == 0 and ns.prob_colour == 0.5 and ns.precomputed is False
    ns, rc, err = _parse(_parser('pretraining'), ['-ml', '50', '40'])  # H0 != H1: one range serves both here
    assert rc == 2 and '50' in err
    ns, rc, err = _parse(_parser('PHdict'), ['folder', '-n', '50', '50', '50'])  # the first -n took 3 bins
    assert rc == 2 and '-n' in err


def test_every_parser_disallows_abbreviations():
    """Each argparse parser in the project (scripts, util, bench) is a StrictArgumentParser(allow_abbrev=False)."""
    missing, found = [], 0
    for path, tree in _python_files(include_tests=False):
        for name, call, _ in _calls(tree):
            if name.split('.')[-1] in ('ArgumentParser', 'StrictArgumentParser') and path != 'util/cli/strict_args.py':
                found += 1
                kw = _kw(call, 'allow_abbrev')
                if not name.endswith('StrictArgumentParser') or not (
                    isinstance(kw, ast.Constant) and kw.value is False
                ):
                    missing.append(f"{path}:{call.lineno}")
    assert found >= 14 and not missing, f"parsers without StrictArgumentParser(allow_abbrev=False): {missing}"


@case(
    ('random_image', 'PHdict', 'pretraining', 'finetuning', 'downloader'),
    "original's flag we lack (-dt, -nc2, -pp, -val2), or an abbreviation (PHdict -m 3)",
    'exit 2: one line naming the flag (and ours, for the original\'s flags); nothing created',
)
def _original_flag(ctx, script):
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    # (-m, -s, -c, -pat, -maxb are the original's names of flags we have: tests/test_compat.py)
    flags = {
        'pretraining': [['-dt', 'x'], ['-nc2', '5'], ['-pp', '1'], ['-val2', 'X']],
        'finetuning': [['-nc2', '5']],
        'PHdict': [['-pp', '3'], ['-m', '3']],
        'random_image': [['-p', '0.5']],
        'downloader': [['-v', '0.1']],
    }
    for extra in flags[script]:
        res = run(script, *base_argv(script, ctx.data, out), *extra)
        assert res.rc == 2 and 'Traceback' not in res.err and extra[0] in res.err, res
        if script in ('pretraining', 'finetuning') or extra[0] == '-pp':
            line = expect_error(res, extra[0], 'original')
            assert 'use -' in line or 'no equivalent' in line, line
    assert not out.exists()


# ====================================================================================================
# issue 13: hangs and signals -- a dead worker is named, an interrupt is one line, 130/143, resumable
# ====================================================================================================


def _slow_ph_folder(root):
    """8 small PNGs and one 1500 x 1500 PNG (about a second of PH: a worker is surely busy on it)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(8):
        Image.fromarray(smooth_noise(rng, 48, 48)).save(root / f'a{i}.png')
    Image.fromarray(smooth_noise(rng, 1500, 1500, sigma=3)).save(root / 'zbig.png')
    return root


def _children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _popen_group(script, *argv):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPT_FILES.get(script, script)), *map(str, argv)]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(proc, timeout=120):
    """Result of ``proc``; a run that does not end within ``timeout`` s is killed and fails the row."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{proc.args} hung (killed after {timeout} s)")
    return Result(proc.returncode, out, err)


def _wait_for(proc, ready, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.01)
    return False


@case(
    'PHdict',
    'a pool worker SIGKILLed (OOM killer) mid-image',
    'exit 1 within a minute: one line naming the image and how to resume; finished diagrams kept; '
    'rerun completes them byte-identical to an undisturbed run',
)
def _dead_worker(ctx, script):
    src = _slow_ph_folder(ctx.tmp / 'in')
    ctx.inputs(src)
    out, ref = ctx.tmp / 'out', ctx.tmp / 'ref'
    ctx.outputs(out, ref)
    argv = ['-it', 'png', '-nw', 2, '--label_type', 'histogram', '--numof_dims', 20]
    p = _popen_group(script, src, '-o', out, *argv)
    assert _wait_for(p, lambda: glob.glob(str(out / 'a*.npy')) and len(_children(p.pid)) == 2), 'no workers seen'
    for child in _children(p.pid):
        os.kill(child, signal.SIGKILL)
    res = _finish(p, timeout=60)
    line = expect_error(res, 'died', 'SIGKILL', 'resume', rc=1)
    assert any(f'{n}.png' in line for n in ['zbig'] + [f'a{i}' for i in range(8)]), line
    assert not (out / 'labels_histogram.npy').exists()
    kept = tree_digests(out, only='.npy')
    assert kept
    expect_ok(run(script, src, '-o', out, *argv))
    expect_ok(run(script, src, '-o', ref, *argv))
    after = tree_digests(out, only='.npy')
    assert after == tree_digests(ref, only='.npy') and all(after[k] == h for k, h in kept.items())


def _interrupt_ph(ctx, script, sig, rc):
    src = _slow_ph_folder(ctx.tmp / 'in')
    ctx.inputs(src)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = ['-it', 'png', '-nw', 2]
    p = _popen_group(script, src, '-o', out, *argv)
    assert _wait_for(p, lambda: glob.glob(str(out / 'a*.npy'))), 'the run ended before any output'
    os.killpg(p.pid, sig)  # as a terminal sends Ctrl-C: to the whole process group
    res = _finish(p, timeout=60)
    assert res.rc == rc and 'Traceback' not in res.err, res
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip() and not ln.startswith('PH:')]
    assert lines[-1].startswith(f'interrupted by {signal.Signals(sig).name}') and 'resume' in lines[-1], res
    res = expect_ok(run(script, src, '-o', out, *argv))
    assert '0 failed of 9 files' in res.out, res


@case(
    'PHdict',
    'Ctrl-C (SIGINT to the process group) mid-run',
    'exit 130: one line "interrupted ... to resume"; workers gone; rerun completes',
)
def _sigint_ph(ctx, script):
    _interrupt_ph(ctx, script, signal.SIGINT, 130)


@case(
    'PHdict',
    'SIGTERM to the process group mid-run',
    'exit 143: one line "interrupted ... to resume"; workers gone; rerun completes',
)
def _sigterm_ph(ctx, script):
    _interrupt_ph(ctx, script, signal.SIGTERM, 143)


@case(
    'pretraining',
    'Ctrl-C as an epoch ends (DataLoader workers forking)',
    'exit 130 (never 0): one line naming --resume; checkpoint intact; --resume finishes the run',
)
def _sigint_training(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    argv = base_argv(script, d, out)
    argv[argv.index('-e') + 1] = 3
    argv[argv.index('-nw') + 1] = 2
    p = _popen_group(script, *argv)
    logs = lambda: glob.glob(str(out / '*' / 'log.jsonl'))  # noqa: E731
    assert _wait_for(p, lambda: logs() and os.path.getsize(logs()[0]) > 0, timeout=180), 'no epoch finished'
    os.killpg(p.pid, signal.SIGINT)
    res = _finish(p, timeout=120)
    assert res.rc == 130 and 'Traceback' not in res.err, res
    last = res.err.strip().splitlines()[-1]
    assert last.startswith('interrupted by SIGINT') and '--resume' in last, res
    run_dir = only_run_dir(out)
    import torch

    if os.path.exists(os.path.join(run_dir, 'checkpoint.pth')):  # written whole, or not at all
        epoch = torch.load(os.path.join(run_dir, 'checkpoint.pth'), map_location='cpu', weights_only=True)['epoch']
        assert epoch == len(read_log(run_dir)), (epoch, read_log(run_dir))
        res = expect_ok(run(script, *argv, '--resume', run_dir))
        assert len(read_log(run_dir)) == 3, res
    else:
        assert not read_log(run_dir)[1:], 'an epoch was logged but its checkpoint was lost'


# ====================================================================================================
# issue 13: data loss -- predict.py -o
# ====================================================================================================


@case(
    'predict',
    '-o is an input image, the -pw weights, a folder, or a file it did not write',
    'exit 2: one line naming -o and what it is; nothing changed; an earlier prediction CSV is replaced',
)
def _predict_output(ctx, script):
    d = ctx.data
    images = ctx.tmp / 'images'
    shutil.copytree(d.task / 'val', images)
    weights = ctx.tmp / 'w' / 'ft.pth'
    weights.parent.mkdir()
    shutil.copy(d.finetuned, weights)
    notes = ctx.tmp / 'notes.txt'
    notes.write_text('my notes\n')
    ctx.inputs(images, weights, notes)
    base = [images, '-pw', weights, '-u', 'resnet18', '--img_size', 40, '--crop_size', 32, '-nw', 0]
    first = sorted(glob.glob(str(images / '*' / '*.png')))[0]
    for target, words in (
        (first, ('input image',)),
        (weights, ('-pw',)),
        (images, ('folder',)),
        (notes, ('not a CSV', '--overwrite')),
    ):
        for extra in ([], ['--overwrite']) if target != notes else ([],):
            expect_error(run(script, *base, '-o', target, *extra), '-o', *words)
    previous = ctx.tmp / 'pred.csv'
    previous.write_text('path,top1,top1_prob\nold.png,dark,1.0\n')
    ctx.outputs(ctx.tmp / 'w')
    expect_ok(run(script, *base, '-o', previous))
    with open(previous, newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ['path', 'top1', 'top1_prob'] and len(rows) == 1 + 4 and 'old.png' not in previous.read_text()


# ====================================================================================================
# issue 13: huge images and decompression bombs -- a bad image, named, never decoded
# ====================================================================================================


def png_header(width, height):
    """A PNG whose header claims ``width`` x ``height`` 8-bit grey pixels, with one tiny (truncated) IDAT:
    a decoder that trusted it would allocate width x height bytes before failing."""
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')


def _huge_folder(root, classes=None):
    """Good 40-px PNGs and two huge ones: 9000 x 9000 (over --max_pixels) and 20000 x 20000 (a bomb to PIL)."""
    rng = np.random.default_rng(21)
    for cls in classes or ['']:
        d = root / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(smooth_noise(rng, 40, 40)).save(d / f'good{i}.png')
    first = root / (classes[0] if classes else '')
    (first / 'huge.png').write_bytes(png_header(9000, 9000))
    (first / 'bomb.png').write_bytes(png_header(20000, 20000))
    return root


HUGE_EXPECT = {
    'PHdict': 'exit 1: both named (pixel count), the rest done; --skip_bad: exit 0 with the label matrix',
    'pretraining': 'skip: both warned by name, counted as skipped_bad',
    'finetuning': 'skip: both warned by name, counted as skipped_bad',
    'predict': 'exit 0: both named, left out',
}


@case(
    ('PHdict', 'pretraining', 'finetuning', 'predict'),
    'huge image / decompression bomb (header 9000² and 20000²)',
    HUGE_EXPECT,
)
def _huge_image(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        src = _huge_folder(ctx.tmp / 'in')
        ctx.inputs(src)
        argv = [src, '-o', out, '-it', 'png', '-nw', 1, '--label_type', 'histogram', '--numof_dims', 20]
        res = run(script, *argv)
        assert res.rc == 1 and 'Traceback' not in res.err, res
        assert 'huge.png is 9000 x 9000' in res.err and 'bomb.png' in res.err and '--max_pixels' in res.err, res
        assert '3 done, 0 skipped, 2 failed of 5 files' in res.out, res
        res = run(script, *argv, '--skip_bad')
        assert res.rc == 0 and 'Traceback' not in res.err, res
        assert (out / 'labels_histogram.txt').read_text().split() == [f'good{i}.png' for i in range(3)]
        res = run(script, *argv, '--skip_bad', '--max_pixels', 0)
        expect_error(res, '--max_pixels')
        return
    if script == 'predict':
        src = _huge_folder(ctx.tmp / 'in')
        ctx.inputs(src, d.finetuned)
        res = run(
            script,
            src,
            '-pw',
            d.finetuned,
            '-u',
            'resnet18',
            '--img_size',
            40,
            '--crop_size',
            32,
            '-nw',
            0,
            '-o',
            out / 'p.csv',
        )
        expect_ok(res)
        assert 'huge.png' in res.err and 'bomb.png' in res.err and '3 images labelled' in res.out, res
        return
    if script == 'pretraining':
        src = _huge_folder(ctx.tmp / 'in')
        argv = ['-t', src, '-o', out, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    else:
        src = _huge_folder(ctx.tmp / 'in', classes=['a', 'b'])
        argv = ['-t', src, '-val', src, '-o', out, '-nc', 2, '-e', 1, '-b', 8, *TINY]
    ctx.inputs(src)
    res = expect_ok(run(script, *argv))
    assert 'huge.png' in res.err and 'bomb.png' in res.err and 'max_pixels' in res.err, res
    (record,) = read_log(only_run_dir(out))
    assert record['skipped_bad'] == 2, record


# ====================================================================================================
# issue 13: odd trees -- symbolic link loops and FIFOs/sockets
# ====================================================================================================


def _odd_tree(root, classes=('a', 'b')):
    """Class folders of 3 PNGs each; in ``a``: a link to its parent (a loop), a link to itself, a FIFO and a
    socket named like images."""
    rng = np.random.default_rng(31)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(smooth_noise(rng, 40, 40)).save(root / cls / f'{i}.png')
    a = root / classes[0]
    os.symlink('..', a / 'up')
    os.symlink('.', a / 'here')
    os.mkfifo(a / 'pipe.png')
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(a / 'sock.png'))
    except OSError:
        pass
    finally:
        sock.close()
    return root


def _sub(script, *argv, timeout=120):
    """Run ``script`` in its own process (a hang fails the row after ``timeout`` s instead of the suite)."""
    return _finish(_popen_group(script, *argv), timeout=timeout)


@case(
    ('PHdict', 'pretraining', 'finetuning', 'predict'),
    'symbolic link loop and a FIFO/socket in the tree',
    'exit 0 within the timeout: every image once, the loop and the FIFO/socket warned about by name, never opened',
)
def _link_loop(ctx, script):
    d = ctx.data
    src = _odd_tree(ctx.tmp / 'in')
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    if script == 'PHdict':
        res = expect_ok(_sub(script, src, '-o', out, '-it', 'png', '-nw', 2, timeout=60))
        assert '6 done, 0 skipped, 0 failed of 6 files' in res.out, res
    elif script == 'predict':
        res = expect_ok(
            _sub(
                script,
                src,
                '-pw',
                d.finetuned,
                '-u',
                'resnet18',
                '--img_size',
                40,
                '--crop_size',
                32,
                '-nw',
                0,
                '-o',
                out / 'p.csv',
            )
        )
        with open(out / 'p.csv', newline='') as f:
            assert sorted(r[0] for r in list(csv.reader(f))[1:]) == [f'{c}/{i}.png' for c in 'ab' for i in range(3)]
    else:
        argv = (
            ['-t', src, '-o', out, '-nc', PT_DIM]
            if script == 'pretraining'
            else ['-t', src, '-val', src, '-o', out, '-nc', 2]
        )
        res = expect_ok(_sub(script, *argv, '-e', 1, '-b', 8, *TINY))
        (record,) = read_log(only_run_dir(out))
        assert record['images'] == 6, record
    assert 'pipe.png' in res.err and 'not a regular file' in res.err, res
    assert 'up' in res.err and 'already listed' in res.err, res


# ====================================================================================================
# issue 13: an output folder inside (or equal to) an input folder
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'finetuning'),
    '-o equal to or inside the input folder',
    'exit 2: one line naming -o and the input flag; the input folder (its args.json) unchanged; nothing made',
)
def _output_inside_input(ctx, script):
    d = ctx.data
    src = ctx.tmp / 'in'
    if script == 'finetuning':
        shutil.copytree(d.task, src)
    else:
        shutil.copytree(d.gen, src)
    ctx.inputs(src)
    before = sorted(files_under(src))
    for out in (src, src / 'sub' / 'out'):
        if script == 'PHdict':
            res, flag = run(script, src, '-o', out, '-it', 'jpg', '-nw', 1), 'TARGET_DIR'
        elif script == 'pretraining':
            res, flag = run(script, '-t', src, '-pd', d.gen_ph, '-o', out, '-nc', PT_DIM, '-e', 1, *TINY), '-t'
        else:
            res, flag = (
                run(
                    script, '-t', src / 'train', '-val', src / 'val', '-o', src / 'val' / 'x', '-nc', 2, '-e', 1, *TINY
                ),
                '-val',
            )
        expect_error(res, '-o', flag, 'outside')
        assert sorted(files_under(src)) == before


# ====================================================================================================
# issue 13: the small ones
# ====================================================================================================


@case('pretraining', '--stop_after -3', 'exit 2: names --stop_after; nothing created')
def _stop_after_negative(ctx, script):
    out = ctx.tmp / 'out'
    ctx.inputs(*base_inputs(script, ctx.data))
    expect_error(run(script, *base_argv(script, ctx.data, out), '--stop_after', -3), '--stop_after')
    assert not out.exists()


@case('PHdict', '-nw 0 (as the other scripts)', 'exit 0: computed in this process')
def _phdict_nw0(ctx, script):
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    ctx.inputs(ctx.data.gen)
    res = expect_ok(run(script, ctx.data.gen, '-o', out, '-it', 'jpg', '-nw', 0))
    assert '16 done, 0 skipped, 0 failed of 16 files' in res.out, res
    assert tree_digests(out, only='.npy') == tree_digests(ctx.data.gen_ph, only='.npy')


@case(('finetuning', 'evaluation', 'predict'), 'a text file as -pw', 'exit 2: "<file> is not a weights file"')
def _text_weights(ctx, script):
    d = ctx.data
    weights = ctx.tmp / 'weights.pth'
    weights.write_text('these are not weights\n')
    ctx.inputs(weights, d.task)
    out = ctx.tmp / 'out'
    if script == 'predict':
        res = run(script, d.task / 'val', '-pw', weights, '-u', 'resnet18', '-o', out / 'p.csv', '-nw', 0)
    else:
        argv = base_argv(script, d, out)
        if '-pw' in argv:
            argv[argv.index('-pw') + 1] = weights
        else:
            argv += ['-pw', weights]
        res = run(script, *argv)
    expect_error(res, str(weights), 'not a weights file')
    assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)


@case('finetuning', '-val equal to -t', 'exit 0 with a warning naming -val and -t')
def _val_is_train(ctx, script):
    d = ctx.data
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    ctx.inputs(d.task)
    res = expect_ok(
        run(script, '-t', d.task / 'train', '-val', d.task / 'train', '-o', out, '-nc', 2, '-e', 1, '-b', 8, *TINY)
    )
    assert 'warning: -val' in res.err and 'training folder -t' in res.err, res


@case(
    'evaluation',
    'class names with a comma, a quote (CSV files)',
    'exit 0: per_class.csv and confusion_matrix.csv read back by the csv module with the names intact',
)
def _csv_names(ctx, script):
    d = ctx.data
    val = ctx.tmp / 'val'
    names = ['bright, "very"', 'dark']
    for src, name in zip(('bright', 'dark'), names):
        shutil.copytree(d.task / 'val' / src, val / name)
    ctx.inputs(val, d.finetuned)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    expect_ok(run(script, '--evaluate', '-val', val, '-pw', d.finetuned, '-o', out, '-nc', 2, '-b', 8, *TINY))
    run_dir = only_run_dir(out)
    with open(os.path.join(run_dir, 'per_class.csv'), newline='') as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == names and all(len(r) == 4 for r in rows), rows
    with open(os.path.join(run_dir, 'confusion_matrix.csv'), newline='') as f:
        assert next(csv.reader(f))[1:] == names


# ====================================================================================================
# issue 13: a diagram file of the wrong shape, columns or homology dimensions
# ====================================================================================================


@case(
    ('pretraining', 'PHdict'),
    'diagram file of wrong shape/columns/dims ((3, 4) zeros; dim 7)',
    {
        'pretraining': 'exit 2: one line naming the file and its shape/dimension; no weights written',
        'PHdict': 'exit 1 (-it npy -ch): the file named as a failed input, the rest done',
    },
)
def _bad_diagram(ctx, script):
    d = ctx.data
    ph_dir = ctx.tmp / 'ph'
    shutil.copytree(d.gen_ph, ph_dir, ignore=shutil.ignore_patterns('*.json'))
    names = sorted(p.name for p in ph_dir.glob('v*.npy'))
    bad_dim = np.load(ph_dir / names[1])
    bad_dim[0, 0] = 7
    for name, array, words in ((names[0], np.zeros((3, 4)), ('(3, 4)',)), (names[1], bad_dim, ('7',))):
        fresh = ctx.tmp / f'ph_{len(words[0])}'
        shutil.copytree(ph_dir, fresh)
        np.save(fresh / name, array)
        ctx.inputs(fresh, d.gen)
        out = ctx.tmp / f'out_{len(words[0])}'
        ctx.outputs(out)
        if script == 'pretraining':
            argv = base_argv(script, d, out)
            argv[argv.index('-pd') + 1] = fresh
            expect_error(run(script, *argv), name, 'not a persistence diagram', *words)
            assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)
        else:
            res = run(script, fresh, '-o', out, '-it', 'npy', '-ch', '-n', 5, 5, 5, 5, '-nw', 1)
            assert res.rc == 1 and 'Traceback' not in res.err and name in res.err, res
            assert f'{len(names) - 1} done' in res.out, res


# ====================================================================================================
# issue 13: a label length the label type cannot honour
# ====================================================================================================


@case(
    ('PHdict', 'pretraining'),
    'label length the label type cannot split (-nc 7 histogram, 9 betti_curve)',
    'exit 2: one line naming the flag, the label type and the valid lengths; nothing written',
)
def _uneven_dim(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    for label_type, dim, valid in (('histogram', 7, '4 or 8'), ('betti_curve', 9, '8 or 10')):
        if script == 'PHdict':
            res, flag = (
                run(script, d.gen_ph, '-o', out, '--label_type', label_type, '--numof_dims', dim, '-nw', 1),
                '--numof_dims',
            )
        else:
            argv = base_argv(script, d, out)
            argv[argv.index('-nc') + 1] = dim
            res, flag = run(script, *argv, '--label_type', label_type), '-nc'
        expect_error(res, f'{flag} {dim}', label_type, valid)
        assert not glob.glob(str(out / '**' / '*.np[yz]'), recursive=True)
        assert script != 'PHdict' or not out.exists()
        assert not glob.glob(str(out / '**' / '*.pth'), recursive=True)


# ====================================================================================================
# issue 13: file names the label and prediction files cannot hold
# ====================================================================================================


@case(
    ('PHdict', 'pretraining', 'predict'),
    'image name with a newline / bytes that are not UTF-8',
    'exit 2 before any work: one line naming the file (escaped) and "rename"; nothing written',
)
def _odd_names(ctx, script):
    d = ctx.data
    for bad in ('new\nline.jpg', os.fsdecode(b'caf\xe9.jpg')):
        src = ctx.tmp / f'in{len(bad)}'
        shutil.copytree(d.gen, src, ignore=shutil.ignore_patterns('*.json'))
        shutil.copy(src / 'v00000000.jpg', os.path.join(src, bad))
        ctx.inputs(src)
        out = ctx.tmp / f'out{len(bad)}'
        if script == 'PHdict':
            res = run(script, src, '-o', out, '-it', 'jpg', '-nw', 1)
        elif script == 'predict':
            res = run(script, src, '-pw', d.finetuned, '-u', 'resnet18', '-o', out / 'p.csv', '-nw', 0)
        else:
            res = run(script, '-t', src, '-o', out, '-nc', PT_DIM, '-e', 1, *TINY)
        expect_error(res, ascii(bad)[1:-1], 'rename')
        assert not glob.glob(str(out / '**' / '*.*'), recursive=True)


# ====================================================================================================
# issue 13: labels made from other images, looked up by another name, or resumed with other settings
# ====================================================================================================


def _regenerate(folder, seed):
    """Overwrite the generated images in ``folder`` with those of another seed (what ``--overwrite`` does)."""
    expect_ok(
        run(
            'random_image',
            '-o',
            folder,
            '-n',
            16,
            '-is',
            48,
            '-pb',
            0.5,
            '-pc',
            0.5,
            '-nw',
            1,
            '--preview',
            0,
            '--seed',
            seed,
            '--overwrite',
        )
    )


@case(
    ('PHdict', 'pretraining'),
    'images replaced after PHdict ran (--overwrite, a swap, an edit)',
    {
        'PHdict': 'exit 0: the changed images are named and recomputed; diagrams and labels equal a fresh run',
        'pretraining': 'exit 2 (-pd and -pd -pc): the count and first names of the changed images, how to redo',
    },
)
def _stale_labels(ctx, script):
    d = ctx.data
    imgs, ph_dir, fresh = ctx.tmp / 'imgs', ctx.tmp / 'ph', ctx.tmp / 'fresh'
    shutil.copytree(d.gen, imgs)
    ctx.outputs(ph_dir, fresh)
    argv = ['-it', 'jpg', '-nw', 1, '--label_type', 'histogram', '--numof_dims', PT_DIM]
    expect_ok(run('PHdict', imgs, '-o', ph_dir, *argv))
    _regenerate(imgs, 7)  # --overwrite with another seed
    a, b = imgs / 'v00000001.jpg', imgs / 'v00000002.jpg'  # a swap
    tmp = imgs / 'swap'
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    with Image.open(imgs / 'v00000003.jpg') as im:  # an edit
        arr = np.asarray(im).copy()
    arr[:8] = 255 - arr[:8]
    Image.fromarray(arr).save(imgs / 'v00000003.jpg')
    ctx.inputs(imgs)
    if script == 'PHdict':
        res = expect_ok(run('PHdict', imgs, '-o', ph_dir, *argv))
        assert 'recomputing' in res.err and 'v00000001.jpg' in res.err, res
        expect_ok(run('PHdict', imgs, '-o', fresh, *argv))
        for name in ('v00000001.npy', 'v00000002.npy', 'v00000003.npy', 'labels_histogram.npy'):
            assert np.array_equal(np.load(ph_dir / name), np.load(fresh / name)), name
        assert (ph_dir / 'labels_histogram.txt').read_text() == (fresh / 'labels_histogram.txt').read_text()
        return
    base = ['-t', imgs, '-pd', ph_dir, '-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    for extra in ([], ['-pc', '--label_type', 'histogram']):
        out = ctx.tmp / f'out{len(extra)}'
        expect_error(run(script, *base, '-o', out, *extra), 'changed', '16 of 16', 'v00000000.jpg', 'PHdict.py')
        assert not glob.glob(str(out / '*' / '*.pth'))


@case(
    'pretraining',
    'label lookup by name (a.png/a.jpg, a/img.jpg/b/img.jpg, x.jpg/x.JPG)',
    'exit 2 naming the images that would share a label; an unambiguous flat (original) naming is accepted',
)
def _label_lookup(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    names = sorted(os.listdir(d.gen))
    jpgs = [n for n in names if n.endswith('.jpg')]
    flat = ctx.tmp / 'flat_ph'  # the original's naming: <basename>.npy
    flat.mkdir()
    for n in jpgs:
        shutil.copy(d.gen_ph / (n[:-4] + '.npy'), flat / (n[:-4] + '.npy'))
    base = ['-nc', PT_DIM, '-e', 1, '-b', 8, *TINY]
    nested = ctx.tmp / 'nested'  # a/<img>.jpg only: flat naming is unambiguous
    (nested / 'a').mkdir(parents=True)
    for n in jpgs:
        shutil.copy(d.gen / n, nested / 'a' / n)
    ctx.outputs(ctx.tmp / 'ok')
    res = expect_ok(run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'ok', *base))
    assert 'cannot check' in res.err, res  # the original's diagrams carry no record
    shutil.copytree(nested / 'a', nested / 'b')  # b/<img>.jpg too: which diagram is whose?
    expect_error(
        run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o1', *base),
        'a/v00000000.jpg',
        'b/v00000000.jpg',
        'flat',
    )
    shutil.rmtree(nested / 'b')
    shutil.copy(nested / 'a' / jpgs[0], nested / 'a' / (jpgs[0][:-4] + '.JPG'))
    expect_error(
        run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o2', *base), jpgs[0], jpgs[0][:-4] + '.JPG', 'share'
    )
    os.remove(nested / 'a' / (jpgs[0][:-4] + '.JPG'))
    Image.open(nested / 'a' / jpgs[0]).save(nested / 'a' / (jpgs[0][:-4] + '.png'))
    expect_error(run(script, '-t', nested, '-pd', flat, '-o', ctx.tmp / 'o3', *base), jpgs[0][:-4] + '.png', 'share')
    matrix = ctx.tmp / 'mat'  # a matrix is matched by relative path only
    expect_ok(
        run('PHdict', d.gen, '-o', matrix, '-it', 'jpg', '-nw', 1, '--label_type', 'histogram', '--numof_dims', PT_DIM)
    )
    os.remove(nested / 'a' / (jpgs[0][:-4] + '.png'))
    expect_error(
        run(script, '-t', nested, '-pd', matrix, '-pc', '--label_type', 'histogram', '-o', ctx.tmp / 'o4', *base),
        'no row',
        'a/v00000000.jpg',
        'same folder',
    )


@case(
    'pretraining',
    '--resume with other settings; resuming a finished run',
    'exit 2 listing each changed setting, no args_resume_*.json left; workers/-e/--stop_after may change; '
    'a finished run says so (exit 0)',
)
def _resume_changes(ctx, script):
    d = ctx.data
    ctx.inputs(d.gen, d.gen_ph)
    out = ctx.tmp / 'out'
    ctx.outputs(out)
    common = ['-t', d.gen, '-pd', d.gen_ph, '-o', out, '-b', 8, *TINY]
    expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 1))
    run_dir = only_run_dir(out)
    res = expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 1, '--resume', run_dir))
    assert 'already finished' in res.out and 'stopped after' not in res.out, res
    before = sorted(os.listdir(run_dir))
    for change, words in (
        (['-nc', 20], ('--numof_classes', '40 -> 20')),
        (['-nc', PT_DIM, '--seed', 5, '--lr_pre', 0.5], ('--seed: 1 -> 5', '--lr_pre')),
        (['-nc', PT_DIM, '--filtration', 'distance'], ('--filtration',)),
    ):
        expect_error(run(script, *common, *change, '-e', 2, '--resume', run_dir), '--resume', *words)
    assert sorted(os.listdir(run_dir)) == before  # nothing written by a refused resume
    res = expect_ok(run(script, *common, '-nc', PT_DIM, '-e', 2, '--stop_after', 1, '--resume', run_dir))
    assert os.path.exists(os.path.join(run_dir, 'resnet18_epoch2.pth')), res
