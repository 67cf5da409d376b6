"""Shared library code for the scripts: image generation, persistent homology, labels, data, training."""
