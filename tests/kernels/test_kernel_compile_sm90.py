"""The kernels compile for real GPU targets, as a launch specializes them — on any machine.

The interpreter runs the kernels as Python, so it accepts code that Triton's compiler refuses
and never runs out of registers or shared memory. Here bench/sm90_report.py compiles every
kernel configuration for an H100 (sm_90) in a subprocess with the interpreter off, specialized
like a launch at the seed's shape, and the test holds the machine code to what matters: no
spills where tensor cores do the work, tensor-core instructions and asynchronous copies in the
main loops, shared memory within Hopper's limit and within the estimate the autotuner prunes by,
and for every autotuned kernel a configuration that fits consumer GPUs (compiled for sm_86).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_BENCH = Path(__file__).resolve().parents[2] / "bench"
_SCRIPT = r"""
import json
from sm90_report import CASES, compile_case, smallest_config

for case in CASES:
    rows = list(compile_case(case, 90))
    smallest = smallest_config(case)
    if smallest is not None:  # what the pruner keeps on a consumer GPU, compiled for one
        rows += compile_case(case, 86, [smallest])
    for row in rows:
        print(json.dumps(row), flush=True)
"""

# Hopper's per-block shared-memory limit (cudaDevAttrMaxSharedMemoryPerBlockOptin).
HOPPER_SHARED_MEMORY = 232448


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    # A fresh cache: a kernel compiled before must not stand in for this Triton's compiler.
    cache = tmp_path_factory.mktemp("triton-cache")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "TRITON_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join([str(_BENCH), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_every_configuration_compiles_within_hopper_shared_memory(compiled):
    from sm90_report import CASES

    hopper = [r for r in compiled if r["arch"] == 90]
    assert {r["case"] for r in hopper} == {case.name for case in CASES}
    too_big = [r for r in hopper if r["shared"] > HOPPER_SHARED_MEMORY]
    assert not too_big, too_big


def test_shared_memory_estimates_bound_what_triton_allocates(compiled):
    # The autotuner prunes by the estimate: an estimate below the real size would let a
    # configuration through that cannot launch.
    under = [r for r in compiled if r["shared_estimate"] and r["shared"] > r["shared_estimate"]]
    assert not under, under


def test_tensor_core_kernels_use_tensor_cores_async_copies_and_no_spills(compiled):
    rows = [r for r in compiled if r["arch"] == 90 and r["tensor_cores_expected"]]
    assert rows
    for row in rows:
        assert row["spill"] == 0, row
        assert row["loop_mma"] > 0, row
        assert row["async_copy"], row


def test_each_autotuned_kernel_keeps_a_configuration_for_consumer_gpus(compiled):
    from bcnn_triton.kernels.common import CONSUMER_SHARED_MEMORY

    consumer = [r for r in compiled if r["arch"] == 86]
    autotuned = {r["case"] for r in compiled if r["shared_estimate"] is not None}
    assert {r["case"] for r in consumer} == autotuned
    assert all(r["shared_estimate"] <= CONSUMER_SHARED_MEMORY for r in consumer), consumer
    assert all(r["shared"] <= CONSUMER_SHARED_MEMORY for r in consumer), consumer
