"""Image folders: ``root/<class>/<image>`` trees, optionally split into ``train/`` and ``test/``.

Accepted layouts::

    root/train/<class>/...   and   root/test/<class>/...  (or root/val/ as the test split)
    root/<class>/...                                       (test images held out by the caller)

Class indices follow the sorted class folder names of the training tree, as in torchvision's
ImageFolder; the test tree is read with the same mapping.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from bcnn_triton.data.images import ImageRecord, check_data_folder
from bcnn_triton.errors import UserInputError

__all__ = ["load_folder_records"]


def _class_folders(tree: Path) -> list[str]:
    # Not torchvision's find_classes: that one takes hidden folders (.ipynb_checkpoints, .git)
    # as classes, and raises on an empty tree where we want our own message.
    return sorted(
        entry.name
        for entry in os.scandir(tree)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _read_tree(tree: Path, classes: list[str]) -> list[ImageRecord]:
    # A class folder missing from the tree (a test tree without some class) is skipped.
    samples = make_dataset(
        tree,
        {name: label for label, name in enumerate(classes)},
        extensions=IMG_EXTENSIONS,
        allow_empty=True,
    )
    return [ImageRecord(path, label) for path, label in samples]


def load_folder_records(
    root: str | Path,
) -> tuple[list[ImageRecord], list[ImageRecord] | None, list[str]]:
    """Training records, test records (None for a single tree) and class names of ``root``.

    Raises:
        UserInputError: missing folder, no class folders, a class folder without images, or a
            test class that the training tree does not have.
    """
    root = Path(root)
    check_data_folder(root)
    train_tree = root / "train" if (root / "train").is_dir() else root
    test_tree = next(
        (root / name for name in ("test", "val") if train_tree != root and (root / name).is_dir()),
        None,
    )
    classes = _class_folders(train_tree)
    if not classes:
        raise UserInputError(
            f"data folder {train_tree} has no class folders; expected {root}/<class>/<image> "
            f"or {root}/train/<class>/<image> (+ {root}/test/<class>/<image>)"
        )
    train_records = _read_tree(train_tree, classes)
    counts = [0] * len(classes)
    for record in train_records:
        counts[record.label] += 1
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise UserInputError(
            f"{len(empty)} class folder(s) in {train_tree} hold no images ({shown}); image "
            f"extensions: {' '.join(IMG_EXTENSIONS)}"
        )
    if test_tree is None:
        return train_records, None, classes
    unknown = sorted(set(_class_folders(test_tree)) - set(classes))
    if unknown:
        raise UserInputError(
            f"{test_tree} has class folders that {train_tree} lacks: {', '.join(unknown[:5])}"
        )
    test_records = _read_tree(test_tree, classes)
    if not test_records:
        raise UserInputError(f"test folder {test_tree} holds no images")
    return train_records, test_records, classes
