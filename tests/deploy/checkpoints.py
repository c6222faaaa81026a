"""Checkpoints of tiny models written as training writes them, and an independent preprocessing.

``reference_input`` prepares an image file with PIL and NumPy from the written policy (shorter
side resized bilinearly, centre crop, mean/std), not with the package's transforms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bcnn_triton.models import create_model
from bcnn_triton.train.checkpoint import save_best

CLASSES = ["albatross", "Black-footed Albatross", "crow, american", "wren", "gull"]
IMAGE_SIZE = 32
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def tiny_model(head: str = "bilinear", **options) -> torch.nn.Module:
    """A 5-class tiny-backbone model whose classifier gives distinct, non-trivial logits."""
    model = create_model(head, backbone="tiny", num_classes=len(CLASSES), **options)
    with torch.no_grad():
        model.fc.bias.copy_(torch.linspace(-0.5, 0.5, len(CLASSES)))
    return model.eval()


def write_checkpoint(directory: Path, model: torch.nn.Module | None = None, **fields) -> Path:
    """``directory/best.pt`` as training writes it; ``fields`` override or (None) drop entries."""
    model = tiny_model() if model is None else model
    state = {
        "kind": "best",
        "epoch": 3,
        "val_acc": 0.5,
        "head": model.config["head"],
        "model_config": model.config,
        "model": model.state_dict(),
        "classes": list(CLASSES),
        "preprocessing": {
            "image_size": IMAGE_SIZE,
            "resize": "shorter_side",
            "crop": "center",
            "mean": list(MEAN),
            "std": list(STD),
        },
        "data_config": {"dataset": "folder", "root": "/data/birds", "image_size": 48},
    }
    for key, value in fields.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    return save_best(state, directory)


def reference_input(path: Path, size: int = IMAGE_SIZE, mean=MEAN, std=STD) -> torch.Tensor:
    """(3, size, size) float32: shorter side to ``size`` (PIL bilinear), centre crop, mean/std."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.resize((new_width, new_height), Image.BILINEAR)
    left = round((new_width - size) / 2.0)
    top = round((new_height - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    normalized = (pixels - np.array(mean)) / np.array(std)
    return torch.from_numpy(normalized.transpose(2, 0, 1).astype(np.float32))


def write_photo(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    """A noisy image of ``size`` (width, height) in PIL ``mode``, saved by extension."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
