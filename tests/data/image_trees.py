"""Tiny image trees written as PNG files, for the data and command-line tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Distinct solid colours, so a test can tell which file (and which crop) it got back.
PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    """A solid-colour PNG of ``size`` (width, height), with a white 10×10 square at (5, 5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (5, 5, 15, 15))
    image.save(path)
    return path


def write_corrupt(path: Path) -> Path:
    """A file that claims to be a PNG but holds only its first bytes (a truncated download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    valid = write_png(path, (0, 0, 0)).read_bytes()
    path.write_bytes(valid[:40])
    return path


def make_cub(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """A CUB_200_2011-style tree: every other image of a class is a test image.

    Image ``i`` (1-based) of class ``k`` gets colour ``PALETTE[k]`` and the bounding box
    (5, 5, 10, 10) — exactly its white square.
    """
    base = root / "CUB_200_2011"
    images, split, labels, boxes, names = [], [], [], [], []
    image_id = 0
    for k in range(classes):
        folder = f"{k + 1:03d}.Bird_{k}"
        names.append(f"{k + 1} {folder}")
        for i in range(per_class):
            image_id += 1
            relative = f"{folder}/bird_{k}_{i}.png"
            write_png(base / "images" / relative, PALETTE[k])
            images.append(f"{image_id} {relative}")
            split.append(f"{image_id} {1 if i % 2 == 0 else 0}")
            labels.append(f"{image_id} {k + 1}")
            boxes.append(f"{image_id} 5.0 5.0 10.0 10.0")
    for name, lines in (
        ("images.txt", images),
        ("train_test_split.txt", split),
        ("image_class_labels.txt", labels),
        ("bounding_boxes.txt", boxes),
        ("classes.txt", names),
    ):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def make_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """``root/<class>/<image>.png`` with class names c0, c1, ..."""
    for k in range(classes):
        for i in range(per_class):
            write_png(root / f"c{k}" / f"img_{i}.png", PALETTE[k])
    return root
