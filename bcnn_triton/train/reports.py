"""Metrics files and plots in ``--out``: metrics.json, metrics.csv, curves.png, confusion.png.

Every file is replaced atomically, so a crash leaves the previous complete version. matplotlib
is optional (extras ``plot``): without it the PNGs are skipped with a one-line notice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bcnn_triton.train.atomic import atomic_write, atomic_write_text

__all__ = ["plot_confusion_matrix", "plot_training_curves", "write_json", "write_metrics"]

logger = logging.getLogger(__name__)
_warned_no_matplotlib = False


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Atomically write ``payload`` as indented JSON."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def write_metrics(
    directory: str | Path, history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]
) -> None:
    """``metrics.json`` (``summary`` plus the per-epoch ``history``) and ``metrics.csv``."""
    directory = Path(directory)
    write_json(directory / "metrics.json", {**summary, "epochs": list(history)})
    if not history:
        return
    columns = list(history[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(directory / "metrics.csv", buffer.getvalue())


def _pyplot():
    global _warned_no_matplotlib
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned_no_matplotlib:
            _warned_no_matplotlib = True
            logger.info(
                "matplotlib is not installed: skipping plots (pip install 'bcnn-triton[plot]')"
            )
        return None
    return plt


def _save_figure(figure, path: Path) -> None:
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> bool:
    """Loss and accuracy per epoch (train and validation) as a PNG; False without matplotlib."""
    plt = _pyplot()
    if plt is None or not history:
        return False
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], "o-", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.plot(epochs, [row["train_acc"] for row in history], "o-", label="train")
    accuracy_axis.plot(epochs, [row["val_acc"] for row in history], "o-", label="validation")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        # Epochs are whole numbers: no 2.5 on the axis.
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    _save_figure(figure, Path(path))
    plt.close(figure)
    return True


def plot_confusion_matrix(
    confusion: torch.Tensor, classes: Sequence[str], path: str | Path
) -> bool:
    """Row-normalized confusion matrix (true class × predicted class) as a PNG.

    ``confusion`` is (K, K) counts. Class names label the axes when K <= 30.
    """
    plt = _pyplot()
    if plt is None:
        return False
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    size = min(12.0, 3.0 + 0.25 * len(classes))
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set(xlabel="predicted class", ylabel="true class", title="confusion (row-normalized)")
    if len(classes) <= 30:
        ticks = list(range(len(classes)))
        axis.set_xticks(ticks, labels=list(classes), rotation=90)
        axis.set_yticks(ticks, labels=list(classes))
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    _save_figure(figure, Path(path))
    plt.close(figure)
    return True
