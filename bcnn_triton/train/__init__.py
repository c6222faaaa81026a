"""Training and evaluation loops, checkpoints, metrics, distributed setup."""
