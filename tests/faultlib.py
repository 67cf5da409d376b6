"""The fault matrix's machinery: script x fault -> expected outcome (the rows live in tests/test_faults_*.py).

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

A row is a function ``fn(ctx, script)`` registered with ``@case(scripts, fault, expect)``.  Rows run on several
scripts live in tests/faultrows.py, the others in their script's file tests/test_faults_<script>.py; each of
those files runs every row of its script(s) (``pytest_generate_tests, ledger = matrix(...)``) and prints its
part of the grid and the summary line when it ends.
"""

import ast
import contextlib
import functools
import glob
import gzip
import hashlib
import importlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from util.cli import original_flags

TMP_MARK = '.tmp-'
SCRIPT_FILES = {
    'random_image': 'util/random_image.py',
    'PHdict': 'PHdict.py',
    'pretraining': 'pretraining.py',
    'finetuning': 'finetuning.py',
    'evaluation': 'finetuning.py',
    'downloader': 'util/ImageDatasetsDownloader.py',
    'predict': 'predict.py',
    'visMap': 'visMap.py',
    'transfer': 'bench/transfer.py',
}
IN_PROCESS = {'pretraining.py': 'pretraining', 'finetuning.py': 'finetuning', 'visMap.py': 'visMap'}
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
    """What the rows did: tried / handled / known failures, files lost, files half-written (per row)."""

    def __init__(self):
        self.status = {}
        self.lost = {}
        self.half = {}

    def summary(self, scripts=None):
        keys = [k for k in self.status if scripts is None or k[0] in scripts]
        handled = sum(self.status[k] == 'handled' for k in keys)
        lost = sum(self.lost.get(k, 0) for k in keys)
        half = sum(self.half.get(k, 0) for k in keys)
        line = f"{len(keys)} faults tried, {handled} handled, {lost} files lost, {half} half-written"
        known = sorted(f"{s}/{f}" for (s, f) in keys if self.status[(s, f)] == 'xfail')
        if known:
            line += f" (known unhandled, xfail: {', '.join(known)})"
        return line

    def grid(self, scripts=None):
        cases = [k for k in CASES if scripts is None or k[0] in scripts]
        faults = list(dict.fromkeys(f for _, f in cases))
        scripts = list(dict.fromkeys(s for s, _ in cases))
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


def matrix(*scripts):
    """``pytest_generate_tests, ledger = matrix('finetuning', 'evaluation')`` in a tests/test_faults_<script>.py:
    its ``test_fault`` runs every registered row of ``scripts``.  When the file ends it prints its part of the grid
    and its line ``N faults tried, N handled, N files lost, N half-written``, and the same line over every fault
    file run so far in the session where others ran before it."""

    def pytest_generate_tests(metafunc):
        if metafunc.function.__name__ == 'test_fault':  # after the whole module, so every row is registered
            metafunc.parametrize('script,fault', _matrix_params(scripts))

    @pytest.fixture(scope='module', name='ledger')
    def ledger_fixture(request):
        yield _LEDGER
        if not any(s in scripts for s, _ in _LEDGER.status):
            return
        text = (
            f"fault matrix of {', '.join(scripts)} (rows: faults, columns: scripts)\n"
            + _LEDGER.grid(scripts)
            + '\n'
            + _LEDGER.summary(scripts)
        )
        if any(s not in scripts for s, _ in _LEDGER.status):
            text += '\nall fault files run so far: ' + _LEDGER.summary()
        capture = request.config.pluginmanager.get_plugin('capturemanager')
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print('\n' + text, flush=True)

    return pytest_generate_tests, ledger_fixture


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


def _matrix_params(scripts):
    params = []
    for (script, fault), (_, expect, reason) in CASES.items():
        if script not in scripts:
            continue
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

    @property
    def pt_run(self):
        """A finished 1-epoch pretraining run whose head has 2 outputs (Betti curves), as many as a classifier
        of ``task`` has."""

        def make():
            out = self.root / 'pt_run'
            argv = ['-t', self.gen, '-pd', self.gen_ph, '-o', out, '-nc', 2, '--label_type', 'betti_curve']
            expect_ok(run('pretraining', *argv, '-e', 1, '-b', 8, *TINY))
            return only_run_dir(out)

        return self.once('pt_run', make)

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


_DATA = []


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """One :class:`Data` for the session: the fault files share what it built."""
    if not _DATA:
        _DATA.append(Data(tmp_path_factory.mktemp('fault_data')))
    return _DATA[0]


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
        ledger.lost[(script, fault)] = len(lost)
        ledger.half[(script, fault)] = len(half)
        assert not lost, f"input files removed or changed: {lost}"
        assert not half, f"half-written files under a final name: {half}"
    finally:
        ctx.close()
    if not reason:
        ledger.status[(script, fault)] = 'handled'


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


# ====================================================================================================
# the original's flags (one place: tests/test_faults_flags.py and the rows read them)
# ====================================================================================================


# ====================================================================================================
# issue 13: argument parsing -- nothing is ever silently misread
# ====================================================================================================

# The original scripts' option strings (first and later versions) with what each means here, per script of
# ours that takes over its role: util/cli/original_flags.py, the one table (a Refused entry must be refused).
_ORIG_TRAINING = original_flags.TRAINING
_ORIG_PHDICT = original_flags.PHDICT
_ORIG_RANDOM = original_flags.RANDOM_IMAGE
_ORIG_DOWNLOADER = original_flags.DOWNLOADER
_ORIG_PREDICT = original_flags.PREDICT
_PARSERS = {
    'pretraining': ('pretraining', _ORIG_TRAINING),
    'finetuning': ('finetuning', _ORIG_TRAINING),
    'PHdict': ('PHdict', _ORIG_PHDICT),
    'random_image': ('util.random_image', _ORIG_RANDOM),
    'downloader': ('util.ImageDatasetsDownloader', _ORIG_DOWNLOADER),
    'predict': ('predict', _ORIG_PREDICT),
}
