"""CUB-200-2011 from its native layout: splits, labels, class names, bounding boxes, bad trees."""

from __future__ import annotations

import pytest
import torch

from bcnn_triton.data import DataConfig, EvalTransform, build_datasets, load_rgb
from bcnn_triton.data.cub import load_cub_records
from bcnn_triton.errors import UserInputError


def test_reads_train_and_test_splits(cub_root):
    train, classes = load_cub_records(cub_root, train=True)
    test, _ = load_cub_records(cub_root, train=False)
    assert classes == ["Bird_0", "Bird_1", "Bird_2"]
    # make_cub marks images 0 and 2 of each class as train, 1 and 3 as test.
    assert [r.label for r in train] == [0, 0, 1, 1, 2, 2]
    assert len(test) == 6
    assert {r.path for r in train}.isdisjoint(r.path for r in test)
    assert all(r.box is None for r in train)


def test_parent_folder_is_accepted(cub_root):
    records, _ = load_cub_records(cub_root.parent, train=True)
    assert len(records) == 6


def test_bounding_box_crop(cub_root):
    records, _ = load_cub_records(cub_root, train=True, bbox_crop=True)
    assert records[0].box == (5.0, 5.0, 10.0, 10.0)
    cropped = load_rgb(records[0].path, records[0].box)
    full = load_rgb(records[0].path)
    assert cropped.size == (10, 10) and full.size == (40, 30)
    # The box is exactly the white square of the generated image.
    assert cropped.getextrema() == ((255, 255), (255, 255), (255, 255))


def test_build_datasets_gives_normalized_tensors(cub_root):
    splits = build_datasets(DataConfig(dataset="cub", root=str(cub_root), image_size=16))
    assert splits.num_classes == 3
    # Each class has 2 training images: one goes to validation, one stays.
    assert len(splits.train) == 3 and len(splits.val) == 3 and len(splits.test) == 6
    image, label = splits.test[0]
    assert image.shape == (3, 16, 16) and label == 0
    expected = EvalTransform(16)(load_rgb(splits.test.records[0].path))
    torch.testing.assert_close(image, expected)


@pytest.mark.parametrize(
    "missing", ["images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt"]
)
def test_missing_file_is_named(cub_root, missing):
    (cub_root / missing).unlink()
    with pytest.raises(UserInputError, match=missing.replace(".", r"\.")):
        load_cub_records(cub_root, train=True)


def test_missing_bounding_boxes_only_matter_for_bbox_crop(cub_root):
    (cub_root / "bounding_boxes.txt").unlink()
    assert len(load_cub_records(cub_root, train=True)[0]) == 6
    with pytest.raises(UserInputError, match=r"bounding_boxes\.txt"):
        load_cub_records(cub_root, train=True, bbox_crop=True)


def test_missing_folder(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_cub_records(tmp_path / "nowhere", train=True)


def test_unparsable_line_names_file_and_line(cub_root):
    lines = (cub_root / "train_test_split.txt").read_text().splitlines()
    lines[2] = "three 1"
    (cub_root / "train_test_split.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=r"train_test_split\.txt, line 3"):
        load_cub_records(cub_root, train=True)


def test_image_without_split_entry(cub_root):
    lines = (cub_root / "train_test_split.txt").read_text().splitlines()
    (cub_root / "train_test_split.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(UserInputError, match="no entry for image id 1"):
        load_cub_records(cub_root, train=True)
