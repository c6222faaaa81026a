"""Compile every kernel configuration for a GPU target on any machine, and report what it costs.

    TRITON_INTERPRET=0 python bench/sm90_report.py               # markdown table, sm_90
    TRITON_INTERPRET=0 python bench/sm90_report.py --json        # one JSON row per line
    TRITON_INTERPRET=0 python bench/sm90_report.py --arch 86     # consumer Ampere
    python bench/sm90_report.py --from-json rows.jsonl --first-only   # render saved rows

Each kernel is compiled the way a real launch at the seed's shape specializes it (N = 32,
C = 512, L = 784; integer arguments equal to 1 become constants, those divisible by 16 carry the
divisibility hint, pointers are 16-byte aligned as torch allocations are), for every autotune
configuration, without a GPU. The report reads the cubin with the cuobjdump bundled with Triton:
registers and spills per thread, shared memory per block, resident CTAs per SM, and in the main
loop (the backward branch around the tensor-core instructions) the SASS instructions per
iteration, how many of them are tensor-core instructions, and whether operands arrive through
asynchronous copies. tests/kernels/test_kernel_compile_sm90.py asserts on the same rows.

When a kernel's arguments change, ``CASES`` below must follow (a missing argument raises).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import triton
from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd, newton_schulz
from bcnn_triton.kernels.common import CONSUMER_SHARED_MEMORY
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

__all__ = [
    "CASES",
    "Case",
    "compile_case",
    "report_rows",
    "shared_memory_estimate",
    "smallest_config",
]

N, C, L = 32, 512, 784
_CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# Per-SM limits of sm_80/86/89/90: registers, shared memory (with the 1 KiB per block the
# driver reserves), resident warps and blocks.
_SM_LIMITS = {
    80: (65536, 167936, 64, 32),
    86: (65536, 102400, 48, 16),
    89: (65536, 102400, 48, 24),
    90: (65536, 233472, 64, 32),
}
_TRITON_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


@dataclass
class Case:
    """One specialization of one kernel: pointer dtypes, integer and float arguments as a
    launch at the seed's shape passes them, and the constexpr flags."""

    name: str
    kernel: object
    pointers: dict[str, str]
    ints: dict[str, int]
    floats: tuple[str, ...] = ()
    constexprs: dict[str, object] = field(default_factory=dict)
    # float and bfloat16 tensor-core work is expected (the report asserts on it in tests)
    tensor_cores: bool = False


def _map_strides(layout: str, channels: int = C, locations: int = L) -> tuple[int, int, int]:
    """(n, c, l) strides of a (N, C, L) map: contiguous, or channels_last (N, H, W, C)."""
    if layout == "contiguous":
        return channels * locations, locations, 1
    return channels * locations, 1, channels


