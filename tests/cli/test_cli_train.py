"""``bcnn-triton train``: the demo table, output folders, defaults, and ``python -m``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bcnn_triton.cli import main


def test_both_heads_and_the_comparison_table(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "demo"
    assert main(["train", "--out", str(out), *tiny_train_args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("synthetic second-order data (4 classes), backbone tiny, 32 px")
    assert "stage fc (frozen backbone)" in table[0]
    assert table[2].split()[0] == "bilinear" and table[3].split()[0] == "gap"
    assert table[2].endswith("s") and "%" in table[2]
    for head in ("bilinear", "gap"):
        assert (out / head / "fc" / "best.pt").is_file()
        assert (out / head / "fc" / "metrics.json").is_file()


def test_one_head_two_stages(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--head",
        "bilinear",
        "--stage",
        "both",
        "--lr",
        "1",
        "0.01",
    ]
    assert main([*args, *tiny_train_args]) == 0
    assert "stage fc (frozen backbone) + all (fine-tuned)" in capsys.readouterr().out
    assert (out / "fc" / "best.pt").is_file() and (out / "all" / "best.pt").is_file()


def test_default_out_is_a_timestamped_folder_under_runs(tmp_path, monkeypatch, tiny_train_args):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--head", "gap", *tiny_train_args]) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert run.name[:8].isdigit() and (run / "fc" / "best.pt").is_file()


def test_help_documents_the_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "two-step recipe" in text and "--auto-resume" in text and "torchrun" in text


@pytest.mark.slow
def test_python_dash_m(tmp_path, tiny_train_args):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "bcnn_triton", "train", "--out", str(out), "--head", "gap"]
    result = subprocess.run(
        [*command, *tiny_train_args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split()[0] == "gap"
    assert "stage fc: best val accuracy" in result.stderr
