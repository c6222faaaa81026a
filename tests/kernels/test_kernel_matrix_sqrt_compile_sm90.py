"""The Newton–Schulz kernel compiles for a real GPU target (sm_90) — on any machine, GPU or not.

As tests/kernels/test_kernel_compile_sm90.py does for the bilinear kernels: every autotune
configuration of ``_newton_schulz_kernel`` is compiled to a cubin for an H100 in a subprocess
with the interpreter off, for each phase the launchers use, and must fit the shared memory a
block may use there.
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
from bcnn_triton.kernels import newton_schulz

autotuned = newton_schulz._newton_schulz_kernel
jit = autotuned.fn
results = []
for out_type, precision, phase in json.loads(sys.argv[1]):
    pointers = {"state_ptr": "*fp32", "pair_ptr": "*fp32", "out_ptr": "*" + out_type,
                "scale_ptr": "*fp32"}
    for config in autotuned.configs:
        constexprs = {**phase, "INPUT_PRECISION": precision, **config.kwargs}
        signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32")
                     for name in jit.arg_names}
        # C = 256 and its multiples of 256 as strides: divisible by 16, as a real launch sees.
        attrs = {(jit.arg_names.index(name),): [["tt.divisibility", 16]]
                 for name in jit.arg_names if name in pointers or name.startswith(("C", "stride"))}
        source = ASTSource(fn=jit, signature=signature, attrs=attrs, constexprs={
            (jit.arg_names.index(k),): v for k, v in constexprs.items()})
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={
            "num_warps": config.num_warps, "num_stages": config.num_stages})
        results.append({**constexprs, "out": out_type, "shared": kernel.metadata.shared})
print(json.dumps(results))
"""

# Hopper's per-block shared-memory limit (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_MEMORY_LIMIT = 232448

_T_PHASE = dict(MAKE_T=True, TANGENT=True, SLOT_STEP=1, SCALE=False, TRIU=False)
_STEP = dict(MAKE_T=False, TANGENT=True, SLOT_STEP=1, SCALE=False, TRIU=False)
_LAST_FORWARD_STEP = dict(MAKE_T=False, TANGENT=False, SLOT_STEP=2, SCALE=True, TRIU=True)
CASES = [
    ["fp32", "ieee", _T_PHASE],
    ["fp32", "tf32", _STEP],
    ["bf16", "tf32", _LAST_FORWARD_STEP],
    ["fp16", "ieee", {**_LAST_FORWARD_STEP, "TRIU": False}],
]


def test_every_config_compiles_for_sm90(tmp_path):
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
    assert len(compiled) == 2 * len(CASES)  # two autotune configurations per case
    too_big = [c for c in compiled if c["shared"] > SHARED_MEMORY_LIMIT]
    assert not too_big, too_big
