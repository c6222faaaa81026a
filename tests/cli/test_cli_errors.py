"""Bad input ends in one ``error: ...`` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from data.image_trees import make_cub, make_folder, write_corrupt

from bcnn_triton.cli import main


def fails(args: list[str], capsys) -> str:
    """Run ``main(args)``; assert status 2 and a traceback-free stderr; return stderr."""
    try:
        status = main(args)
    except SystemExit as exit_info:  # argparse's own usage errors
        status = exit_info.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert "Traceback" not in stderr
    return stderr


def test_missing_data_folder(tmp_path, capsys):
    stderr = fails(["train", "--data", str(tmp_path / "nowhere"), "--backbone", "tiny"], capsys)
    assert stderr.strip() == f"error: data folder {tmp_path / 'nowhere'} does not exist"


def test_empty_data_folder(tmp_path, capsys):
    assert "has no class folders" in fails(["train", "--data", str(tmp_path)], capsys)


def test_cub_folder_missing_a_split_file(tmp_path, capsys):
    base = make_cub(tmp_path)
    (base / "train_test_split.txt").unlink()
    stderr = fails(["train", "--data", str(tmp_path), "--backbone", "tiny"], capsys)
    assert f"CUB folder {base} is missing train_test_split.txt" in stderr


def test_corrupt_image_is_named(tmp_path, capsys, tiny_train_args):
    make_folder(tmp_path / "train", classes=2, per_class=4)
    make_folder(tmp_path / "test", classes=2, per_class=1)
    bad = write_corrupt(tmp_path / "train" / "c0" / "img_0.png")
    args = ["train", "--data", str(tmp_path), "--backbone", "tiny", "--out", str(tmp_path / "o")]
    stderr = fails([*args, *tiny_train_args], capsys)
    assert f"error: cannot read image {bad}" in stderr and "--skip-bad-images" in stderr


@pytest.mark.slow
def test_skip_bad_images_finishes_the_run(tmp_path, capsys, tiny_train_args):
    make_folder(tmp_path / "train", classes=2, per_class=4)
    make_folder(tmp_path / "test", classes=2, per_class=1)
    write_corrupt(tmp_path / "train" / "c0" / "img_0.png")
    args = ["train", "--data", str(tmp_path), "--backbone", "tiny", "--out", str(tmp_path / "o")]
    assert main([*args, "--skip-bad-images", *tiny_train_args]) == 0
    assert "skipping unreadable image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "alexnet"], "argument --backbone: invalid choice: 'alexnet'"),
        (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
        (["--num-classes", "0"], "argument --num-classes: must be >= 1, got 0"),
        (["--num-classes", "1"], "error: --num-classes must be at least 2"),
        (["--epochs", "1", "2", "3", "--stage", "both"], "--epochs takes one value, or one"),
        (["--stage", "fc", "--init", "x.pt"], "--init gives stage all its starting weights"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_flags(args, message, capsys):
    assert message in fails(["train", *args], capsys)


def test_resume_without_checkpoint(tmp_path, capsys):
    stderr = fails(["train", "--out", str(tmp_path), "--resume"], capsys)
    assert "--resume: no checkpoint to resume from" in stderr


def test_existing_run_is_not_overwritten(tmp_path, capsys, tiny_train_args):
    args = ["train", "--out", str(tmp_path), "--head", "gap", *tiny_train_args]
    assert main(args) == 0
    before = (tmp_path / "fc" / "metrics.json").read_bytes()
    assert "already holds checkpoints" in fails(args, capsys)
    assert (tmp_path / "fc" / "metrics.json").read_bytes() == before


def test_checkpoint_from_another_backbone_or_head(tmp_path, capsys, tiny_train_args):
    gap = tmp_path / "gap"
    assert main(["train", "--out", str(gap), "--head", "gap", *tiny_train_args]) == 0
    args = ["train", "--out", str(tmp_path / "b"), "--head", "bilinear", "--stage", "all"]
    stderr = fails([*args, "--init", str(gap / "fc" / "best.pt"), *tiny_train_args], capsys)
    assert "was made for another model: head 'gap' (checkpoint) vs 'bilinear'" in stderr


def test_checkpoint_with_another_class_count(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--head", "gap", *tiny_train_args]) == 0
    make_folder(tmp_path / "three", classes=3, per_class=4)
    stderr = fails(["eval", str(out), "--data", str(tmp_path / "three")], capsys)
    assert f"checkpoint {out / 'fc' / 'best.pt'} has 4 classes, the data has 3" in stderr


def test_truncated_checkpoint_is_reported(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--head", "gap", *tiny_train_args]) == 0
    best = out / "fc" / "best.pt"
    best.write_bytes(best.read_bytes()[:500])
    assert f"checkpoint {best} is truncated or corrupt" in fails(["eval", str(best)], capsys)


@pytest.mark.slow
def test_subprocess_prints_one_line(tmp_path):
    command = [sys.executable, "-m", "bcnn_triton", "train", "--data", str(tmp_path / "missing")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'missing'} does not exist"
    ]
