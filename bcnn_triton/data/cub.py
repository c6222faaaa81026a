"""CUB-200-2011 read from its native layout.

Expected files (the archive from Caltech, unpacked)::

    CUB_200_2011/
        images.txt               <image_id> <relative path under images/>
        train_test_split.txt     <image_id> <1 = train, 0 = test>
        image_class_labels.txt   <image_id> <class_id, 1-based>
        classes.txt              <class_id> <name, e.g. 001.Black_footed_Albatross>
        bounding_boxes.txt       <image_id> <x> <y> <width> <height>   (only for --bbox-crop)
        images/<class folder>/<file>.jpg

``root`` may be that folder or the folder that contains it.
"""

from __future__ import annotations

from pathlib import Path

from bcnn_triton.data.images import ImageRecord, check_data_folder
from bcnn_triton.errors import UserInputError

__all__ = ["CUB_FOLDER", "CUB_REQUIRED_FILES", "find_cub_root", "load_cub_records"]

CUB_FOLDER = "CUB_200_2011"
CUB_REQUIRED_FILES = (
    "images.txt",
    "train_test_split.txt",
    "image_class_labels.txt",
    "classes.txt",
)
_LAYOUT_HINT = (
    "expected the CUB-200-2011 layout: images.txt, train_test_split.txt, "
    "image_class_labels.txt, classes.txt and images/ (from CUB_200_2011.tgz)"
)


def find_cub_root(root: str | Path) -> Path | None:
    """The folder holding ``images.txt``: ``root`` itself or ``root/CUB_200_2011``; else None."""
    root = Path(root)
    for candidate in (root, root / CUB_FOLDER):
        if (candidate / "images.txt").is_file():
            return candidate
    return None


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``<id> <value...>`` lines → {id: [values]}; the last column keeps inner spaces."""
    if not path.is_file():
        raise UserInputError(f"CUB folder {path.parent} is missing {path.name}; {_LAYOUT_HINT}")
    table: dict[int, list[str]] = {}
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=columns - 1)
            try:
                if len(fields) != columns:
                    raise ValueError(f"expected {columns} fields")
                key = int(fields[0])
            except ValueError as error:
                raise UserInputError(
                    f"{path}, line {line_number}: cannot parse {line.strip()!r} ({error})"
                ) from None
            table[key] = [field.strip() for field in fields[1:]]
    if not table:
        raise UserInputError(f"{path} is empty; {_LAYOUT_HINT}")
    return table


def _lookup(table: dict[int, list[str]], image_id: int, path: Path) -> list[str]:
    try:
        return table[image_id]
    except KeyError:
        raise UserInputError(f"{path} has no entry for image id {image_id}") from None


def load_cub_records(
    root: str | Path, *, train: bool, bbox_crop: bool = False
) -> tuple[list[ImageRecord], list[str]]:
    """The train (``train=True``) or test records of CUB-200-2011, and the 200 class names.

    Labels are 0-based; class names drop the ``001.`` prefix. With ``bbox_crop`` each record
    carries its bounding box, which the dataset crops before the transforms.

    Raises:
        UserInputError: missing folder or file, unparsable line, or inconsistent ids.
    """
    root = Path(root)
    check_data_folder(root)
    base = find_cub_root(root)
    if base is None:
        raise UserInputError(f"{root} is not a CUB-200-2011 folder (no images.txt); {_LAYOUT_HINT}")
    tables = {name: _read_table(base / name, 2) for name in CUB_REQUIRED_FILES}
    boxes = _read_table(base / "bounding_boxes.txt", 5) if bbox_crop else None
    class_ids = sorted(tables["classes.txt"])
    class_index = {class_id: position for position, class_id in enumerate(class_ids)}
    classes = [tables["classes.txt"][class_id][0].split(".", 1)[-1] for class_id in class_ids]
    images_dir = base / "images"
    if not images_dir.is_dir():
        raise UserInputError(f"CUB folder {base} has no images/ folder; {_LAYOUT_HINT}")

    records = []
    for image_id, (relative_path,) in sorted(tables["images.txt"].items()):
        (is_train,) = _lookup(
            tables["train_test_split.txt"], image_id, base / "train_test_split.txt"
        )
        if (is_train == "1") != train:
            continue
        (class_id,) = _lookup(
            tables["image_class_labels.txt"], image_id, base / "image_class_labels.txt"
        )
        if int(class_id) not in class_index:
            raise UserInputError(
                f"{base / 'image_class_labels.txt'}: image {image_id} has class {class_id}, "
                f"which classes.txt does not list"
            )
        box = None
        if boxes is not None:
            values = _lookup(boxes, image_id, base / "bounding_boxes.txt")
            box = tuple(float(value) for value in values)
        records.append(
            ImageRecord(str(images_dir / relative_path), class_index[int(class_id)], box)
        )
    if not records:
        split = "train" if train else "test"
        raise UserInputError(f"{base / 'train_test_split.txt'} marks no image as {split}")
    return records, classes
