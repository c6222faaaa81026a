"""Image folders: a single class tree, train/ + test/ trees, and the errors of bad trees."""

from __future__ import annotations

import pytest
from data.image_trees import make_folder, write_png

from bcnn_triton.data import DataConfig, build_datasets
from bcnn_triton.data.folder import load_folder_records
from bcnn_triton.errors import UserInputError


def test_single_tree(folder_root):
    train, test, classes = load_folder_records(folder_root)
    assert classes == ["c0", "c1", "c2"]
    assert test is None
    assert [r.label for r in train] == [0] * 4 + [1] * 4 + [2] * 4


def test_single_tree_holds_out_test_then_validation(folder_root):
    splits = build_datasets(
        DataConfig(dataset="folder", root=str(folder_root), image_size=8, test_fraction=0.25)
    )
    # 4 images per class: 1 to test, then 1 of the other 3 to validation.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    paths = [{r.path for r in d.records} for d in (splits.train, splits.val, splits.test)]
    assert paths[0].isdisjoint(paths[1]) and paths[0].isdisjoint(paths[2])
    assert paths[1].isdisjoint(paths[2])


def test_train_and_test_trees_share_class_indices(tmp_path):
    make_folder(tmp_path / "train", classes=3)
    # The test tree lacks class c1: c2 must keep index 2, not become 1.
    write_png(tmp_path / "test" / "c0" / "a.png", (0, 0, 0))
    write_png(tmp_path / "test" / "c2" / "b.png", (0, 0, 0))
    train, test, classes = load_folder_records(tmp_path)
    assert classes == ["c0", "c1", "c2"]
    assert len(train) == 12
    assert [r.label for r in test] == [0, 2]


def test_val_folder_serves_as_test_split(tmp_path):
    make_folder(tmp_path / "train", classes=2)
    make_folder(tmp_path / "val", classes=2, per_class=1)
    _, test, _ = load_folder_records(tmp_path)
    assert len(test) == 2


def test_missing_folder(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_folder_records(tmp_path / "missing")


def test_empty_folder(tmp_path):
    with pytest.raises(UserInputError, match="has no class folders"):
        load_folder_records(tmp_path)


def test_class_folder_without_images(tmp_path):
    make_folder(tmp_path, classes=2)
    (tmp_path / "c9").mkdir()
    (tmp_path / "c9" / "notes.txt").write_text("not an image")
    with pytest.raises(UserInputError, match=r"1 class folder\(s\).*hold no images \(c9\)"):
        load_folder_records(tmp_path)


def test_test_class_unknown_to_training(tmp_path):
    make_folder(tmp_path / "train", classes=2)
    write_png(tmp_path / "test" / "zebra" / "a.png", (0, 0, 0))
    with pytest.raises(UserInputError, match="zebra"):
        load_folder_records(tmp_path)
