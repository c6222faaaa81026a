"""``bcnn-triton doctor`` on a CPU-only machine, as a user runs it (docs/hardware.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bcnn_triton.cli import main


def test_doctor_checks_every_op_and_dtype_and_writes_them_as_json(tmp_path):
    path = tmp_path / "doctor.json"
    # As a user runs it: a fresh process, without the test session's TRITON_INTERPRET.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "bcnn_triton", "doctor", "--json", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no GPU" in run.stdout
    assert "24 op × dtype records, 0 on the Triton kernels; all checks passed" in run.stdout
    result = json.loads(path.read_text())
    assert result["ok"] is True and result["complete"] is True and result["environment"]["torch"]
    pairs = [(r["op"], r["dtype"]) for r in result["records"]]
    ops = ["bilinear_pool", "bilinear_pool center", "bilinear_pool triu"]
    ops += ["bilinear_pool two streams", "matrix_sqrt_newton_schulz", "isqrt_cov_pool"]
    assert pairs == [(op, d) for op in ops for d in ("float32", "tf32", "float16", "bfloat16")]
    for record in result["records"]:
        assert record["backend"] == "torch" and "not a GPU tensor" in record["reason"]
        assert [c["shape"].split()[0] for c in record["checks"]] == ["N=2", "N=2"]
        assert all(c["ok"] and c["path"] == "torch" for c in record["checks"])


def test_unknown_op_is_a_usage_error(capsys):
    assert main(["doctor", "--ops", "bilinear"]) == 2
    assert "error: --ops: unknown 'bilinear'; choose from bilinear_pool," in capsys.readouterr().err


def test_a_failed_check_exits_1_naming_the_case(capsys, monkeypatch):
    from bcnn_triton import doctor

    monkeypatch.setattr(doctor, "_TOLERANCE", {**doctor._TOLERANCE, "float16": 0.0})
    assert main(["doctor", "--ops", "bilinear_pool", "--dtypes", "float16"]) == 1
    captured = capsys.readouterr()
    assert "1 op × dtype records, 0 on the Triton kernels; 2 checks FAILED" in captured.out
    assert "doctor: FAILED bilinear_pool float16 N=2 C=512 28x28 (torch)" in captured.err
