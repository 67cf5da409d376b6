"""Training: data sets and transforms, label sources and normalisation, the engine (one epoch, evaluation, fit),
the learning modes, run folders and checkpoints, distributed start-up, seeds, metrics and reports."""
