"""Preprocessing's interpolation, mean and std as a timm backbone's pretrained config gives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bcnn_triton.config import DataConfig, TrainConfig
from bcnn_triton.data import EvalTransform, Preprocessing, SyntheticSecondOrder, build_datasets
from bcnn_triton.errors import UserInputError
from bcnn_triton.models.timm_backbone import timm_preprocessing

timm = pytest.importorskip("timm")


def test_interpolation_is_stored_only_where_not_bilinear():
    bicubic = Preprocessing(64, interpolation="bicubic")
    assert bicubic.as_dict()["interpolation"] == "bicubic"
    assert Preprocessing.from_dict(bicubic.as_dict()) == bicubic
    # Files written before the field existed were bilinear, and still read so.
    assert "interpolation" not in Preprocessing(64).as_dict()
    assert Preprocessing.from_dict({"image_size": 64}).interpolation == "bilinear"
    with pytest.raises(UserInputError, match=r"interpolation must be one of .*got 'cubic'"):
        Preprocessing(64, interpolation="cubic")


def test_eval_transform_resizes_with_the_interpolation():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    ours = EvalTransform(20, mean, std, "bicubic")(image)
    # Independent: PIL's bicubic to 30×20, centre 20×20 crop, then mean/std.
    resized = np.asarray(image.resize((30, 20), Image.BICUBIC), dtype=np.float64) / 255.0
    expected = (resized[:, 5:25] - np.array(mean)) / np.array(std)
    expected = torch.from_numpy(expected.transpose(2, 0, 1)).float()
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert not torch.equal(ours, EvalTransform(20, mean, std)(image))


@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "vit_small_patch14_dinov2.lvd142m", "convnext_atto"]
)
def test_timm_preprocessing_is_the_pretrained_config(name):
    config = timm.get_pretrained_cfg(name).to_dict()
    ours = timm_preprocessing(f"timm/{name}")
    assert ours == {
        "image_size": config["input_size"][-1],
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "interpolation": config["interpolation"],
    }


def test_training_normalizes_as_the_timm_backbone_expects(tmp_path):
    data = DataConfig(image_size=32, synthetic_train_size=8, synthetic_test_size=4)
    config = TrainConfig(data=data, out=tmp_path, backbone="timm/vit_tiny_patch16_224")
    resolved = config.with_backbone_preprocessing().data
    assert (resolved.mean, resolved.std, resolved.interpolation) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
    )
    splits = build_datasets(resolved)
    raw = SyntheticSecondOrder(8, image_size=32, normalize=False)
    image, _ = splits.val[0]
    index = splits.val.indices[0]
    torch.testing.assert_close(image, (raw.generate(index)[0] - 0.5) / 0.5)
    # Set by hand, they stay; torchvision backbones keep ImageNet's and bilinear.
    custom = TrainConfig(
        data=DataConfig(mean=(0.1, 0.2, 0.3)), out=tmp_path, backbone="timm/vit_tiny_patch16_224"
    )
    assert custom.with_backbone_preprocessing().data.mean == (0.1, 0.2, 0.3)
    plain = TrainConfig(data=DataConfig(), out=tmp_path, backbone="resnet18")
    assert plain.with_backbone_preprocessing().data.preprocessing == Preprocessing(448)
