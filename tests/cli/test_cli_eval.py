"""``bcnn-triton eval``: top-1, top-5, per-class accuracy, confusion matrix, metrics.json."""

from __future__ import annotations

import json

import pytest
from cli.conftest import TINY_TRAIN

from bcnn_triton.cli import main


@pytest.fixture
def trained_run(tmp_path, tiny_train_args):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--head", "bilinear", "--num-classes", "6"]
    assert main([*args, *tiny_train_args]) == 0
    return out


def test_eval_writes_metrics_and_confusion_matrix(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    out = trained_run / "fc" / "eval-test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 16 and metrics["split"] == "test"
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert len(metrics["per_class"]) == 6
    assert sum(row["count"] for row in metrics["per_class"]) == 16
    confusion = metrics["confusion"]
    assert len(confusion) == 6 and sum(map(sum, confusion)) == 16
    assert sum(confusion[k][k] for k in range(6)) == round(metrics["top1"] * 16)
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert f"top-1 {100 * metrics['top1']:.2f}%" in printed


def test_the_same_test_accuracy_as_training_reported(trained_run):
    training = json.loads((trained_run / "fc" / "metrics.json").read_text())["test"]
    assert main(["eval", str(trained_run / "fc" / "best.pt"), "--out", str(trained_run / "e")]) == 0
    evaluated = json.loads((trained_run / "e" / "metrics.json").read_text())
    assert evaluated["top1"] == training["top1"]
    assert evaluated["confusion"] == training["confusion"]


def test_validation_split(trained_run):
    assert main(["eval", str(trained_run), "--split", "val", "--out", str(trained_run / "v")]) == 0
    assert json.loads((trained_run / "v" / "metrics.json").read_text())["count"] == 12


@pytest.fixture(scope="module")
def two_head_run(tmp_path_factory):
    """The demo's layout with two heads: one run folder holding bilinear/ and gap/ (shared by
    the tests)."""
    out = tmp_path_factory.mktemp("eval") / "demo"
    assert main(["train", "--out", str(out), "--head", "bilinear", "gap", *TINY_TRAIN]) == 0
    return out


def test_run_folder_of_several_heads_evaluates_each(two_head_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(two_head_run), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == [
        str(two_head_run / head / "fc" / "best.pt") for head in ("bilinear", "gap")
    ]
    assert all("top-1" in line for line in lines[:2])
    assert lines[2].startswith("written: ") and len(lines) == 3
    for head in ("bilinear", "gap"):
        training = json.loads((two_head_run / head / "fc" / "metrics.json").read_text())["test"]
        evaluated = json.loads(
            (two_head_run / head / "fc" / "eval-test" / "metrics.json").read_text()
        )
        assert evaluated["top1"] == training["top1"]


def test_head_option_picks_one_head(two_head_run, capsys):
    capsys.readouterr()
    out = two_head_run / "eval"
    assert main(["eval", str(two_head_run), "--head", "gap", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(two_head_run / "gap" / "fc" / "best.pt"))
    assert (out / "gap" / "metrics.json").is_file() and not (out / "bilinear").exists()


def test_unknown_head_names_the_heads_found(two_head_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(two_head_run), "--head", "isqrt"]) == 2
    assert capsys.readouterr().err == (
        f"error: --head isqrt: {two_head_run} holds the heads bilinear, gap\n"
    )
