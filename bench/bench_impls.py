"""What the benchmarks time: the seed's eager pooling, bare bmm, torch.compile, the op; and for
iSQRT-COV, fast-MPN-COV's formulation against ``isqrt_cov_pool``.

Each B-CNN implementation maps a feature map (N, C, H, W) to its (N, C²) descriptor (``bmm`` to
the raw Gram); each iSQRT-COV one to its (N, C(C+1)/2) descriptor. ``roofline`` gives the work
of a B-CNN case and the lower bound on its time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fast_mpn_cov import fast_mpn_cov_isqrt

from bcnn_triton import bilinear_pool, isqrt_cov_pool


def seed_pool(x: torch.Tensor) -> torch.Tensor:
    """The seed article's pooling in eager PyTorch: bmm, signed sqrt, F.normalize."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h * w)
    x = torch.bmm(x, torch.transpose(x, 1, 2)) / (h * w)
    x = torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-10)
    return F.normalize(x.reshape(n, c * c))


def bmm_gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram alone through cuBLAS/MKL: the GEMM every implementation has to beat."""
    x = x.flatten(2)
    return torch.bmm(x, x.transpose(1, 2))


def torch_path(x: torch.Tensor) -> torch.Tensor:
    """The op forced onto its torch path (the CPU implementation)."""
    return bilinear_pool(x, backend="torch")


def fused(x: torch.Tensor) -> torch.Tensor:
    """The op on its Triton kernels, forced: "auto" keeps float32 at torch's "highest" matmul
    precision on the torch path, and the benchmark is what tells whether it should."""
    return bilinear_pool(x, backend="triton")


_compiled: dict[str, object] = {}


def _compiled_seed_pool(mode: str):
    if mode not in _compiled:
        # One static graph per (shape, dtype, grad mode): raise dynamo's recompile limit so that
        # later cases are compiled too instead of silently falling back to eager.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, 64)
        _compiled[mode] = torch.compile(seed_pool, mode=mode, dynamic=False)
    return _compiled[mode]


def compiled_seed_pool(x: torch.Tensor) -> torch.Tensor:
    """``torch.compile(mode="max-autotune")`` of the seed's pooling, specialised per shape."""
    return _compiled_seed_pool("max-autotune")(x)


def compiled_seed_pool_without_cudagraphs(x: torch.Tensor) -> torch.Tensor:
    """The same kernels without CUDA graphs, for memory: a graph replay allocates nothing, so
    ``max_memory_allocated`` would not see the memory its private pool holds."""
    return _compiled_seed_pool("max-autotune-no-cudagraphs")(x)


IMPLEMENTATIONS = {
    "eager": seed_pool,
    "compile": compiled_seed_pool,
    "bmm": bmm_gram,
    "fused": fused,
    "torch_path": torch_path,
}
#: iSQRT-COV, 5 Newton–Schulz steps, upper triangle: the baseline, the torch path, the kernels.
ISQRT_IMPLEMENTATIONS = {
    "fast_mpn_cov": fast_mpn_cov_isqrt,
    "torch_path": lambda x: isqrt_cov_pool(x, backend="torch"),
    "fused": lambda x: isqrt_cov_pool(x, backend="triton"),
}
#: Where peak memory is measured with a different callable than the timing.
MEMORY_IMPLEMENTATIONS = {"compile": compiled_seed_pool_without_cudagraphs}


@dataclass(frozen=True)
class Roofline:
    """Work of one case and its time floor on a device."""

    flops: float  # nominal: the full Gram (2·N·C²·L), plus one C×C×L GEMM per sample backward
    bytes: float  # minimum traffic: read X once, write the descriptor once (and the backward's)
    floor_ms: float  # max(bytes / bandwidth, flops / peak)


# Vendor peaks (dense) by device name, most specific first: HBM bandwidth in B/s and matmul
# throughput in FLOP/s per input dtype. The same chip name covers parts with different clocks
# and memory (H100 SXM, PCIe and NVL), so an unknown variant gets no roofline rather than
# another part's.
DEVICE_PEAKS = (
    ("H100 PCIe", 2.0e12, {"bfloat16": 756e12, "tf32": 378e12, "float32": 51e12}),
    ("H100 NVL", 3.9e12, {"bfloat16": 835e12, "tf32": 418e12, "float32": 60e12}),
    ("H100 80GB HBM3", 3.35e12, {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12}),
    ("H100 SXM", 3.35e12, {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12}),
    ("H200 NVL", 4.8e12, {"bfloat16": 835e12, "tf32": 418e12, "float32": 60e12}),
    ("H200", 4.8e12, {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12}),
    ("A100-SXM4-80GB", 2.039e12, {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12}),
    ("A100 80GB PCIe", 1.935e12, {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12}),
)


def device_peaks(name: str) -> tuple[float, dict[str, float]] | None:
    """Peak bandwidth and FLOP rates of a GPU known by name (e.g. "NVIDIA H100 80GB HBM3");
    None for a part not in DEVICE_PEAKS. float16 runs at the bfloat16 rate."""
    for key, bandwidth, rates in DEVICE_PEAKS:
        if key in name:
            return bandwidth, {**rates, "float16": rates["bfloat16"]}
    return None


def roofline(
    mode: str, n: int, c: int, locations: int, element_size: int, bandwidth: float, peak: float
) -> Roofline:
    """mode "fwd" or "fwd+bwd"; bandwidth in B/s, peak in FLOP/s."""
    features = n * c * locations * element_size
    descriptor = n * c * c * element_size
    flops = 2.0 * n * c * c * locations
    traffic = features + descriptor
    if mode == "fwd+bwd":
        flops *= 2.0
        # read the gradient, the saved descriptor and X; write dX
        traffic += 2 * descriptor + 2 * features
    floor_s = max(traffic / bandwidth, flops / peak)
    return Roofline(flops=flops, bytes=float(traffic), floor_ms=floor_s * 1e3)


def saved_for_backward_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps between fn(x) and its backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    leaf = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(leaf)
    return sum(storages.values())
