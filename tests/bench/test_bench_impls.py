"""The benchmark helpers: which peaks a GPU name gets, and the roofline of a case."""

import pytest
from bench_impls import device_peaks, roofline


@pytest.mark.parametrize(
    ("name", "bandwidth", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12, 989e12),
        ("NVIDIA H100 PCIe", 2.0e12, 756e12),
        ("NVIDIA H100 NVL", 3.9e12, 835e12),
        ("NVIDIA H200", 4.8e12, 989e12),
        ("NVIDIA H200 NVL", 4.8e12, 835e12),
    ],
)
def test_each_h100_and_h200_part_gets_its_own_peaks(name, bandwidth, bf16):
    peak_bandwidth, rates = device_peaks(name)
    assert peak_bandwidth == bandwidth
    assert rates["bfloat16"] == bf16 == rates["float16"]


def test_an_unknown_part_gets_no_roofline():
    assert device_peaks("NVIDIA H100 (some future variant)") is None
    assert device_peaks("NVIDIA GeForce RTX 4090") is None


def test_roofline_of_the_seed_forward():
    # 32 × 512² × 784 × 2 FLOP; read X and write the descriptor once, bfloat16.
    work = roofline("fwd", 32, 512, 784, 2, bandwidth=3.35e12, peak=989e12)
    assert work.flops == 2.0 * 32 * 512 * 512 * 784
    assert work.bytes == 32 * 512 * 784 * 2 + 32 * 512 * 512 * 2
    assert work.floor_ms == pytest.approx(max(work.bytes / 3.35e12, work.flops / 989e12) * 1e3)
