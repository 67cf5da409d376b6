"""The pictures of PHdict.py: one input's image | filtration | persistence diagram | label vector (``--plot N``),
and the mean of the -ch histograms (``hist_mean.png``).  matplotlib's Agg backend; numpy and matplotlib only (no
torch: the PH side draws these)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from util.io.fileio import atomic_open
from util.ph.cubical import INFINITE_DEATH


def plot_ph(
    path: str,
    image: Image.Image | np.ndarray,
    filtration: np.ndarray,
    diagram: np.ndarray,
    vector: np.ndarray | None = None,
    title: str | None = None,
    vector_label: str | None = None,
) -> None:
    """Save a PNG at ``path``: image | filtration | persistence diagram | label vector, side by side.

    ``image``: ``(H, W)`` or ``(H, W, 3)`` array or PIL image; ``filtration``: ``(H, W)``; ``diagram``:
    ``(n, >=3)``; ``vector``: 1-D label vector or None (panel left out).  Uses matplotlib's Agg backend.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    panels = 4 if vector is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.0))
    try:
        ax = axes[0]
        ax.imshow(image, cmap='gray' if image.ndim == 2 else None)
        ax.set_title(title or 'image', fontsize=9)
        ax.axis('off')

        ax = axes[1]
        lim = float(np.abs(filtration).max()) or 1.0
        signed = float(filtration.min()) < 0
        im = ax.imshow(
            filtration,
            cmap='coolwarm' if signed else 'viridis',
            vmin=-lim if signed else None,
            vmax=lim if signed else None,
        )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title('filtration', fontsize=9)
        ax.axis('off')

        ax = axes[2]
        d = np.asarray(diagram, dtype=np.float64).reshape(-1, diagram.shape[1] if np.ndim(diagram) == 2 else 3)
        finite = d[:, 2] < INFINITE_DEATH
        span = d[:, 1:3][finite] if finite.any() else d[:, 1:2]
        lo = float(span.min()) if span.size else 0.0
        hi = float(span.max()) if span.size else 1.0
        pad = 0.05 * (hi - lo or 1.0)
        top = hi + 2 * pad
        for h, colour, marker in ((0, 'tab:blue', 'o'), (1, 'tab:orange', '^')):
            sel = d[:, 0] == h
            ax.scatter(d[sel & finite, 1], d[sel & finite, 2], s=8, c=colour, marker=marker, label=f'H{h}')
            if (sel & ~finite).any():
                ax.scatter(
                    d[sel & ~finite, 1],
                    np.full((sel & ~finite).sum(), top),
                    s=30,
                    c=colour,
                    marker='*',
                    label=f'H{h} essential',
                )
        ax.plot([lo - pad, top], [lo - pad, top], 'k-', lw=0.6)
        ax.axhline(top, color='grey', lw=0.5, ls=':')
        ax.set_xlabel('birth')
        ax.set_ylabel('death')
        ax.set_title(f'persistence diagram ({len(d)} pairs)', fontsize=9)
        ax.legend(fontsize=7, loc='lower right')

        if vector is not None:
            ax = axes[3]
            v = np.asarray(vector).ravel()
            ax.plot(np.arange(v.size), v, lw=1)
            ax.axvline(v.size // 2 - 0.5, color='grey', lw=0.5, ls=':')
            ax.set_title(vector_label or f'label vector ({v.size})', fontsize=9)
            ax.set_xlabel('component')
        fig.tight_layout()
        with atomic_open(path, 'wb') as f:
            fig.savefig(f, format='png', dpi=80)
    finally:
        plt.close(fig)


def hist_mean_png(path: str, curves: list, count: int) -> None:
    """Save ``hist_mean.png`` at ``path``: the four curves of the mean -ch histogram (H0/H1 lifetimes, H0/H1 births)
    over ``count`` inputs."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for c, label, style in zip(curves, ('H0 lifetime', 'H1 lifetime', 'H0 birth', 'H1 birth'), ('-', '--', '-', '--')):
        ax.plot(np.arange(c.size), c, style, label=label, lw=1.2)
    ax.set_xlabel('bin')
    ax.set_title(f'mean histogram over {count} inputs')
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=90)
    plt.close(fig)
