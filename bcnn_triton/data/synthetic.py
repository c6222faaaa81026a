"""A synthetic dataset whose classes differ only in second-order statistics.

Every image is a grid of cells (random grid offset). Each cell carries two things at once:

- a *tint*: one of K colours placed evenly on a circle in the plane of RGB orthogonal to grey
  (1, 1, 1), so tints change hue but never the grey level;
- a *grating*: an achromatic sinusoid at one of K orientations (0, π/K, ..., (K-1)π/K),
  random phase.

A cell's colour is uniform over the K tints. Class k pairs colour c with orientation (c + k) mod K
(with probability ``coupling``; otherwise the orientation is drawn uniformly). Because each pairing
is a permutation, every class uses every colour and every orientation equally often: the mean and
variance of each colour channel, and of the energy of any oriented filter, are the same for all
classes. Only *which colour sits with which orientation at the same place* tells classes apart —
the co-occurrence statistic that a Gram matrix of local features captures (the B-CNN descriptor)
and that a global average of local features captures only through whatever conjunctions the
backbone happens to compute before pooling.

Images are generated on the fly from (seed, split, index): no files, and the same sample in every
process, worker and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.utils import save_image

from bcnn_triton.data.seeding import generator_for
from bcnn_triton.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bcnn_triton.errors import UserInputError

__all__ = ["SYNTHETIC_SPLITS", "SyntheticSecondOrder", "tint_colours"]

#: Streams of independent samples; the validation split is held out from "train" by index.
SYNTHETIC_SPLITS = {"train": 0, "test": 1}

# Two orthonormal directions orthogonal to grey (1, 1, 1)/√3: a tint along them keeps the mean of
# the three channels (the grey level) unchanged.
_HUE_AXES = torch.tensor(
    [
        [1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0), 0.0],
        [1.0 / math.sqrt(6.0), 1.0 / math.sqrt(6.0), -2.0 / math.sqrt(6.0)],
    ]
)


def tint_colours(num_colours: int, radius: float) -> torch.Tensor:
    """(K, 3) RGB offsets from grey: K hues evenly spaced on a circle of ``radius``.

    Evenly spaced angles make the offsets sum to zero over the K colours (for K >= 2), so a
    uniform draw of colours leaves each channel's mean at the grey level.
    """
    angles = torch.arange(num_colours, dtype=torch.float64) * (2.0 * math.pi / num_colours)
    plane = torch.stack((angles.cos(), angles.sin()), dim=1)
    return (radius * plane @ _HUE_AXES.double()).float()


class SyntheticSecondOrder(Dataset):
    """Images whose classes differ only in colour–orientation co-occurrence (see module docs).

    Args:
        size: number of samples.
        num_classes: K >= 2; also the number of tints and of grating orientations.
        image_size: side S of the square images.
        seed: base seed; (seed, split, index) fixes a sample.
        split: "train" or "test" — independent streams of samples.
        cells_per_side: cells along each side (a cell is S / cells_per_side pixels wide).
        coupling: probability that a cell's orientation follows the class's colour pairing.
        tint_radius, grating_amplitude, noise_std: pixel-space amplitudes (images are in [0, 1]
            around grey 0.5 before normalization).
        normalize: return tensors normalized with ``mean`` and ``std`` (ImageNet's by default:
            what the models expect); ``generate`` always returns the [0, 1] image.

    ``dataset[i]`` is ``(image (3, S, S) float32, label int)`` with label ``i % num_classes``.

    Example:
        >>> data = SyntheticSecondOrder(8, num_classes=4, image_size=32)
        >>> image, label = data[5]
        >>> tuple(image.shape), label
        ((3, 32, 32), 1)
    """

    def __init__(
        self,
        size: int,
        *,
        num_classes: int = 4,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        cells_per_side: int = 2,
        coupling: float = 1.0,
        tint_radius: float = 0.1,
        grating_amplitude: float = 0.25,
        noise_std: float = 0.04,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if num_classes < 2:
            raise UserInputError(
                f"the synthetic dataset needs at least 2 classes; got num_classes={num_classes}"
            )
        if size < 1:
            raise UserInputError(f"the synthetic dataset needs at least 1 sample; got {size}")
        if image_size < 2 * cells_per_side:
            raise UserInputError(
                f"image size {image_size} is too small for {cells_per_side} cells per side"
            )
        if split not in SYNTHETIC_SPLITS:
            raise UserInputError(
                f"unknown synthetic split {split!r}; expected one of {sorted(SYNTHETIC_SPLITS)}"
            )
        if not 0.0 <= coupling <= 1.0:
            raise UserInputError(f"coupling must be in [0, 1]; got {coupling}")
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.cells_per_side = cells_per_side
        self.coupling = coupling
        self.grating_amplitude = grating_amplitude
        self.noise_std = noise_std
        self.normalize = normalize
        self.classes = [f"pairing+{k}" for k in range(num_classes)]
        self.tints = tint_colours(num_classes, tint_radius)
        self.orientations = torch.arange(num_classes) * (math.pi / num_classes)
        # About three grating periods per cell: fine enough to have a clear orientation, coarse
        # enough (>= 4 px at 64 px images) to survive aliasing at every orientation.
        self.wavelength = image_size / (3.0 * cells_per_side)
        coords = torch.arange(image_size, dtype=torch.float32) + 0.5
        self._ys, self._xs = torch.meshgrid(coords, coords, indexing="ij")
        self._mean = torch.tensor(tuple(mean), dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(tuple(std), dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return self.size

    def label_of(self, index: int) -> int:
        """The class of sample ``index`` (balanced: ``index % num_classes``)."""
        return index % self.num_classes

    def generate(self, index: int) -> tuple[torch.Tensor, int]:
        """Sample ``index`` as an un-normalized image (3, S, S) in [0, 1] and its label."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        label = self.label_of(index)
        gen = generator_for(self.seed, SYNTHETIC_SPLITS[self.split], index)
        k = self.num_classes
        cell = self.image_size / self.cells_per_side
        # One extra row and column of cells so that a random grid offset still covers the image.
        grid = self.cells_per_side + 1
        offset = torch.rand(2, generator=gen) * cell
        colours = torch.randint(k, (grid, grid), generator=gen)
        paired = (colours + label) % k
        uniform = torch.randint(k, (grid, grid), generator=gen)
        follows_class = torch.rand(grid, grid, generator=gen) < self.coupling
        orientation_ids = torch.where(follows_class, paired, uniform)
        phases = torch.rand(grid, grid, generator=gen) * (2.0 * math.pi)
        noise = torch.randn(3, self.image_size, self.image_size, generator=gen) * self.noise_std

        rows = ((self._ys + offset[0]) / cell).long()
        cols = ((self._xs + offset[1]) / cell).long()
        theta = self.orientations[orientation_ids[rows, cols]]
        along = self._xs * theta.cos() + self._ys * theta.sin()
        grating = self.grating_amplitude * torch.cos(
            along * (2.0 * math.pi / self.wavelength) + phases[rows, cols]
        )
        tint = self.tints[colours[rows, cols]].permute(2, 0, 1)
        image = (0.5 + tint + grating + noise).clamp_(0.0, 1.0)
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.generate(index)
        if self.normalize:
            image = (image - self._mean) / self._std
        return image, label

    def save_images(self, folder: str | Path) -> list[Path]:
        """Write every sample as a PNG file ``<index>-<class name>.png`` in ``folder``.

        Gives image files to try a trained model on (``bcnn-triton predict``); each name says
        the true class. Pixels are rounded to 8 bits, as in any PNG.

        Example:
            >>> paths = SyntheticSecondOrder(2, image_size=16).save_images("demo-images")
            >>> [path.name for path in paths]
            ['0000-pairing+0.png', '0001-pairing+1.png']
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        digits = max(4, len(str(self.size - 1)))
        paths = []
        for index in range(self.size):
            image, label = self.generate(index)
            path = folder / f"{index:0{digits}d}-{self.classes[label]}.png"
            save_image(image, path)
            paths.append(path)
        return paths