def _forward_case(name, dtype, precision, layout, **flags) -> Case:
    sx = _map_strides(layout)
    cells = (C // 16) ** 2
    pointers = {p: dtype for p in ("x_ptr", "y_ptr", "out_ptr")}
    pointers.update({p: "fp32" for p in ("shift_x_ptr", "shift_y_ptr", "residual_x_ptr")})
    pointers.update(residual_y_ptr="fp32", sumsq_ptr="fp32", norm_ptr="fp32")
    constexprs = dict(SELF=True, SIGNED_SQRT=True, TRIU=False, CENTER=False, SLOT=16)
    constexprs.update(SUMSQ=False, STORE=True, DIVIDE=False, INPUT_PRECISION=precision)
    constexprs.update(flags)
    ints = dict(C_X=C, C_Y=C, L=L, BATCH_BUCKET=N, stride_outn=C * C, stride_sumsqn=cells)
    ints.update(stride_xn=sx[0], stride_xc=sx[1], stride_xl=sx[2])
    ints.update(stride_yn=sx[0], stride_yc=sx[1], stride_yl=sx[2])
    return Case(
        name,
        bilinear_fwd._bilinear_pool_fwd_kernel,
        pointers,
        ints,
        ("inv_locations", "eps", "norm_eps"),
        constexprs,
        tensor_cores=precision != "ieee",
    )


def _matmul_case(name, m_dtype, v_dtype, precision, layout) -> Case:
    sv = _map_strides(layout)
    pointers = dict(m_ptr=m_dtype, v_ptr=v_dtype, mean_ptr="fp32", norm_ptr="fp32")
    pointers["result_ptr"] = v_dtype
    ints = dict(A_DIM=C, B_DIM=C, L=L, BATCH_BUCKET=N, stride_mn=C * C, stride_ma=C, stride_mb=1)
    ints.update(stride_vn=sv[0], stride_vc=sv[1], stride_vl=sv[2])
    ints.update(stride_resn=sv[0], stride_resc=sv[1], stride_resl=sv[2])
    constexprs = dict(SIGNED_SQRT=True, NORMALIZE=True, CENTER=False, INPUT_PRECISION=precision)
    return Case(
        name,
        bilinear_bwd._gram_grad_matmul_kernel,
        pointers,
        ints,
        ("inv_locations", "norm_eps"),
        constexprs,
        tensor_cores=precision != "ieee",
    )


def _elementwise_cases() -> list[Case]:
    grad_pointers = dict(grad_ptr="bf16", out_ptr="bf16", partial_ptr="fp32", norm_ptr="fp32")
    grad_ints = dict(A_DIM=C, B_DIM=C, CHUNKS=C * C // 4096, stride_gradn=C * C)
    grad_ints.update(stride_gradd=1, stride_outn=C * C)
    grad_flags = dict(SELF=True, SIGNED_SQRT=True, NORMALIZE=True, TRIU=False)
    block = dict(BLOCK=bilinear_bwd._GRAD_BLOCK)
    sx = _map_strides("contiguous")
    return [
        Case(
            "gram grad bf16",
            bilinear_bwd._gram_grad_kernel,
            {**grad_pointers, "m_ptr": "bf16"},
            grad_ints,
            ("norm_eps",),
            {**grad_flags, **block},
        ),
        Case(
            "gram grad bf16 triu",
            bilinear_bwd._gram_grad_kernel,
            {**grad_pointers, "m_ptr": "bf16"},
            {**grad_ints, "stride_gradn": C * (C + 1) // 2, "stride_outn": C * (C + 1) // 2},
            ("norm_eps",),
            {**grad_flags, **block, "TRIU": True},
        ),
        Case(
            "normalize fp32 -> bf16",
            bilinear_fwd._normalize_rows_kernel,
            dict(src_ptr="fp32", dst_ptr="bf16", sumsq_ptr="fp32", norm_ptr="fp32"),
            dict(D=C * C, CELLS=(C // 16) ** 2, stride_srcn=C * C, stride_dstn=C * C),
            ("norm_eps",),
            dict(BLOCK=4096),
        ),
        Case(
            "channel shifts bf16",
            bilinear_fwd._channel_shift_kernel,
            dict(x_ptr="bf16", shift_ptr="fp32", residual_ptr="fp32"),
            dict(C=C, L=L, stride_xn=sx[0], stride_xc=sx[1], stride_xl=sx[2]),
            ("shift_ratio_sq",),
            dict(BLOCK_C=32, BLOCK_L=64),
        ),
    ]


def _newton_schulz_case(name, precision, out_dtype="fp32", **flags) -> Case:
    """A phase of the Newton–Schulz iteration at iSQRT-COV's width (C = 256), tangents on."""
    channels = 256
    size = channels * channels
    constexprs = dict(MAKE_T=False, TANGENT=True, SLOT_STEP=1, SCALE=False, TRIU=False)
    constexprs.update(INPUT_PRECISION=precision, **flags)
    stride_out_n = channels * (channels + 1) // 2 if constexprs["TRIU"] else 4 * size
    ints = dict(C=channels, BATCH_BUCKET=N, stride_state_n=4 * size, stride_state_s=size)
    ints.update(stride_pair_n=2 * size, stride_pair_s=size, stride_out_n=stride_out_n)
    ints.update(stride_out_s=0 if constexprs["TRIU"] else size)
    pointers = dict(state_ptr="fp32", pair_ptr="fp32", out_ptr=out_dtype, scale_ptr="fp32")
    return Case(
        name,
        newton_schulz._newton_schulz_kernel,
        pointers,
        ints,
        (),
        constexprs,
        tensor_cores=precision != "ieee",
    )


#: What the report compiles: the forward in each precision and layout the GPU check times, its
#: two normalization passes, the backward GEMM, and the elementwise kernels once; the phases of
#: the Newton–Schulz iteration.
CASES: list[Case] = [
    _forward_case("fwd bf16 Σs² pass", "bf16", "tf32", "contiguous", SUMSQ=True, STORE=False),
    _forward_case("fwd bf16 normalized pass", "bf16", "tf32", "contiguous", DIVIDE=True),
    _forward_case("fwd bf16 channels_last", "bf16", "tf32", "channels_last", DIVIDE=True),
    _forward_case("fwd bf16 centred", "bf16", "tf32", "contiguous", DIVIDE=True, CENTER=True),
    _forward_case("fwd bf16 triu", "bf16", "tf32", "contiguous", DIVIDE=True, TRIU=True),
    _forward_case("fwd tf32 stage", "fp32", "tf32", "contiguous", SUMSQ=True),
    _forward_case("fwd fp32 ieee stage", "fp32", "ieee", "contiguous", SUMSQ=True),
    _matmul_case("bwd GEMM bf16", "bf16", "bf16", "tf32", "contiguous"),
    _matmul_case("bwd GEMM bf16 channels_last", "bf16", "bf16", "tf32", "channels_last"),
    _matmul_case("bwd GEMM fp16 (tf32)", "fp32", "fp16", "tf32", "contiguous"),
    _matmul_case("bwd GEMM tf32", "fp32", "fp32", "tf32", "contiguous"),
    _matmul_case("bwd GEMM fp32 ieee", "fp32", "fp32", "ieee", "contiguous"),
    *_elementwise_cases(),
    _newton_schulz_case("newton-schulz T tf32", "tf32", MAKE_T=True),
    _newton_schulz_case("newton-schulz step tf32", "tf32"),
    _newton_schulz_case("newton-schulz step fp32 ieee", "ieee"),
    _newton_schulz_case(
        "newton-schulz last step bf16 triu",
        "tf32",
        "bf16",
        TANGENT=False,
        SLOT_STEP=2,
        SCALE=True,
        TRIU=True,
    ),
]


def _configs(kernel) -> list:
    """The autotune configurations of a kernel, or its launch defaults when not autotuned."""
    if isinstance(kernel, triton.runtime.Autotuner):
        return list(kernel.configs)
    return [triton.Config({}, num_warps=4, num_stages=3)]


def _source(jit, case: Case, config) -> ASTSource:
    signature, constexprs, attrs = {}, {}, {}
    values = {**case.constexprs, **config.kwargs}
    unspecialized = {jit.arg_names[i] if isinstance(i, int) else i for i in jit.do_not_specialize}
    for index, name in enumerate(jit.arg_names):
        if name in values:
            signature[name] = "constexpr"
            constexprs[(index,)] = values[name]
        elif name in case.pointers:
            signature[name] = _TRITON_TYPES[case.pointers[name]]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in case.floats:
            signature[name] = "fp32"
        else:
            value = case.ints[name]  # KeyError: CASES no longer matches the kernel
            if name in unspecialized:
                signature[name] = "i32"
            elif value == 1:
                signature[name] = "constexpr"
                constexprs[(index,)] = 1
            else:
                signature[name] = "i32" if abs(value) < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)


def _resources(cubin: bytes, workdir: str) -> tuple[dict, str]:
    path = os.path.join(workdir, "kernel.cubin")
    with open(path, "wb") as file:
        file.write(cubin)
    usage = subprocess.run(
        [_CUOBJDUMP, "--dump-resource-usage", path], capture_output=True, text=True, check=True
    ).stdout
    sass = subprocess.run(
        [_CUOBJDUMP, "-sass", path], capture_output=True, text=True, check=True
    ).stdout

    def field_of(key):
        match = re.search(rf"{key}:(\d+)", usage)
        return int(match.group(1)) if match else 0

    return {"regs": field_of("REG"), "spill": field_of("LOCAL") + field_of("STACK")}, sass


_MMA = re.compile(r"\b(HGMMA|HMMA|IMMA)\b")
_ASYNC_COPY = re.compile(r"\b(LDGSTS|UTMALDG|UBLKCP)\b")


def _main_loop(sass: str) -> dict:
    """The kernel's hot loops — backward branches around tensor-core (or, without them, FFMA)
    instructions: SASS instructions per iteration of each (a kernel with two loop versions,
    such as the centred forward, has two), and the tensor-core instructions of the busiest."""
    instructions = []  # (address, text)
    for line in sass.splitlines():
        match = re.match(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if match:
            instructions.append((int(match.group(1), 16), match.group(2)))
    loops = []
    for address, text in instructions:
        branch = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        if not branch or int(branch.group(1), 16) >= address:
            continue
        body = [t for a, t in instructions if int(branch.group(1), 16) <= a <= address]
        mma = sum(bool(_MMA.search(t)) for t in body)
        ffma = sum(bool(re.search(r"\bFFMA\b", t)) for t in body)
        if mma or ffma:
            loops.append((mma, ffma, len(body)))
    busiest = max(loops, default=(0, 0, 0))
    return {
        "loop_instructions": sorted(
            {size for mma, ffma, size in loops if (mma, ffma) == busiest[:2]}
        ),
        "loop_mma": busiest[0],
        "loop_ffma": busiest[1],
        "async_copy": bool(_ASYNC_COPY.search(sass)),
    }


def _ctas_per_sm(arch: int, regs: int, shared: int, warps: int) -> int:
    registers, shared_limit, max_warps, max_blocks = _SM_LIMITS[arch]
    by_regs = registers // max(1, (-(-regs * 32 // 256) * 256) * warps)
    by_shared = shared_limit // (shared + 1024) if shared else max_blocks
    return min(by_regs, by_shared, max_warps // warps, max_blocks)


def shared_memory_estimate(case: Case, config) -> int | None:
    """The autotuner's shared-memory estimate for ``config`` (None: the kernel is not pruned)."""
    estimate = {
        bilinear_fwd._bilinear_pool_fwd_kernel: bilinear_fwd.fwd_shared_memory,
        bilinear_bwd._gram_grad_matmul_kernel: bilinear_bwd.matmul_shared_memory,
    }.get(case.kernel)
    return estimate(config, _size_args(case)) if estimate else None


def smallest_config(case: Case):
    """The configuration a GPU with little shared memory keeps (None: not autotuned)."""
    if shared_memory_estimate(case, _configs(case.kernel)[0]) is None:
        return None
    return min(_configs(case.kernel), key=lambda config: shared_memory_estimate(case, config))


def compile_case(case: Case, arch: int = 90, configs: list | None = None) -> Iterator[dict]:
    """Compile ``case`` for each configuration (all by default); one report row for each."""
    jit = case.kernel.fn if isinstance(case.kernel, triton.runtime.Autotuner) else case.kernel
    with tempfile.TemporaryDirectory() as workdir:
        for config in configs or _configs(case.kernel):
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            compiled = triton.compile(
                _source(jit, case, config), target=GPUTarget("cuda", arch, 32), options=options
            )
            resources, sass = _resources(compiled.asm["cubin"], workdir)
            shared = compiled.metadata.shared
            row = {
                "case": case.name,
                "config": ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
                + f", warps={config.num_warps}, stages={config.num_stages}",
                "arch": arch,
                **resources,
                "shared": shared,
                "shared_estimate": shared_memory_estimate(case, config),
                "ctas_per_sm": _ctas_per_sm(arch, resources["regs"], shared, config.num_warps),
                "tensor_cores_expected": case.tensor_cores,
                **_main_loop(sass),
            }
            yield row


class _Sized:
    """Stands in for a tensor argument where a shared-memory estimate asks its element size."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def element_size(self) -> int:
        return 2 if self.dtype in ("bf16", "fp16") else 4


def _size_args(case: Case) -> dict:
    return {name: _Sized(dtype) for name, dtype in case.pointers.items()}


def report_rows(arch: int = 90, cases: list[Case] | None = None) -> Iterator[dict]:
    for case in cases or CASES:
        yield from compile_case(case, arch)


def _markdown(rows: list[dict]) -> str:
    header = (
        "| kernel | config | regs | spill B | shared KiB | CTAs/SM | loop instr | "
        "loop MMA | async copy |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['config']} | {r['regs']} | {r['spill']} | "
            f"{r['shared'] / 1024:.0f} | {r['ctas_per_sm']} | "
            f"{' / '.join(map(str, r['loop_instructions'])) or '—'} | "
            f"{r['loop_mma'] or ('FFMA ' + str(r['loop_ffma']) if r['loop_ffma'] else 0)} | "
            f"{'yes' if r['async_copy'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(_SM_LIMITS))
    parser.add_argument("--json", action="store_true", help="one JSON row per line")
    parser.add_argument("--cases", nargs="*", help="only the cases whose name contains these")
    parser.add_argument("--first-only", action="store_true", help="first config of each case")
    parser.add_argument("--from-json", type=Path, help="render rows written by --json")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [json.loads(line) for line in args.from_json.read_text().splitlines() if line]
    else:
        if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
            parser.error("run with TRITON_INTERPRET=0: the interpreter compiles nothing")
        cases = [c for c in CASES if not args.cases or any(s in c.name for s in args.cases)]
        rows = []
        for row in report_rows(args.arch, cases):
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
        if args.json:
            return 0
    if args.first_only:
        rows = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1]["case"] != r["case"]]
    arch = rows[0]["arch"] if rows else args.arch
    print(f"sm_{arch}, N={N}, C={C}, L={L}, triton {triton.__version__}")
    print(f"(shared memory limit of consumer GPUs: {CONSUMER_SHARED_MEMORY // 1024} KiB)\n")
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
