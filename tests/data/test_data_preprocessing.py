"""Preprocessing: the stored description of evaluation transforms, and EvalTransform's mean/std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bcnn_triton.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    EvalTransform,
    Preprocessing,
    SyntheticSecondOrder,
)
from bcnn_triton.errors import UserInputError


def test_round_trip_and_defaults():
    preprocessing = Preprocessing(224)
    fields = preprocessing.as_dict()
    assert fields == {
        "image_size": 224,
        "resize": "shorter_side",
        "crop": "center",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    assert Preprocessing.from_dict(fields) == preprocessing
    assert Preprocessing.from_dict({"image_size": 8, "mean": [1, 0, 0], "std": [1, 2, 3]}).mean == (
        1.0,
        0.0,
        0.0,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": 0}, "image_size must be an integer >= 1"),
        ({"image_size": "224"}, "image_size must be an integer >= 1"),
        ({"image_size": 8, "crop": "random"}, "crop 'random'"),
        ({"image_size": 8, "mean": [0.5, 0.5, float("nan")]}, "mean must be 3 finite numbers"),
        ({"image_size": 8, "std": "abc"}, "std must be 3 finite numbers"),
        ({"image_size": 8, "std": [1, -1, 1]}, "std must be > 0"),
        ({"image_size": 8, "colour": "bgr"}, "not a preprocessing description"),
        ({}, "not a preprocessing description"),
    ],
)
def test_bad_fields(fields, message):
    with pytest.raises(UserInputError, match=message):
        Preprocessing.from_dict(fields)


def test_eval_transform_uses_the_given_mean_and_std():
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8), "RGB"
    )
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    got = Preprocessing(12, mean=mean, std=std).eval_transform()(image)
    pixels = np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0
    expected = (pixels - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    torch.testing.assert_close(got, torch.from_numpy(expected).float(), rtol=0, atol=1e-6)
    assert (
        repr(EvalTransform(12, mean, std))
        == f"EvalTransform(image_size=12, mean={mean}, std={std})"
    )


def test_data_config_names_its_preprocessing():
    assert DataConfig(image_size=96).preprocessing == Preprocessing(96)


def test_synthetic_images_saved_as_png_files(tmp_path):
    data = SyntheticSecondOrder(5, num_classes=4, image_size=16, split="test")
    paths = data.save_images(tmp_path / "images")
    assert [path.name for path in paths] == [
        "0000-pairing+0.png",
        "0001-pairing+1.png",
        "0002-pairing+2.png",
        "0003-pairing+3.png",
        "0004-pairing+0.png",
    ]
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (16, 16)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        generated, _ = data.generate(index)
        # Saving rounds to 8 bits: within half a level of the generated image.
        torch.testing.assert_close(pixels, generated, rtol=0, atol=0.5 / 255 + 1e-6)
