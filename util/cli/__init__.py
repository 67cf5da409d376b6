"""The command-line layer: the training scripts' flags and checks, the one builder of the run configuration,
strict parsing, and the original project's flags (compat)."""
