"""Tuning sweep on a GPU: time candidate tile configurations of the forward and backward kernels.

    TRITON_INTERPRET=0 python bench/tune_kernels.py --out DIR [--budget-s 180] [--workers 8]

Cases: N ∈ {32, 8, 64} × L ∈ {784, 196} × {bfloat16, tf32, float32}, C = 512, single stream,
signed square root and normalization (the B-CNN default). For each case and each candidate of
``FORWARD_CANDIDATES`` / ``BACKWARD_CANDIDATES`` the whole forward (``bilinear_pool_fwd``: every
launch of the op, the candidate forced on the Gram kernel) and the whole backward
(``bilinear_pool_bwd``, the candidate forced on its GEMM) are timed with
``triton.testing.do_bench`` (median, CUDA events); each result is also checked against the
default configuration's output, so a configuration that computes garbage cannot win. Before
those, the sweep times the two normalization strategies and, for L = 196, reading misaligned
rows in place against copying them (``align_rows``).

Compiling dominates a cold sweep, so worker processes compile every (case, candidate) first by
launching it once (each on the GPU, in parallel, filling Triton's on-disk cache); the main
process then times them one at a time. Every result is appended to DIR/tune.jsonl as it comes, so
a sweep cut short by its budget or a timeout keeps what it measured. At the end DIR/tune.md lists
the best candidate per case and the candidates that win anywhere — the autotune lists are chosen
from it (keeping one configuration that fits a 99 KiB shared-memory GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

CHANNELS = 512
SIZES = [(32, 784), (8, 784), (64, 784), (32, 196), (8, 196), (64, 196)]
PRECISIONS = {"bfloat16": (torch.bfloat16, "highest"), "tf32": (torch.float32, "high")}
PRECISIONS["float32"] = (torch.float32, "highest")

# (BLOCK_C, BLOCK_K, warps, stages)
FORWARD_CANDIDATES = [
    (128, 32, 8, 3),
    (128, 32, 8, 4),
    (128, 64, 8, 3),
    (128, 64, 8, 4),
    (128, 64, 4, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
    (64, 32, 4, 3),
]
# (BLOCK_A, BLOCK_B, BLOCK_L, warps, stages)
BACKWARD_CANDIDATES = [
    (128, 64, 128, 8, 3),
    (128, 32, 128, 8, 4),
    (128, 64, 128, 4, 3),
    (128, 64, 64, 4, 4),
    (64, 64, 128, 4, 4),
    (128, 128, 128, 8, 2),
    (256, 64, 128, 8, 3),
    (64, 32, 64, 4, 3),
]


def _config(kind: str, candidate: tuple):
    import triton

    if kind == "fwd":
        block_c, block_k, warps, stages = candidate
        kwargs = {"BLOCK_C": block_c, "BLOCK_K": block_k, "GROUP": 4}
    else:
        block_a, block_b, block_l, warps, stages = candidate
        kwargs = {"BLOCK_A": block_a, "BLOCK_B": block_b, "BLOCK_L": block_l}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


@contextlib.contextmanager
def forced_config(kind: str, candidate: tuple | None) -> Iterator[None]:
    """Run the forward Gram kernel (kind "fwd") or the backward GEMM ("bwd") with one
    configuration: the autotuner skips tuning when it has a single one."""
    from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd

    if candidate is None:
        yield
        return
    tuner = (
        bilinear_fwd._bilinear_pool_fwd_kernel
        if kind == "fwd"
        else bilinear_bwd._gram_grad_matmul_kernel
    )
    saved = tuner.configs, tuner.cache
    tuner.configs, tuner.cache = [_config(kind, candidate)], {}
    try:
        yield
    finally:
        tuner.configs, tuner.cache = saved


def _inputs(n: int, locations: int, precision: str):
    dtype, matmul_precision = PRECISIONS[precision]
    torch.set_float32_matmul_precision(matmul_precision)
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, CHANNELS, locations, device="cuda", generator=generator).relu_().to(dtype)
    grad = torch.randn(n, CHANNELS * CHANNELS, device="cuda", generator=generator).to(dtype)
    return x, grad


def _run(kind: str, x, grad, candidate=None, **options):
    """One forward (kind "fwd") or backward ("bwd") of the op, as the op calls the launchers."""
    from bcnn_triton.kernels import bilinear_pool_bwd, bilinear_pool_fwd

    align = options.pop("align_rows", True)
    if kind == "fwd":
        with forced_config("fwd", candidate):
            return bilinear_pool_fwd(x, align_rows=align, **options)[0]
    out, norm = bilinear_pool_fwd(x, align_rows=align)
    with forced_config("bwd", candidate):
        return bilinear_pool_bwd(grad, x, None, out, norm, align_rows=align)[0]


def _jobs() -> list[tuple]:
    jobs = []
    for n, locations in SIZES:
        for precision in PRECISIONS:
            jobs += [("fwd", n, locations, precision, c) for c in FORWARD_CANDIDATES]
            jobs += [("bwd", n, locations, precision, c) for c in BACKWARD_CANDIDATES]
    return jobs


def _compile_one(job: tuple) -> str | None:
    """Launch one job once (in a worker process): compiles it into the on-disk cache."""
    kind, n, locations, precision, candidate = job
    try:
        x, grad = _inputs(n, locations, precision)
        _run(kind, x, grad, candidate)
        torch.cuda.synchronize()
    except Exception as error:
        return f"{type(error).__name__}: {error}"[:300]
    return None


def _record(log, row: dict) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()


def _time_jobs(jobs, failures, deadline, log) -> list[dict]:
    import triton

    rows = []
    for job in jobs:
        if time.monotonic() > deadline:
            print(f"budget spent: {len(jobs) - len(rows)} timings skipped", flush=True)
            break
        kind, n, locations, precision, candidate = job
        row = {"kind": kind, "N": n, "L": locations, "precision": precision}
        row["candidate"] = list(candidate)
        if failures.get(job):
            rows.append({**row, "error": failures[job]})
            _record(log, rows[-1])
            continue
        x, grad = _inputs(n, locations, precision)
        reference = _run(kind, x, grad)
        try:
            result = _run(kind, x, grad, candidate)
            ms = triton.testing.do_bench(
                lambda job=job, x=x, grad=grad: _run(job[0], x, grad, job[4]),
                warmup=10,
                rep=40,
                return_mode="median",
            )
        except Exception as error:
            rows.append({**row, "error": f"{type(error).__name__}: {error}"[:300]})
            _record(log, rows[-1])
            continue
        scale = reference.float().abs().max().item() or 1.0
        deviation = (result.float() - reference.float()).abs().max().item() / scale
        rows.append({**row, "ms": ms, "max_rel_deviation": deviation})
        _record(log, rows[-1])
    return rows


def _time_strategies(deadline, log) -> list[dict]:
    """Both normalization strategies in bfloat16, and aligned vs in-place rows at L = 196."""
    import triton

    rows = []
    variants = [("stage", True), ("recompute", True), ("recompute", False), ("stage", False)]
    for n, locations in SIZES:
        for strategy, align in variants:
            if time.monotonic() > deadline:
                return rows
            if not align and locations % 8 == 0:
                continue  # already aligned: nothing to compare
            x, grad = _inputs(n, locations, "bfloat16")
            options = dict(norm_strategy=strategy, align_rows=align)
            _run("fwd", x, grad, **options)
            ms = triton.testing.do_bench(
                lambda x=x, options=options: _run("fwd", x, None, **dict(options)),
                warmup=10,
                rep=40,
                return_mode="median",
            )
            rows.append(
                dict(kind="fwd-variant", N=n, L=locations, precision="bfloat16", ms=ms, **options)
            )
            _record(log, rows[-1])
    return rows


def _best(rows: list[dict]) -> dict[tuple, dict]:
    best: dict[tuple, dict] = {}
    for row in rows:
        if "ms" not in row or row["max_rel_deviation"] > 0.05:
            continue
        key = (row["kind"], row["precision"], row["N"], row["L"])
        if key not in best or row["ms"] < best[key]["ms"]:
            best[key] = row
    return best


def summary(rows: list[dict], variants: list[dict], device: str) -> str:
    """Markdown: the best candidate per case, the winners' union, the strategy timings."""
    import triton

    best = _best(rows)
    defaults = {kind: _default_candidate(kind) for kind in ("fwd", "bwd")}
    default_ms = {
        (r["kind"], r["precision"], r["N"], r["L"]): r["ms"]
        for r in rows
        if "ms" in r and tuple(r["candidate"]) == defaults[r["kind"]]
    }
    lines = [
        f"Device: {device}; torch {torch.__version__}, triton {triton.__version__}; C = {CHANNELS}",
        "",
        "| kernel | precision | N | L | best candidate | ms | first default config ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(best):
        row = best[key]
        default = f"{default_ms[key]:.4f}" if key in default_ms else "—"
        cells = [*map(str, key), str(tuple(row["candidate"])), f"{row['ms']:.4f}", default]
        lines.append("| " + " | ".join(cells) + " |")
    for kind in ("fwd", "bwd"):
        winners = sorted({tuple(r["candidate"]) for k, r in best.items() if k[0] == kind})
        lines += ["", f"{kind} candidates that win a case: {winners}"]
    if variants:
        lines += ["", "| N | L | norm_strategy | align_rows | forward ms (bfloat16) |"]
        lines.append("|---|---|---|---|---|")
        for v in variants:
            cells = [v["N"], v["L"], v["norm_strategy"], v["align_rows"], f"{v['ms']:.4f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", f"{len(failed)} candidates did not run, e.g. {failed[0]}"]
    return "\n".join(lines) + "\n"


def _default_candidate(kind: str) -> tuple:
    """The first configuration of the current autotune list, as a candidate tuple."""
    from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd

    if kind == "fwd":
        c = bilinear_fwd._bilinear_pool_fwd_kernel.configs[0]
        return (c.kwargs["BLOCK_C"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
    c = bilinear_bwd._gram_grad_matmul_kernel.configs[0]
    blocks = (c.kwargs["BLOCK_A"], c.kwargs["BLOCK_B"], c.kwargs["BLOCK_L"])
    return (*blocks, c.num_warps, c.num_stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    os.environ["TRITON_INTERPRET"] = "0"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.budget_s
    jobs = _jobs()
    # Compile in parallel (spawned workers: CUDA does not survive a fork). N is not part of a
    # kernel's specialization: one batch size per (kernel, L, precision, candidate) compiles all.
    # Compiling may take at most half the budget: what is not compiled by then is not timed.
    compile_jobs = list(dict.fromkeys((kind, 8, *rest) for kind, _, *rest in jobs))
    errors = dict.fromkeys(compile_jobs, "not compiled within the budget")
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.imap(_compile_one, compile_jobs)
        for job in compile_jobs:
            remaining = started + args.budget_s / 2 - time.monotonic()
            try:
                errors[job] = results.next(timeout=max(remaining, 0.001))
            except multiprocessing.TimeoutError:
                pool.terminate()
                break
    failures = {job: errors[(job[0], 8, *job[2:])] for job in jobs if errors[(job[0], 8, *job[2:])]}
    print(f"compiled {len(jobs)} jobs in {time.monotonic() - started:.0f} s "
          f"({len(failures)} did not run)", flush=True)  # fmt: skip
    with open(args.out / "tune.jsonl", "w") as log:
        # The strategy comparison first: a handful of timings that decide a default.
        variants = _time_strategies(deadline, log)
        rows = _time_jobs(jobs, failures, deadline, log)
    table = summary(rows, variants, torch.cuda.get_device_name())
    (args.out / "tune.md").write_text(table)
    print(table)
    print(f"sweep took {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
