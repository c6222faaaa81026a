"""Checkpoint files: atomic writes, the last two kept, corrupt files detected, compatibility."""

from __future__ import annotations

import logging
import random
import re

import numpy as np
import pytest
import torch

from bcnn_triton.models import create_model
from bcnn_triton.train import (
    CheckpointError,
    check_compatible,
    checkpoint_paths,
    load_checkpoint,
    load_latest_checkpoint,
    load_model,
    save_checkpoint,
)
from bcnn_triton.train.atomic import atomic_write, atomic_write_text
from bcnn_triton.train.checkpoint import capture_rng_state, restore_rng_state, save_best


def state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}}


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "complete")

    def crash_halfway(handle):
        handle.write(b"half of a new ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash_halfway)
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_keeps_the_last_two(tmp_path):
    for epoch in range(1, 5):
        save_checkpoint(state(epoch), tmp_path, epoch)
    assert [p.name for p in checkpoint_paths(tmp_path)] == [
        "checkpoint-0004.pt",
        "checkpoint-0003.pt",
    ]
    loaded = load_checkpoint(tmp_path / "checkpoint-0004.pt")
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], torch.full((3,), 4.0))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, damage):
    save_checkpoint(state(1), tmp_path, 1)
    latest = save_checkpoint(state(2), tmp_path, 2)
    data = latest.read_bytes()
    latest.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00" * 100, "empty": b""}[damage]
    )
    with caplog.at_level(logging.WARNING, logger="bcnn_triton"):
        loaded, path = load_latest_checkpoint(tmp_path)
    assert loaded["epoch"] == 1 and path.name == "checkpoint-0001.pt"
    assert "checkpoint-0002.pt is truncated or corrupt" in caplog.text


def test_all_corrupt_is_an_error(tmp_path):
    for epoch in (1, 2):
        save_checkpoint(state(epoch), tmp_path, epoch).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be loaded"):
        load_latest_checkpoint(tmp_path)


def test_no_checkpoint_is_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "missing") is None


def test_foreign_file_is_rejected(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a bcnn-triton checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_compatibility_names_every_difference():
    saved = {"head": "bilinear", "backbone": "vgg16", "num_classes": 200, "reduce_dim": None}
    check_compatible(saved, {"backbone": "vgg16", "num_classes": 200}, "x.pt")
    with pytest.raises(CheckpointError, match=r"backbone 'vgg16' .* vs 'resnet18'.*num_classes"):
        check_compatible(saved, {"backbone": "resnet18", "num_classes": 10}, "x.pt")


def test_rng_state_round_trip(tmp_path):
    saved = capture_rng_state()
    torch.save(saved, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_random_bytes_are_not_called_python_objects(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x13" + random.Random(0).randbytes(4000))  # not a zip, not a pickle
    with pytest.raises(CheckpointError) as failed:
        load_checkpoint(path)
    assert str(failed.value) == (
        f"checkpoint {path} is truncated or corrupt, or not a bcnn-triton checkpoint: it is "
        "neither a zip archive, as torch.save writes, nor a pickle"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # The file's classifier has 4 rows (4 classes); the config it carries says 5.
        (
            {"num_classes": 5},
            r"fc\.weight is 4×(\d+) in the file, 5×\1 in the model \(and 1 more\)",
        ),
        # resnet18 has other layers and 512² features: every difference is counted.
        (
            {"backbone": "resnet18"},
            r"fc\.weight is 4×\d+ in the file, 4×262144 in the model \(and \d+ more\)",
        ),
    ],
)
def test_weights_that_do_not_fit_their_own_config(tmp_path, change, expected):
    model = create_model("bilinear", backbone="tiny", num_classes=4)
    config = {**model.config, **change}
    save_best({"model_config": config, "model": model.state_dict()}, tmp_path)
    with pytest.raises(CheckpointError) as failed:
        load_model(tmp_path / "best.pt")
    described = f"head bilinear, backbone {config['backbone']}, num_classes {config['num_classes']}"
    prefix = (
        f"checkpoint {tmp_path / 'best.pt'}: its weights do not fit the model its config "
        f"describes ({described}): "
    )
    message = str(failed.value)
    assert message.startswith(prefix) and "\n" not in message
    assert re.fullmatch(expected, message[len(prefix) :]), message
