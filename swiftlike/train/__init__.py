"""Training: loss, loop, checkpoints and trackers."""
