"""FGVC-Aircraft, Stanford Cars and Flowers-102 through torchvision, read as image records.

torchvision parses the annotation files (its datasets take a ``loader``, here one that returns the
path, so listing a split decodes no image); the images are then read by
:class:`~bcnn_triton.data.images.ImageRecordDataset` like every other dataset here (same
transforms, same handling of unreadable files). Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bcnn_triton.data.images import ImageRecord, check_data_folder
from bcnn_triton.errors import UserInputError

__all__ = ["TORCHVISION_DATASETS", "load_torchvision_records"]


@dataclass(frozen=True)
class _Source:
    folder: str  # what torchvision expects under root
    train_splits: tuple[str, ...]  # the training pool (the validation split is held out of it)
    test_split: str
    can_download: bool
    factory: Callable[..., object]


def _path_of(path: str | Path) -> str:
    # Passed as torchvision's ``loader``: the dataset then yields (path, label) without decoding
    # the image, and ImageRecordDataset reads the file later (naming it if it is unreadable).
    return str(path)


def _aircraft(root: str, split: str, download: bool):
    from torchvision.datasets import FGVCAircraft

    return FGVCAircraft(
        root, split=split, annotation_level="variant", download=download, loader=_path_of
    )


def _cars(root: str, split: str, download: bool):
    from torchvision.datasets import StanfordCars

    return StanfordCars(root, split=split, download=download, loader=_path_of)


def _flowers(root: str, split: str, download: bool):
    from torchvision.datasets import Flowers102

    return Flowers102(root, split=split, download=download, loader=_path_of)


TORCHVISION_DATASETS = {
    "aircraft": _Source("fgvc-aircraft-2013b", ("trainval",), "test", True, _aircraft),
    "cars": _Source("stanford_cars", ("train",), "test", False, _cars),
    "flowers": _Source("flowers-102", ("train", "val"), "test", True, _flowers),
}


def _records_of(dataset: Sequence[tuple[str, int]]) -> list[ImageRecord]:
    return [ImageRecord(path, int(label)) for path, label in dataset]


def _class_names(dataset: object, records: list[ImageRecord]) -> list[str]:
    classes = getattr(dataset, "classes", None)
    if classes:
        return [str(class_name) for class_name in classes]
    # Older torchvision releases give Flowers-102 labels without names.
    return [f"class-{index}" for index in range(max(record.label for record in records) + 1)]


def load_torchvision_records(
    name: str, root: str | Path, *, train: bool, download: bool = False
) -> tuple[list[ImageRecord], list[str]]:
    """Training-pool (``train=True``) or test records of ``name`` under ``root``, and class names.

    Raises:
        UserInputError: unknown name, or files not found (with how to get them).
    """
    if name not in TORCHVISION_DATASETS:
        raise UserInputError(
            f"unknown dataset {name!r}; expected one of {', '.join(TORCHVISION_DATASETS)}"
        )
    source = TORCHVISION_DATASETS[name]
    if download and not source.can_download:
        raise UserInputError(
            f"torchvision cannot download {name} (its original URL is gone); place the files "
            f"under {Path(root) / source.folder} as torchvision's StanfordCars expects"
        )
    if not download or Path(root).exists():
        check_data_folder(root)
    records: list[ImageRecord] = []
    for split in source.train_splits if train else (source.test_split,):
        try:
            dataset = source.factory(str(root), split, download)
        except (RuntimeError, FileNotFoundError, OSError) as error:
            how = " or pass --download to fetch it" if source.can_download else ""
            raise UserInputError(
                f"{name} not found under {root} (expected {Path(root) / source.folder}; "
                f"torchvision said: {error}){how}"
            ) from None
        records.extend(_records_of(dataset))
    return records, _class_names(dataset, records)
