"""B-CNN image transforms: resize + random crop + flip for training, resize + centre crop for eval.

Both normalize with a mean and std per RGB channel and resize with an interpolation: ImageNet's
and bilinear by default (torchvision's backbones), a timm backbone's from its pretrained config.

The random choices take an explicit ``torch.Generator``: the dataset seeds one per sample from
(seed, epoch, index), so augmentation does not depend on the number of DataLoader workers or
ranks, and a resumed run sees exactly the crops an uninterrupted one would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from bcnn_triton.errors import UserInputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "EvalTransform",
    "Preprocessing",
    "TrainTransform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Resize interpolations (PIL's, as torchvision names them; timm's pretrained configs use these).
INTERPOLATIONS = tuple(mode.value for mode in TF.InterpolationMode)


def _to_normalized_tensor(
    image: Image.Image,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), mean, std)


def _resize(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    return TF.resize(image, size, interpolation=TF.InterpolationMode(interpolation))


class _ResizeNormalize:
    """What both transforms hold: the output size, the normalization and the interpolation."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.interpolation = interpolation

    def __repr__(self) -> str:
        # The interpolation only where it is not the default, as Preprocessing records it.
        interpolation = "" if self.interpolation == "bilinear" else f", {self.interpolation!r}"
        return (
            f"{type(self).__name__}(image_size={self.image_size}, mean={self.mean}, "
            f"std={self.std}{interpolation})"
        )


class TrainTransform(_ResizeNormalize):
    """Resize the shorter side to ``image_size``, random ``image_size`` crop, random flip.

    ``transform(image, generator)`` → (3, image_size, image_size) float32, normalized with
    ``mean`` and ``std`` (ImageNet's by default); resized with ``interpolation``.
    """

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = _resize(image, self.image_size, self.interpolation)
        width, height = image.size
        top = int(torch.randint(height - self.image_size + 1, (1,), generator=generator))
        left = int(torch.randint(width - self.image_size + 1, (1,), generator=generator))
        image = TF.crop(image, top, left, self.image_size, self.image_size)
        if torch.rand(1, generator=generator).item() < 0.5:
            image = TF.hflip(image)
        return _to_normalized_tensor(image, self.mean, self.std)


class EvalTransform(_ResizeNormalize):
    """Resize the shorter side to ``image_size`` and take the centre square; no randomness.

    ``transform(image, generator=None)`` → (3, image_size, image_size) float32, normalized with
    ``mean`` and ``std`` (per RGB channel, of pixel values in [0, 1]; ImageNet's by default);
    resized with ``interpolation`` (one of :data:`INTERPOLATIONS`).
    """

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        image = _resize(image, self.image_size, self.interpolation)
        image = TF.center_crop(image, self.image_size)
        return _to_normalized_tensor(image, self.mean, self.std)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input images are prepared at evaluation time, as stored in checkpoints.

    ``resize="shorter_side"``: scale the image (with ``interpolation``, antialiased) so that its
    shorter side is ``image_size``; ``crop="center"``: take the centre ``image_size`` square;
    then scale pixels to [0, 1] and normalize each RGB channel with ``mean`` and ``std``. This
    is exactly :class:`EvalTransform`, which :meth:`eval_transform` returns. ``interpolation``
    is written by :meth:`as_dict` only where it is not bilinear, so files written before it
    existed (always bilinear) read the same.

    Example:
        >>> Preprocessing.from_dict(Preprocessing(224).as_dict()) == Preprocessing(224)
        True
    """

    image_size: int
    resize: str = "shorter_side"
    crop: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserInputError(f"preprocessing image_size must be an integer >= 1; got {size!r}")
        if self.resize != "shorter_side" or self.crop != "center":
            raise UserInputError(
                "preprocessing supports resize 'shorter_side' with crop 'center'; got resize "
                f"{self.resize!r}, crop {self.crop!r} (made by a newer bcnn-triton?)"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            try:
                numbers = tuple(float(value) for value in values)
            except (TypeError, ValueError):
                numbers = ()
            if len(numbers) != 3 or not all(map(math.isfinite, numbers)):
                raise UserInputError(
                    f"preprocessing {name} must be 3 finite numbers (R, G, B); got {values!r}"
                )
            # Frozen dataclass: normalise lists from JSON or checkpoints to float tuples.
            object.__setattr__(self, name, numbers)
        if min(self.std) <= 0:
            raise UserInputError(f"preprocessing std must be > 0; got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserInputError(
                f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}; got "
                f"{self.interpolation!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (lists for mean and std), for checkpoints and exported files."""
        fields = {
            "image_size": self.image_size,
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.interpolation != "bilinear":
            fields["interpolation"] = self.interpolation
        return fields

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`as_dict`; UserInputError for missing or unknown fields."""
        known = {"image_size", "resize", "crop", "mean", "std", "interpolation"}
        if not isinstance(fields, Mapping) or "image_size" not in fields or set(fields) - known:
            raise UserInputError(f"not a preprocessing description: {fields!r}")
        return cls(**fields)

    def eval_transform(self) -> EvalTransform:
        """The transform: PIL image → (3, image_size, image_size) float32 tensor."""
        return EvalTransform(self.image_size, self.mean, self.std, self.interpolation)

    def train_transform(self) -> TrainTransform:
        """Training's augmentation with the same size, normalization and interpolation."""
        return TrainTransform(self.image_size, self.mean, self.std, self.interpolation)
