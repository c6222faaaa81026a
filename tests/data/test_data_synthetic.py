"""The synthetic second-order dataset: determinism, and first-order statistics that match.

Each statistic is averaged over the pixels of an image, then over NUM_IMAGES images per class;
classes are compared through the standard error of those per-image values. With about 50
comparisons, a bound of 5 standard errors of the difference would be crossed by chance with
probability below 1e-4 if the statistics really were equal, while a real difference shows up
as many standard errors — the co-occurrence control at the end shows how large.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bcnn_triton.data import SyntheticSecondOrder
from bcnn_triton.data.synthetic import tint_colours
from bcnn_triton.errors import UserInputError

NUM_CLASSES = 4
NUM_IMAGES = 100  # per class
SIGMAS = 5.0
# Filter orientations: the dataset's four (0°, 45°, 90°, 135°) — a class pairs each colour with
# one of them — so every orientation the data uses is measured head-on.
ORIENTATIONS = 4


@pytest.fixture(scope="module")
def dataset() -> SyntheticSecondOrder:
    return SyntheticSecondOrder(NUM_CLASSES * NUM_IMAGES, num_classes=NUM_CLASSES, seed=3)


@pytest.fixture(scope="module")
def images_by_class(dataset) -> dict[int, torch.Tensor]:
    images: dict[int, list[torch.Tensor]] = {k: [] for k in range(NUM_CLASSES)}
    for index in range(len(dataset)):
        image, label = dataset.generate(index)
        images[label].append(image)
    return {k: torch.stack(v).double() for k, v in images.items()}


def oriented_energy(images: torch.Tensor, wavelength: float, orientations: int) -> torch.Tensor:
    """Energy of quadrature Gabor pairs: (B, C, H, W) → (B, C, orientations, H', W')."""
    sigma = 0.4 * wavelength
    radius = math.ceil(2 * sigma)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    envelope = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    kernels = []
    for k in range(orientations):
        theta = math.pi * k / orientations
        phase = (x * math.cos(theta) + y * math.sin(theta)) * (2 * math.pi / wavelength)
        even = envelope * torch.cos(phase)
        kernels += [even - even.mean(), envelope * torch.sin(phase)]
    weight = torch.stack(kernels)[:, None]
    b, c, h, w = images.shape
    responses = F.conv2d(images.float().reshape(b * c, 1, h, w), weight)
    responses = responses.view(b, c, orientations, 2, *responses.shape[-2:])
    return (responses**2).sum(dim=3).double()


def first_order_statistics(images: torch.Tensor, wavelength: float) -> dict[str, torch.Tensor]:
    """Per image (B, ·): mean and second moment of each channel and of each oriented energy."""
    grey = images.mean(dim=1, keepdim=True)
    energy = oriented_energy(torch.cat([images, grey], dim=1), wavelength, ORIENTATIONS)
    return {
        "channel mean": images.mean(dim=(2, 3)),
        "channel second moment": (images**2).mean(dim=(2, 3)),
        "energy mean": energy.mean(dim=(3, 4)).flatten(1),
        "energy second moment": (energy**2).mean(dim=(3, 4)).flatten(1),
    }


def co_occurrence(images: torch.Tensor, wavelength: float) -> torch.Tensor:
    """Per image (B, 2·O): mean of (hue coordinate × oriented energy of grey) at each pixel."""
    grey = images.mean(dim=1, keepdim=True)
    energy = oriented_energy(grey, wavelength, ORIENTATIONS)[:, 0]
    crop = (images.shape[-1] - energy.shape[-1]) // 2
    centre = images[..., crop : crop + energy.shape[-2], crop : crop + energy.shape[-1]]
    axes = tint_colours(4, 1.0)[:2].double()  # two orthogonal hue directions
    hue = torch.einsum("ac,bchw->bahw", axes, centre - 0.5)
    return torch.einsum("bahw,bohw->bao", hue, energy).flatten(1) / energy[0, 0].numel()


def largest_separation(per_class: dict[int, torch.Tensor]) -> float:
    """Max over statistics and class pairs of |mean difference| / its standard error."""
    worst = 0.0
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            x, y = per_class[a], per_class[b]
            se = (x.var(dim=0) / len(x) + y.var(dim=0) / len(y)).sqrt().clamp_min(1e-12)
            worst = max(worst, ((x.mean(dim=0) - y.mean(dim=0)).abs() / se).max().item())
    return worst


def test_same_index_same_image_and_streams_are_independent():
    a = SyntheticSecondOrder(10, seed=1)
    again = SyntheticSecondOrder(10, seed=1)
    other_seed = SyntheticSecondOrder(10, seed=2)
    test_split = SyntheticSecondOrder(10, seed=1, split="test")
    torch.testing.assert_close(a[7][0], again[7][0], rtol=0, atol=0)
    assert not torch.equal(a[7][0], a[3][0])
    assert not torch.equal(a[7][0], other_seed[7][0])
    assert not torch.equal(a[7][0], test_split[7][0])
    assert [a[i][1] for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_images_in_range_and_normalized_output(dataset):
    raw, _ = dataset.generate(0)
    assert raw.shape == (3, 64, 64) and raw.min() >= 0 and raw.max() <= 1
    normalized, _ = dataset[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(normalized, (raw - mean) / std)


def test_tints_leave_grey_level_and_channel_means_unchanged():
    tints = tint_colours(5, 0.2).double()
    torch.testing.assert_close(
        tints.sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(
        tints.sum(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-7, rtol=0
    )


@pytest.mark.slow
def test_first_order_statistics_match_across_classes(dataset, images_by_class):
    per_class = {
        k: first_order_statistics(images, dataset.wavelength)
        for k, images in images_by_class.items()
    }
    for name in per_class[0]:
        separation = largest_separation({k: stats[name] for k, stats in per_class.items()})
        assert separation < SIGMAS, f"{name} differs across classes ({separation:.1f} SE)"


@pytest.mark.slow
def test_colour_orientation_co_occurrence_differs_across_classes(dataset, images_by_class):
    per_class = {
        k: co_occurrence(images, dataset.wavelength) for k, images in images_by_class.items()
    }
    # The signal the classes carry: far beyond the bound that the first-order statistics meet.
    assert largest_separation(per_class) > 2 * SIGMAS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 1}, "at least 2 classes"),
        ({"coupling": 1.5}, "coupling"),
        ({"split": "val"}, "unknown synthetic split"),
        ({"image_size": 3}, "too small"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UserInputError, match=message):
        SyntheticSecondOrder(8, **options)
