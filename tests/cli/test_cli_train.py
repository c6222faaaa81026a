"""``bcnn-triton train``: the demo table, output folders, defaults, and ``python -m``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from bcnn_triton.cli import main
from bcnn_triton.train import engine


def test_three_heads_and_the_comparison_table(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "demo"
    assert main(["train", "--out", str(out), *tiny_train_args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("synthetic second-order data (4 classes), backbone tiny, 32 px")
    assert "stage fc (frozen backbone)" in table[0]
    assert [line.split()[0] for line in table[2:5]] == ["bilinear", "isqrt", "gap"]
    assert "covariance, matrix sqrt" in table[3]
    assert table[2].endswith("s") and "%" in table[2]
    for head in ("bilinear", "isqrt", "gap"):
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


def interrupt_at(monkeypatch, head: str, epoch: int) -> None:
    """Ctrl-C when ``head`` is about to train epoch ``epoch`` (0-based)."""
    train_epoch = engine._StageRun.train_epoch

    def train_or_interrupt(run, current_epoch):
        if run.config.head == head and current_epoch == epoch:
            raise KeyboardInterrupt
        return train_epoch(run, current_epoch)

    monkeypatch.setattr(engine._StageRun, "train_epoch", train_or_interrupt)


def interrupted(args: list[str], capsys) -> str:
    """Run ``main(args)``, expect Ctrl-C's status 130 and one line on stderr; return it."""
    capsys.readouterr()
    assert main(args) == 130
    [line] = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    return line


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues(tmp_path, capsys, monkeypatch, tiny_train_args):
    out = tmp_path / "demo"
    args = ["train", "--out", str(out), *tiny_train_args, "--epochs", "2"]
    interrupt_at(monkeypatch, "gap", 1)
    line = interrupted(args, capsys)
    command = line.split("interrupted: continue with: ", 1)[1]
    assert command.startswith("bcnn-triton train ") and command.endswith(f"--out {out} --resume")
    bilinear_history = json.loads((out / "bilinear" / "fc" / "metrics.json").read_text())
    isqrt_history = json.loads((out / "isqrt" / "fc" / "metrics.json").read_text())
    assert (out / "gap" / "fc" / "checkpoint-0001.pt").is_file()  # nothing lost

    monkeypatch.undo()
    assert main(shlex.split(command)[1:]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in table[2:5]] == ["bilinear", "isqrt", "gap"]
    gap = json.loads((out / "gap" / "fc" / "metrics.json").read_text())
    assert [row["epoch"] for row in gap["epochs"]] == [1, 2]
    # The finished heads were not trained again.
    bilinear = json.loads((out / "bilinear" / "fc" / "metrics.json").read_text())
    assert bilinear["epochs"] == bilinear_history["epochs"]
    isqrt = json.loads((out / "isqrt" / "fc" / "metrics.json").read_text())
    assert isqrt["epochs"] == isqrt_history["epochs"]


def test_ctrl_c_before_any_checkpoint(tmp_path, capsys, monkeypatch, tiny_train_args):
    interrupt_at(monkeypatch, "gap", 0)
    args = ["train", "--out", str(tmp_path / "run"), "--head", "gap", *tiny_train_args]
    line = interrupted(args, capsys)
    assert line == (
        "interrupted: no epoch had finished, so nothing was saved to resume; run the command again"
    )


def test_parser_does_not_import_torch():
    code = (
        "import sys\n"
        "from bcnn_triton.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'torchvision', 'triton', 'numpy', 'timm')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
