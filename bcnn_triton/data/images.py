"""Datasets of image files: records (path, label, optional box) read with PIL on demand.

A file that cannot be read does not raise inside a DataLoader worker (where the error would come
back wrapped in a worker traceback): the dataset returns an :class:`UnreadableImage` marker, the
collate function sets it aside, and the training loop either raises one clear error naming the
file or, with ``skip_bad_images``, drops it with a warning (see :func:`split_unreadable`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from bcnn_triton.data.seeding import generator_for
from bcnn_triton.errors import UserInputError

__all__ = [
    "ImageBatch",
    "ImageRecord",
    "ImageRecordDataset",
    "UnreadableImage",
    "check_data_folder",
    "collate_images",
    "load_rgb",
    "split_unreadable",
]

logger = logging.getLogger(__name__)

# Decoding errors PIL raises for missing, truncated or corrupt files.
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageRecord:
    """One sample on disk: image path, class index, optional (x, y, width, height) box in pixels."""

    path: str
    label: int
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class UnreadableImage:
    """Returned instead of a sample whose file cannot be decoded."""

    path: str
    reason: str


class ImageBatch(NamedTuple):
    """One loader batch: readable images (B, 3, S, S), their labels (B,), and the unreadable."""

    images: torch.Tensor
    labels: torch.Tensor
    unreadable: list[UnreadableImage]


def check_data_folder(root: str | Path) -> None:
    """UserInputError unless ``root`` is an existing folder (a file is named as a file)."""
    root = Path(root)
    if root.is_dir():
        return
    if root.exists():
        raise UserInputError(
            f"--data {root} is a file, not a folder; pass the folder that holds the dataset"
        )
    raise UserInputError(f"data folder {root} does not exist")


def load_rgb(path: str | Path, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Decode an image file to RGB (fully, so truncation is caught here), cropped to ``box``.

    Raises OSError (or ValueError) from PIL when the file is missing, truncated or corrupt.
    """
    with Image.open(path) as image:
        image = image.convert("RGB")
    if box is not None:
        x, y, width, height = box
        left, top = max(0.0, x), max(0.0, y)
        right, bottom = min(float(image.width), x + width), min(float(image.height), y + height)
        if right - left >= 1.0 and bottom - top >= 1.0:
            image = image.crop((round(left), round(top), round(right), round(bottom)))
    return image


class ImageRecordDataset(Dataset):
    """Image files with labels, transformed with a per-sample generator.

    Args:
        records: the samples.
        classes: class names, index = label.
        transform: ``transform(pil_image, generator) -> (3, S, S) tensor``.
        seed: with :meth:`set_epoch`, fixes each sample's random augmentation as a function of
            (seed, epoch, index) only.

    ``dataset[i]`` is ``(image (3, S, S), label)`` or an :class:`UnreadableImage`.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        transform: Callable[[Image.Image, torch.Generator], torch.Tensor],
        *,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw augmentations for ``epoch`` (call before building the epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | UnreadableImage:
        record = self.records[index]
        try:
            image = load_rgb(record.path, record.box)
        except _READ_ERRORS as error:
            return UnreadableImage(record.path, f"{type(error).__name__}: {error}")
        generator = generator_for(self.seed, self.epoch, index)
        return self.transform(image, generator), record.label


def collate_images(samples: list) -> ImageBatch:
    """DataLoader ``collate_fn``: stacks readable samples and sets the unreadable ones aside."""
    unreadable = [sample for sample in samples if isinstance(sample, UnreadableImage)]
    readable = [sample for sample in samples if not isinstance(sample, UnreadableImage)]
    if readable:
        images, labels = default_collate(readable)
    else:
        images, labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    return ImageBatch(images, labels, unreadable)


def split_unreadable(
    batch: ImageBatch, *, skip_bad_images: bool, already_warned: set[str]
) -> ImageBatch:
    """Raise for an unreadable file in ``batch``, or warn once per file and drop it.

    Raises:
        UserInputError: naming the first unreadable file, unless ``skip_bad_images``.
    """
    if not batch.unreadable:
        return batch
    if not skip_bad_images:
        bad = batch.unreadable[0]
        raise UserInputError(
            f"cannot read image {bad.path} ({bad.reason}); fix or remove the file, or pass "
            "--skip-bad-images to skip unreadable images with a warning"
        )
    for bad in batch.unreadable:
        if bad.path not in already_warned:
            already_warned.add(bad.path)
            logger.warning("skipping unreadable image %s (%s)", bad.path, bad.reason)
    return ImageBatch(batch.images, batch.labels, [])
