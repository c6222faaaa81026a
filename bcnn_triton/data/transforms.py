"""B-CNN image transforms: resize + random crop + flip for training, resize + centre crop for eval.

The random choices take an explicit ``torch.Generator``: the dataset seeds one per sample from
(seed, epoch, index), so augmentation does not depend on the number of DataLoader workers or
ranks, and a resumed run sees exactly the crops an uninterrupted one would have seen.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "TrainTransform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


class TrainTransform:
    """Resize the shorter side to ``image_size``, random ``image_size`` crop, random flip.

    ``transform(image, generator)`` → (3, image_size, image_size) float32, ImageNet-normalized.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = TF.resize(image, self.image_size)
        width, height = image.size
        top = int(torch.randint(height - self.image_size + 1, (1,), generator=generator))
        left = int(torch.randint(width - self.image_size + 1, (1,), generator=generator))
        image = TF.crop(image, top, left, self.image_size, self.image_size)
        if torch.rand(1, generator=generator).item() < 0.5:
            image = TF.hflip(image)
        return _to_normalized_tensor(image)

    def __repr__(self) -> str:
        return f"TrainTransform(image_size={self.image_size})"


class EvalTransform:
    """Resize the shorter side to ``image_size`` and take the centre square; no randomness.

    ``transform(image, generator=None)`` → (3, image_size, image_size) float32, normalized.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        image = TF.center_crop(TF.resize(image, self.image_size), self.image_size)
        return _to_normalized_tensor(image)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size})"
