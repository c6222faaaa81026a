"""Fixtures for the data tests: tiny image trees written as PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
from data.image_trees import make_cub, make_folder


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return make_cub(tmp_path / "cub")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "folder")
