"""Prediction files: CSV and JSON by extension, one row per image, written atomically."""

from __future__ import annotations

import csv
import json

import pytest

from bcnn_triton.deploy import Prediction, output_format, write_predictions
from bcnn_triton.errors import UserInputError

PREDICTIONS = [
    Prediction("a/1.png", ["crow, american", 'the "wren"'], [0.75, 0.125], [2, 0]),
    Prediction("b/ä 2.jpg", ["gull", "crow, american"], [0.5, 0.25], [1, 2]),
]


def test_csv_one_row_per_image(tmp_path):
    path = tmp_path / "out" / "predictions.csv"
    write_predictions(PREDICTIONS, path, top_k=2)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["path", "class_1", "probability_1", "class_2", "probability_2"],
        ["a/1.png", "crow, american", "0.750000", 'the "wren"', "0.125000"],
        ["b/ä 2.jpg", "gull", "0.500000", "crow, american", "0.250000"],
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.csv"]


def test_json_one_object_per_image(tmp_path):
    path = tmp_path / "predictions.JSON"
    write_predictions(PREDICTIONS, path, top_k=2)
    assert json.loads(path.read_text(encoding="utf-8")) == [
        {
            "path": "a/1.png",
            "top_k": [
                {"class": "crow, american", "index": 2, "probability": 0.75},
                {"class": 'the "wren"', "index": 0, "probability": 0.125},
            ],
        },
        {
            "path": "b/ä 2.jpg",
            "top_k": [
                {"class": "gull", "index": 1, "probability": 0.5},
                {"class": "crow, american", "index": 2, "probability": 0.25},
            ],
        },
    ]


def test_no_predictions_give_a_header_or_an_empty_list(tmp_path):
    write_predictions([], tmp_path / "none.csv", top_k=1)
    assert (tmp_path / "none.csv").read_text() == "path,class_1,probability_1\n"
    write_predictions([], tmp_path / "none.json", top_k=1)
    assert json.loads((tmp_path / "none.json").read_text()) == []


@pytest.mark.parametrize("name", ["predictions.txt", "predictions", "out.csv.gz"])
def test_other_extensions_are_refused(tmp_path, name):
    with pytest.raises(UserInputError, match=f"cannot tell the format of output file .*{name}"):
        output_format(tmp_path / name)
    with pytest.raises(UserInputError):
        write_predictions(PREDICTIONS, tmp_path / name, top_k=2)
    assert not (tmp_path / name).exists()
