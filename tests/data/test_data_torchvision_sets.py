"""torchvision's FGVC sets read as image records: FGVC-Aircraft in its own layout, no download."""

from __future__ import annotations

import pytest
from data.image_trees import PALETTE, write_corrupt, write_png

from bcnn_triton.data import DataConfig, build_datasets
from bcnn_triton.data.torchvision_sets import load_torchvision_records
from bcnn_triton.errors import UserInputError

VARIANTS = ["707-320", "A300B4", "Hawk T1"]  # names with a dash and a space, as in the real list


def make_aircraft(root, per_variant=(4, 2)):
    """fgvc-aircraft-2013b/data with images_variant_{trainval,test}.txt and the images."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{name}\n" for name in VARIANTS))
    image_id = 1000000
    for split, count in zip(("trainval", "test"), per_variant, strict=True):
        lines = []
        for label, name in enumerate(VARIANTS):
            for _ in range(count):
                image_id += 1
                write_png(data / "images" / f"{image_id}.jpg", PALETTE[label])
                lines.append(f"{image_id} {name}\n")
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
    return data


def test_aircraft_records_and_class_names(tmp_path):
    data = make_aircraft(tmp_path)
    train, classes = load_torchvision_records("aircraft", tmp_path, train=True)
    test, _ = load_torchvision_records("aircraft", tmp_path, train=False)
    assert classes == VARIANTS
    assert [record.label for record in train] == [0] * 4 + [1] * 4 + [2] * 4
    assert len(test) == 6
    assert train[0].path == str(data / "images" / "1000001.jpg")


def test_aircraft_builds_splits_and_names_unreadable_images(tmp_path):
    data = make_aircraft(tmp_path)
    splits = build_datasets(DataConfig(dataset="aircraft", root=str(tmp_path), image_size=8))
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (12, 6)
    image, label = splits.test[0]
    assert tuple(image.shape) == (3, 8, 8) and label == 0
    write_corrupt(data / "images" / "1000013.jpg")  # the first test image
    assert splits.test[0].path.endswith("1000013.jpg")


def test_aircraft_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(UserInputError, match=r"aircraft not found under .*--download"):
        load_torchvision_records("aircraft", tmp_path, train=True)
