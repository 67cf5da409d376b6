"""Pictures of a run for people who would rather look than read.

Every ``*_png``/``*_grid``/``curves_from_log``/``summary_page`` function renders a PNG and returns its path.
Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas directly, never through
``matplotlib.pyplot``: this works with no display, does not change the backend a user (or a notebook)
has chosen, and leaves no figure registered anywhere, so nothing accumulates over many calls.
Each PNG is rendered into memory and then written atomically with :func:`util.io.fileio.write_bytes`.

The two ``*_ax`` functions draw onto an existing matplotlib ``Axes`` (from pyplot or from a
:class:`~matplotlib.figure.Figure`) and return it, so callers can compose their own figures.
"""

import csv
import io
import math
import os
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from util.errors import UserError
from util.io.fileio import ensure_dir, load_image, write_bytes, write_text
from util.io.runlog import log_series, read_log
from util.ph.cubical import INFINITE_DEATH

#: deaths at or above this value (``cripser`` writes DBL_MAX, float32 files hold inf) count as infinite
#: colours of homology dimensions H0, H1, H2 (matplotlib's tab10 blue, orange, green)
DIM_COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


# --------------------------------------------------------------------------- figures and files


def _new_figure(width, height):
    """A :class:`Figure` of ``width`` x ``height`` inches with its own Agg canvas (no pyplot involved)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path, dpi=100, metadata=None):
    """Render ``fig`` to PNG bytes in memory, write them atomically to ``path``, release the figure.
    ``metadata``: PNG text entries (e.g. ``{'Software': 'visMap.py'}``)."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        ensure_dir(directory, 'plot directory')
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format='png', dpi=dpi, metadata=metadata)
    finally:
        fig.clear()
    write_bytes(path, buf.getvalue())
    return path


