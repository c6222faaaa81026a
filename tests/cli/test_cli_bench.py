"""``bcnn-triton bench`` on CPU: a table of the eager formula and the torch backend."""

from __future__ import annotations

from bcnn_triton.cli import main


def test_bench_table_on_cpu(capsys):
    args = ["bench", "-N", "2", "-C", "8", "-H", "4", "-W", "3", "--min-run-time", "0.01"]
    assert main([*args, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bilinear pool  N=2 C=8 HxW=4x3 float32 on cpu")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "eager" in rows and "torch" in rows
    assert rows["eager"].split()[4] == "1.00x"
    # Both agree with the float64 formula to float32 precision.
    assert float(rows["torch"].split()[-1]) < 1e-5
    assert any(line.startswith("triton: skipped on CPU") for line in lines)


def test_fp16_on_cpu_is_refused(capsys):
    assert main(["bench", "--device", "cpu", "--dtype", "float16"]) == 2
    assert "error: --dtype float16 is not timed on CPU" in capsys.readouterr().err
