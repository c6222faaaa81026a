"""Image records: decoding, unreadable files (error naming them, or skip), seeded augmentation."""

from __future__ import annotations

import logging

import pytest
import torch
from data.image_trees import write_corrupt, write_png
from torch.utils.data import DataLoader

from bcnn_triton.data import (
    EvalTransform,
    ImageRecord,
    ImageRecordDataset,
    TrainTransform,
    UnreadableImage,
    collate_images,
    split_unreadable,
)
from bcnn_triton.errors import UserInputError


@pytest.fixture
def mixed_dataset(tmp_path):
    """Four records; the third file is a truncated PNG."""
    paths = [write_png(tmp_path / f"ok_{i}.png", (10 * i, 0, 0)) for i in range(3)]
    paths.insert(2, write_corrupt(tmp_path / "broken.png"))
    records = [ImageRecord(str(path), label) for label, path in enumerate(paths)]
    return ImageRecordDataset(records, ["a", "b", "c", "d"], EvalTransform(8))


def test_unreadable_file_becomes_a_marker(mixed_dataset):
    sample = mixed_dataset[2]
    assert isinstance(sample, UnreadableImage)
    assert sample.path.endswith("broken.png")


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_raises_one_clear_error_naming_the_file(mixed_dataset, workers):
    loader = DataLoader(mixed_dataset, batch_size=4, num_workers=workers, collate_fn=collate_images)
    batch = next(iter(loader))
    assert batch.images.shape == (3, 3, 8, 8)
    with pytest.raises(UserInputError, match=r"cannot read image .*broken\.png.*--skip-bad-images"):
        split_unreadable(batch, skip_bad_images=False, already_warned=set())


def test_skip_bad_images_warns_once_per_file(mixed_dataset, caplog):
    batch = collate_images([mixed_dataset[i] for i in range(4)])
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="bcnn_triton"):
        for _ in range(2):
            kept = split_unreadable(batch, skip_bad_images=True, already_warned=warned)
    assert kept.labels.tolist() == [0, 1, 3]
    assert kept.unreadable == []
    warnings = [r.getMessage() for r in caplog.records if "broken.png" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("skipping unreadable image")


def test_all_unreadable_batch_is_empty(mixed_dataset):
    batch = collate_images([mixed_dataset[2]])
    assert batch.labels.numel() == 0 and len(batch.unreadable) == 1


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    path = tmp_path / "wide.png"
    write_png(path, (90, 20, 160), size=(64, 40))
    records = [ImageRecord(str(path), 0)] * 3
    dataset = ImageRecordDataset(records, ["a"], TrainTransform(24), seed=5)

    def crops(epoch: int) -> list[torch.Tensor]:
        dataset.set_epoch(epoch)
        return [dataset[i][0] for i in range(3)]

    first, again, other_epoch = crops(0), crops(0), crops(1)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The same file at different indices or epochs gets different crops / flips.
    assert not torch.equal(first[0], first[1]) or not torch.equal(first[1], first[2])
    assert any(not torch.equal(a, b) for a, b in zip(first, other_epoch, strict=True))
    assert first[0].shape == (3, 24, 24)


def test_eval_transform_is_centre_crop():
    from PIL import Image

    image = Image.new("RGB", (30, 20), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 20))  # white centre stripe, 10 px wide
    tensor = EvalTransform(20)(image)
    assert tensor.shape == (3, 20, 20)
    # Resized to 30×20 (shorter side 20 already): the centre crop keeps the stripe centred.
    column_means = tensor[0].mean(dim=0)
    assert column_means[10] > column_means[0] and column_means[10] > column_means[19]
