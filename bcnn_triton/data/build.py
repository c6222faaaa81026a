"""One entry point from a data description to train / validation / test datasets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from bcnn_triton.config import DATASETS, MIN_IMAGE_SIZE, DataConfig
from bcnn_triton.data.cub import find_cub_root, load_cub_records
from bcnn_triton.data.folder import load_folder_records
from bcnn_triton.data.images import ImageRecord, ImageRecordDataset, check_data_folder
from bcnn_triton.data.seeding import generator_for
from bcnn_triton.data.synthetic import SyntheticSecondOrder
from bcnn_triton.data.torchvision_sets import TORCHVISION_DATASETS, load_torchvision_records
from bcnn_triton.errors import UserInputError

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataSplits",
    "build_datasets",
    "detect_dataset",
    "stratified_holdout",
]

# Stream ids that keep the validation and test hold-outs independent of each other.
_VAL_STREAM, _TEST_STREAM = 1, 2


@dataclass
class DataSplits:
    """Datasets yielding ``(image (3, S, S), label)``; the training one augments per epoch."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def detect_dataset(root: str | Path) -> str:
    """Guess ``--dataset`` from the files under ``root``: a known layout, else "folder"."""
    root = Path(root)
    if find_cub_root(root) is not None:
        return "cub"
    for name, source in TORCHVISION_DATASETS.items():
        if (root / source.folder).is_dir():
            return name
    return "folder"


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int, stream: int
) -> tuple[list[int], list[int]]:
    """Split positions 0..n-1 into (kept, held_out), holding out ``fraction`` of each class.

    Seeded by (seed, stream): the same split in every process and on every resume. Every class
    with at least two samples gives at least one to the hold-out and keeps at least one.
    """
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    generator = generator_for(seed, stream)
    kept, held_out = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = (
            0
            if len(members) < 2
            else min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        )
        held_out.extend(members[i] for i in order[:count])
        kept.extend(members[i] for i in order[count:])
    return sorted(kept), sorted(held_out)


def _check_fraction(name: str, value: float) -> None:
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise UserInputError(f"{name} must be between 0 and 1 (exclusive); got {value}")


def _load_records(
    config: DataConfig,
) -> tuple[list[ImageRecord], list[ImageRecord] | None, list[str]]:
    if config.root is None:
        raise UserInputError(f"--dataset {config.dataset} needs --data PATH (its folder)")
    if not config.download or Path(config.root).exists():
        check_data_folder(config.root)
    if config.bbox_crop and config.dataset != "cub":
        raise UserInputError("--bbox-crop needs --dataset cub (bounding_boxes.txt)")
    if config.dataset == "cub":
        if config.download:
            raise UserInputError(
                "CUB-200-2011 is not downloaded automatically: fetch CUB_200_2011.tgz from "
                "https://www.vision.caltech.edu/datasets/cub_200_2011/, unpack it and pass "
                "--data to the unpacked folder"
            )
        train, classes = load_cub_records(config.root, train=True, bbox_crop=config.bbox_crop)
        test, _ = load_cub_records(config.root, train=False, bbox_crop=config.bbox_crop)
        return train, test, classes
    if config.dataset == "folder":
        return load_folder_records(config.root)
    train, classes = load_torchvision_records(
        config.dataset, config.root, train=True, download=config.download
    )
    test, _ = load_torchvision_records(
        config.dataset, config.root, train=False, download=config.download
    )
    return train, test, classes


def _build_synthetic(config: DataConfig) -> DataSplits:
    preprocessing = config.preprocessing
    options = dict(
        num_classes=config.synthetic_classes,
        image_size=config.image_size,
        seed=config.seed,
        mean=preprocessing.mean,
        std=preprocessing.std,
        **config.synthetic_options,
    )
    pool = SyntheticSecondOrder(config.synthetic_train_size, split="train", **options)
    labels = [pool.label_of(index) for index in range(len(pool))]
    train_positions, val_positions = stratified_holdout(
        labels, config.val_fraction, config.seed, _VAL_STREAM
    )
    if not val_positions:
        # Only classes with at least two training images give one to validation.
        raise UserInputError(
            f"the validation split is empty: --train-size {config.synthetic_train_size} gives "
            f"fewer than 2 training images to each of the {config.synthetic_classes} classes; "
            f"pass --train-size {2 * config.synthetic_classes} or more, or fewer --num-classes"
        )
    test = SyntheticSecondOrder(config.synthetic_test_size, split="test", **options)
    return DataSplits(
        Subset(pool, train_positions), Subset(pool, val_positions), test, list(pool.classes)
    )


def build_datasets(config: DataConfig) -> DataSplits:
    """Train (augmented), validation and test datasets for ``config``.

    Raises:
        UserInputError: unknown dataset, missing or malformed files, bad fractions.
    """
    if config.dataset not in DATASETS:
        raise UserInputError(
            f"unknown dataset {config.dataset!r}; expected one of {', '.join(DATASETS)}"
        )
    _check_fraction("--val-fraction", config.val_fraction)
    if config.image_size < MIN_IMAGE_SIZE:
        raise UserInputError(
            f"--image-size must be at least {MIN_IMAGE_SIZE}; got {config.image_size}"
        )
    if config.dataset == "synthetic":
        return _build_synthetic(config)

    pool, test_records, classes = _load_records(config)
    if test_records is None:
        _check_fraction("--test-fraction", config.test_fraction)
        kept, held_out = stratified_holdout(
            [record.label for record in pool], config.test_fraction, config.seed, _TEST_STREAM
        )
        pool, test_records = [pool[i] for i in kept], [pool[i] for i in held_out]
    train_positions, val_positions = stratified_holdout(
        [record.label for record in pool], config.val_fraction, config.seed, _VAL_STREAM
    )
    if not val_positions or not test_records:
        raise UserInputError(
            f"{config.root} has too few images for a validation and a test split "
            f"({len(pool)} training images over {len(classes)} classes)"
        )
    train_transform = config.preprocessing.train_transform()
    eval_transform = config.preprocessing.eval_transform()
    return DataSplits(
        train=ImageRecordDataset(
            [pool[i] for i in train_positions], classes, train_transform, seed=config.seed
        ),
        val=ImageRecordDataset([pool[i] for i in val_positions], classes, eval_transform),
        test=ImageRecordDataset(test_records, classes, eval_transform),
        classes=classes,
    )
