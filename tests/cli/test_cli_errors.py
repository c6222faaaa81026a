"""Bad input ends in one ``error: ...`` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys
import urllib.error

import pytest
import torch
from data.image_trees import make_cub, make_folder, write_corrupt

from bcnn_triton.cli import main


def fails(args: list[str], capsys, *, after_logs: bool = False) -> str:
    """Run ``main(args)``; assert status 2 and one line ``error: ...``, no traceback; return stderr.

    ``after_logs``: the run got going (progress lines may come first); the error is the last line.
    """
    capsys.readouterr()  # what earlier commands of the test printed
    try:
        status = main(args)
    except SystemExit as exit_info:  # argparse's own usage errors
        status = exit_info.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), stderr
    assert after_logs or len(lines) == 1, stderr
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
    stderr = fails([*args, *tiny_train_args], capsys, after_logs=True)
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
        (["--weight-decay", "-1"], "argument --weight-decay: must be >= 0, got -1.0"),
        (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
        (["--head", "max"], "argument --head: invalid choice: 'max'"),
    ],
)
def test_bad_flags(args, message, capsys):
    stderr = fails(["train", *args], capsys)
    assert message in stderr
    if message.startswith("argument"):  # argparse's own errors, in one line, point to --help
        assert stderr.rstrip().endswith("(see: bcnn-triton train --help)")


@pytest.mark.parametrize(
    ("size", "backbone", "minimum"),
    [("0", "tiny", 8), ("4", "tiny", 8), ("-3", "resnet18", 8), ("8", "vgg16", 16)],
)
def test_image_size_below_the_backbones_minimum(tmp_path, capsys, size, backbone, minimum):
    out = tmp_path / "run"
    args = ["train", "--image-size", size, "--backbone", backbone, "--weights", "none"]
    stderr = fails([*args, "--out", str(out)], capsys)
    assert stderr == (
        f"error: --image-size must be at least {minimum} for backbone {backbone}; got {size}\n"
    )
    assert not out.exists()


def test_synthetic_validation_split_empty(tmp_path, capsys):
    args = ["train", "--num-classes", "50", "--train-size", "40", "--out", str(tmp_path / "o")]
    stderr = fails(args, capsys)
    assert "the validation split is empty" in stderr
    assert "--train-size 100 or more, or fewer --num-classes" in stderr


def test_data_path_is_a_file(tmp_path, capsys):
    listing = tmp_path / "afile.txt"
    listing.write_text("not a dataset")
    stderr = fails(["train", "--data", str(listing)], capsys)
    assert (
        stderr == f"error: --data {listing} is a file, not a folder; pass the folder that "
        "holds the dataset\n"
    )
    assert listing.read_text() == "not a dataset"


def test_offline_weights_hint_uses_the_flags(tmp_path, capsys, monkeypatch, tiny_train_args):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def download_fails(url, destination, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download_fails)
    args = ["train", "--backbone", "resnet18", "--weights", "DEFAULT", "--head", "gap"]
    stderr = fails([*args, "--out", str(tmp_path / "o"), *tiny_train_args], capsys, after_logs=True)
    assert "could not be had offline" in stderr
    assert "--weights /path/to/resnet18-f37072fd.pth (or --weights none" in stderr
    assert 'weights="' not in stderr


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
    stderr = fails(
        [*args, "--init", str(gap / "fc" / "best.pt"), *tiny_train_args], capsys, after_logs=True
    )
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


@pytest.mark.parametrize("content", ["bytes", "pickle", "torch-object"])
def test_foreign_file_is_not_our_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content == "bytes":
        path.write_bytes(b"not a checkpoint at all")
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"x": 1}))
    else:
        torch.save(torch.nn.Linear(2, 2), path)
    before = path.read_bytes()
    stderr = fails(["eval", str(path)], capsys)
    assert f"checkpoint {path} is truncated or corrupt, or not a bcnn-triton checkpoint" in stderr
    # torch's own message advises weights_only=False: running code from an unknown file.
    assert "weights_only" not in stderr
    assert path.read_bytes() == before
    holds_objects = "it holds Python objects, which are not loaded for safety" in stderr
    assert holds_objects == (content != "bytes"), stderr


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path, capsys, command):
    from deploy.checkpoints import tiny_model, write_checkpoint

    model = tiny_model()
    path = write_checkpoint(
        tmp_path / "run", model, model_config={**model.config, "num_classes": 7}
    )
    stderr = fails([command, str(path), *(["photos"] if command == "predict" else [])], capsys)
    assert stderr.startswith(
        f"error: checkpoint {path}: its weights do not fit the model its config describes "
        "(head bilinear, backbone tiny, num_classes 7): fc.weight is 5×"
    )


@pytest.mark.slow
def test_subprocess_prints_one_line(tmp_path):
    command = [sys.executable, "-m", "bcnn_triton", "train", "--data", str(tmp_path / "missing")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'missing'} does not exist"
    ]