def _to_numpy(x):
    """A torch tensor (any device, with or without grad) or array-like as a float64 numpy array."""
    if hasattr(x, 'detach'):
        x = x.detach().cpu()
        if hasattr(x, 'float'):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def tile_grid(tiles, nrow=8, pad=1, pad_value=1.0):
    """Arrange equally sized tiles in a grid.

    ``tiles``: [N, h, w, 3] floats. ``nrow``: tiles per row. Returns [R*(h+pad)+pad, C*(w+pad)+pad, 3]
    with ``pad`` pixels of ``pad_value`` around and between tiles; unused cells stay ``pad_value``.
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tile_grid expects tiles of shape [N, h, w, 3], got {tiles.shape}")
    n, h, w, _ = tiles.shape
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = tiles[i]
    return grid


# --------------------------------------------------------------------------- first-layer filters


def first_conv_weight(model_or_weight):
    """The first-layer convolution weight as a float64 array [O, I, kH, kW].

    ``model_or_weight`` may be an ``nn.Module`` (the first ``nn.Conv2d`` with 3 or 1 input channels, in
    registration order, which for torchvision models is the stem, however deeply nested), a state dict
    or checkpoint dict (the first 4-D tensor with 3 or 1 input channels, nested dicts searched too), or
    the weight itself (tensor/array [O, I, kH, kW]).
    Raises :class:`UserError` if a model/state dict has no such convolution.
    """
    import torch.nn as nn

    if isinstance(model_or_weight, nn.Module):
        for name, module in model_or_weight.named_modules():
            if isinstance(module, nn.Conv2d) and module.in_channels in (1, 3):
                return _to_numpy(module.weight)
        raise UserError(
            f"model {type(model_or_weight).__name__} has no Conv2d with 3 or 1 input channels; "
            "cannot draw its first-layer filters"
        )
    if isinstance(model_or_weight, dict):
        weight = _first_input_conv_in_dict(model_or_weight)
        if weight is None:
            raise UserError(
                "state dict has no 4-D convolution weight with 3 or 1 input channels; "
                "cannot draw its first-layer filters"
            )
        return _to_numpy(weight)
    weight = _to_numpy(model_or_weight)
    if weight.ndim != 4:
        raise ValueError(f"a convolution weight must have shape [O, I, kH, kW], got {weight.shape}")
    return weight


def _first_input_conv_in_dict(d):
    """First value of shape [O, 1 or 3, kH, kW] in a state dict, looking into nested dicts (a checkpoint
    such as ``{'epoch': 3, 'state_dict': {...}}``) when the top level has none; None if there is none."""
    for value in d.values():
        shape = tuple(getattr(value, 'shape', ()))
        if len(shape) == 4 and shape[1] in (1, 3):
            return value
    for value in d.values():
        if isinstance(value, dict):
            found = _first_input_conv_in_dict(value)
            if found is not None:
                return found
    return None


def filter_tiles(model_or_weight, max_filters=64):
    """First-layer filters as RGB tiles, each min-max normalised to [0, 1] on its own.

    Input as for :func:`first_conv_weight`. Returns [N, kH, kW, 3] with N = min(O, max_filters).
    Filters with 3 input channels are shown as RGB, with 1 as grey; with any other count (only possible
    when a weight is passed directly) the channel mean is shown as grey. A constant filter is mid grey.
    """
    w = first_conv_weight(model_or_weight)[: max(0, int(max_filters))]
    if w.shape[1] != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    tiles = w.transpose(0, 2, 3, 1).copy()  # [N, kH, kW, 3]
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    span = hi - lo
    flat = span <= 0
    tiles = np.where(flat, 0.5, (tiles - lo) / np.where(flat, 1.0, span))
    return tiles


def filter_grid(model_or_weight, path, max_filters=64, metadata=None):
    """PNG grid of the first-layer convolution filters of a model (see :func:`filter_tiles`).

    ``model_or_weight``: ``nn.Module``, state dict, or weight [O, I, kH, kW]. At most ``max_filters``
    tiles (the first ones), 8 per row (more when there are many), drawn with nearest-neighbour pixels.
    ``metadata``: PNG text entries.  Returns ``path``.
    """
    tiles = filter_tiles(model_or_weight, max_filters)
    n = len(tiles)
    if n == 0:
        raise ValueError("filter_grid: no filters to draw (max_filters must be at least 1)")
    nrow = max(8, math.ceil(math.sqrt(n)))
    grid = tile_grid(tiles, nrow=nrow, pad=1, pad_value=1.0)
    h, w = grid.shape[:2]
    scale = 6.0 / max(h, w)
    fig = _new_figure(max(2.5, w * scale), max(1.5, h * scale) + 0.4)
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.96 - 0.4 / (max(1.5, h * scale) + 0.4)])
    ax.imshow(grid, interpolation='nearest')
    ax.set_axis_off()
    k = tiles.shape[1:3]
    fig.suptitle(f"first-layer filters: {n} of size {k[0]}x{k[1]} (each min-max scaled)", fontsize=10)
    return _save_figure(fig, path, dpi=120, metadata=metadata)


# --------------------------------------------------------------------------- input samples


def sample_images_array(images, mean=None, std=None):
    """A batch as the network sees it, un-normalised for display.

    ``images``: [B, C, H, W] or [C, H, W] (tensor or array), C = 1 or 3, normalised as
    ``(x - mean) / std``. ``mean``/``std``: None, a scalar, or a length-C sequence (``std`` defaults to 1
    when only ``mean`` is given). uint8 input is divided by 255 first. Returns [B, H, W, 3] floats equal
    to ``x * std + mean`` clipped to [0, 1]; greyscale is repeated into the three colour channels.
    """
    is_uint8 = str(getattr(images, 'dtype', '')).endswith('uint8')
    x = _to_numpy(images)
    if is_uint8:
        x = x / 255.0
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [B, C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    c = x.shape[1]
    if mean is not None or std is not None:
        m = _channel_vector(0.0 if mean is None else mean, c, 'mean')
        s = _channel_vector(1.0 if std is None else std, c, 'std')
        x = x * s + m
    x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)
    if c == 1:
        x = np.repeat(x, 3, axis=3)
    return x


def _channel_vector(v, c, name):
    """``v`` (scalar or length-1/length-C sequence) as an array of shape [1, C, 1, 1]."""
    v = _to_numpy(v).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, c)
    if v.size != c:
        raise ValueError(f"{name} has {v.size} values but the images have {c} channels")
    return v.reshape(1, c, 1, 1)


def sample_grid(images, path, mean=None, std=None, nrow=8, titles=None):
    """PNG grid of a batch of input images as the network sees them (see :func:`sample_images_array`).

    ``images``: [B, C, H, W] or [C, H, W], C = 1 or 3. ``nrow``: images per row. ``titles``: optional
    list of B strings (e.g. label summaries) shown small above each image, wrapped to two lines.
    Returns ``path``.
    """
    imgs = sample_images_array(images, mean, std)
    b = len(imgs)
    if b == 0:
        raise ValueError("sample_grid: the batch is empty")
    if titles is not None and len(titles) != b:
        raise ValueError(f"sample_grid: {len(titles)} titles for {b} images")
    cols = max(1, min(int(nrow), b))
    rows = math.ceil(b / cols)
    h, w = imgs.shape[1:3]
    cell_w = min(2.0, 12.0 / cols)  # inches per image
    img_h = cell_w * h / w
    title_h = 0.32 if titles is not None else 0.0
    gap = 0.06
    fig_w, fig_h = cols * (cell_w + gap) + gap, rows * (img_h + title_h + gap) + gap
    fig = _new_figure(fig_w, fig_h)
    fontsize = max(5, min(8, int(cell_w * 4)))
    for i in range(b):
        r, c = divmod(i, cols)
        left = gap + c * (cell_w + gap)
        bottom = fig_h - (r + 1) * (img_h + title_h + gap)
        ax = fig.add_axes([left / fig_w, bottom / fig_h, cell_w / fig_w, img_h / fig_h])
        ax.imshow(imgs[i], interpolation='nearest', vmin=0, vmax=1, aspect='auto')
        ax.set_axis_off()
        if titles is not None:
            text = textwrap.shorten(str(titles[i]), width=60, placeholder='...')
            ax.set_title('\n'.join(textwrap.wrap(text, width=max(10, int(cell_w * 15)))[:2]), fontsize=fontsize, pad=2)
    return _save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------- training curves


def curves_from_log(log_path, path, keys=None):
    """PNG of training curves from a JSON-lines per-epoch log (see :func:`util.io.runlog.read_log`).

    Panels, x = epoch: losses (keys containing 'loss'), other metrics (accuracies, R², ...), and the
    learning rate ('lr', log scale) on its own when present. ``keys``: metrics to draw (default all
    numeric ones). A log with no usable record yet still gives a PNG that says so. Returns ``path``.
    """
    series = log_series(read_log(log_path), keys)
    panels = [
        ('loss', {k: s for k, s in series.items() if 'loss' in k.lower()}),
        ('metrics', {k: s for k, s in series.items() if 'loss' not in k.lower() and k != 'lr'}),
        ('learning rate', {k: s for k, s in series.items() if k == 'lr'}),
    ]
    panels = [(name, group) for name, group in panels if group]
    title = f"training log: {os.path.basename(os.fspath(log_path))}"
    if not panels:
        fig = _new_figure(6, 2)
        fig.text(0.5, 0.5, f"{title}\nno epochs logged yet", ha='center', va='center', fontsize=12)
        return _save_figure(fig, path)
    heights = [3 if name != 'learning rate' else 1.6 for name, _ in panels]
    fig = _new_figure(8, sum(heights) + 0.8)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={'height_ratios': heights})[:, 0]
    for ax, (name, group) in zip(axes, panels):
        for key, (xs, ys) in group.items():
            ax.plot(xs, ys, marker='o' if len(xs) <= 30 else None, markersize=3, label=key)
        if name == 'learning rate' and all((ys > 0).all() for _, ys in group.values()):
            ax.set_yscale('log')
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc='best')
    axes[-1].set_xlabel('epoch')
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- confusion matrices


def _check_confusion(cm, class_names):
    """``cm`` as an int64 array [K, K] and ``class_names`` as K strings (default '0'..'K-1')."""
    cm = np.asarray(_to_numpy(cm).round(), dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square [K, K], got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    return cm, names


def confusion_matrix_png(cm, class_names, path, normalise=True):
    """PNG heatmap of a confusion matrix.

    ``cm``: int [K, K], rows = true class, columns = predicted class. ``class_names``: K names (or
    None for indices). ``normalise``: colour each row by its fraction of that true class (rows with no
    samples stay 0); otherwise by raw counts. Cells are annotated when K <= 15; tick labels are hidden
    when K > 30. The title gives the overall accuracy. Returns ``path``.
    """
    cm, names = _check_confusion(cm, class_names)
    k = cm.shape[0]
    total = cm.sum()
    accuracy = np.trace(cm) / total if total else float('nan')
    if normalise:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    else:
        values = cm.astype(np.float64)
    side = min(14.0, max(4.5, 0.35 * k + 3))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(values, cmap='Blues', vmin=0, vmax=1 if normalise else max(1, values.max()), interpolation='nearest')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of true class' if normalise else 'count')
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90 if k > 6 else 0, fontsize=8 if k > 12 else 10)
        ax.set_yticks(range(k), names, fontsize=8 if k > 12 else 10)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 15:
        vmax = 1 if normalise else max(1, values.max())
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalise else str(cm[i, j])
                ax.text(
                    j,
                    i,
                    text,
                    ha='center',
                    va='center',
                    fontsize=8,
                    color='white' if values[i, j] > 0.6 * vmax else 'black',
                )
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(f"confusion matrix ({k} classes, {total} samples, accuracy {accuracy:.1%})", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def confusion_matrix_csv(cm, class_names, path):
    """CSV of a confusion matrix: header ``true\\predicted,<name>...``, then one row per true class.

    ``cm``: int [K, K], rows = true, columns = predicted. ``class_names``: K names (None: indices).
    Written atomically. Returns ``path``.
    """
    cm, names = _check_confusion(cm, class_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['true\\predicted', *names])
    for name, row in zip(names, cm):
        writer.writerow([name, *(int(v) for v in row)])
    path = os.fspath(path)
    if os.path.dirname(path):
        ensure_dir(os.path.dirname(path), 'output directory')
    write_text(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- axes helpers


def persistence_diagram_ax(ax, diagram, max_value=None):
    """Draw a persistence diagram on ``ax`` and return ``ax``.

    ``diagram``: array (n, >=3) of rows [dim, birth, death, ...] as ``cripser`` returns (extra columns
    ignored); n may be 0. Points are coloured by homology dimension (H0 blue, H1 orange, H2 green).
    Deaths that are infinite (inf, or >= :data:`util.ph.cubical.INFINITE_DEATH`, such as cripser's DBL_MAX) are
    drawn as triangles on a dashed line at the top labelled 'inf'. ``max_value``: where that line (and the axes)
    end; default a little above the largest finite value. The diagonal birth = death is drawn dashed.
    """
    d = _to_numpy(diagram)
    if d.size == 0:
        d = np.zeros((0, 3))
    if d.ndim != 2 or d.shape[1] < 3:
        raise ValueError(f"a persistence diagram must have shape (n, >=3), got {d.shape}")
    dims = d[:, 0].round().astype(int)
    birth, death = d[:, 1], d[:, 2]
    infinite = ~np.isfinite(death) | (death >= INFINITE_DEATH)
    finite_vals = np.concatenate([birth[np.isfinite(birth)], death[~infinite]])
    lo = float(finite_vals.min()) if finite_vals.size else 0.0
    hi = float(finite_vals.max()) if finite_vals.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    top = float(max_value) if max_value is not None else hi + 0.1 * (hi - lo)
    margin = 0.05 * (top - lo)
    ax.plot([lo - margin, top], [lo - margin, top], linestyle='--', color='grey', linewidth=1)
    if infinite.any():
        ax.axhline(top, linestyle=':', color='grey', linewidth=1)
    for dim in sorted(set(dims.tolist())):
        colour = DIM_COLOURS[dim % len(DIM_COLOURS)] if dim >= 0 else 'black'
        fin = (dims == dim) & ~infinite
        inf = (dims == dim) & infinite
        n = int(fin.sum() + inf.sum())
        if fin.any():
            ax.scatter(birth[fin], death[fin], s=12, color=colour, alpha=0.8, label=f"H{dim} ({n})")
        if inf.any():
            ax.scatter(
                birth[inf],
                np.full(int(inf.sum()), top),
                s=30,
                marker='^',
                color=colour,
                label=None if fin.any() else f"H{dim} ({n})",
            )
    ax.set_xlim(lo - margin, top + margin)
    ax.set_ylim(lo - margin, top + margin)
    if infinite.any():
        ax.text(top, top, 'inf ', va='bottom', ha='right', fontsize=8, color='grey')
    ax.set_xlabel('birth')
    ax.set_ylabel('death')
    if len(d) == 0:
        ax.text(0.5, 0.5, 'empty diagram', transform=ax.transAxes, ha='center', va='center', color='grey')
    else:
        ax.legend(fontsize=8, loc='lower right')
    return ax


def label_vector_ax(ax, vector, parts=None):
    """Draw a label vector on ``ax`` (bars, or a line when longer than 120) and return ``ax``.

    ``vector``: 1-D array [D] (a [1, D] row is flattened). ``parts``: optional named consecutive pieces,
    a dict {name: size} or a sequence of (name, size) pairs, sizes summing to at most D (a remainder is
    drawn as 'rest'); each piece gets its own colour, a legend entry and a separating line.
    """
    v = _to_numpy(vector).reshape(-1)
    pieces = list(parts.items()) if isinstance(parts, dict) else list(parts or [])
    pieces = [(str(name), int(size)) for name, size in pieces]
    if any(size < 0 for _, size in pieces):
        raise ValueError("label_vector_ax: part sizes must be non-negative")
    used = sum(size for _, size in pieces)
    if used > v.size:
        raise ValueError(f"label_vector_ax: parts cover {used} entries but the vector has {v.size}")
    if not pieces:
        pieces = [('label', v.size)]
    elif used < v.size:
        pieces.append(('rest', v.size - used))
    start = 0
    for i, (name, size) in enumerate(pieces):
        xs = np.arange(start, start + size)
        colour = f"C{i % 10}"
        if v.size > 120:
            ax.plot(xs, v[start : start + size], color=colour, linewidth=1, label=name)
        else:
            ax.bar(xs, v[start : start + size], width=0.85, color=colour, label=name)
        if i > 0:
            ax.axvline(start - 0.5, color='grey', linewidth=0.8, linestyle=':')
        start += size
    ax.axhline(0, color='black', linewidth=0.5)
    ax.set_xlim(-0.5 if v.size else 0, max(v.size - 0.5, 0.5))
    ax.set_xlabel('label index')
    ax.set_ylabel('value')
    if len(pieces) > 1:
        ax.legend(fontsize=8, loc='best')
    return ax


# --------------------------------------------------------------------------- label diagnostics


def label_diagnostics_png(path, labels, diag, title=None):
    """``path``: the variance spectrum of a label matrix ``[N, D]`` (share of each of its first 20 principal
    components, and cumulative) beside the numbers of ``diag`` (:mod:`util.ph.diagnostics`). Returns ``path``."""
    from util.ph import diagnostics

    lam = diagnostics.eigenvalues(labels)
    share = lam / lam.sum() if lam.size and lam.sum() > 0 else np.zeros(1)
    k = min(20, share.size)
    fig = _new_figure(10.0, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(np.arange(1, k + 1), share[:k], color=DIM_COLOURS[0], label='share of variance')
    ax.plot(np.arange(1, k + 1), np.cumsum(share[:k]), 'o-', color=DIM_COLOURS[1], ms=3, label='cumulative')
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('principal component')
    ax.legend(fontsize=8)
    ax.set_title(title or 'label matrix', fontsize=9)
    text = fig.add_subplot(1, 2, 2)
    text.set_axis_off()
    lines = diagnostics.summary_line(diag).split(': ', 1)[-1].split(', ')
    for warning in diagnostics.degeneracy_warnings(diag):
        lines += [''] + textwrap.wrap('warning: ' + warning, width=52)
    text.text(0.0, 1.0, '\n'.join(lines), va='top', ha='left', fontsize=8, family='monospace')
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- one-page summary


def _is_image_ref(content):
    """True when a section's content names an image file (path ending in an image suffix, one line)."""
    if isinstance(content, os.PathLike):
        return True
    return isinstance(content, str) and '\n' not in content and content.lower().endswith(IMAGE_SUFFIXES)


def summary_page(path, title, sections):
    """One PNG page summarising a run: a title, then each section stacked vertically.

    ``sections``: list of (heading, content). ``content`` is text (wrapped to the page width), a path
    to an image file (str ending in .png/.jpg/... or a PathLike; shown scaled to the page width, at most
    5 inches tall; a missing or unreadable file is reported in the page instead), or an image array
    [H, W] / [H, W, 3] (floats in [0, 1] or uint8). Returns ``path``.
    """
    width, wrap = 8.5, 100
    blocks = []  # (heading, kind, payload, height in inches)
    for heading, content in sections:
        kind, payload = 'text', None
        if isinstance(content, np.ndarray):
            kind, payload = 'image', content
        elif _is_image_ref(content):
            try:
                payload = np.asarray(load_image(os.fspath(content), 'RGB'))
                kind = 'image'
            except UserError as e:
                payload = f"(image not available: {e})"
        else:
            payload = str(content)
        if kind == 'text':
            lines = []
            for para in payload.splitlines() or ['']:
                lines.extend(textwrap.wrap(para, width=wrap, replace_whitespace=False) or [''])
            payload = '\n'.join(lines)
            height = 0.16 * len(lines) + 0.1
        else:
            h, w = payload.shape[:2]
            height = min(5.0, (width - 1.0) * h / max(w, 1))
        blocks.append((str(heading), kind, payload, height))
    heading_h, gap, title_h = 0.32, 0.15, 0.7
    total = title_h + sum(heading_h + b[3] + gap for b in blocks) + 0.2
    fig = _new_figure(width, total)
    fig.text(0.5, 1 - 0.35 / total, str(title), ha='center', va='center', fontsize=15, weight='bold')
    y = total - title_h  # top of the next block, inches from the bottom
    for heading, kind, payload, height in blocks:
        fig.text(0.4 / width, (y - heading_h / 2) / total, heading, ha='left', va='center', fontsize=12, weight='bold')
        y -= heading_h
        if kind == 'text':
            fig.text(0.6 / width, y / total, payload, ha='left', va='top', fontsize=9, family='monospace')
        else:
            ax = fig.add_axes([0.5 / width, (y - height) / total, (width - 1.0) / width, height / total])
            ax.imshow(payload, interpolation='antialiased', cmap='gray' if payload.ndim == 2 else None)
            ax.set_axis_off()
        y -= height + gap
    return _save_figure(fig, path, dpi=110)
