"""Fixtures for the command-line tests: the flags of a training run that takes about a second."""

from __future__ import annotations

import pytest

# 32 px synthetic images, 48 train / 12 validation / 16 test, one epoch of stage fc.
TINY_TRAIN = [
    "--image-size", "32", "--train-size", "60", "--test-size", "16", "--val-fraction", "0.2",
    "--epochs", "1", "--batch-size", "8", "--no-progress",
]  # fmt: skip


@pytest.fixture
def tiny_train_args() -> list[str]:
    return list(TINY_TRAIN)
