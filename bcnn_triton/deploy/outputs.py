"""Prediction files: CSV (one row per image) or JSON (one object per image), by file extension."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from bcnn_triton.deploy.predictor import Prediction
from bcnn_triton.errors import UserInputError
from bcnn_triton.train.atomic import atomic_write_text

__all__ = ["OUTPUT_FORMATS", "output_format", "write_predictions"]

#: File extensions of prediction files and their format.
OUTPUT_FORMATS = {".csv": "csv", ".json": "json"}


def output_format(path: str | Path) -> str:
    """``"csv"`` or ``"json"`` from ``path``'s extension; UserInputError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserInputError(
            f"cannot tell the format of output file {path}: its name must end in "
            f"{' or '.join(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[suffix]


def _csv_text(predictions: Sequence[Prediction], top_k: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    writer.writerow(header)
    for prediction in predictions:
        row = [prediction.path]
        for name, probability in zip(prediction.classes, prediction.probabilities, strict=True):
            row += [name, f"{probability:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()


def _json_text(predictions: Sequence[Prediction]) -> str:
    rows = [
        {
            "path": prediction.path,
            "top_k": [
                {"class": name, "index": index, "probability": probability}
                for name, index, probability in zip(
                    prediction.classes, prediction.indices, prediction.probabilities, strict=True
                )
            ],
        }
        for prediction in predictions
    ]
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


def write_predictions(predictions: Sequence[Prediction], path: str | Path, top_k: int) -> None:
    """Write ``predictions`` to ``path`` (CSV or JSON by extension), atomically.

    CSV columns: ``path, class_1, probability_1, ..., class_k, probability_k``. JSON: a list
    of ``{"path": ..., "top_k": [{"class": ..., "index": ..., "probability": ...}, ...]}``.
    """
    text = (
        _csv_text(predictions, top_k) if output_format(path) == "csv" else _json_text(predictions)
    )
    atomic_write_text(path, text)
