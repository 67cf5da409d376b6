"""The one place where PHdict.py's flags (an argparse Namespace) become the configuration its pipeline takes
(:class:`util.ph.phconfig.PHConfig`), and the pictures the pipeline asks for, drawn by util/plot (a layer above
util/ph, so they are handed in from here)."""

from __future__ import annotations

import argparse

import numpy as np

from util.ph import pipeline
from util.ph.phconfig import PHConfig, field_names


def ph_config(args: argparse.Namespace) -> PHConfig:
    """The :class:`PHConfig` of the parsed flags: each setting from the flag of its name, and every flag as given
    (for args.json)."""
    flags = vars(args)
    return PHConfig(**{k: v for k, v in flags.items() if k in field_names()}, flags=tuple(flags.items()))


class Pictures:
    """The PNGs of a PHdict run, drawn by util/plot (matplotlib is imported only when one is drawn)."""

    def hist_mean(self, path: str, curves: list, count: int) -> None:
        from util.plot.ph_plot import hist_mean_png

        hist_mean_png(path, curves, count)

    def inputs(self, path, image, filtration, diagram, vector, title, vector_label) -> None:
        from util.plot.ph_plot import plot_ph

        plot_ph(path, image, filtration, diagram, vector, title=title, vector_label=vector_label)

    def label_diagnostics(self, path: str, matrix: np.ndarray, diag: dict, title: str) -> None:
        from util.plot.plotting import label_diagnostics_png

        label_diagnostics_png(path, matrix, diag, title=title)


def run_phdict(args: argparse.Namespace) -> int:
    """PHdict.py's main: the configuration of the flags, built once, run by :func:`util.ph.pipeline.run_phdict`;
    returns the exit status."""
    return pipeline.run_phdict(ph_config(args), Pictures())
