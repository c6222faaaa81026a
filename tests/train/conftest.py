"""Fixtures for the training tests: a tiny synthetic configuration that trains in about a second."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bcnn_triton.data import DataConfig
from bcnn_triton.train import DistributedContext, TrainConfig


def tiny_data(**overrides) -> DataConfig:
    """32 px synthetic images: 48 train + 12 validation (of 60), 16 test, 4 classes."""
    options = {
        "image_size": 32,
        "synthetic_train_size": 60,
        "synthetic_test_size": 16,
        "val_fraction": 0.2,
    }
    return DataConfig(**{**options, **overrides})


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., TrainConfig]:
    """``tiny_config(name, train_size=60, **overrides)``: a TrainConfig into ``tmp_path / name``."""

    def make(name: str = "run", train_size: int = 60, **overrides) -> TrainConfig:
        options = {
            "data": tiny_data(synthetic_train_size=train_size),
            "out": tmp_path / name,
            "head": "bilinear",
            "backbone": "tiny",
            "stages": ("fc",),
            "epochs": {"fc": 2, "all": 2},
            "batch_size": 8,
            "workers": 0,
            "progress": False,
        }
        return TrainConfig(**{**options, **overrides})

    return make


@pytest.fixture
def cpu() -> DistributedContext:
    return DistributedContext()
