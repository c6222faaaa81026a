"""build_datasets: dataset detection, seeded stratified hold-outs, torchvision sets offline."""

from __future__ import annotations

import pytest
from data.image_trees import make_folder

from bcnn_triton.data import (
    DataConfig,
    build_datasets,
    detect_dataset,
    stratified_holdout,
)
from bcnn_triton.errors import UserInputError


def test_detects_layouts(tmp_path, cub_root, folder_root):
    assert detect_dataset(cub_root) == "cub"
    assert detect_dataset(cub_root.parent) == "cub"
    assert detect_dataset(folder_root) == "folder"
    (tmp_path / "air" / "fgvc-aircraft-2013b").mkdir(parents=True)
    assert detect_dataset(tmp_path / "air") == "aircraft"


def test_stratified_holdout_is_seeded_and_per_class():
    labels = [0] * 10 + [1] * 20 + [2] * 1
    kept, held = stratified_holdout(labels, 0.2, seed=1, stream=1)
    assert sorted(kept + held) == list(range(31))
    assert [labels[i] for i in held].count(0) == 2
    assert [labels[i] for i in held].count(1) == 4
    assert 30 in kept  # a class with one sample keeps it for training
    assert (kept, held) == stratified_holdout(labels, 0.2, seed=1, stream=1)
    assert held != stratified_holdout(labels, 0.2, seed=2, stream=1)[1]


def test_synthetic_splits_are_disjoint_and_sized():
    splits = build_datasets(
        DataConfig(
            synthetic_train_size=40, synthetic_test_size=12, image_size=16, val_fraction=0.25
        )
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        28,
        12,
        12,
    )  # 3 of each class's 10
    assert set(splits.train.indices).isdisjoint(splits.val.indices)
    assert splits.num_classes == 4
    assert splits.test[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("name", ["aircraft", "cars", "flowers"])
def test_torchvision_set_missing_offline(tmp_path, name):
    with pytest.raises(UserInputError, match=f"{name} not found under"):
        build_datasets(DataConfig(dataset=name, root=str(tmp_path)))


def test_cars_cannot_be_downloaded(tmp_path):
    with pytest.raises(UserInputError, match="cannot download cars"):
        build_datasets(DataConfig(dataset="cars", root=str(tmp_path), download=True))


def test_cub_download_explains_where_to_get_it(tmp_path):
    with pytest.raises(UserInputError, match="not downloaded automatically"):
        build_datasets(DataConfig(dataset="cub", root=str(tmp_path), download=True))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DataConfig(dataset="imagenet"), "unknown dataset 'imagenet'"),
        (DataConfig(dataset="cub"), "needs --data PATH"),
        (DataConfig(val_fraction=1.5), "--val-fraction must be between 0 and 1"),
        (DataConfig(image_size=4), "--image-size must be at least 8"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(UserInputError, match=message):
        build_datasets(config)


def test_too_few_images_for_a_validation_split(tmp_path):
    make_folder(tmp_path / "train", classes=2, per_class=1)
    make_folder(tmp_path / "test", classes=2, per_class=1)
    with pytest.raises(UserInputError, match="too few images"):
        build_datasets(DataConfig(dataset="folder", root=str(tmp_path)))
