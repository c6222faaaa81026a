"""``bcnn-triton predict``: a table, CSV/JSON files, unreadable images, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from cli.test_cli_errors import fails
from data.image_trees import write_corrupt
from deploy.checkpoints import CLASSES, write_checkpoint, write_photo

from bcnn_triton.cli import main
from bcnn_triton.deploy import Predictor


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "run")


@pytest.fixture
def photos(tmp_path):
    return [write_photo(tmp_path / "photos" / f"{i}.png", (40 + i, 33), seed=i) for i in range(4)]


def test_table_and_csv(tmp_path, checkpoint, photos, capsys):
    out = tmp_path / "predictions.csv"
    args = ["predict", str(checkpoint), str(tmp_path / "photos"), "--top-k", "2"]
    assert main([*args, "--output", str(out), "--no-progress", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    expected = Predictor(checkpoint, device="cpu", top_k=2).predict(photos).predictions
    lines = captured.out.splitlines()
    assert lines[0].split() == ["image", "class", "prob", "next"]
    for line, prediction in zip(lines[1:], expected, strict=True):
        top, second = prediction.classes
        assert line.startswith(prediction.path) and top in line
        assert f"{100 * prediction.probabilities[0]:.1f}%" in line
        assert line.endswith(f"{second} {100 * prediction.probabilities[1]:.1f}%")
    assert f"4 images predicted with {checkpoint}; written: {out}" in captured.err
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [str(path) for path in photos]
    assert [row["class_1"] for row in rows] == [p.classes[0] for p in expected]
    assert [float(row["probability_2"]) for row in rows] == pytest.approx(
        [p.probabilities[1] for p in expected], abs=1e-6
    )


def test_json_output_and_a_glob(tmp_path, checkpoint, photos):
    out = tmp_path / "predictions.json"
    pattern = str(tmp_path / "photos" / "[12].png")
    assert main(["predict", str(checkpoint), pattern, "--output", str(out), "--no-progress"]) == 0
    rows = json.loads(out.read_text())
    assert [row["path"] for row in rows] == [str(photos[1]), str(photos[2])]
    assert all(len(row["top_k"]) == len(CLASSES) for row in rows)  # 5 = the default top-k
    assert all(entry["class"] in CLASSES for row in rows for entry in row["top_k"])


def test_unreadable_images_are_named_and_the_rest_predicted(tmp_path, checkpoint, photos, capsys):
    bad = write_corrupt(tmp_path / "photos" / "2b-truncated.png")
    out = tmp_path / "predictions.csv"
    status = main(["predict", str(checkpoint), str(tmp_path / "photos"), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert f"cannot read image {bad} (" in captured.err and "Traceback" not in captured.err
    assert "4 images predicted" in captured.err and "1 could not be read" in captured.err
    assert len(out.read_text().splitlines()) == 1 + len(photos)


def test_bad_input_is_one_line(tmp_path, checkpoint, photos, capsys):
    folder = str(tmp_path / "photos")
    missing = tmp_path / "missing.pt"
    assert fails(["predict", str(missing), folder], capsys).strip() == (
        f"error: checkpoint {missing} does not exist"
    )
    foreign = tmp_path / "resnet.pth"
    torch.save({"weight": torch.zeros(2)}, foreign)
    assert "is not a bcnn-triton checkpoint" in fails(["predict", str(foreign), folder], capsys)
    out = tmp_path / "predictions.xlsx"
    stderr = fails(["predict", str(checkpoint), folder, "--output", str(out)], capsys)
    assert "its name must end in .csv or .json" in stderr and not out.exists()
    stderr = fails(["predict", str(checkpoint), str(tmp_path / "nope.jpg")], capsys)
    assert stderr.strip() == f"error: no such image file or folder: {tmp_path / 'nope.jpg'}"
    assert "no file matches" in fails(["predict", str(checkpoint), folder + "/*.tif"], capsys)
    assert "--top-k" in fails(["predict", str(checkpoint), folder, "--top-k", "0"], capsys)
    assert "unknown device" in fails(["predict", str(checkpoint), folder, "--device", "x"], capsys)


def test_unwritable_output_fails_before_predicting(tmp_path, checkpoint, photos, capsys):
    blocker = tmp_path / "listing.txt"
    blocker.write_text("a file")
    out = blocker / "predictions.csv"
    stderr = fails(
        ["predict", str(checkpoint), str(tmp_path / "photos"), "--output", str(out)], capsys
    )
    assert stderr == f"error: --output {out}: folder {blocker} is a file, not a folder\n"


def test_image_size_flag(tmp_path, checkpoint, photos, capsys):
    args = ["predict", str(checkpoint), str(photos[0]), "--image-size", "48", "--top-k", "1"]
    assert main(args) == 0
    expected = Predictor(checkpoint, device="cpu", image_size=48, top_k=1).predict(photos[0])
    assert expected.predictions[0].classes[0] in capsys.readouterr().out
