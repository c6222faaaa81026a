"""The kernels compile for every GPU target dispatch may send them to — on any machine.

The interpreter runs the kernels as Python, so it accepts code that Triton's compiler refuses
and never runs out of registers or shared memory. Here bench/compile_report.py compiles, with
the interpreter off and specialized like a launch at the seed's shape, one configuration of
each kernel × dtype (× float32 precision) for each target: sm_80, sm_86, sm_89, sm_90, sm_100,
sm_120 and the ROCm targets gfx90a, gfx942, gfx950 — the first configuration the autotuner's
pruner keeps there, its largest. The test holds the machine code to what dispatch relies on
(bcnn_triton.ops.dispatch): where ``backend="auto"`` runs a kernel, it compiles, uses tensor
(matrix) cores in its main loop, spills nothing there (and at most a few registers around
it) and (NVIDIA) loads its operands with asynchronous copies; everywhere, shared memory stays
within the target's limit and within the estimate the autotuner prunes by. The full matrix,
every configuration: ``TRITON_INTERPRET=0 python bench/compile_report.py --arch all``.

The compiles run in parallel processes and go through Triton's on-disk cache (keyed by the
source, the target, the options and Triton itself), so a rerun only reads the machine code back.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_BENCH = Path(__file__).resolve().parents[2] / "bench"
_TARGETS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120", "gfx90a", "gfx942", "gfx950")


@pytest.fixture(scope="module")
def rows():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    jobs = str(max(2, min(4, os.cpu_count() or 1)))
    command = [sys.executable, str(_BENCH / "compile_report.py"), "--arch", *_TARGETS]
    run = subprocess.run(
        [*command, "--ci", "--json", "--jobs", jobs],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def _rows_of(rows: list[dict], arch: str) -> list[dict]:
    """The rows of ``arch``; skips (with the reason) where this machine cannot compile for it."""
    unavailable = [r["unavailable"] for r in rows if r["arch"] == arch and "unavailable" in r]
    if unavailable:
        pytest.skip(f"this machine cannot compile for {arch}: {unavailable[0]}")
    return [r for r in rows if r["arch"] == arch]


def test_the_report_knows_every_target():
    sys.path.insert(0, str(_BENCH))
    from compile_report import TARGETS

    assert set(_TARGETS) == set(TARGETS)


@pytest.mark.parametrize("arch", _TARGETS)
def test_every_kernel_auto_runs_compiles(rows, arch):
    from compile_report import ci_cases

    compiled = _rows_of(rows, arch)
    failed = [r for r in compiled if "error" in r]
    assert not failed, failed
    assert [r["case"] for r in compiled] == ci_cases(arch)


#: Bytes per thread a kernel may keep in local memory outside its main loop: a few registers
#: saved before the loop and reloaded after it (Triton 3.6 spills 8 B that way in some
#: kernels, 3.8 none), against the kilobytes of a kernel whose loop spills.
SPILL_OUTSIDE_THE_LOOP = 16


@pytest.mark.parametrize("arch", _TARGETS)
def test_kernels_auto_runs_use_tensor_cores_and_spill_nothing(rows, arch):
    used = [r for r in _rows_of(rows, arch) if r["used_by_auto"]]
    assert used
    assert all(r["kept"] for r in used), "the test compiles what the pruner keeps"
    for row in used:
        assert row["loop_spills"] == 0 and row["spill"] <= SPILL_OUTSIDE_THE_LOOP, row
        if row["tensor_cores_expected"]:
            assert row["loop_mma"] > 0 and row["mma_kinds"], row
            if arch.startswith("sm_"):
                assert row["async_copy"], row


def test_float32_at_highest_precision_runs_only_where_it_has_matrix_cores(rows):
    # Dispatch keeps IEEE float32 on the torch path on NVIDIA: there the kernels multiply with
    # FMA (no tensor-core instruction in the loop); every ROCm target has float32 MFMA.
    highest = [r for r in rows if "highest" in r.get("case", "") and "error" not in r]
    assert {r["arch"] for r in highest} >= {"sm_90", "gfx942"}
    for row in highest:
        on_nvidia = row["arch"].startswith("sm_")
        assert row["used_by_auto"] is not on_nvidia, row
        assert (row["loop_mma"] > 0) is not on_nvidia, row


@pytest.mark.parametrize("arch", _TARGETS)
def test_shared_memory_within_the_target_and_the_pruners_estimate(rows, arch):
    # The autotuner prunes by the estimate: an estimate below the real size would let a
    # configuration through that cannot launch.
    for row in _rows_of(rows, arch):
        assert row["shared"] <= row["shared_limit"], row
        if row["shared_estimate"] is not None:
            assert row["shared"] <= row["shared_estimate"], row


@pytest.mark.parametrize("arch", _TARGETS)
def test_each_autotuned_kernel_keeps_a_configuration_that_fits(arch):
    sys.path.insert(0, str(_BENCH))
    from compile_report import CASES, TARGETS, kept_configs, shared_memory_estimate

    for case in CASES:
        for config in kept_configs(case, arch):
            estimate = shared_memory_estimate(case, config, arch)
            assert estimate is None or estimate <= TARGETS[arch].shared_limit, (case.name, config)
