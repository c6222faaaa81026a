"""``--backbone timm/...`` on the command line: both stages, then predict and export on the run;
the offline and missing-timm errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cli.test_cli_errors import fails

from bcnn_triton.cli import main
from bcnn_triton.data import SyntheticSecondOrder
from bcnn_triton.models.timm_backbone import timm_architecture

pytest.importorskip("timm")

TINY = [
    "--weights", "none", "--head", "gap", "--epochs", "1", "1", "--image-size", "32",
    "--train-size", "24", "--test-size", "8", "--val-fraction", "0.25", "--batch-size", "8",
    "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize("backbone", ["timm/resnet18", "timm/vit_tiny_patch16_224"])
def test_train_both_stages_then_predict_and_export(tmp_path, capsys, monkeypatch, backbone):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    # Two --epochs values without --stage: both stages, also on the fc-only synthetic demo.
    assert main(["train", "--backbone", backbone, "--out", str(out), *TINY]) == 0
    assert f"backbone {backbone}, 32 px, stage fc" in capsys.readouterr().out
    state = torch.load(out / "all" / "best.pt", weights_only=True)
    assert state["preprocessing"]["interpolation"] == "bicubic"

    photos = SyntheticSecondOrder(2, image_size=32, split="test").save_images(tmp_path / "photos")
    assert main(["predict", str(out), str(tmp_path / "photos"), "--no-progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[1:]] == [str(path) for path in photos]

    exported = tmp_path / "model.pt2"
    assert main(["export", str(out), "--format", "pt2", "--out", str(exported)]) == 0
    program = torch.export.load(exported)
    assert program.module()(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_offline_pretrained_weights_name_the_model_and_how_to_download(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "bcnn_triton", "train", "--backbone"]
    command += ["timm/resnet18.a1_in1k", "--weights", "DEFAULT", "--out", str(tmp_path / "o")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pretrained weights of backbone 'timm/resnet18.a1_in1k'")
    assert "timm.create_model('resnet18.a1_in1k', pretrained=True)" in last
    assert "--weights /path/to/model.safetensors" in last and "Traceback" not in result.stderr


def test_without_timm_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    timm_architecture.cache_clear()
    stderr = fails(["train", "--backbone", "timm/resnet18", "--out", str(tmp_path)], capsys)
    assert stderr == "error: backbone 'timm/resnet18' needs timm: pip install 'bcnn-triton[timm]'\n"
    monkeypatch.undo()
    timm_architecture.cache_clear()


def test_unknown_timm_model_is_named(tmp_path, capsys):
    stderr = fails(["train", "--backbone", "timm/no_such_net", "--out", str(tmp_path)], capsys)
    assert stderr.startswith("error: --backbone timm/no_such_net: timm has no model 'no_such_net'")
