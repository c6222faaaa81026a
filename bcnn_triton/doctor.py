"""``bcnn-triton doctor``: what runs on this machine, and proof that it computes the right thing.

For each op — the bilinear pool (plain, centred, upper triangle, two streams; forward and
backward), the Newton–Schulz matrix square root and iSQRT-COV — and each dtype, the doctor
records the backend ``backend="auto"`` picks here and why (``bcnn_triton.ops.dispatch``), and
checks the path it picks against an independent float64 reference written out below, at the
seed's shape and at a small one:

- where auto picks the Triton kernels, their output and input gradient must be within twice the
  error of the torch path in the same dtype, plus a small floor (flash-attention's rule), and
  the median times of both (and of ``torch.compile`` of the seed's formula) are measured;
- where it picks the torch path, that path's error must stay below a per-dtype tolerance.

On a CPU-only machine auto always picks the torch path; ``interpreter=True`` additionally runs
the Triton kernels through Triton's interpreter (small shapes; no bfloat16 there). The dtype
"tf32" is float32 under ``torch.set_float32_matmul_precision("high")``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from bcnn_triton.kernels.common import interpreter_enabled
from bcnn_triton.ops import bilinear_pool, isqrt_cov_pool, matrix_sqrt_newton_schulz
from bcnn_triton.ops.dispatch import explain_backend, gpu_info

__all__ = [
    "DTYPES",
    "OPS",
    "Check",
    "Record",
    "Settings",
    "check_record",
    "environment",
    "failures",
    "format_environment",
    "format_record",
    "run_doctor",
    "seed_bilinear_pool",
]

#: dtype label → (torch dtype, torch's float32 matmul precision while checking it)
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "highest"),
    "tf32": (torch.float32, "high"),
    "float16": (torch.float16, "highest"),
    "bfloat16": (torch.bfloat16, "highest"),
}
#: Relative error floors of the Triton check (flash-attention's rule) and tolerances of the
#: torch path against float64, per dtype label.
_FLOOR = {"float32": 1e-5, "tf32": 1e-5, "float16": 1e-4, "bfloat16": 1e-3}
_TOLERANCE = {"float32": 1e-4, "tf32": 2e-2, "float16": 1e-2, "bfloat16": 5e-2}
_SQRT_ITERATIONS = 5


@dataclass(frozen=True)
class Op:
    """One op as the doctor runs it: ``run(inputs, backend)`` the op, ``reference(inputs)`` the
    float64 formula, ``make(n, dtype, device, generator, small)`` the inputs, and the name the
    dispatcher records it under."""

    name: str
    dispatch_name: str
    make: Callable[..., tuple[torch.Tensor, ...]]
    run: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    shapes: tuple[str, str]


def seed_bilinear_pool(x: torch.Tensor) -> torch.Tensor:
    """The seed's formula: (N, C, H, W) → (N, C²) via bmm / L, sign·sqrt(|·| + 1e-10), L2."""
    flat = x.flatten(2)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
    signed = torch.sign(gram) * torch.sqrt(torch.abs(gram) + 1e-10)
    return F.normalize(signed.flatten(1))


def _bilinear_reference(x, y=None, *, center=False, triu=False, eps=1e-10) -> torch.Tensor:
    """B-CNN descriptor in float64, written out: (centred) Gram / L, signed sqrt, (triangle with
    √2 off the diagonal), L2."""
    x = x.double().flatten(2)
    y = x if y is None else y.double().flatten(2)
    if center:
        x, y = x - x.mean(2, keepdim=True), y - y.mean(2, keepdim=True)
    gram = x @ y.transpose(1, 2) / x.shape[2]
    signed = torch.sign(gram) * torch.sqrt(gram.abs() + eps)
    if triu:
        rows, cols = torch.triu_indices(x.shape[1], x.shape[1], device=x.device)
        weight = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(signed)
        return F.normalize(signed[:, rows, cols] * weight)
    return F.normalize(signed.flatten(1))


