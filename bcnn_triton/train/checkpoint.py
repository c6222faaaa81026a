"""Training checkpoints: written atomically each epoch, the last two kept, loaded safely.

Files in a stage folder (``--out/<stage>``)::

    checkpoint-0007.pt   everything needed to continue after epoch 7 (model, optimizer,
    checkpoint-0008.pt   scheduler, grad scaler, RNG states, history); the last two are kept
    best.pt              model weights of the epoch with the best validation accuracy

Checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``: loading one never runs code from the file.
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bcnn_triton.errors import UserInputError
from bcnn_triton.train.atomic import atomic_torch_save

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "check_compatible",
    "checkpoint_paths",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_weights",
    "restore_rng_state",
    "save_best",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bcnn-triton/1"
BEST_NAME = "best.pt"
_EPOCH_FILE = re.compile(r"^checkpoint-(\d+)\.pt$")
# Architecture fields that must agree for weights to fit (the rest, e.g. freezing, may differ).
_ARCHITECTURE_KEYS = ("head", "backbone", "num_classes", "second_backbone", "reduce_dim", "triu")


class CheckpointError(UserInputError):
    """A checkpoint that is missing, unreadable, corrupt, or made for another model."""


def checkpoint_paths(directory: str | Path) -> list[Path]:
    """Epoch checkpoints in ``directory``, newest (highest epoch) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def save_checkpoint(
    state: Mapping[str, Any], directory: str | Path, epoch: int, keep: int = 2
) -> Path:
    """Write ``state`` as ``checkpoint-<epoch>.pt`` atomically, then delete all but ``keep``.

    Older files are deleted only after the new one is complete, so a crash at any point leaves
    at least one complete checkpoint (and usually two).
    """
    path = Path(directory) / f"checkpoint-{epoch:04d}.pt"
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)
    for old in checkpoint_paths(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def save_best(state: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``state`` (model weights and metadata of the best epoch) as ``best.pt`` atomically."""
    path = Path(directory) / BEST_NAME
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (or ``best.pt``) to CPU with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, or a file that is truncated, corrupt or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # A foreign pickle makes torch warn about its protocol before it fails; the error
            # below says all there is to say.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt, or not a bcnn-triton checkpoint: "
            f"{_why_unloadable(path, error)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a bcnn-triton checkpoint ({CHECKPOINT_FORMAT})")
    return state


_HOLDS_OBJECTS = (
    "it holds Python objects, which are not loaded for safety (our checkpoints hold only "
    "tensors, numbers, strings, lists and dicts)"
)


def _why_unloadable(path: Path, error: Exception) -> str:
    # torch's own message for these cases advises weights_only=False, i.e. running code from an
    # unknown file: never pass that on.
    if zipfile.is_zipfile(path):
        if isinstance(error, pickle.UnpicklingError):
            return _HOLDS_OBJECTS
        first_sentence = str(error).split(". ")[0].strip()
        return f"{type(error).__name__}: {first_sentence}"
    with path.open("rb") as handle:
        start = handle.read(4)
    if start.startswith(b"PK"):
        return "it is not a complete zip archive, as torch.save writes"
    # A pickle (protocol 2 or later, as torch's old format) starts with the PROTO opcode.
    if start.startswith(b"\x80") and isinstance(error, pickle.UnpicklingError):
        return _HOLDS_OBJECTS
    if not start:
        return "it is empty"
    return "it is neither a zip archive, as torch.save writes, nor a pickle"


def load_latest_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest loadable epoch checkpoint in ``directory`` and its path, or None if none exist.

    A corrupt newest file is reported with a warning and the previous one is used.

    Raises:
        CheckpointError: checkpoints exist but none of them can be loaded.
    """
    paths = checkpoint_paths(directory)
    problems = []
    for path in paths:
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            problems.append(str(error))
            logger.warning("%s; trying the previous checkpoint", error)
            continue
        return state, path
    if problems:
        raise CheckpointError(f"no checkpoint in {directory} can be loaded: " + "; ".join(problems))
    return None


def check_compatible(
    saved: Mapping[str, Any], wanted: Mapping[str, Any], source: str | Path
) -> None:
    """Raise CheckpointError if a checkpoint's model config cannot load into ``wanted``'s model.

    Compares the architecture fields that ``wanted`` names (among head, backbone, num_classes,
    second_backbone, reduce_dim, triu) and names every difference.
    """
    differences = [
        f"{key} {saved.get(key)!r} (checkpoint) vs {wanted[key]!r} (this run)"
        for key in _ARCHITECTURE_KEYS
        if key in wanted and saved.get(key) != wanted[key]
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {source} was made for another model: " + ", ".join(differences)
        )


def _shape(tensor: torch.Tensor) -> str:
    return "×".join(str(size) for size in tensor.shape) or "scalar"


def _weights_mismatch(expected: Mapping[str, torch.Tensor], saved: Any) -> str | None:
    """What keeps ``saved`` from loading as ``expected`` (a model's state dict), or None."""
    if not isinstance(saved, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in saved.values()
    ):
        return "its weights are not a dict of tensors"
    problems = [
        f"{key} is {_shape(saved[key])} in the file, {_shape(value)} in the model"
        for key, value in expected.items()
        if key in saved and saved[key].shape != value.shape
    ]
    problems += [f"{key} is missing from the file" for key in expected if key not in saved]
    problems += [f"{key} is in the file, not in the model" for key in saved if key not in expected]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def load_weights(model: nn.Module, weights: Any, source: str | Path) -> None:
    """``model.load_state_dict(weights)`` with a one-line CheckpointError when they do not fit.

    ``weights`` come from ``source``; the model was built from the config stored with them, so a
    mismatch means a checkpoint whose config (class count, backbone...) is not its weights'.
    """
    problem = _weights_mismatch(model.state_dict(), weights)
    if problem is None:
        try:
            model.load_state_dict(weights)
            return
        except RuntimeError as error:
            problem = str(error).strip().splitlines()[-1].strip()
    config = getattr(model, "config", {})
    described = ", ".join(
        f"{key} {config[key]}" for key in ("head", "backbone", "num_classes") if key in config
    )
    raise CheckpointError(
        f"checkpoint {source}: its weights do not fit the model its config describes "
        f"({described}): {problem}"
    )


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), Python and NumPy RNG states, as tensors, ints and lists."""
    version, python_state, gauss = random.getstate()
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "kind": numpy_kind,
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "gauss": float(numpy_gauss),
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    )
