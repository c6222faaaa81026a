"""``bcnn-triton doctor``: what runs on this machine, and whether it computes the right thing.

The checks live in ``bcnn_triton.doctor``; this command prints them as they finish, writes them
as JSON with ``--json FILE``, and exits 0 when every check passed, 1 naming what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bcnn_triton.cli.common import positive_int
from bcnn_triton.errors import UserInputError

__all__ = ["add_parser", "run_doctor_command"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``doctor`` and its flags."""
    parser = subparsers.add_parser(
        "doctor",
        help="show what runs on this machine's GPU and check that it is correct",
        description="Prints the environment (Python, torch, CUDA/ROCm, Triton, the GPU), then "
        "for each op (bilinear pool: plain, centred, triu, two streams; matrix square root; "
        "iSQRT-COV) and dtype the backend that backend='auto' picks here and why, checked "
        "against a float64 reference at the seed's shape and a small one; on a GPU also the "
        "median forward+backward times of the Triton kernels and of the torch path. Exit "
        "status 0 when every check passed, 1 otherwise. About a minute on a CPU.",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--interpreter",
        action="store_true",
        help="on CPU, also run the Triton kernels through Triton's interpreter (small shapes)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        dest="compile_seed",
        help="on a GPU, also time torch.compile of the seed's formula (compiling takes minutes)",
    )
    parser.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (default: all)")
    parser.add_argument(
        "--dtypes", nargs="+", metavar="DTYPE", help="only these: float32 tf32 float16 bfloat16"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        help="processes that compile the kernels first on a GPU (default: up to 8)",
    )
    parser.set_defaults(handler=run_doctor_command)


def _use_interpreter() -> None:
    """Turn Triton's interpreter on; it must be on before Triton is imported."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserInputError("--interpreter: Triton is already imported; run in a new process")
    os.environ["TRITON_INTERPRET"] = "1"


def _check_names(flag: str, given: list[str] | None, known: list[str]) -> None:
    unknown = [name for name in given or [] if name not in known]
    if unknown:
        raise UserInputError(f"{flag}: unknown {unknown[0]!r}; choose from {', '.join(known)}")


def _write_json(args, env: dict, records: list, seconds: float, *, complete: bool) -> None:
    """The results so far into ``--json FILE``, rewritten after every record: a run cut short
    (a time limit, Ctrl-C) keeps what it checked, marked ``"complete": false``."""
    if args.json is None:
        return
    result = {
        "command": "bcnn-triton " + " ".join(args.argv),
        "environment": env,
        "seconds": round(seconds, 1),
        "complete": complete,
        "ok": all(record.ok for record in records),
        "records": [record.as_dict() for record in records],
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")


def run_doctor_command(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton doctor``."""
    if args.interpreter:
        _use_interpreter()
    from bcnn_triton import doctor
    from bcnn_triton.train import resolve_device

    _check_names("--ops", args.ops, [op.name for op in doctor.OPS])
    _check_names("--dtypes", args.dtypes, list(doctor.DTYPES))
    if args.json is not None and not args.json.parent.is_dir():
        raise UserInputError(f"--json: folder {args.json.parent} does not exist")
    device = resolve_device(args.device)
    started = time.monotonic()
    env = doctor.environment(device)
    print(doctor.format_environment(env), flush=True)
    done = []

    def progress(record) -> None:
        done.append(record)
        print(doctor.format_record(record), flush=True)
        _write_json(args, env, done, time.monotonic() - started, complete=False)

    _, records = doctor.run_doctor(
        device,
        interpreter=args.interpreter,
        compile_seed=args.compile_seed,
        ops=args.ops,
        dtypes=args.dtypes,
        workers=args.workers,
        progress=progress,
    )
    seconds = time.monotonic() - started
    failed = doctor.failures(records)
    on_triton = sum(record.backend == "triton" for record in records)
    verdict = f"{len(failed)} checks FAILED" if failed else "all checks passed"
    print(
        f"{len(records)} op × dtype records, {on_triton} on the Triton kernels; {verdict} "
        f"in {seconds:.0f} s"
    )
    _write_json(args, env, records, seconds, complete=True)
    for line in failed:
        print(f"doctor: FAILED {line}", file=sys.stderr)
    return 1 if failed else 0
