"""The B-CNN recipe end to end: data, model, stage "fc" then stage "all", resume, init.

Folder layout under ``out``::

    out/fc/    stage 1: classifier on the frozen backbone (checkpoints, best.pt, metrics)
    out/all/   stage 2: everything fine-tuned, initialised from out/fc/best.pt
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bcnn_triton.data import DataConfig, DataSplits, build_datasets
from bcnn_triton.errors import UserInputError
from bcnn_triton.models import WeightsUnavailableError, create_model, model_from_config
from bcnn_triton.train.checkpoint import (
    BEST_NAME,
    CheckpointError,
    check_compatible,
    checkpoint_paths,
    load_checkpoint,
    load_latest_checkpoint,
)
from bcnn_triton.train.distributed import DistributedContext
from bcnn_triton.train.engine import STAGE_DEFAULTS, STAGES, StageConfig, StageResult, train_stage

__all__ = ["RESUME_MODES", "TrainConfig", "build_model", "load_model", "run_training"]

logger = logging.getLogger(__name__)

#: "never": refuse an ``out`` that already holds checkpoints; "required": continue from them
#: (error if none); "auto": continue if there are any, else start fresh (for torchrun restarts).
RESUME_MODES = ("never", "required", "auto")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``epochs``/``lr``/``weight_decay`` map stage → value.

    ``init``: weights (a best.pt or checkpoint) for stage "all" when it runs without stage "fc"
    in the same call; by default ``out/fc/best.pt``.
    """

    data: DataConfig
    out: Path
    head: str = "bilinear"
    backbone: str = "tiny"
    weights: str | None = None
    reduce_dim: int | None = None
    stages: tuple[str, ...] = STAGES
    epochs: dict[str, int] = field(default_factory=lambda: {"fc": 10, "all": 10})
    lr: dict[str, float] = field(
        default_factory=lambda: {stage: d["lr"] for stage, d in STAGE_DEFAULTS.items()}
    )
    weight_decay: dict[str, float] = field(
        default_factory=lambda: {stage: d["weight_decay"] for stage, d in STAGE_DEFAULTS.items()}
    )
    batch_size: int = 32
    workers: int = 0
    amp: str = "off"
    channels_last: bool = False
    sync_bn: bool = False
    plateau_patience: int = 3
    seed: int = 0
    skip_bad_images: bool = False
    resume: str = "never"
    init: Path | None = None
    progress: bool = True


def build_model(head: str, **kwargs: Any) -> nn.Module:
    """``create_model`` with the model's argument errors turned into UserInputError."""
    try:
        return create_model(head, **kwargs)
    except (ValueError, TypeError, WeightsUnavailableError) as error:
        raise UserInputError(str(error)) from None


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a best.pt or epoch checkpoint, with its weights, and the state dict.

    Raises:
        CheckpointError: missing, corrupt, or not a bcnn-triton checkpoint.
    """
    state = load_checkpoint(path)
    try:
        model = model_from_config(state["model_config"])
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not hold a usable model: {error}") from None
    return model, state


def _stage_config(config: TrainConfig, stage: str) -> StageConfig:
    return StageConfig(
        stage=stage,
        epochs=config.epochs[stage],
        lr=config.lr[stage],
        weight_decay=config.weight_decay[stage],
        batch_size=config.batch_size,
        plateau_patience=config.plateau_patience,
        workers=config.workers,
        amp=config.amp,
        channels_last=config.channels_last,
        sync_bn=config.sync_bn,
        seed=config.seed,
        skip_bad_images=config.skip_bad_images,
        progress=config.progress,
    )


def _check_resume(config: TrainConfig) -> None:
    existing = [path for stage in config.stages for path in checkpoint_paths(config.out / stage)]
    if config.resume == "never" and existing:
        raise UserInputError(
            f"{config.out} already holds checkpoints of a run ({existing[0]}); pass --resume to "
            "continue it, or choose another --out"
        )
    if config.resume == "required" and not existing:
        folders = ", ".join(str(config.out / stage) for stage in config.stages)
        raise UserInputError(f"--resume: no checkpoint to resume from in {folders}")


def _initial_weights(config: TrainConfig, stage: str, previous: StageResult | None) -> Path:
    if previous is not None:
        return previous.directory / BEST_NAME
    path = config.init if config.init is not None else config.out / "fc" / BEST_NAME
    if not path.is_file():
        raise UserInputError(
            f"stage all starts from the fc stage's weights, but {path} does not exist: run "
            "--stage fc with the same --out first, or pass --init PATH (a best.pt or checkpoint)"
        )
    return path


def _seed_everything(seed: int) -> None:
    # Model init draws from torch; the others are seeded too so that a user's own code that
    # draws from them is reproducible (their states are also saved in every checkpoint).
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def run_training(config: TrainConfig, context: DistributedContext) -> list[StageResult]:
    """Run ``config.stages`` in order and return their results (test accuracy of each).

    Raises:
        UserInputError: bad data, model options, init weights or resume state.
    """
    if config.resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}; got {config.resume!r}")
    _check_resume(config)
    data: DataSplits = build_datasets(config.data)
    wanted = {
        "backbone": config.backbone,
        "num_classes": data.num_classes,
        "weights": config.weights,
        "reduce_dim": config.reduce_dim,
    }
    metadata = {
        "classes": data.classes,
        "preprocessing": config.data.preprocessing.as_dict(),
        "data_config": asdict(config.data),
        "world_size": context.world_size,
    }
    if context.is_main:
        logger.info(
            "head %s, backbone %s, into %s; data: %s, %d classes, %d train / %d validation / "
            "%d test images at %d px",
            config.head,
            config.backbone,
            config.out,
            config.data.dataset,
            data.num_classes,
            len(data.train),
            len(data.val),
            len(data.test),
            config.data.image_size,
        )
    results: list[StageResult] = []
    for stage in config.stages:
        directory = config.out / stage
        found = load_latest_checkpoint(directory) if config.resume != "never" else None
        if found is not None:
            resume_state, path = found
            model = model_from_config(resume_state["model_config"])
            check_compatible(resume_state["model_config"], {"head": config.head, **wanted}, path)
            if context.is_main:
                logger.info(
                    "stage %s: resuming from %s (epoch %d)", stage, path, resume_state["epoch"]
                )
        else:
            resume_state = None
            _seed_everything(config.seed)
            if stage == "all":
                source = _initial_weights(config, stage, results[-1] if results else None)
                model, init_state = load_model(source)
                check_compatible(
                    init_state["model_config"], {"head": config.head, **wanted}, source
                )
                if context.is_main:
                    logger.info("stage all: starting from %s", source)
            else:
                model = build_model(config.head, **wanted)
        stage_metadata = {**metadata, "model_config": model.config, "head": config.head}
        results.append(
            train_stage(
                model,
                data,
                _stage_config(config, stage),
                directory,
                context,
                resume_from=resume_state,
                metadata=stage_metadata,
            )
        )
    return results
