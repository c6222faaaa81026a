"""load_trained_model: a checkpoint → model in eval mode, its class names and preprocessing."""

from __future__ import annotations

import logging

import pytest
import torch
from deploy.checkpoints import CLASSES, IMAGE_SIZE, MEAN, STD, tiny_model, write_checkpoint

from bcnn_triton.data import EvalTransform, Preprocessing
from bcnn_triton.deploy import find_checkpoint, load_trained_model
from bcnn_triton.errors import UserInputError
from bcnn_triton.train import CheckpointError


def test_loads_model_classes_and_preprocessing(tmp_path):
    model = tiny_model()
    path = write_checkpoint(tmp_path / "run", model)
    trained = load_trained_model(path)
    assert trained.classes == CLASSES
    assert trained.preprocessing == Preprocessing(IMAGE_SIZE, mean=MEAN, std=STD)
    assert trained.source == path
    assert not trained.model.training
    assert trained.device == torch.device("cpu")
    assert trained.metadata["epoch"] == 3 and "model" not in trained.metadata
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(trained.model(images), model(images), rtol=0, atol=0)
    transform = trained.transform
    assert isinstance(transform, EvalTransform)
    assert (transform.image_size, transform.mean, transform.std) == (IMAGE_SIZE, MEAN, STD)


def test_gap_model_and_epoch_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path, tiny_model("gap"), kind="epoch")
    epoch_path = path.rename(tmp_path / "checkpoint-0003.pt")
    trained = load_trained_model(epoch_path)
    assert trained.model.config["head"] == "gap" and trained.classes == CLASSES


def test_old_checkpoint_gets_numbered_classes_and_training_preprocessing(tmp_path, caplog):
    path = write_checkpoint(tmp_path, classes=None, preprocessing=None)
    with caplog.at_level(logging.WARNING, logger="bcnn_triton"):
        trained = load_trained_model(path)
    assert trained.classes == [f"class {i}" for i in range(5)]
    # The size of the stored data config, with what training has always used.
    assert trained.preprocessing == Preprocessing(48)
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "does not record its 5 class names" in warnings
    assert "does not record its preprocessing" in warnings


@pytest.mark.parametrize("classes", [["a", "b"], "abcde", [1, 2, 3, 4, 5]])
def test_class_names_that_do_not_fit_are_numbered(tmp_path, caplog, classes):
    path = write_checkpoint(tmp_path, classes=classes)
    with caplog.at_level(logging.WARNING, logger="bcnn_triton"):
        assert load_trained_model(path).classes[4] == "class 4"
    assert "class names" in caplog.text


def test_old_checkpoint_without_any_size_needs_image_size(tmp_path):
    path = write_checkpoint(tmp_path, preprocessing=None, data_config=None)
    with pytest.raises(CheckpointError, match="records neither its preprocessing nor its image"):
        load_trained_model(path)
    assert load_trained_model(path, image_size=40).preprocessing == Preprocessing(40)


def test_image_size_overrides_the_stored_one(tmp_path):
    trained = load_trained_model(write_checkpoint(tmp_path), image_size=64)
    assert trained.preprocessing == Preprocessing(64, mean=MEAN, std=STD)


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True])
def test_bad_image_size(tmp_path, image_size):
    with pytest.raises(UserInputError, match="image_size must be an integer >= 1"):
        load_trained_model(write_checkpoint(tmp_path), image_size=image_size)


@pytest.mark.parametrize(
    ("preprocessing", "message"),
    [
        ({"image_size": 32, "resize": "stretch"}, "resize 'stretch'"),
        ({"image_size": 32, "mean": [0.5, 0.5]}, "mean must be 3 finite numbers"),
        ({"image_size": 32, "std": [0.2, 0.0, 0.2]}, "std must be > 0"),
        ({"size": 32}, "not a preprocessing description"),
        ("224", "not a preprocessing description"),
    ],
)
def test_bad_stored_preprocessing(tmp_path, preprocessing, message):
    path = write_checkpoint(tmp_path, preprocessing=preprocessing)
    with pytest.raises(CheckpointError, match=message) as error:
        load_trained_model(path)
    assert str(path) in str(error.value)


def test_run_folder_prefers_stage_all(tmp_path):
    fc = write_checkpoint(tmp_path / "run" / "fc")
    assert find_checkpoint(tmp_path / "run") == fc
    everything = write_checkpoint(tmp_path / "run" / "all")
    assert find_checkpoint(tmp_path / "run") == everything
    assert load_trained_model(tmp_path / "run").source == everything


def test_folder_without_best_lists_what_it_found(tmp_path):
    write_checkpoint(tmp_path / "demo" / "bilinear" / "fc")
    with pytest.raises(CheckpointError) as error:
        find_checkpoint(tmp_path / "demo")
    assert f"no best.pt in {tmp_path / 'demo'}" in str(error.value)
    assert str(tmp_path / "demo" / "bilinear" / "fc" / "best.pt") in str(error.value)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained_model(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(write_checkpoint(tmp_path / "good").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_trained_model(corrupt)
    foreign = tmp_path / "resnet18.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(CheckpointError, match="is not a bcnn-triton checkpoint"):
        load_trained_model(foreign)
    no_model = write_checkpoint(tmp_path / "no_model", model_config=None)
    with pytest.raises(CheckpointError, match="does not hold a usable model"):
        load_trained_model(no_model)


def test_unknown_device(tmp_path):
    with pytest.raises(UserInputError, match="unknown device 'gpu0'"):
        load_trained_model(write_checkpoint(tmp_path), device="gpu0")