def _newton_schulz_reference(a: torch.Tensor, iterations: int = _SQRT_ITERATIONS) -> torch.Tensor:
    """Coupled Newton–Schulz square root in float64 (iSQRT-COV), upper triangle row by row."""
    a = a.double()
    sym = (a + a.transpose(1, 2)) / 2
    trace = sym.diagonal(dim1=1, dim2=2).sum(1).view(-1, 1, 1) + 1e-10
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    a_hat = sym / trace
    t = (3 * eye - a_hat) / 2
    y, z = a_hat @ t, t
    for _ in range(iterations - 1):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    root = y * trace.sqrt()
    rows, cols = torch.triu_indices(a.shape[1], a.shape[1], device=a.device)
    return root[:, rows, cols]


def _covariance_reference(x: torch.Tensor) -> torch.Tensor:
    x = x.double().flatten(2)
    centred = x - x.mean(2, keepdim=True)
    return centred @ centred.transpose(1, 2) / x.shape[2]


def _features(n, channels, size, dtype, device, generator) -> torch.Tensor:
    """Post-ReLU-like features (N, C, size, size) with a tenth of the channels dead."""
    x = torch.randn(n, channels, size, size, generator=generator).relu_()
    x[:, : channels // 10] = 0
    return x.to(device=device, dtype=dtype)


def _bilinear_op(name: str, **options) -> Op:
    two_streams = options.pop("two_streams", False)

    def make(n, dtype, device, generator, small):
        channels, size = (64, 8) if small else (512, 28)
        x = _features(n, channels, size, dtype, device, generator)
        if not two_streams:
            return (x,)
        return x, _features(n, channels // 2, size, dtype, device, generator)

    return Op(
        name,
        "bilinear_pool",
        make,
        lambda inputs, backend: bilinear_pool(*inputs, backend=backend, **options),
        lambda inputs: _bilinear_reference(*inputs, **options),
        ("C=512 28x28", "C=64 8x8"),
    )


def _spd(n, dtype, device, generator, small):
    channels, locations = (32, 24) if small else (256, 196)
    x = torch.randn(n, channels, locations, generator=generator, dtype=torch.float64)
    return ((x @ x.transpose(1, 2) / locations).to(device=device, dtype=dtype),)


#: The ops the doctor checks.
OPS: tuple[Op, ...] = (
    _bilinear_op("bilinear_pool"),
    # Centred Gram entries near 0 are common, where the signed square root's derivative
    # 1/(2·sqrt(|G| + eps)) amplifies rounding without bound: eps = 1e-3 bounds it (as the
    # GPU tests do), so that the check measures the op, not the conditioning.
    _bilinear_op("bilinear_pool center", center=True, eps=1e-3),
    _bilinear_op("bilinear_pool triu", triu=True),
    _bilinear_op("bilinear_pool two streams", two_streams=True),
    Op(
        "matrix_sqrt_newton_schulz",
        "matrix_sqrt_newton_schulz",
        _spd,
        lambda inputs, backend: matrix_sqrt_newton_schulz(*inputs, triu=True, backend=backend),
        lambda inputs: _newton_schulz_reference(inputs[0]),
        ("C=256", "C=32"),
    ),
    Op(
        "isqrt_cov_pool",
        "matrix_sqrt_newton_schulz",
        lambda n, dtype, device, generator, small: (
            _features(n, 32 if small else 256, 8 if small else 14, dtype, device, generator),
        ),
        lambda inputs, backend: isqrt_cov_pool(*inputs, backend=backend),
        lambda inputs: _newton_schulz_reference(_covariance_reference(inputs[0])),
        ("C=256 14x14", "C=32 8x8"),
    ),
)


@dataclass
class Check:
    """One path of one op at one shape against the float64 reference: the largest absolute
    error of the output and of the input gradients, and the bound each must stay within."""

    shape: str
    path: str
    forward_error: float | None = None
    forward_bound: float | None = None
    gradient_error: float | None = None
    gradient_bound: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(
            error <= bound
            for error, bound in (
                (self.forward_error, self.forward_bound),
                (self.gradient_error, self.gradient_bound),
            )
        )


@dataclass
class Record:
    """An op × dtype: the backend ``"auto"`` picks here and why, the checks of the path it
    picks, and median forward+backward times in milliseconds (GPU only)."""

    op: str
    dtype: str
    backend: str
    reason: str
    checks: list[Check] = field(default_factory=list)
    times_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict:
        checks = [{**asdict(check), "ok": check.ok} for check in self.checks]
        return {**asdict(self), "checks": checks, "ok": self.ok}


@contextlib.contextmanager
def _matmul_precision(precision: str) -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _output_and_gradients(fn, inputs, weights):
    """fn's output and the gradients of ⟨output, weights⟩ with respect to every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(leaves)
    grads = torch.autograd.grad((out.double() * weights).sum(), leaves)
    return out.detach().double(), [g.double() for g in grads]


def _largest_error(values, references) -> tuple[float, float]:
    """max |value − reference| over the tensors, and max |reference| (the scale)."""
    error = max((v - r).abs().max().item() for v, r in zip(values, references, strict=True))
    scale = max(r.abs().max().item() for r in references)
    return error, scale


def _reference(op: Op, inputs, generator):
    """The float64 reference's output, random weights for ⟨output, weights⟩, and its gradients."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    reference = op.reference(leaves)
    weights = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    weights = weights.to(reference.device)
    grads = torch.autograd.grad((reference * weights).sum(), leaves)
    return reference.detach(), weights, grads


def _check(op: Op, label: str, path: str, n: int, device, small: bool) -> Check:
    """Run ``path`` (and the torch path, and the reference) at one shape and compare."""
    generator = torch.Generator().manual_seed(0)
    inputs = op.make(n, DTYPES[label][0], device, generator, small)
    shape = f"N={n} {op.shapes[1] if small else op.shapes[0]}"
    reference, weights, reference_grads = _reference(op, inputs, generator)
    torch_out, torch_grads = _output_and_gradients(lambda t: op.run(t, "torch"), inputs, weights)
    torch_error, scale = _largest_error([torch_out], [reference])
    torch_grad_error, grad_scale = _largest_error(torch_grads, reference_grads)
    if path == "torch":
        tolerance = _TOLERANCE[label]
        return Check(
            shape, path, torch_error, tolerance * scale, torch_grad_error, tolerance * grad_scale
        )
    try:
        out, grads = _output_and_gradients(lambda t: op.run(t, "triton"), inputs, weights)
    except Exception as error:
        return Check(shape, path, error=f"{type(error).__name__}: {str(error).strip()[:500]}")
    floor = _FLOOR[label]
    forward_error, _ = _largest_error([out], [reference])
    gradient_error, _ = _largest_error(grads, reference_grads)
    return Check(
        shape, path, forward_error, 2 * torch_error + floor * scale,
        gradient_error, 2 * torch_grad_error + floor * grad_scale,
    )  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(step: Callable[[], None], device: torch.device, seconds: float = 0.25) -> float:
    """Median milliseconds of ``step()`` after one warm-up call (which compiles and autotunes):
    at least 3 repetitions, then until ``seconds`` have passed or 50 are done."""
    step()
    _synchronize(device)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (len(times) < 50 and time.perf_counter() < deadline):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            step()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def _times(op: Op, label: str, device, n: int, paths: list[str], compile_seed: bool) -> dict:
    """Median forward+backward milliseconds at the seed's shape of each path (and of
    ``torch.compile`` of the seed's formula, for the plain bilinear pool)."""
    generator = torch.Generator().manual_seed(0)
    leaves = [t.requires_grad_() for t in op.make(n, DTYPES[label][0], device, generator, False)]
    grad = torch.randn_like(op.run(leaves, "torch").detach())

    def train_step(fn) -> Callable[[], None]:
        def step() -> None:
            for leaf in leaves:
                leaf.grad = None
            fn(leaves).backward(grad)

        return step

    times = {path: _median_ms(train_step(lambda t, p=path: op.run(t, p)), device) for path in paths}
    if compile_seed and op.name == "bilinear_pool":
        compiled = torch.compile(seed_bilinear_pool)
        times["torch.compile (seed)"] = _median_ms(train_step(lambda t: compiled(t[0])), device)
    return times


@dataclass(frozen=True)
class Settings:
    """Where and how the doctor checks: the device, the batch sizes of the seed's shape and of
    the small one, whether the seed's shape is checked at all, Triton's interpreter (CPU),
    whether ``torch.compile`` of the seed's formula is timed, and whether anything is."""

    device: torch.device
    seed_batch: int
    small_batch: int = 2
    seed_shape: bool = True
    interpreter: bool = False
    compile_seed: bool = False
    measure_time: bool = True

    def shapes(self) -> list[tuple[int, bool]]:
        small = [(self.small_batch, True)]
        return [(self.seed_batch, False), *small] if self.seed_shape else small


def _dispatched_dtype(op: Op, dtype: torch.dtype) -> torch.dtype:
    """The dtype dispatch looks at: the square-root ops iterate (and iSQRT-COV pools) in
    float32 whatever the input's 16-bit dtype."""
    if op.dispatch_name == "matrix_sqrt_newton_schulz" or op.name == "isqrt_cov_pool":
        return torch.float32
    return dtype


def _choice(op: Op, label: str, device: torch.device):
    """What ``"auto"`` picks for ``op`` in dtype ``label`` on ``device`` (under the label's
    float32 matmul precision)."""
    dtype, precision = DTYPES[label]
    with _matmul_precision(precision):
        probe = torch.empty(0, device=device, dtype=_dispatched_dtype(op, dtype))
        return explain_backend(probe, op.dispatch_name)


def _auto_backend(op: Op, label: str, device: torch.device) -> str:
    return _choice(op, label, device).backend


def check_record(op: Op, label: str, settings: Settings) -> Record:
    """The record of one op × dtype label (see the module docstring)."""
    dtype, precision = DTYPES[label]
    choice = _choice(op, label, settings.device)
    with _matmul_precision(precision):
        path = "triton" if choice.backend == "triton" or settings.interpreter else "torch"
        record = Record(op.name, label, choice.backend, choice.reason)
        if settings.interpreter and dtype == torch.bfloat16:
            path = "torch"
            record.reason += "; Triton's interpreter has no bfloat16, so the torch path is checked"
        for n, small in settings.shapes():
            record.checks.append(_check(op, label, path, n, settings.device, small))
        if settings.measure_time and settings.device.type == "cuda" and record.ok:
            paths = ["triton", "torch"] if path == "triton" else ["torch"]
            record.times_ms = _times(
                op, label, settings.device, settings.seed_batch, paths, settings.compile_seed
            )
    return record


def _warm(op_name: str, label: str, settings: Settings) -> None:
    """Run one record's checks in a worker process, only for the kernels it compiles."""
    op = next(op for op in OPS if op.name == op_name)
    with contextlib.suppress(Exception):
        check_record(op, label, settings)


def _prewarm(pairs: list[tuple[Op, str]], settings: Settings, workers: int) -> None:
    """Compile the kernels of ``pairs`` in parallel processes first. A cold GPU machine
    compiles about a hundred kernel specializations for the checks, one after another in a
    single process; Triton's on-disk cache keeps what the workers compile, so the checks that
    follow only load it."""
    import concurrent.futures
    import multiprocessing

    warm_settings = dataclasses.replace(settings, measure_time=False)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_warm, op.name, label, warm_settings) for op, label in pairs]
        concurrent.futures.wait(futures)


