"""Synthetic training images: FFT-filtered uniform noise with a power-law spectrum, optionally binarised.

Used as a script (``python util/random_image.py -pb 0.5 -pc 0.5 -o random -n 50000``) and as a library
(pretraining generates images on the fly with :func:`generate_image`).

The image model (per image, in this order of random draws)::

    u ~ U(0,1); C = 3 if u < prob_colour else 1
    repeat:                                    # redrawn while the whole image is flat (max-min < 1e-10)
        for each of the C channels:
            alpha ~ U(alpha_range); beta ~ U(beta_range)
            x = linspace(1, e^alpha * S, S); X, Y = meshgrid(x, x)       # S = img_size
            noise ~ U(0,1)^(S x S)
            channel = Re(ifft2(fft2(noise) / (X^2 + Y^2)^beta))         # spectrum 'original' (the default)
            channel = Re(ifft2(fft2(noise) / (1 + step |k|)^(2 beta)))       # spectrum 'isotropic'
    for each channel: q ~ U(0,1)
        q < pb/2 -> channel >= otsu(channel);  q < pb -> channel < otsu(channel);  else (channel-min)/ptp
    image = uint8(255 * channels)  (truncation), shape (S,S) grey or (S,S,3) colour

``--spectrum original`` is the original's formula: it indexes ``x`` by the raw (unshifted) FFT index 0..S-1,
so index S-1 (frequency -1) gets the largest ``x``. Frequencies whose two components have opposite signs are
therefore damped far more than those of the same sign: the images are anisotropic (a diagonal grain), which
tests/test_random_image.py measures. ``--spectrum isotropic`` uses the centred (signed) frequencies
``k = (ky, kx)``, ``|k|`` their Euclidean norm, and ``step = (e^alpha S - 1) / (S - 1)`` (the same stretch as
``x``): the filter depends on ``|k|`` only, so the mean power spectrum is rotation-symmetric, and its amplitude
falls as ``|k|^(-2 beta)`` (power as ``|k|^(-4 beta)``) above the corner ``|k| ~ 1/step``. The random draws are
the same under both spectra: the isotropic image ``i`` has the alpha, beta, noise and binarisation of the
original's image ``i`` (unless one of them was flat and redrawn). Its filter is divided by its largest
coefficient (DC aside), a scale that the min-max normalisation and Otsu's threshold ignore; it keeps a steep
spectrum from underflowing, so any finite beta range can be used. It needs ``step > 0``: alpha > -log(S).

Image ``i`` of a split depends only on ``(seed, stream, i)``: its random numbers come from
``np.random.default_rng([seed, stream, i])`` (stream 0 = train, 1 = val), so outputs do not depend on the
number of worker processes, their order, or interruptions.

How the fast path computes the same thing (see :func:`_draw_and_filter`, :func:`util.ph.otsu.otsu_threshold`):

* For real ``noise``, ``Re(ifft2(fft2(noise) * H)) == irfft2(rfft2(noise) * H_sym)`` with
  ``H_sym(k) = (H(k) + H(-k mod S)) / 2``, which is real and Hermitian-symmetric, so half spectra suffice.
* The DC coefficient is dropped (``H_sym(0) = 0``): it only adds a constant to a channel, and everything
  that follows (the flatness test, Otsu's threshold, min-max normalisation) is invariant under adding a
  constant. Dropping it keeps single precision accurate: the constant (~0.3) is typically hundreds of
  times larger than the channel's own range.
* FFTs and the filter (``exp(-beta log r2)``) run in float32; the uniform draws stay float64, exactly
  those of the formula, and are then rounded. Against the plain float64 formula the channels agree to
  ~1e-6 of their range; a few pixels in 1e5 of min-max-normalised channels move by one grey level, and
  binarised channels agree (tests/test_random_image.py states and checks the exact bounds).
* Otsu's threshold is skimage's ``threshold_otsu`` given a histogram binned bin-for-bin as
  ``np.histogram`` bins it (:mod:`util.ph.otsu`), the same threshold.
* Scratch arrays are reused per thread, and script workers call :func:`reduce_allocator_churn`, to avoid
  page faults on each image's temporaries.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import fft as sp_fft

from util.errors import UserError
from util.io.fileio import TMP_MARK, load_image, save_image
from util.ph.otsu import otsu_threshold
from util.ph.settings import changed_settings, read_settings

if TYPE_CHECKING:
    from collections.abc import Callable

TRAIN_STREAM = 0
VAL_STREAM = 1
FLAT_TOLERANCE = 1e-10  # an image whose values span less than this is redrawn
FORMATS = ('jpg', 'png')
ARGS_FILE = 'args.json'
# Hidden (leading dot), so that image listings (util.io.fileio.list_images) never take it for a training image.
PREVIEW_FILE = '.preview.png'
# Settings that change the images; a folder generated with other values is not silently extended.
_IMAGE_SETTINGS = (
    'seed',
    'stream',
    'img_size',
    'alpha_range',
    'beta_range',
    'prob_binary',
    'prob_colour',
    'prefix',
    'format',
    'spectrum',
)
# The value a setting had before it was recorded (folders written by versions without it).
_SETTING_BEFORE_RECORDED = {'spectrum': 'original'}
SPECTRA = ('original', 'isotropic')
# Of the original spectrum: the largest filter coefficient over the image side must stay above this (the
# channels' range is about that large), or every image is flat and redrawn forever (see GeneratorConfig.validate).
_MIN_FILTER_PER_PIXEL = 1e-8


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the image model (see the module docstring).

    img_size: side ``S`` of the square images; alpha_range / beta_range: (low, high) of the uniform
    draws of alpha (frequency-axis stretch) and beta (spectral decay exponent); prob_binary: probability
    that a channel is binarised at its Otsu threshold; prob_colour: probability that an image has 3 channels;
    spectrum: 'original' (the original's formula, anisotropic) or 'isotropic' (centred frequencies).
    """

    img_size: int = 256
    alpha_range: tuple = (0.01, 1.0)
    beta_range: tuple = (0.5, 2.0)
    prob_binary: float = 1.0
    prob_colour: float = 1.0
    spectrum: str = 'original'

    def validate(self) -> None:
        """Raise :class:`UserError` (naming the flag) for parameters the model cannot use."""
        if not isinstance(self.img_size, (int, np.integer)) or isinstance(self.img_size, bool) or self.img_size < 8:
            raise UserError(f"--img_size/-is must be an integer >= 8, got {self.img_size!r}")
        for name, flag, rng in (
            ('alpha_range', '--alpha_range/-ar', self.alpha_range),
            ('beta_range', '--beta_range/-br', self.beta_range),
        ):
            try:
                low, high = (float(v) for v in rng)
            except (TypeError, ValueError):
                raise UserError(f"{flag} must be two numbers LOW HIGH, got {rng!r}") from None
            if not (math.isfinite(low) and math.isfinite(high)):
                raise UserError(f"{flag} must be finite, got {low} {high}")
            if low > high:
                raise UserError(f"{flag} has low > high ({low} > {high}); give LOW HIGH")
        for flag, p in (('--prob_binary/-pb', self.prob_binary), ('--prob_colour/-pc', self.prob_colour)):
            try:
                p = float(p)
            except (TypeError, ValueError):
                raise UserError(f"{flag} must be a probability in [0, 1], got {p!r}") from None
            if not 0.0 <= p <= 1.0:
                raise UserError(f"{flag} must be a probability in [0, 1], got {p}")
        if self.spectrum not in SPECTRA:
            raise UserError(f"--spectrum must be one of {', '.join(SPECTRA)}, got {self.spectrum!r}")
        if self.spectrum == 'original':
            self._check_original_not_flat()
        elif float(self.alpha_range[0]) <= -math.log(self.img_size):
            raise UserError(
                f"--alpha_range/-ar: with --spectrum isotropic alpha must be above -log(img_size) = "
                f"{-math.log(self.img_size):.4g} (the frequency stretch e^alpha * img_size must exceed 1), "
                f"got {float(self.alpha_range[0]):g}"
            )

    def _check_original_not_flat(self):
        """Refuse a beta range whose steepest channels would be flat: the original's filter is not rescaled, so
        at large beta its largest coefficient (DC aside), ``(1 + (1 + step)^2)^-beta`` at alpha's high end,
        underflows, the filtered channels span less than FLAT_TOLERANCE, and the image is redrawn forever."""
        size, alpha, beta = int(self.img_size), float(self.alpha_range[1]), float(self.beta_range[1])
        if alpha < 700:  # log(1 + step), without overflow for absurd alphas
            log_x1 = math.log1p((math.exp(alpha) * size - 1.0) / (size - 1))
        else:
            log_x1 = alpha + math.log(size / (size - 1))
        log_r2 = math.log1p(math.exp(2 * log_x1)) if log_x1 < 350 else 2 * log_x1
        if beta <= 0 or -beta * log_r2 - math.log(size) >= math.log(_MIN_FILTER_PER_PIXEL):
            return
        most = math.floor(100 * (-math.log(_MIN_FILTER_PER_PIXEL) - math.log(size)) / log_r2) / 100
        raise UserError(
            f"--beta_range/-br: beta up to {beta:g} makes the original spectrum underflow at --img_size {size} and "
            f"alpha up to {alpha:g} (the images would be flat, redrawn forever): keep beta <= {most:g} (or lower "
            "alpha), or use --spectrum isotropic"
        )


