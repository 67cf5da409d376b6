"""The mathematics of the labels: the image generator, filtrations and persistent homology (union-find and
cripser engines), diagram checks, vectorisers and the label-matrix format.

Imports no torch and nothing from :mod:`util.train`, :mod:`util.cli` or :mod:`util.plot` (tests/test_layers.py).
"""
