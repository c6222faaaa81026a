"""bcnn_triton.doctor on CPU: its float64 references, its checks, and that a wrong result fails.

The whole command (every op × dtype, as a user runs it) is tested in tests/cli/test_cli_doctor.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import bilinear_pool_reference, newton_schulz_sqrt_reference, spd_like

from bcnn_triton import doctor


def test_the_bilinear_reference_agrees_with_the_tests_reference():
    x = torch.rand(2, 6, 5, 4, dtype=torch.float64)
    y = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    for inputs, options in [
        ((x,), {}),
        ((x,), dict(triu=True)),
        ((x,), dict(center=True, eps=1e-3)),
        ((x, y), {}),
    ]:
        torch.testing.assert_close(
            doctor._bilinear_reference(*inputs, **options),
            bilinear_pool_reference(*inputs, **options),
        )


def test_the_newton_schulz_reference_agrees_with_the_tests_reference():
    a = spd_like(2, 7, 20, dtype=torch.float64)
    torch.testing.assert_close(
        doctor._newton_schulz_reference(a), newton_schulz_sqrt_reference(a, triu=True)
    )


def _op(name: str):
    return next(op for op in doctor.OPS if op.name == name)


def test_a_record_names_the_backend_the_reason_and_passes_its_checks():
    settings = doctor.Settings(torch.device("cpu"), seed_batch=2, seed_shape=False)
    record = doctor.check_record(_op("bilinear_pool triu"), "bfloat16", settings)
    assert (record.op, record.dtype, record.backend) == ("bilinear_pool triu", "bfloat16", "torch")
    assert "not a GPU tensor" in record.reason
    (check,) = record.checks
    assert check.path == "torch" and check.shape == "N=2 C=64 8x8"
    assert 0 < check.forward_error <= check.forward_bound and record.ok
    assert record.as_dict()["checks"][0]["ok"] is True


def test_a_wrong_result_fails_its_check_and_is_named():
    op = _op("matrix_sqrt_newton_schulz")
    wrong = dataclasses.replace(op, run=lambda inputs, backend: 1.001 * op.run(inputs, backend))
    settings = doctor.Settings(torch.device("cpu"), seed_batch=2, seed_shape=False)
    record = doctor.check_record(wrong, "float32", settings)
    assert not record.ok
    (line,) = doctor.failures([record])
    assert line.startswith("matrix_sqrt_newton_schulz float32 N=2 C=32 (torch): error")


@pytest.mark.interpreter
# The interpreter evaluates both sides of tl.where: g / |z| where z = 0 is then discarded.
@pytest.mark.filterwarnings("ignore:.*encountered in divide:RuntimeWarning")
def test_the_interpreter_checks_the_kernels_on_cpu():
    env, records = doctor.run_doctor(
        "cpu", interpreter=True, ops=["bilinear_pool two streams"], dtypes=["float16", "bfloat16"]
    )
    assert env["triton_interpreter"] is True and "gpu" not in env
    half, bf16 = records
    assert [c.path for c in half.checks] == ["triton"] and half.ok
    assert [c.path for c in bf16.checks] == ["torch"] and "no bfloat16" in bf16.reason


@pytest.mark.interpreter
def test_a_kernel_that_fails_is_reported_not_raised(monkeypatch):
    from bcnn_triton.kernels import newton_schulz

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(newton_schulz, "matrix_sqrt_newton_schulz_fwd", broken)
    _, (record,) = doctor.run_doctor(
        "cpu", interpreter=True, ops=["isqrt_cov_pool"], dtypes=["float32"]
    )
    (check,) = record.checks
    assert check.error == "RuntimeError: PassManager::run failed" and not record.ok