def image_rng(seed: int, index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The random generator of image ``index`` of ``stream`` (0 train, 1 val): seeded by [seed, stream, index]."""
    for name, v in (('seed', seed), ('index', index), ('stream', stream)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise UserError(f"{name} must be a non-negative integer, got {v!r}")
    return np.random.default_rng([int(seed), int(stream), int(index)])


class _Workspace:
    """Scratch arrays for one image side ``S``, reused from call to call by one thread.

    Reusing them (instead of allocating ~5 MB of temporaries per image) removes most of the page-fault
    (system) time of the generator. Nothing returned to a caller ever aliases these arrays.
    """

    def __init__(self, size):
        half = size // 2 + 1
        self.size, self.half = size, half
        self.ramp = np.arange(size, dtype=np.float64)  # (S,) 0..S-1
        self.noise64 = np.empty((size, size), np.float64)  # one channel's uniform draws
        self.noise = np.empty((3, size, size), np.float32)  # (C,S,S) draws, rounded to float32
        self.filt = np.empty((3, size, half), np.float32)  # (C,S,S//2+1) half-spectrum filters
        self.full = np.empty((size, size), np.float32)  # (S,S) full filter H of one channel
        self.values = np.empty(size * size, np.float32)  # Otsu: positions in bin units
        self.floors = np.empty(size * size, np.float32)  # Otsu: their integer parts
        self.bins = np.empty(size * size, np.intp)  # Otsu: bin index of each pixel
        self.flag = np.empty(size * size, bool)  # Otsu: near a bin edge; binary masks
        self.flag2 = np.empty(size * size, bool)


_THREAD_LOCAL = threading.local()


def _workspace(size):
    """This thread's :class:`_Workspace` for side ``size`` (a few sizes kept)."""
    cache = getattr(_THREAD_LOCAL, 'workspaces', None)
    if cache is None:
        cache = _THREAD_LOCAL.workspaces = {}
    ws = cache.get(size)
    if ws is None:
        if len(cache) >= 4:
            cache.clear()
        ws = cache[size] = _Workspace(size)
    return ws


def reduce_allocator_churn() -> bool:
    """Optional, process-wide setting for processes that generate many images (workers); images unchanged.

    Asks glibc's allocator to keep freed memory for reuse (mmap threshold 32 MiB, trim threshold
    256 MiB) instead of handing each large temporary back to the OS, which otherwise costs page faults on
    every image. The process keeps its peak heap size. Returns
    True if applied, False where there is no glibc ``mallopt`` (then nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def _symmetric_filter(ws, alpha, beta, out):
    """Write the half-spectrum filter ``H_sym`` (S, S//2+1) float32 of one channel into ``out``; DC = 0.

    ``H(k1,k2) = (x[k1]^2 + x[k2]^2)^-beta`` with ``x = linspace(1, e^alpha S, S)`` (raw FFT indices, as in
    the original), ``H_sym(k) = (H(k) + H(-k mod S)) / 2``.
    """
    size, half, h = ws.size, ws.half, ws.full
    step = (math.exp(alpha) * size - 1.0) / (size - 1)
    x2 = np.square(1.0 + ws.ramp * step).astype(np.float32)
    np.add(x2[:, None], x2[None, :], out=h)  # X^2 + Y^2
    np.log(h, out=h)
    h *= np.float32(-beta)
    np.exp(h, out=h)  # H
    tail = size - half  # columns -1 .. -(half-1) are S-1 .. S-half+1
    out[...] = h[:, :half]
    out[0, 1:] += h[0, :tail:-1]  # H(-k): row 0 -> 0, columns reversed
    out[1:, 0] += h[:0:-1, 0]  # rows 1.. -> S-1..
    out[1:, 1:] += h[:0:-1, :tail:-1]
    out *= np.float32(0.5)
    out[0, 0] = 0.0


def _isotropic_filter(ws, alpha, beta, out):
    """Write the half-spectrum filter (S, S//2+1) float32 of one isotropic channel into ``out``; DC = 0.

    ``H(k) = (1 + step |k|)^(-2 beta)`` over the centred frequencies (rows ky in np.fft.fftfreq's order, 0, 1, ..,
    -1; columns kx = 0..S//2), divided by its largest value off DC. ``H(k) == H(-k)``, so it is its own ``H_sym``.
    Computed as ``exp(-2 beta (log(1/step + |k|) - log(1/step + 1)))`` (for beta >= 0; the same ratio), which
    holds for any step > 0 (alpha > -log S, checked by GeneratorConfig.validate) without overflow.
    """
    radius = getattr(ws, 'radius', None)
    if radius is None:
        ky = np.fft.fftfreq(ws.size, 1.0 / ws.size)
        kx = np.arange(ws.half, dtype=np.float64)
        radius = ws.radius = np.hypot(ky[:, None], kx[None, :]).astype(np.float32)  # (S, S//2+1) |k|
    shrink = math.exp(-alpha)  # 1/step = (S - 1) e^-alpha / (S - e^-alpha)
    inverse_step = (ws.size - 1) * shrink / (ws.size - shrink)
    np.add(radius, np.float32(inverse_step), out=out)
    out[0, 0] = inverse_step + 1.0  # DC is dropped below; meanwhile it must neither be 0 nor overflow
    np.log(out, out=out)  # log(1 + step |k|) - log(step)
    top = math.log(inverse_step + 1.0) if beta >= 0 else float(out.max())  # log of the largest coefficient off DC
    out[0, 0] = top
    out -= np.float32(top)
    out *= np.float32(-2.0 * beta)
    np.exp(out, out=out)
    out[0, 0] = 0.0


def _draw_and_filter(rng, cfg, drawn=None):
    """Consume the draws of the model up to the flatness test and filter the noise.

    Returns (channels, lows, highs): float32 (C,S,S), C in {1,3}, the filtered channels minus their
    (constant) DC term, freshly allocated; and their per-channel minima and maxima, (C,) float32.
    ``drawn``: a list that receives the ``(alpha, beta)`` of each channel of the image returned (those of
    the last attempt when a flat image was redrawn).
    """
    size = cfg.img_size
    ws = _workspace(size)
    channels = 3 if rng.uniform(0.0, 1.0) < cfg.prob_colour else 1
    noise, filt = ws.noise[:channels], ws.filt[:channels]
    make_filter = _isotropic_filter if cfg.spectrum == 'isotropic' else _symmetric_filter
    while True:
        if drawn is not None:
            drawn.clear()
        for c in range(channels):
            alpha = rng.uniform(*cfg.alpha_range)
            beta = rng.uniform(*cfg.beta_range)
            if drawn is not None:
                drawn.append((alpha, beta))
            rng.random(out=ws.noise64)  # bitwise the same draws as rng.uniform(0, 1, (S, S))
            noise[c] = ws.noise64
            make_filter(ws, alpha, beta, filt[c])
        spec = sp_fft.rfft2(noise, axes=(-2, -1), workers=1)
        spec *= filt
        out = sp_fft.irfft2(spec, s=(size, size), axes=(-2, -1), overwrite_x=True, workers=1)
        lows = out.min(axis=(1, 2))
        highs = out.max(axis=(1, 2))
        if float(highs.max()) - float(lows.min()) >= FLAT_TOLERANCE:
            return out, lows, highs


def _filtered_channels(rng, cfg):
    """Float stage of the model: (C,S,S) float32 channels (DC removed) — for tests and diagnostics."""
    return _draw_and_filter(rng, cfg)[0]


def _otsu_scratch(n, dtype):
    """Scratch for :func:`util.ph.otsu.otsu_threshold`: 2 arrays of ``dtype``, 1 intp, 2 bool, all of length ``n``;
    this thread's workspace when it fits, else new arrays."""
    side = math.isqrt(n)
    if dtype == np.float32 and side * side == n:
        ws = _workspace(side)
        return ws.values, ws.floors, ws.bins, ws.flag, ws.flag2
    return (np.empty(n, dtype), np.empty(n, dtype), np.empty(n, np.intp), np.empty(n, bool), np.empty(n, bool))


def generate_image(cfg: GeneratorConfig, seed: int, index: int, stream: int = TRAIN_STREAM) -> np.ndarray:
    """Image ``index`` of ``stream`` for ``seed``: uint8 (S,S) greyscale or (S,S,3) colour. No disk access.

    Deterministic in (cfg, seed, stream, index); thread-safe. ``cfg`` is not re-validated here (hot
    path): call ``cfg.validate()`` once beforehand.
    """
    rng = image_rng(seed, index, stream)
    out, lows, highs = _draw_and_filter(rng, cfg)
    channels, size = out.shape[0], cfg.img_size
    image = np.empty((size, size, channels), np.uint8)
    pb = cfg.prob_binary
    for c in range(channels):
        q = rng.uniform(0.0, 1.0)
        chan, low, high = out[c], lows[c], highs[c]
        if q < pb:
            t = otsu_threshold(chan, low, high, scratch=_otsu_scratch)
            mask = _workspace(size).flag.reshape(size, size)
            (np.greater_equal if q < pb / 2 else np.less)(chan, t, out=mask)
            np.multiply(mask, np.uint8(255), out=image[:, :, c])
        elif high > low:
            chan -= low
            chan /= high - low
            chan *= np.float32(255.0)
            image[:, :, c] = chan  # truncation towards zero, like astype(np.uint8)
        else:
            image[:, :, c] = 0
    return image[:, :, 0] if channels == 1 else image


PARAM_NAMES = ('alpha', 'beta', 'binarised', 'inverted', 'colour')


def image_params(cfg: GeneratorConfig, seed: int, index: int, stream: int = TRAIN_STREAM) -> dict:
    """The parameters image ``index`` of ``stream`` was made with by :func:`generate_image`, from the same draws.

    Returns ``{'alpha': [C], 'beta': [C], 'binarised': [C], 'inverted': [C], 'colour': bool}`` (lists over
    the C = 1 or 3 channels; ``binarised``: the channel was thresholded at Otsu's value, ``inverted``: it was
    binarised as ``channel < threshold``).  The random numbers are consumed as :func:`generate_image` does;
    the noise is filtered too (the flatness test that may redraw an image needs it) but neither thresholded
    nor quantised, so this costs about the FFTs of one image.
    """
    rng = image_rng(seed, index, stream)
    drawn = []
    out, _, _ = _draw_and_filter(rng, cfg, drawn)
    binarised, inverted = [], []
    for _ in range(out.shape[0]):  # the same draws as generate_image's channel loop
        q = rng.uniform(0.0, 1.0)
        binarised.append(bool(q < cfg.prob_binary))
        inverted.append(bool(q < cfg.prob_binary and not q < cfg.prob_binary / 2))
    return {
        'alpha': [float(a) for a, _ in drawn],
        'beta': [float(b) for _, b in drawn],
        'binarised': binarised,
        'inverted': inverted,
        'colour': out.shape[0] == 3,
    }


def params_features(params: dict) -> np.ndarray:
    """A fixed-length float vector of :func:`image_params` for regressions (grey images repeat their one
    channel): colour, then per channel alpha, beta, beta**2, binarised, inverted (16 values)."""
    c = len(params['alpha'])
    pick = [0, 0, 0] if c == 1 else [0, 1, 2]
    feats = [float(params['colour'])]
    for k in pick:
        b = params['beta'][k]
        feats += [params['alpha'][k], b, b * b, float(params['binarised'][k]), float(params['inverted'][k])]
    return np.asarray(feats, dtype=np.float64)


def generated_image_index(name: str, prefix: str, fmt: str) -> int | None:
    """The index of a file named as this generator names its images (``v00000012.jpg`` -> 12), else None."""
    stem, dot, ext = name.rpartition('.')
    if not dot or ext != fmt or not stem.startswith(prefix):
        return None
    digits = stem[len(prefix) :]
    return int(digits) if len(digits) == 8 and digits.isdigit() else None


def folder_generator(folder: str) -> tuple | None:
    """``(cfg, seed, stream, prefix, format)`` of a folder written by ``util/random_image.py`` (its args.json),
    or None when the folder has no such record."""
    try:
        with open(os.path.join(folder, ARGS_FILE), encoding='utf-8') as f:
            rec = json.load(f)
        cfg = GeneratorConfig(
            img_size=int(rec['img_size']),
            alpha_range=tuple(float(v) for v in rec['alpha_range']),
            beta_range=tuple(float(v) for v in rec['beta_range']),
            prob_binary=float(rec['prob_binary']),
            prob_colour=float(rec['prob_colour']),
            spectrum=str(rec.get('spectrum', _SETTING_BEFORE_RECORDED['spectrum'])),
        )
        return cfg, int(rec['seed']), int(rec['stream']), str(rec['prefix']), str(rec['format'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------- script


def image_name(prefix: str, index: int, fmt: str) -> str:
    return f"{prefix}{index:08d}.{fmt}"


def _write_one(job, cfg, seed, prefix, fmt):
    """Worker task: generate and atomically save one image. ``job`` = (folder, stream, index)."""
    folder, stream, index = job
    image = generate_image(cfg, seed, index, stream)
    path = os.path.join(folder, image_name(prefix, index, fmt))
    try:
        save_image(path, image, fmt=fmt)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return 1


def split_folders(output: str, n_val: int) -> list[tuple[str, int, str]]:
    """[(folder, stream, split name)]: ``output`` alone, or train/val folders when ``n_val > 0``.

    With validation images: if ``output``'s basename is ``train`` the val folder is its sibling ``val``,
    otherwise the images go to ``output/train`` and ``output/val``.
    """
    if n_val <= 0:
        return [(output, TRAIN_STREAM, 'train')]
    norm = os.path.normpath(output)
    if os.path.basename(norm) == 'train':
        train, val = norm, os.path.join(os.path.dirname(norm), 'val')
    else:
        train, val = os.path.join(output, 'train'), os.path.join(output, 'val')
    return [(train, TRAIN_STREAM, 'train'), (val, VAL_STREAM, 'val')]


def write_images(
    cfg: GeneratorConfig,
    seed: int,
    jobs: list,
    prefix: str = 'v',
    fmt: str = 'jpg',
    num_workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Generate and save the images of ``jobs`` = [(folder, stream, index)], in a process pool if
    ``num_workers > 1``. ``progress``: optional callable(n) told about each finished image. Returns the count.

    The processes that generate (this one when ``num_workers <= 1``) call :func:`reduce_allocator_churn`.
    """
    task = functools.partial(_write_one, cfg=cfg, seed=seed, prefix=prefix, fmt=fmt)
    done = 0
    if num_workers <= 1 or len(jobs) <= 1:
        reduce_allocator_churn()
        for job in jobs:
            done += task(job)
            if progress:
                progress(1)
        return done
    chunk = max(1, min(32, len(jobs) // (4 * num_workers)))
    pool = multiprocessing.Pool(min(num_workers, len(jobs)), initializer=_init_worker)
    try:
        for n in pool.imap_unordered(task, jobs, chunksize=chunk):
            done += n
            if progress:
                progress(n)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C / error: a killed worker leaves at most a temp file, removed next run
        raise
    finally:
        pool.join()
    return done


def _init_worker():
    """Pool initializer: Ctrl-C is handled once, by the parent (which then stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reduce_allocator_churn()


def check_settings(folder: str, settings: dict, overwrite: bool) -> None:
    """Refuse to extend a folder whose args.json records other image settings (unless --overwrite)."""
    path = os.path.join(folder, ARGS_FILE)
    if overwrite or not os.path.exists(path):
        return
    old = read_settings(path)  # the guard PHdict.py's settings.json shares (util/ph/settings.py)
    if old is None:
        return
    for k, before in _SETTING_BEFORE_RECORDED.items():
        old.setdefault(k, before)
    diff = changed_settings(old, settings, [k for k in _IMAGE_SETTINGS if k in old])
    if diff:
        raise UserError(
            f"{folder!r} holds images made with different settings ({', '.join(diff)} differ, "
            f"see {path}); use --overwrite to regenerate them or choose another --output/-o"
        )


def make_preview(folder: str, names: list[str], path: str, tile: int = 128) -> None:
    """Contact sheet (PNG at ``path``) of the images ``names`` in ``folder``, as RGB tiles of ``tile`` px."""
    cols = math.ceil(math.sqrt(len(names)))
    rows = math.ceil(len(names) / cols)
    sheet = Image.new('RGB', (cols * tile, rows * tile), (0, 0, 0))
    for i, name in enumerate(names):
        im = load_image(os.path.join(folder, name), 'RGB')
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.BILINEAR)
        sheet.paste(im, ((i % cols) * tile, (i // cols) * tile))
    save_image(path, sheet, fmt='png')


def remove_stale_temps(folder: str, prefix: str) -> int:
    """Delete temporary files left by a killed run of this script (``<prefix>NNNNNNNN.<fmt>.tmp-*``)."""
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(prefix) and TMP_MARK in name and name.split(TMP_MARK)[0].endswith(FORMATS):
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed
