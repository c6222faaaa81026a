"""The kernels compile for a real GPU target (sm_90) — checked on any machine, GPU or not.

The interpreter runs the kernels as Python, so it accepts code that Triton's compiler refuses
(values merged across runtime branches, unsupported constructs) and never runs out of shared
memory. Here Triton compiles every autotune configuration to a cubin for an H100 in a
subprocess with the interpreter off, and each must fit the 227 KiB of shared memory a block
may use there.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd

def compile_all(autotuned, pointer_types, scalar_types, variants):
    jit = autotuned.fn
    for config in autotuned.configs:
        for constexprs in variants:
            constexprs = {**constexprs, **config.kwargs}
            signature = {name: ("constexpr" if name in constexprs else
                                pointer_types.get(name) or scalar_types.get(name, "i32"))
                         for name in jit.arg_names}
            source = ASTSource(fn=jit, signature=signature, constexprs={
                (jit.arg_names.index(k),): v for k, v in constexprs.items()})
            kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={
                "num_warps": config.num_warps, "num_stages": config.num_stages})
            yield {"kernel": jit.__name__, **constexprs, "shared": kernel.metadata.shared}

results = []
for dtype, precision, paths in json.loads(sys.argv[1]):
    # "self+triu" covers the single-stream, mirrored and triangular stores; "two" the two-stream
    # case without the signed square root.
    variants = [dict(SELF=path != "two", SIGNED_SQRT=path != "two", TRIU=path == "self+triu",
                     INPUT_PRECISION=precision) for path in paths]
    fwd_pointers = {name: "*" + dtype for name in ("x_ptr", "y_ptr", "out_ptr")}
    fwd_pointers["sumsq_ptr"] = "*fp32"
    results += compile_all(
        bilinear_fwd._bilinear_pool_fwd_kernel, fwd_pointers,
        {"inv_locations": "fp32", "eps": "fp32"}, [{**v, "SLOT": 16} for v in variants])
    bwd_pointers = {name: "*" + dtype for name in ("grad_ptr", "out_ptr", "v_ptr", "result_ptr")}
    bwd_pointers.update(projection_ptr="*fp32", scale_ptr="*fp32")
    results += compile_all(bilinear_bwd._bilinear_pool_bwd_kernel, bwd_pointers, {}, variants)
print(json.dumps(results))
"""

# Hopper's per-block shared-memory limit (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_MEMORY_LIMIT = 232448


# bfloat16 through every code path; float32 (the largest tiles in shared memory) through one.
CASES = [
    ["bf16", "tf32", ["self+triu", "two"]],
    ["fp32", "ieee", ["self"]],
    ["fp32", "tf32", ["self"]],
]


def test_every_config_compiles_for_sm90(tmp_path):
    # A fresh cache: a kernel compiled before must not stand in for this Triton's compiler.
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(CASES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    compiled = json.loads(run.stdout.strip().splitlines()[-1])
    configs = 2  # autotune configurations per kernel
    assert len(compiled) == 2 * configs * sum(len(paths) for *_, paths in CASES)
    too_big = [c for c in compiled if c["shared"] > SHARED_MEMORY_LIMIT]
    assert not too_big, too_big
