"""A trained model, ready for inference: weights, class names and preprocessing from a checkpoint.

Checkpoints (``best.pt`` or ``checkpoint-NNNN.pt``) written by ``bcnn-triton train`` carry the
model config, the class names and the evaluation preprocessing. Older ones without the last two
still load: numbered class names, and the preprocessing derived from their stored data config,
each with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcnn_triton.data import EvalTransform, Preprocessing
from bcnn_triton.errors import UserInputError
from bcnn_triton.train import BEST_NAME, CheckpointError, load_model, resolve_device

__all__ = ["TrainedModel", "find_checkpoint", "load_trained_model"]

logger = logging.getLogger(__name__)

# Where a run folder keeps its final weights, most trained first (see bcnn_triton.train.run).
_RUN_FOLDER_CANDIDATES = (Path("all") / BEST_NAME, Path("fc") / BEST_NAME, Path(BEST_NAME))
# Training state of epoch checkpoints: of no use for inference, and large.
_TRAINING_STATE = frozenset({"model", "optimizer", "scheduler", "scaler", "rng"})


@dataclass
class TrainedModel:
    """A model in eval mode with what is needed to feed it images and name its outputs.

    Attributes:
        model: the network, (N, 3, S, S) normalized images → (N, num_classes) logits.
        classes: class names, index = logit position.
        preprocessing: how an image file becomes the model's input (S = ``image_size``).
        source: the checkpoint file it was loaded from.
        metadata: the checkpoint's other fields (epoch, val_acc, data_config...), no weights.
    """

    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    source: Path
    metadata: dict[str, Any]

    @property
    def transform(self) -> EvalTransform:
        """PIL image → (3, S, S) float32 input tensor, as the model was evaluated in training."""
        return self.preprocessing.eval_transform()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def best_checkpoint_in(folder: str | Path) -> Path | None:
    """The most trained ``best.pt`` of a run or stage folder (all/, fc/, the folder), or None."""
    for candidate in _RUN_FOLDER_CANDIDATES:
        if (Path(folder) / candidate).is_file():
            return Path(folder) / candidate
    return None


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file; for a run folder, its most trained ``best.pt``.

    A folder is searched for ``all/best.pt``, then ``fc/best.pt``, then ``best.pt``.

    Raises:
        CheckpointError: ``path`` does not exist, or a folder holds none of those files (the
            message lists the ``best.pt`` files found below it, e.g. of a ``--head both`` run).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    best = best_checkpoint_in(path)
    if best is not None:
        return best
    found = sorted(str(p) for p in path.glob(f"**/{BEST_NAME}"))
    hint = f"; found {', '.join(found[:4])}: pass one of them" if found else ""
    raise CheckpointError(
        f"no {BEST_NAME} in {path} (nor in {path / 'all'} or {path / 'fc'}){hint}"
    )


def load_trained_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> TrainedModel:
    """Load a checkpoint (or a run folder, see :func:`find_checkpoint`) for inference.

    Args:
        path: a ``best.pt``, an epoch checkpoint, or a run folder.
        device: where to put the model: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        image_size: evaluate at this size instead of the one the model was trained at (B-CNN
            pooling averages over locations, so any size works; accuracy is best near the
            training size). Needed only for old checkpoints that do not record any size.

    Returns:
        A :class:`TrainedModel` in eval mode on ``device``.

    Raises:
        CheckpointError: missing, corrupt, not a bcnn-triton checkpoint, or unusable.
        UserInputError: an unknown or unavailable device, or a bad ``image_size``.

    Example:
        >>> trained = load_trained_model("runs/demo/bilinear/fc/best.pt")
        >>> trained.classes, trained.preprocessing.image_size
        (['pairing+0', 'pairing+1', 'pairing+2', 'pairing+3'], 64)
    """
    source = find_checkpoint(path)
    model, state = load_model(source)
    target = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(target).eval()
    num_classes = int(model.config["num_classes"])
    metadata = {key: value for key, value in state.items() if key not in _TRAINING_STATE}
    return TrainedModel(
        model=model,
        classes=_class_names(state.get("classes"), num_classes, source),
        preprocessing=_preprocessing(state, source, image_size),
        source=source,
        metadata=metadata,
    )


def _class_names(stored: object, num_classes: int, source: Path) -> list[str]:
    valid = (
        isinstance(stored, (list, tuple))
        and len(stored) == num_classes
        and all(isinstance(name, str) for name in stored)
    )
    if valid:
        return list(stored)
    numbered = [f"class {index}" for index in range(num_classes)]
    logger.warning(
        "checkpoint %s does not record its %d class names; naming them %s ... %s",
        source,
        num_classes,
        numbered[0],
        numbered[-1],
    )
    return numbered


def _preprocessing(state: Mapping[str, Any], source: Path, image_size: int | None) -> Preprocessing:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise UserInputError(f"image_size must be an integer >= 1; got {image_size!r}")
    stored = state.get("preprocessing")
    if stored is not None:
        try:
            preprocessing = Preprocessing.from_dict(stored)
        except (UserInputError, TypeError) as error:
            raise CheckpointError(f"checkpoint {source}: {error}") from None
    else:
        data_config = state.get("data_config")
        trained_size = data_config.get("image_size") if isinstance(data_config, Mapping) else None
        size = image_size if image_size is not None else trained_size
        if size is None:
            raise CheckpointError(
                f"checkpoint {source} records neither its preprocessing nor its image size; "
                "pass the size the model was trained at (--image-size)"
            )
        preprocessing = Preprocessing(int(size))
        logger.warning(
            "checkpoint %s does not record its preprocessing; using what bcnn-triton's training "
            "uses: shorter side resized to %d px, centre crop, ImageNet mean and std",
            source,
            preprocessing.image_size,
        )
    if image_size is not None:
        preprocessing = dataclasses.replace(preprocessing, image_size=image_size)
    return preprocessing
