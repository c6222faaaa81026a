"""``bcnn-triton export``: format and file name, the onnxruntime check, and bad input."""

from __future__ import annotations

import sys

import pytest
from cli.test_cli_errors import fails
from deploy.checkpoints import write_checkpoint

from bcnn_triton.cli import main


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "run")


def test_onnx_named_by_extension_and_checked(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "served" / "birds.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--image-size", "40"]) == 0
    stderr = capsys.readouterr().err
    assert f"written: {out} (onnx; input images (N, 3, 40, 40), output logits (N, 5)" in stderr
    assert "checked with onnxruntime: max |logits - PyTorch logits| = " in stderr
    difference = float(stderr.rsplit("= ", 1)[1])
    assert difference <= 1e-4
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 40, 40]


def test_pt2_beside_the_checkpoint_of_a_run_folder(tmp_path, checkpoint, capsys):
    assert main(["export", str(tmp_path / "run"), "--format", "pt2"]) == 0
    assert (tmp_path / "run" / "best.pt2").is_file()
    assert f"written: {tmp_path / 'run' / 'best.pt2'} (pt2;" in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    stderr = fails(["export", str(checkpoint), "--format", "pt2", "--out", "m.onnx"], capsys)
    assert stderr.strip() == "error: --format pt2 does not match the extension of --out m.onnx"
    missing = tmp_path / "nothing"
    assert fails(["export", str(missing)], capsys).strip() == (
        f"error: checkpoint {missing} does not exist"
    )
    assert "invalid choice: 'tflite'" in fails(
        ["export", str(checkpoint), "--format", "tflite"], capsys
    )
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.delitem(sys.modules, "bcnn_triton.deploy.onnx_ops", raising=False)
    stderr = fails(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")], capsys)
    assert "ONNX export needs the packages onnx and onnxscript" in stderr
    assert "pip install 'bcnn-triton[export]'" in stderr
    assert not (tmp_path / "m.onnx").exists()