def _default_workers(device: torch.device, jobs: int) -> int:
    """Up to 8 compile workers: no more than CPU cores, jobs, or 3 GiB of GPU memory each (a
    seed-shape check with its float64 reference holds about 1 GiB of tensors, by their sizes)."""
    memory_share = gpu_info(device).total_memory // (3 * 2**30)
    return max(1, min(8, os.cpu_count() or 1, jobs, memory_share))


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def environment(device: torch.device) -> dict:
    """Python, torch, CUDA/ROCm, Triton and the GPU (name, compile target, capability, shared
    memory per block, multiprocessors, memory), as a JSON-ready dict."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "rocm": torch.version.hip,
        "triton": _triton_version(),
        "triton_interpreter": interpreter_enabled(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    info = gpu_info(device)
    if info is not None:
        capability = torch.cuda.get_device_capability(device)
        env.update(
            gpu=info.name,
            arch=info.arch,
            capability=f"{capability[0]}.{capability[1]}",
            shared_memory_per_block=info.shared_memory,
            multiprocessors=info.multiprocessors,
            memory_gib=round(info.total_memory / 2**30, 1),
        )
    return env


def run_doctor(
    device: torch.device | str = "auto",
    *,
    interpreter: bool = False,
    compile_seed: bool = False,
    ops: list[str] | None = None,
    dtypes: list[str] | None = None,
    workers: int | None = None,
    progress: Callable[[Record], None] | None = None,
) -> tuple[dict, list[Record]]:
    """The environment and one :class:`Record` per op × dtype (see the module docstring).

    ``device``: "auto" (the GPU if there is one), "cpu", "cuda", "cuda:N". ``interpreter``:
    check the Triton kernels on CPU through the interpreter (needs ``TRITON_INTERPRET=1`` set
    before Triton was imported; small shapes only). ``ops``/``dtypes``: names from :data:`OPS`
    and :data:`DTYPES` (default all). ``workers``: processes that compile the kernels first on
    a GPU (default: up to 8). ``progress`` is called with each record as it is done.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if interpreter and not interpreter_enabled():
        raise ValueError("interpreter=True needs TRITON_INTERPRET=1 set before triton is imported")
    chosen = [op for op in OPS if ops is None or op.name in ops]
    labels = [label for label in DTYPES if dtypes is None or label in dtypes]
    on_gpu = device.type == "cuda"
    settings = Settings(
        device,
        seed_batch=32 if on_gpu else 2,
        seed_shape=not interpreter,
        interpreter=interpreter,
        compile_seed=compile_seed,
    )
    pairs = [(op, label) for op in chosen for label in labels]
    compiled = [(op, label) for op, label in pairs if _auto_backend(op, label, device) == "triton"]
    if on_gpu and compiled and (workers is None or workers > 1):
        _prewarm(compiled, settings, workers or _default_workers(device, len(compiled)))
    records = []
    for op, label in pairs:
        records.append(check_record(op, label, settings))
        if progress is not None:
            progress(records[-1])
    return environment(device), records


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def format_environment(env: dict) -> str:
    """The environment as ``key: value`` lines, saying so where there is no GPU."""
    lines = [f"{key}: {value}" for key, value in env.items()]
    if "gpu" not in env:
        lines.append(
            "no GPU: the Triton kernels are neither compiled nor timed here; the torch path is "
            "checked"
            + (
                " (and the kernels through Triton's interpreter)"
                if env["triton_interpreter"]
                else " (--interpreter also runs the kernels, slowly)"
            )
        )
    return "\n".join(lines)


