"""Predictions for image files: batched, preprocessed as in training, top-k class names.

Example::

    predictor = Predictor("runs/demo/bilinear/fc/best.pt")
    result = predictor.predict(["photos/", "more/*.jpg", "one.png"])
    for prediction in result.predictions:
        print(prediction.path, prediction.classes[0], prediction.probabilities[0])
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from bcnn_triton.data import ImageRecord, ImageRecordDataset, UnreadableImage, collate_images
from bcnn_triton.deploy.loading import TrainedModel, load_trained_model
from bcnn_triton.errors import UserInputError
from bcnn_triton.train import AMP_DTYPES

__all__ = ["Prediction", "PredictionResult", "Predictor", "collect_images"]

_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Prediction:
    """The ``k`` most probable classes of one image, most probable first."""

    path: str
    classes: list[str]
    probabilities: list[float]
    indices: list[int]


@dataclass(frozen=True)
class PredictionResult:
    """Predictions for the readable images and the files that could not be read, in input order."""

    predictions: list[Prediction]
    unreadable: list[UnreadableImage]


def _identity(path: str | Path) -> tuple[int, int] | Path:
    """(device, inode) of the file or folder ``path`` names, links followed.

    The path itself where it cannot be read: a broken link is then reported as unreadable
    under its own name.
    """
    try:
        info = os.stat(path)
    except OSError:
        return Path(path)
    return info.st_dev, info.st_ino


def _walk_once(top: str | Path, *, hidden_folders: bool = True) -> Iterator[tuple[str, list[str]]]:
    """``os.walk(top, followlinks=True)`` listing each real folder once: (folder, its files).

    Links are followed, so a folder can come again (a second link to it, or a link to a folder
    above it: a loop); it is listed where the sorted, top-down walk first meets it.
    """
    visited: set[tuple[int, int] | Path] = set()
    for directory, subdirectories, files in os.walk(top, followlinks=True):
        identity = _identity(directory)
        if identity in visited:
            subdirectories.clear()
            continue
        visited.add(identity)
        subdirectories[:] = sorted(
            name for name in subdirectories if hidden_folders or not name.startswith(".")
        )
        yield directory, files


def _images_in_folder(folder: Path) -> list[Path]:
    found = [
        Path(directory) / name
        for directory, files in _walk_once(folder)
        for name in sorted(files)
        if name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")
    ]
    if not found:
        raise UserInputError(
            f"no images under folder {folder} (looked for {', '.join(IMG_EXTENSIONS)})"
        )
    return found


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but ``**`` visits each real folder once.

    glob follows links under ``**`` and never stops in a loop: two links to ``.`` or ``..``
    make it exponential. Here the part before ``**`` is globbed (one level at a time, which
    ends), and ``**`` is a walk of each match (hidden folders skipped, as glob does).
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    split = parts.index("**")
    head, rest = os.sep.join(parts[:split]), os.sep.join(parts[split + 1 :])
    if split == 1 and not parts[0]:
        head = os.sep  # "/**/...": from the root
    bases = glob.glob(head) if glob.has_magic(head) else [head]
    matches = []
    for base in bases:
        for directory, _ in _walk_once(base or os.curdir, hidden_folders=False):
            # Relative patterns give relative names, as glob does ("a/b.png", not "./a/b.png").
            directory = os.path.relpath(directory) if not base else directory
            folder = "" if directory == os.curdir else directory
            if rest:
                matches.extend(_glob(os.path.join(glob.escape(folder), rest)))
            else:
                matches.append(folder or os.curdir)
    return matches


def _expand(item: str | Path) -> list[Path]:
    path = Path(item)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _images_in_folder(path)
    if _GLOB_CHARACTERS & set(str(item)):
        matches = sorted(set(_glob(str(item))))
        files = [Path(match) for match in matches if os.path.isfile(match)]
        folders = [Path(match) for match in matches if os.path.isdir(match)]
        found = files + [image for folder in folders for image in _images_in_folder(folder)]
        if not found:
            raise UserInputError(f"no file matches {item}")
        return found
    raise UserInputError(f"no such image file or folder: {item}")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders searched recursively, globs.

    A folder contributes its files with an image extension (sorted, hidden files skipped),
    following links to folders, each real folder once (a link loop ends there); a glob (``*``,
    ``?``, ``[...]``; ``**`` spans folders) its matching files and folders. Each real file
    appears once (not again under another link or name), in the order first named.

    Raises:
        UserInputError: no inputs, a path that does not exist, a glob that matches nothing,
            or a folder without images.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    seen: dict[tuple[int, int] | Path, Path] = {}
    for item in inputs:
        for path in _expand(item):
            seen.setdefault(_identity(path), path)
    if not seen:
        raise UserInputError("no input images given")
    return list(seen.values())


class Predictor:
    """Classify image files with a trained model: ``Predictor(checkpoint).predict(paths)``.

    Args:
        model: a checkpoint path (``best.pt``, epoch checkpoint or run folder) or a loaded
            :class:`TrainedModel`.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: images per forward pass.
        workers: DataLoader processes decoding and resizing images (0: in this process).
        amp: ``"off"``, ``"bf16"`` or ``"fp16"``: autocast for the forward pass.
        channels_last: run the model on ``channels_last`` images (converts the model's weights
            in place); often faster for convolutions on CPUs and on recent GPUs.
        top_k: how many classes to report per image (at most the number of classes).
        image_size: evaluate at another size than the training one.
        progress: show a progress bar (on a terminal, once a run has taken a second).

    Example:
        >>> predictor = Predictor("runs/demo/bilinear/fc/best.pt", top_k=2)
        >>> result = predictor.predict(["demo-images"])
        >>> first = result.predictions[0]
        >>> first.path, len(first.classes)  # its 2 most probable classes, most probable first
        ('demo-images/0000-pairing+0.png', 2)
    """

    def __init__(
        self,
        model: str | Path | TrainedModel,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        workers: int = 0,
        amp: str = "off",
        channels_last: bool = False,
        top_k: int = 5,
        image_size: int | None = None,
        progress: bool = False,
    ) -> None:
        if amp not in AMP_DTYPES:
            raise UserInputError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {amp!r}")
        for name, value, minimum in (("batch_size", batch_size, 1), ("workers", workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
        if isinstance(model, TrainedModel):
            if image_size is not None:
                raise UserInputError("image_size applies when loading a checkpoint path")
            self.trained = model
        else:
            self.trained = load_trained_model(model, device=device, image_size=image_size)
        self.top_k = self._checked_top_k(top_k)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.trained.model.to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.workers = workers
        self.amp = amp
        self.progress = progress

    @property
    def classes(self) -> list[str]:
        return self.trained.classes

    def _checked_top_k(self, top_k: int) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UserInputError(f"top_k must be an integer >= 1; got {top_k!r}")
        return min(top_k, self.trained.num_classes)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes) float32 for preprocessed images (N, 3, S, S)."""
        device = self.trained.device
        dtype = AMP_DTYPES[self.amp]
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
        ):
            images = images.to(device, memory_format=self.memory_format, non_blocking=True)
            logits = self.trained.model(images)
        return torch.softmax(logits.float(), dim=1)

    def predict_images(
        self, images: Sequence[Image.Image], *, top_k: int | None = None
    ) -> list[Prediction]:
        """Top-k predictions for PIL images already in memory (their ``path`` is ``""``)."""
        k = self._resolved_top_k(top_k)
        if not images:
            return []
        batch = torch.stack([self.trained.transform(image) for image in images])
        return self._top_k(self.probabilities(batch), [""] * len(images), k)

    def predict(
        self, inputs: Iterable[str | Path] | str | Path, *, top_k: int | None = None
    ) -> PredictionResult:
        """Predictions for image files, folders (recursive) and globs (see :func:`collect_images`).

        Unreadable files do not stop the run: they are returned in ``unreadable`` with the
        reason, and every other image gets its prediction.
        """
        k = self._resolved_top_k(top_k)
        paths = collect_images(inputs)
        # The label slot of each record carries the image's position in ``paths``.
        records = [ImageRecord(str(path), position) for position, path in enumerate(paths)]
        dataset = ImageRecordDataset(records, [], self.trained.transform)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=collate_images,
            pin_memory=self.trained.device.type == "cuda",
        )
        predictions, unreadable = [], []
        # disable=None: tqdm hides the bar when stderr is not a terminal (logs, pipes).
        disable = None if self.progress else True
        with tqdm(total=len(paths), unit="img", desc="predict", disable=disable, delay=1.0) as bar:
            for batch in loader:
                unreadable.extend(batch.unreadable)
                if len(batch.labels):
                    names = [str(paths[position]) for position in batch.labels.tolist()]
                    predictions.extend(self._top_k(self.probabilities(batch.images), names, k))
                bar.update(len(batch.labels) + len(batch.unreadable))
        return PredictionResult(predictions, unreadable)

    def _resolved_top_k(self, top_k: int | None) -> int:
        return self.top_k if top_k is None else self._checked_top_k(top_k)

    def _top_k(self, probabilities: torch.Tensor, paths: Sequence[str], k: int) -> list[Prediction]:
        values, indices = probabilities.topk(k, dim=1)
        return [
            Prediction(
                path=path,
                classes=[self.classes[index] for index in row_indices],
                probabilities=row_values,
                indices=row_indices,
            )
            for path, row_values, row_indices in zip(
                paths, values.tolist(), indices.tolist(), strict=True
            )
        ]
