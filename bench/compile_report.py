"""Compile every kernel for NVIDIA and AMD GPU targets on any machine, and report what it costs.

    TRITON_INTERPRET=0 python bench/compile_report.py                    # markdown table, sm_90
    TRITON_INTERPRET=0 python bench/compile_report.py --arch sm_86 gfx942
    TRITON_INTERPRET=0 python bench/compile_report.py --arch all --json --jobs 2 > rows.jsonl
    TRITON_INTERPRET=0 python bench/compile_report.py --arch all --ci     # what the test compiles
    python bench/compile_report.py --from-json rows.jsonl --first-only    # render saved rows

Each kernel is compiled the way a real launch at the seed's shape specializes it (N = 32,
C = 512, L = 784; integer arguments equal to 1 become constants, those divisible by 16 carry the
divisibility hint, pointers are 16-byte aligned as torch allocations are), for every autotune
configuration, without a GPU, with the ``tl.dot`` input precision the launcher would pass on that
target. The report reads the machine code: for NVIDIA the cubin through the cuobjdump bundled
with Triton, for AMD the AMDGCN assembly. Per configuration: registers and spills per thread,
shared memory per block against the autotuner's estimate and the target's limit, resident CTAs
per SM (NVIDIA), and in the main loop (the backward branch around the tensor-core instructions)
the instructions per iteration, how many of them are tensor-core (matrix-core) instructions and
which kinds, and whether operands arrive through asynchronous copies. ``used_by_auto`` says
whether ``backend="auto"`` runs this specialization on that target (bcnn_triton.ops.dispatch).
tests/kernels/test_kernel_compile_targets.py asserts on the ``--ci`` rows.

When a kernel's arguments change, ``CASES`` below must follow (a missing argument raises).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd, newton_schulz
from bcnn_triton.kernels.common import dot_precision
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bcnn_triton.ops.dispatch import auto_support

__all__ = [
    "CASES",
    "CI_CASES",
    "TARGETS",
    "Case",
    "Target",
    "build_parser",
    "ci_cases",
    "compile_case",
    "compile_matrix",
    "shared_memory_estimate",
    "target_unavailable",
]

N, C, L = 32, 512, 784
_CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
_TRITON_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
_TORCH_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Target:
    """A GPU target and its per-block shared memory (the opt-in maximum), and for NVIDIA the
    per-SM limits of occupancy: registers, shared memory (with the 1 KiB per block the driver
    reserves), resident warps and blocks."""

    arch: str
    shared_limit: int
    sm_limits: tuple[int, int, int, int] | None = None

    def gpu_target(self) -> GPUTarget:
        if self.arch.startswith("gfx"):
            return GPUTarget("hip", self.arch, 64)
        return GPUTarget("cuda", int(self.arch.removeprefix("sm_")), 32)


#: The targets the report knows: A100; RTX 30xx/A10; RTX 40xx/L4; H100/H200; B200; RTX 50xx;
#: MI250; MI300; MI350.
TARGETS: dict[str, Target] = {
    t.arch: t
    for t in (
        Target("sm_80", 166912, (65536, 167936, 64, 32)),
        Target("sm_86", 101376, (65536, 102400, 48, 16)),
        Target("sm_89", 101376, (65536, 102400, 48, 24)),
        Target("sm_90", 232448, (65536, 233472, 64, 32)),
        Target("sm_100", 232448, (65536, 233472, 64, 32)),
        Target("sm_120", 101376, (65536, 102400, 48, 32)),
        Target("gfx90a", 65536),
        Target("gfx942", 65536),
        Target("gfx950", 163840),
    )
}


@dataclass
class Case:
    """One specialization of one kernel: pointer dtypes, integer and float arguments as a
    launch at the seed's shape passes them, and the constexpr flags. ``dtype`` is the op's input
    dtype and ``matmul_precision`` torch's float32 setting (what dispatch looks at); ``operand``
    is the dtype ``tl.dot`` multiplies and ``allow_tf32`` whether the launcher allows TF32 for
    it (what the input precision follows). No ``operand``: the kernel has no ``tl.dot``."""

    name: str
    kernel: object
    pointers: dict[str, str]
    ints: dict[str, int]
    floats: tuple[str, ...] = ()
    constexprs: dict[str, object] = field(default_factory=dict)
    dtype: str = "bf16"
    matmul_precision: str = "highest"
    operand: str | None = None
    allow_tf32: bool = False

    def precision(self, arch: str) -> str | None:
        """The input precision the launcher passes on ``arch`` (None: no ``tl.dot``)."""
        if self.operand is None:
            return None
        return dot_precision(_TORCH_TYPES[self.operand], arch, self.allow_tf32)

    def used_by_auto(self, arch: str) -> bool:
        """Whether ``backend="auto"`` runs this specialization on ``arch``."""
        tf32 = self.matmul_precision != "highest"
        return auto_support(arch, _TORCH_TYPES[self.dtype], tf32_allowed=tf32)[0]


def _map_strides(layout: str, channels: int = C, locations: int = L) -> tuple[int, int, int]:
    """(n, c, l) strides of a (N, C, L) map: contiguous, or channels_last (N, H, W, C)."""
    if layout == "contiguous":
        return channels * locations, locations, 1
    return channels * locations, 1, channels


def _forward_case(name, dtype, matmul_precision, layout, **flags) -> Case:
    sx = _map_strides(layout)
    cells = (C // 16) ** 2
    pointers = {p: dtype for p in ("x_ptr", "y_ptr", "out_ptr")}
    pointers.update({p: "fp32" for p in ("shift_x_ptr", "shift_y_ptr", "residual_x_ptr")})
    pointers.update(residual_y_ptr="fp32", sumsq_ptr="fp32", norm_ptr="fp32")
    constexprs = dict(SELF=True, SIGNED_SQRT=True, TRIU=False, CENTER=False, SLOT=16)
    constexprs.update(PHASE="divide")
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
        dtype=dtype,
        matmul_precision=matmul_precision,
        operand=dtype,
        allow_tf32=matmul_precision != "highest",
    )


def _matmul_case(name, map_dtype, matmul_precision, layout, center=False) -> Case:
    """The backward GEMM for maps of ``map_dtype``: M in bfloat16 for bfloat16 maps, else
    float32; float16 maps always allow TF32 (bilinear_bwd's module docstring)."""
    sv = _map_strides(layout)
    m_dtype = "bf16" if map_dtype == "bf16" else "fp32"
    pointers = dict(m_ptr=m_dtype, v_ptr=map_dtype, mean_ptr="fp32", norm_ptr="fp32")
    pointers["result_ptr"] = map_dtype
    ints = dict(A_DIM=C, B_DIM=C, L=L, BATCH_BUCKET=N, stride_mn=C * C, stride_ma=C, stride_mb=1)
    ints.update(stride_vn=sv[0], stride_vc=sv[1], stride_vl=sv[2])
    ints.update(stride_resn=sv[0], stride_resc=sv[1], stride_resl=sv[2])
    constexprs = dict(SIGNED_SQRT=True, NORMALIZE=True, CENTER=center)
    return Case(
        name,
        bilinear_bwd._gram_grad_matmul_kernel,
        pointers,
        ints,
        ("inv_locations", "norm_eps"),
        constexprs,
        dtype=map_dtype,
        matmul_precision=matmul_precision,
        operand=m_dtype,
        allow_tf32=map_dtype == "fp16" or matmul_precision != "highest",
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


def _newton_schulz_case(name, matmul_precision, out_dtype="fp32", **flags) -> Case:
    """A phase of the Newton–Schulz iteration at iSQRT-COV's width (C = 256), tangents on; the
    iteration runs in float32 whatever the input dtype."""
    channels = 256
    size = channels * channels
    constexprs = dict(MAKE_T=False, TANGENT=True, SLOT_STEP=1, SCALE=False, TRIU=False)
    constexprs.update(flags)
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
        dtype="fp32",
        matmul_precision=matmul_precision,
        operand="fp32",
        allow_tf32=matmul_precision != "highest",
    )


#: What the report compiles: the forward in each dtype, precision and layout the GPU check
#: times, its normalization passes, the backward GEMM, and the elementwise kernels once; the
#: phases of the Newton–Schulz iteration. "high"/"highest": torch's float32 matmul precision.
CASES: list[Case] = [
    _forward_case("fwd bf16 Σs² pass", "bf16", "highest", "contiguous", PHASE="sumsq"),
    _forward_case("fwd bf16 normalized pass", "bf16", "highest", "contiguous"),
    _forward_case("fwd bf16 channels_last", "bf16", "highest", "channels_last"),
    _forward_case("fwd bf16 centred", "bf16", "highest", "contiguous", CENTER=True),
    _forward_case("fwd bf16 triu", "bf16", "highest", "contiguous", TRIU=True),
    _forward_case("fwd fp16 normalized pass", "fp16", "highest", "contiguous"),
    _forward_case("fwd fp32 high stage", "fp32", "high", "contiguous", PHASE="stage"),
    _forward_case("fwd fp32 highest stage", "fp32", "highest", "contiguous", PHASE="stage"),
    _matmul_case("bwd GEMM bf16", "bf16", "highest", "contiguous"),
    _matmul_case("bwd GEMM bf16 channels_last", "bf16", "highest", "channels_last"),
    _matmul_case("bwd GEMM bf16 centred", "bf16", "highest", "contiguous", center=True),
    _matmul_case("bwd GEMM fp16", "fp16", "highest", "contiguous"),
    _matmul_case("bwd GEMM fp32 high", "fp32", "high", "contiguous"),
    _matmul_case("bwd GEMM fp32 highest", "fp32", "highest", "contiguous"),
    *_elementwise_cases(),
    _newton_schulz_case("newton-schulz T high", "high", MAKE_T=True),
    _newton_schulz_case("newton-schulz step high", "high"),
    _newton_schulz_case("newton-schulz step highest", "highest"),
    _newton_schulz_case(
        "newton-schulz last step bf16 triu",
        "high",
        "bf16",
        TANGENT=False,
        SLOT_STEP=2,
        SCALE=True,
        TRIU=True,
    ),
]

#: The test's share: one specialization per kernel and dtype (and float32 precision), compiled
#: where dispatch runs it (see ``ci_cases``).
CI_CASES: tuple[str, ...] = (
    "fwd bf16 normalized pass",
    "fwd fp16 normalized pass",
    "fwd fp32 high stage",
    "fwd fp32 highest stage",
    "bwd GEMM bf16",
    "bwd GEMM fp16",
    "bwd GEMM fp32 high",
    "bwd GEMM fp32 highest",
    "gram grad bf16",
    "normalize fp32 -> bf16",
    "channel shifts bf16",
    "newton-schulz step high",
    "newton-schulz step highest",
)


def ci_cases(arch: str) -> list[str]:
    """What the test compiles for ``arch``: the ``CI_CASES`` that ``backend="auto"`` runs
    there, and on sm_90 also those it does not (IEEE float32), to show why."""
    cases = [c for c in CASES if c.name in CI_CASES]
    return [c.name for c in cases if arch == "sm_90" or c.used_by_auto(arch)]


def _configs(kernel) -> list:
    """The autotune configurations of a kernel, or its launch defaults when not autotuned."""
    if isinstance(kernel, triton.runtime.Autotuner):
        return list(kernel.configs)
    return [triton.Config({}, num_warps=4, num_stages=3)]


def _source(jit, case: Case, config, arch: str) -> ASTSource:
    signature, constexprs, attrs = {}, {}, {}
    values = {**case.constexprs, **config.kwargs}
    if case.operand is not None:
        values["INPUT_PRECISION"] = case.precision(arch)
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


def _nvidia_resources(cubin: bytes) -> tuple[dict, list[tuple[int, str]]]:
    """Registers and spill bytes per thread from cuobjdump, and the SASS instructions with
    their addresses."""
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "kernel.cubin")
        with open(path, "wb") as file:
            file.write(cubin)

        dump = subprocess.run(
            [_CUOBJDUMP, "--dump-resource-usage", "-sass", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def field_of(key):
        match = re.search(rf"\b{key}:(\d+)", dump)
        return int(match.group(1)) if match else 0

    resources = {"regs": field_of("REG"), "spill": field_of("LOCAL") + field_of("STACK")}
    matches = re.findall(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", dump, re.M)
    return resources, [(int(address, 16), text) for address, text in matches]


def _nvidia_loops(instructions: list[tuple[int, str]]) -> list[list[str]]:
    """Bodies of the backward branches (``BRA`` to a lower address) of SASS."""
    loops = []
    for address, text in instructions:
        # "BRA 0x10f0", or with a uniform predicate "BRA.U !UP0, 0x10f0" (sm_100, sm_120)
        branch = re.search(r"\bBRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?(0x[0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            start = int(branch.group(1), 16)
            loops.append([t for a, t in instructions if start <= a <= address])
    return loops


def _amd_resources(amdgcn: str) -> tuple[dict, list[str]]:
    """Registers (VGPRs + AGPRs) and scratch bytes per lane from the AMDGCN metadata, and the
    instructions, each basic-block label kept as a ``.LBB...:`` line."""

    def field_of(key):
        match = re.search(rf"^\s*\.{key}:\s*(\d+)", amdgcn, re.M)
        return int(match.group(1)) if match else 0

    resources = {
        "regs": field_of("vgpr_count") + field_of("agpr_count"),
        "spill": field_of("private_segment_fixed_size") + field_of("vgpr_spill_count"),
    }
    lines = []
    for line in amdgcn.split(".Lfunc_end")[0].splitlines():
        stripped = line.split(";")[0].strip()
        if re.match(r"^\.LBB\w+:$", stripped) or re.match(r"^[a-z][a-z0-9_]*\b", stripped):
            lines.append(stripped)
    return resources, lines


def _amd_loops(instructions: list[str]) -> list[list[str]]:
    """Bodies of the backward branches (to an earlier label) of AMDGCN assembly."""
    loops, labels = [], {}
    for index, text in enumerate(instructions):
        if text.endswith(":"):
            labels[text[:-1]] = index
            continue
        branch = re.match(r"^s_(?:cbranch_\w+|branch)\s+(\.LBB\w+)", text)
        if branch and branch.group(1) in labels:
            loops.append(instructions[labels[branch.group(1)] : index + 1])
    return loops


_MMA = re.compile(r"\b(HGMMA|HMMA|IMMA|UTC\w*MMA|v_mfma\w*)")
# Local-memory (scratch) loads and stores: register spills and their reloads.
_SPILL = re.compile(r"\b(LDL|STL)\b|\bscratch_(load|store)|\bbuffer_(load|store)\S*\s.*\boff\b")
_FMA = re.compile(r"\b(FFMA|v_fmac?_f32|v_pk_fma_f32)\b")
_ASYNC_COPY = re.compile(r"\b(LDGSTS|UTMALDG|UBLKCP|global_load_lds\w*|buffer_load\w*lds)\b")


def _loop_summary(bodies: list[list[str]], instructions: list[str]) -> dict:
    """The hot loops — backward branches around tensor-core (or, without them, FMA)
    instructions: instructions per iteration of each (a kernel with two loop versions, such as
    the centred forward, has two), the tensor-core instructions of the busiest, their kinds,
    and the most spill loads and stores in any of them."""
    loops = []
    for body in bodies:
        mma = sum(bool(_MMA.search(t)) for t in body)
        fma = sum(bool(_FMA.search(t)) for t in body)
        if mma or fma:
            spills = sum(bool(_SPILL.search(t)) for t in body)
            loops.append((mma, fma, sum(not t.endswith(":") for t in body), spills))
    busiest = max(loops, default=(0, 0, 0, 0))
    return {
        "loop_instructions": sorted({n for mma, fma, n, _ in loops if (mma, fma) == busiest[:2]}),
        "loop_mma": busiest[0],
        "loop_ffma": busiest[1],
        "loop_spills": max((spills for *_, spills in loops), default=0),
        "mma_kinds": sorted({m.group(0) for t in instructions if (m := _MMA.search(t))}),
        "async_copy": any(_ASYNC_COPY.search(t) for t in instructions),
    }


def _machine_code(compiled, arch: str) -> dict:
    if arch.startswith("gfx"):
        resources, instructions = _amd_resources(compiled.asm["amdgcn"])
        return {**resources, **_loop_summary(_amd_loops(instructions), instructions)}
    resources, addressed = _nvidia_resources(compiled.asm["cubin"])
    text = [t for _, t in addressed]
    return {**resources, **_loop_summary(_nvidia_loops(addressed), text)}


def _ctas_per_sm(target: Target, regs: int, shared: int, warps: int) -> int | None:
    if target.sm_limits is None:
        return None
    registers, shared_limit, max_warps, max_blocks = target.sm_limits
    by_regs = registers // max(1, (-(-regs * 32 // 256) * 256) * warps)
    by_shared = shared_limit // (shared + 1024) if shared else max_blocks
    return min(by_regs, by_shared, max_warps // warps, max_blocks)


class _Sized:
    """Stands in for a tensor argument where a shared-memory estimate asks its element size."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def element_size(self) -> int:
        return 2 if self.dtype in ("bf16", "fp16") else 4


def shared_memory_estimate(case: Case, config, arch: str) -> int | None:
    """The autotuner's shared-memory estimate for ``config`` on ``arch`` (None: not pruned)."""
    estimate = {
        bilinear_fwd._bilinear_pool_fwd_kernel: bilinear_fwd.fwd_shared_memory,
        bilinear_bwd._gram_grad_matmul_kernel: bilinear_bwd.matmul_shared_memory,
    }.get(case.kernel)
    if estimate is None:
        return None
    args = {name: _Sized(dtype) for name, dtype in case.pointers.items()}
    return estimate(config, {**case.constexprs, **args}, arch)


def kept_configs(case: Case, arch: str) -> list:
    """The configurations the autotuner's pruner keeps on ``arch``: by the shared-memory
    estimate (the smallest when none fits, as ``shared_memory_pruner``); all of a kernel that
    is not pruned."""
    configs = _configs(case.kernel)
    sizes = [shared_memory_estimate(case, config, arch) for config in configs]
    if sizes[0] is None:
        return configs
    kept = [c for c, s in zip(configs, sizes, strict=True) if s <= TARGETS[arch].shared_limit]
    return kept or [configs[sizes.index(min(sizes))]]


def _same_config(a, b) -> bool:
    return (a.kwargs, a.num_warps, a.num_stages) == (b.kwargs, b.num_warps, b.num_stages)


def compile_case(case: Case, arch: str, configs: list | None = None) -> Iterator[dict]:
    """Compile ``case`` for ``arch``, each configuration (all by default); a report row each."""
    target = TARGETS[arch]
    kept = kept_configs(case, arch)
    jit = case.kernel.fn if isinstance(case.kernel, triton.runtime.Autotuner) else case.kernel
    for config in configs or _configs(case.kernel):
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = triton.compile(
            _source(jit, case, config, arch), target=target.gpu_target(), options=options
        )
        machine = _machine_code(compiled, arch)
        shared = compiled.metadata.shared
        yield {
            "case": case.name,
            "config": ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
            + f", warps={config.num_warps}, stages={config.num_stages}",
            "arch": arch,
            "precision": case.precision(arch),
            "used_by_auto": case.used_by_auto(arch),
            "kept": any(_same_config(config, k) for k in kept),
            "tensor_cores_expected": case.operand is not None and case.used_by_auto(arch),
            **machine,
            "shared": shared,
            "shared_estimate": shared_memory_estimate(case, config, arch),
            "shared_limit": target.shared_limit,
            "ctas_per_sm": _ctas_per_sm(target, machine["regs"], shared, config.num_warps),
        }


@triton.jit
def _probe_kernel(x_ptr, BLOCK: triton.language.constexpr):
    offs = triton.language.arange(0, BLOCK)
    triton.language.store(x_ptr + offs, triton.language.load(x_ptr + offs) + 1.0)


def target_unavailable(arch: str) -> str | None:
    """Why this machine cannot compile for ``arch`` at all (a missing backend or linker), or
    None: a trivial kernel compiles, so a failure of ours is ours."""
    source = ASTSource(
        fn=_probe_kernel, signature={"x_ptr": "*fp32", "BLOCK": "constexpr"}, constexprs={(1,): 64}
    )
    try:
        triton.compile(source, target=TARGETS[arch].gpu_target())
    except Exception as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
    return None


def _job(arch: str, case_name: str, ci: bool) -> list[dict]:
    """The rows of one case on one target; a configuration that fails to compile gives a row
    with its ``"error"``."""
    case = next(c for c in CASES if c.name == case_name)
    rows = []
    for config in kept_configs(case, arch)[:1] if ci else _configs(case.kernel):
        try:
            rows += compile_case(case, arch, [config])
        except Exception as error:
            message = f"{type(error).__name__}: {str(error).strip()[-600:]}"
            config_name = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
            config_name += f", warps={config.num_warps}, stages={config.num_stages}"
            rows.append({"case": case_name, "config": config_name, "arch": arch, "error": message})
    return rows


def compile_matrix(
    archs: list[str], cases: list[str], *, ci: bool = False, jobs: int = 1
) -> Iterator[dict]:
    """Rows for every (arch, case) in parallel processes: every configuration, or with ``ci``
    only the cases of ``ci_cases`` in the first configuration the pruner keeps. An arch this
    machine cannot compile for at all gives one row ``{"arch": ..., "unavailable": reason}``;
    a case that fails to compile, a row with ``"error"``. Rows come in (arch, case) order."""
    available = []
    for arch in archs:
        reason = target_unavailable(arch)
        if reason is None:
            available.append(arch)
        else:
            yield {"arch": arch, "unavailable": reason}
    work = [
        (arch, name, ci) for arch in available for name in cases if not ci or name in ci_cases(arch)
    ]
    if jobs <= 1:
        for item in work:
            yield from _job(*item)
        return
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        for rows in pool.map(_job, *zip(*work, strict=True)):
            yield from rows


def _markdown(rows: list[dict]) -> str:
    header = (
        "| arch | kernel | config | precision | auto | regs | spill B (in loop) | "
        "shared KiB (estimate) | CTAs/SM | loop instr | loop MMA | MMA kinds | async copy |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        if "error" in r or "unavailable" in r:
            lines.append(
                f"| {r['arch']} | {r.get('case', '—')} | {r.get('error') or r.get('unavailable')} |"
            )
            continue
        estimate = r.get("shared_estimate")
        lines.append(
            f"| {r['arch']} | {r['case']} | {r['config']} | {r.get('precision') or '—'} | "
            f"{('yes' if r.get('kept', True) else 'pruned') if r.get('used_by_auto') else 'no'} | "
            f"{r['regs']} | {r['spill']} ({r.get('loop_spills', '?')}) | "
            f"{r['shared'] / 1024:.1f}"
            + (f" ({estimate / 1024:.1f})" if estimate else "")
            + f" | {r['ctas_per_sm'] if r.get('ctas_per_sm') is not None else '—'} | "
            f"{' / '.join(map(str, r['loop_instructions'])) or '—'} | "
            f"{r['loop_mma'] or ('FMA ' + str(r['loop_ffma']) if r['loop_ffma'] else 0)} | "
            f"{' '.join(r.get('mma_kinds', [])) or '—'} | "
            f"{'yes' if r['async_copy'] else 'no'} |"
        )
    return "\n".join(lines)


def _arch_name(text: str) -> str:
    name = text if text.startswith(("sm_", "gfx")) else f"sm_{text}"
    if name not in TARGETS:
        raise argparse.ArgumentTypeError(f"unknown arch {text!r}; known: {', '.join(TARGETS)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["sm_90"], help="targets, or 'all'")
    parser.add_argument("--json", action="store_true", help="one JSON row per line")
    parser.add_argument("--cases", nargs="*", help="only the cases whose name contains these")
    parser.add_argument("--ci", action="store_true", help="the test's cases and configurations")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--first-only", action="store_true", help="first config of each case")
    parser.add_argument("--from-json", type=Path, help="render rows written by --json")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [json.loads(line) for line in args.from_json.read_text().splitlines() if line]
    else:
        if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
            parser.error("run with TRITON_INTERPRET=0: the interpreter compiles nothing")
        archs = list(TARGETS) if args.arch == ["all"] else [_arch_name(a) for a in args.arch]
        names = CI_CASES if args.ci else [c.name for c in CASES]
        names = [n for n in names if not args.cases or any(s in n for s in args.cases)]
        rows = []
        for row in compile_matrix(archs, names, ci=args.ci, jobs=args.jobs):
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
        if args.json:
            return 0
    if args.first_only:
        rows = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1].get("case") != r.get("case")]
    print(f"N={N}, C={C}, L={L}, triton {triton.__version__}\n")
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
