"""``bcnn-triton bench``: time the op's backends against the seed's eager formula.

Timing is ``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up, block sizes, accelerator
synchronization) with torch's current thread count.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bcnn_triton.cli.common import positive_float, positive_int
from bcnn_triton.errors import UserInputError

__all__ = ["add_parser", "eager_bilinear_pool", "run_bench", "time_call"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its flags."""
    parser = subparsers.add_parser(
        "bench",
        help="time the bilinear pool's backends against the seed's eager formula",
        description="Median time of the bilinear pool, forward and forward+backward, for each "
        "backend usable here (torch; triton on CUDA) and for the seed's eager formula (bmm, "
        "sign*sqrt, F.normalize), measured with torch.utils.benchmark. Defaults: the VGG-16 "
        "relu5_3 map at 448 px (C=512, 28x28).",
    )
    parser.add_argument("--batch", "-N", type=positive_int, default=8, help="N (%(default)s)")
    parser.add_argument("--channels", "-C", type=positive_int, default=512, help="C (%(default)s)")
    parser.add_argument("--height", "-H", type=positive_int, default=28, help="H (%(default)s)")
    parser.add_argument("--width", "-W", type=positive_int, default=28, help="W (%(default)s)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--min-run-time",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="time spent measuring each method and mode, after warm-up (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_bench)


def eager_bilinear_pool(x):
    """The seed's formula: (N, C, H, W) → (N, C²) via bmm / L, sign·sqrt(|·| + 1e-10), L2."""
    import torch
    import torch.nn.functional as F

    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
    signed = torch.sign(gram) * torch.sqrt(torch.abs(gram) + 1e-10)
    return F.normalize(signed.reshape(n, c * c))


def time_call(fn: Callable[[], object], min_run_time: float) -> float:
    """Median time of ``fn()`` in milliseconds (torch.utils.benchmark, this thread count)."""
    import torch
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _methods(x) -> tuple[dict[str, Callable], list[str]]:
    from bcnn_triton.ops import BACKENDS, bilinear_pool, resolve_backend

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
    import torch
    from tqdm.auto import tqdm

    from bcnn_triton.train import resolve_device

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise UserInputError("--dtype float16 is not timed on CPU (no fast fp16 matmul); use cuda")
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.height, args.width)
    x = torch.rand(shape, generator=generator).to(device=device, dtype=dtype)
    grad = torch.randn(args.batch, args.channels**2, generator=generator).to(device, dtype)
    methods, notes = _methods(x)
    reference = eager_bilinear_pool(x.double()).to(dtype)
    rows = [
        f"bilinear pool  N={args.batch} C={args.channels} HxW={args.height}x{args.width} "
        f"{args.dtype} on {device} (torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads); median of torch.utils.benchmark blocks over {args.min_run_time:g} s",
        f"{'method':<14} {'forward ms':>11} {'fwd+bwd ms':>11} {'vs eager':>9} "
        f"{'max |err| vs float64':>21}",
    ]
    eager_total = None
    for name, method in methods.items():
        with torch.no_grad():
            forward_ms = time_call(lambda m=method: m(x), args.min_run_time)
            error = (method(x).double() - reference.double()).abs().max().item()
        leaf = x.detach().requires_grad_(True)

        def forward_backward(m=method, leaf=leaf) -> None:
            leaf.grad = None
            m(leaf).backward(grad)

        total_ms = time_call(forward_backward, args.min_run_time)
        eager_total = eager_total or total_ms
        rows.append(
            f"{name:<14} {forward_ms:>11.3f} {total_ms:>11.3f} {eager_total / total_ms:>8.2f}x "
            f"{error:>21.2e}"
        )
    rows.extend(notes)
    tqdm.write("\n".join(rows))
    return 0
