"""``bcnn-triton export``: format and file name, the onnxruntime check, and bad input."""

from __future__ import annotations

import gc
import sys

import pytest
from cli.test_cli_errors import fails
from deploy.checkpoints import write_checkpoint
from train.faults import full_disk_when, read_only, temp_files

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


def test_unwritable_out_fails_before_the_export(tmp_path, checkpoint, capsys, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("bcnn_triton.deploy.load_trained_model", must_not_load)
    blocker = tmp_path / "listing.txt"
    blocker.write_text("a file")
    out = blocker / "m.pt2"
    assert fails(["export", str(checkpoint), "--out", str(out)], capsys) == (
        f"error: --out {out}: folder {blocker} is a file, not a folder\n"
    )
    read_only(monkeypatch, tmp_path / "served")
    out = tmp_path / "served" / "m.pt2"
    assert fails(["export", str(checkpoint), "--out", str(out)], capsys) == (
        f"error: --out {out}: folder {out.parent} cannot be created: Read-only file system\n"
    )
    # Without --out the file goes beside the checkpoint: the message says so.
    read_only(monkeypatch, checkpoint.parent)
    beside = checkpoint.with_suffix(".pt2")
    assert fails(["export", str(checkpoint), "--format", "pt2"], capsys) == (
        f"error: output file {beside}: folder {checkpoint.parent} is not writable: "
        "Read-only file system\n"
    )


def test_a_full_disk_during_the_export_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    full_disk_when(monkeypatch, lambda: True)
    out = tmp_path / "served" / "m.pt2"
    capsys.readouterr()
    assert main(["export", str(checkpoint), "--out", str(out)]) == 1
    stderr = capsys.readouterr().err
    assert stderr == f"error: {out}: No space left on device\n"
    assert not out.exists() and temp_files(out.parent) == []
    # torch's archive writer, left half-done, used to abort the process when collected.
    gc.collect()
