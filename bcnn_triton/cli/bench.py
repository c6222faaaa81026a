"""``bcnn-triton bench``: time the op's backends against the seed's eager formula."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bcnn_triton.cli.common import non_negative_int, positive_int
from bcnn_triton.errors import UserInputError
from bcnn_triton.ops import BACKENDS, bilinear_pool, resolve_backend
from bcnn_triton.train import resolve_device

__all__ = ["add_bench_parser", "eager_bilinear_pool", "run_bench", "time_call"]

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its flags."""
    parser = subparsers.add_parser(
        "bench",
        help="time the bilinear pool's backends against the seed's eager formula",
        description="Median time of the bilinear pool, forward and forward+backward, for each "
        "backend usable here (torch; triton on CUDA) and for the seed's eager formula (bmm, "
        "sign*sqrt, F.normalize). Defaults: the VGG-16 relu5_3 map at 448 px (C=512, 28x28).",
    )
    parser.add_argument("--batch", "-N", type=positive_int, default=8, help="N (default: 8)")
    parser.add_argument("--channels", "-C", type=positive_int, default=512, help="C (default: 512)")
    parser.add_argument("--height", "-H", type=positive_int, default=28, help="H (default: 28)")
    parser.add_argument("--width", "-W", type=positive_int, default=28, help="W (default: 28)")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls first")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed calls (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_bench)


def eager_bilinear_pool(x: torch.Tensor) -> torch.Tensor:
    """The seed's formula: (N, C, H, W) → (N, C²) via bmm / L, sign·sqrt(|·| + 1e-10), L2."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
    signed = torch.sign(gram) * torch.sqrt(torch.abs(gram) + 1e-10)
    return F.normalize(signed.reshape(n, c * c))


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronized around each call)."""

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    synchronize()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def _methods(x: torch.Tensor) -> tuple[dict[str, Callable], list[str]]:
    methods = {"eager (seed)": eager_bilinear_pool}
    notes = []
    for backend in BACKENDS:
        if backend == "triton" and not x.is_cuda:
            notes.append(
                "triton: skipped on CPU (CPU tensors run only through the Triton interpreter, "
                "far too slow to time); run on a CUDA device"
            )
            continue
        try:
            resolve_backend(backend, x)
        except ValueError as error:
            notes.append(f"{backend}: skipped ({error})")
            continue
        methods[backend] = lambda t, backend=backend: bilinear_pool(t, backend=backend)
    return methods, notes


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton bench``: prints one table row per method."""
    device = resolve_device(args.device)
    dtype = _DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        raise UserInputError("--dtype float16 is not timed on CPU (no fast fp16 matmul); use cuda")
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.height, args.width)
    x = torch.rand(shape, generator=generator).to(device=device, dtype=dtype)
    grad = torch.randn(args.batch, args.channels**2, generator=generator).to(device, dtype)
    methods, notes = _methods(x)
    reference = eager_bilinear_pool(x.double()).to(dtype)
    header = (
        f"bilinear pool  N={args.batch} C={args.channels} HxW={args.height}x{args.width} "
        f"{args.dtype} on {device} (torch {torch.__version__}); median of {args.repeats}"
    )
    rows = [
        header,
        f"{'method':<14} {'forward ms':>11} {'fwd+bwd ms':>11} {'vs eager':>9} "
        f"{'max |err| vs float64':>21}",
    ]
    eager_total = None
    for name, method in methods.items():
        with torch.no_grad():
            forward_ms = time_call(lambda m=method: m(x), device, args.warmup, args.repeats)
            error = (method(x).double() - reference.double()).abs().max().item()
        leaf = x.detach().requires_grad_(True)

        def forward_backward(m=method, leaf=leaf) -> None:
            leaf.grad = None
            m(leaf).backward(grad)

        total_ms = time_call(forward_backward, device, args.warmup, args.repeats)
        eager_total = eager_total or total_ms
        rows.append(
            f"{name:<14} {forward_ms:>11.3f} {total_ms:>11.3f} {eager_total / total_ms:>8.2f}x "
            f"{error:>21.2e}"
        )
    rows.extend(notes)
    tqdm.write("\n".join(rows))
    return 0