def format_record(record: Record) -> str:
    """One record: the choice and its reason, then a line per check (and the times)."""
    lines = [f"{record.op} · {record.dtype}: auto → {record.backend} ({record.reason})"]
    for check in record.checks:
        if check.error is not None:
            lines.append(f"    {check.shape:<16} {check.path:<6} FAILED {check.error}")
            continue
        lines.append(
            f"    {check.shape:<16} {check.path:<6} output error {_number(check.forward_error)} "
            f"(bound {_number(check.forward_bound)}), gradient "
            f"{_number(check.gradient_error)} (bound {_number(check.gradient_bound)})  "
            + ("ok" if check.ok else "FAILED")
        )
    if record.times_ms:
        times = ", ".join(f"{path} {ms:.3f}" for path, ms in record.times_ms.items())
        lines.append(f"    forward+backward median ms at the seed's shape: {times}")
    return "\n".join(lines)


def failures(records: list[Record]) -> list[str]:
    """One line per failed check, naming the op, the dtype, the shape and the path."""
    return [
        f"{r.op} {r.dtype} {c.shape} ({c.path}): "
        + (
            c.error
            or f"error {_number(c.forward_error)} / {_number(c.gradient_error)} above "
            f"bound {_number(c.forward_bound)} / {_number(c.gradient_bound)}"
        )
        for r in records
        for c in r.checks
        if not c.ok
    ]
