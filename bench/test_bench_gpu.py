"""GPU benchmark: seed eager, torch.compile(max-autotune) of it, bare bmm and the fused op.

    TRITON_INTERPRET=0 pytest bench/test_bench_gpu.py --benchmark-only --benchmark-json=gpu.json
    python bench/summarize.py gpu.json --out DIR

C = 512, 28×28, N ∈ {32, 8, 64} (N = 32 first: the targets are set there), float32 (PyTorch's
default "highest" precision, and TF32 at N = 32), bfloat16; forward (under no_grad) and
forward+backward. Each case records in ``extra_info``: ``ms`` (median of CUDA-event timings by
``triton.testing.do_bench``, cold L2), ``peak_mb`` (peak allocation during one call beyond the
inputs; for torch.compile measured on the same kernels without CUDA graphs), achieved TFLOP/s
and GB/s against the case's nominal work, and ``floor_ms`` (roofline). pytest-benchmark's own
statistics time the same call followed by a synchronize.

``test_gpu_isqrt`` times iSQRT-COV (N = 32, C = 256, L = 14×14 and 28×28, 5 steps, upper
triangle), float32 and TF32: the op's kernels (``fused``) against our re-implementation of
fast-MPN-COV's formulation (``fast_mpn_cov``), forward and forward+backward, with peak memory.

``test_train_step`` (last: the budget may skip it) times one optimizer step of
``BilinearCNN("vgg16")`` at 448×448, batch 16, bfloat16 autocast, with the fused op and with
the seed's eager pooling swapped in, frozen backbone and full fine-tuning.
"""

from __future__ import annotations

import pytest
import torch
from bench_impls import (
    IMPLEMENTATIONS,
    ISQRT_IMPLEMENTATIONS,
    MEMORY_IMPLEMENTATIONS,
    device_peaks,
    roofline,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CHANNELS, SIDE = 512, 28
DTYPES = {
    "bfloat16": (torch.bfloat16, "highest"),
    "float32": (torch.float32, "highest"),
    "tf32": (torch.float32, "high"),
}
CASES = [
    (n, dtype)
    for n, dtypes in (
        (32, ("bfloat16", "float32", "tf32")),
        (8, ("bfloat16", "float32")),
        (64, ("bfloat16", "float32")),
    )
    for dtype in dtypes
]


@pytest.fixture
def precision(request):
    previous = torch.get_float32_matmul_precision()
    yield lambda value: torch.set_float32_matmul_precision(value)
    torch.set_float32_matmul_precision(previous)


def _call(impl, mode, x, grad, fn=None):
    fn = fn or IMPLEMENTATIONS[impl]
    compiled = impl == "compile"

    def forward():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            return fn(x)

    def forward_backward():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = fn(x)
        if impl == "bmm":
            out.backward(grad.view(out.shape))
        else:
            out.backward(grad)
        x.grad = None

    return forward if mode == "fwd" else forward_backward


def _peak_mb(call) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@pytest.mark.parametrize("impl", ["fused", "eager", "compile", "bmm"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize(("n", "dtype"), CASES, ids=[f"N{n}-{d}" for n, d in CASES])
def test_gpu(benchmark, precision, impl, mode, n, dtype):
    import triton

    torch_dtype, matmul_precision = DTYPES[dtype]
    precision(matmul_precision)
    x = torch.relu(torch.randn(n, CHANNELS, SIDE, SIDE, device="cuda")).to(torch_dtype)
    grad = torch.randn(n, CHANNELS * CHANNELS, device="cuda", dtype=torch_dtype)
    if mode == "fwd+bwd":
        x.requires_grad_()
    call = _call(impl, mode, x, grad)
    call()  # compile, autotune

    ms = triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")
    memory_fn = MEMORY_IMPLEMENTATIONS.get(impl)
    if memory_fn is None:
        peak_mb = _peak_mb(call)
    else:
        memory_call = _call(impl, mode, x, grad, memory_fn)
        memory_call()
        peak_mb = _peak_mb(memory_call)
    name = torch.cuda.get_device_name()
    peaks = device_peaks(name)
    info = dict(
        impl=impl,
        mode=mode,
        dtype=dtype,
        N=n,
        C=CHANNELS,
        L=SIDE * SIDE,
        ms=ms,
        peak_mb=peak_mb,
        device=name,
        torch=torch.__version__,
        triton=triton.__version__,
    )
    if peaks is not None:
        bandwidth, flop_rates = peaks
        work = roofline(
            mode, n, CHANNELS, SIDE * SIDE, x.element_size(), bandwidth, flop_rates[dtype]
        )
        info.update(
            floor_ms=work.floor_ms,
            tflops=work.flops / ms / 1e9,
            gbs=work.bytes / ms / 1e6,
            floor_ratio=ms / work.floor_ms,
        )
    benchmark.group = f"{mode} N={n} {dtype}"
    benchmark.extra_info.update(info)

    def synced():
        call()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=20, warmup_rounds=2)


ISQRT_CASES = [(14, "float32"), (28, "float32"), (14, "tf32"), (28, "tf32")]


@pytest.mark.parametrize("impl", ["fused", "fast_mpn_cov"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize(
    ("side", "dtype"), ISQRT_CASES, ids=[f"L{s * s}-{d}" for s, d in ISQRT_CASES]
)
def test_gpu_isqrt(benchmark, precision, impl, mode, side, dtype):
    import triton

    torch_dtype, matmul_precision = DTYPES[dtype]
    precision(matmul_precision)
    channels = 256
    x = torch.relu(torch.randn(32, channels, side, side, device="cuda")).to(torch_dtype)
    grad = torch.randn(32, channels * (channels + 1) // 2, device="cuda", dtype=torch_dtype)
    if mode == "fwd+bwd":
        x.requires_grad_()
    call = _call(impl, mode, x, grad, ISQRT_IMPLEMENTATIONS[impl])
    call()  # compile, autotune
    ms = triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")
    benchmark.group = f"isqrt {mode} L={side * side} {dtype}"
    benchmark.extra_info.update(
        op="isqrt_cov_pool",
        impl=impl,
        mode=mode,
        dtype=dtype,
        N=32,
        C=channels,
        L=side * side,
        ms=ms,
        peak_mb=_peak_mb(call),
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
    )

    def synced():
        call()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=10, warmup_rounds=1)


class _SeedPool(torch.nn.Module):
    """The seed's eager pooling in place of BilinearCNN's fused op."""

    def forward(self, x, y=None):
        return IMPLEMENTATIONS["eager"](x)


@pytest.mark.parametrize("stage", ["frozen", "full"])
@pytest.mark.parametrize("pool", ["fused", "eager"])
def test_train_step(benchmark, pool, stage):
    """One SGD step of BilinearCNN("vgg16"), 448×448, batch 16, bfloat16 autocast."""
    import triton

    from bcnn_triton import BilinearCNN

    model = BilinearCNN("vgg16", num_classes=200, freeze_backbone=stage == "frozen").cuda()
    if pool == "eager":
        model.pool = _SeedPool()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    images = torch.randn(16, 3, 448, 448, device="cuda")
    labels = torch.randint(0, 200, (16,), device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    step()
    ms = triton.testing.do_bench(step, warmup=5, rep=200, return_mode="median")
    peak_mb = _peak_mb(step)
    benchmark.group = "train step vgg16 448px N=16 bf16"
    benchmark.extra_info.update(
        impl=pool,
        mode=f"train-{stage}",
        dtype="bfloat16-autocast",
        N=16,
        C=512,
        L=784,
        ms=ms,
        peak_mb=peak_mb,
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
    )

    def synced():
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=5, warmup_rounds=1)
