"""The B-CNN recipe end to end: data, model, stage "fc" then stage "all", resume, init.

Folder layout under ``out``::

    out/fc/    stage 1: classifier on the frozen backbone (checkpoints, best.pt, metrics)
    out/all/   stage 2: everything fine-tuned, initialised from out/fc/best.pt
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bcnn_triton.config import RESUME_MODES, TrainConfig
from bcnn_triton.data import DataSplits, build_datasets
from bcnn_triton.errors import UserInputError
from bcnn_triton.models import create_model, model_from_config
from bcnn_triton.train.checkpoint import (
    BEST_NAME,
    CheckpointError,
    check_compatible,
    checkpoint_paths,
    load_checkpoint,
    load_latest_checkpoint,
    load_weights,
)
from bcnn_triton.train.distributed import DistributedContext
from bcnn_triton.train.engine import StageResult, train_stage
from bcnn_triton.train.run_folder import hold_run_folder

__all__ = ["RESUME_MODES", "TrainConfig", "build_model", "load_model", "run_training"]

logger = logging.getLogger(__name__)


def build_model(head: str, **kwargs: Any) -> nn.Module:
    """``create_model`` with the model's argument errors turned into UserInputError.

    Weights that cannot be had (WeightsUnavailableError) already are a UserInputError, with its
    command-line wording.
    """
    try:
        return create_model(head, **kwargs)
    except (ValueError, TypeError) as error:
        raise UserInputError(str(error)) from None


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a best.pt or epoch checkpoint, with its weights, and the state dict.

    Raises:
        CheckpointError: missing, corrupt, or not a bcnn-triton checkpoint, or weights that do
            not fit the model config stored with them.
    """
    state = load_checkpoint(path)
    try:
        model = model_from_config(state["model_config"])
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} does not hold a usable model: {error}") from None
    load_weights(model, state.get("model"), path)
    return model, state


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


def _stage_model(
    config: TrainConfig,
    stage: str,
    wanted: Mapping[str, Any],
    previous: StageResult | None,
    context: DistributedContext,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model a stage starts with, and the checkpoint it resumes from (None: a fresh start).

    ``wanted``: head, backbone, num_classes and reduce_dim of this run's model.

    Resuming: the stage's newest loadable checkpoint. Otherwise stage fc builds a new model
    (seeded), and stage all loads the fc stage's best weights (or ``config.init``).
    """
    directory = config.out / stage
    found = load_latest_checkpoint(directory) if config.resume != "never" else None
    if found is not None:
        resume_state, path = found
        check_compatible(resume_state["model_config"], wanted, path)
        if context.is_main:
            logger.info("stage %s: resuming from %s (epoch %d)", stage, path, resume_state["epoch"])
        return model_from_config(resume_state["model_config"]), resume_state
    _seed_everything(config.seed)
    if stage != "all":
        return build_model(**wanted, weights=config.model_weights()), None
    source = _initial_weights(config, stage, previous)
    model, init_state = load_model(source)
    check_compatible(init_state["model_config"], wanted, source)
    if context.is_main:
        logger.info("stage all: starting from %s", source)
    return model, None


def run_training(config: TrainConfig, context: DistributedContext) -> list[StageResult]:
    """Run ``config.stages`` in order and return their results (test accuracy of each).

    ``config.out`` is held for the whole run (see :func:`hold_run_folder`): checked writable
    before anything is read or trained, locked against other runs, cleared of the temp files
    of a killed run.

    Raises:
        UserInputError: bad options, data, model options, init weights or resume state; an
            ``out`` that cannot be written, or that another run holds (RunFolderBusyError).
        TrainingError: the run diverged, or a file could not be written during the run.
    """
    config.check()
    with hold_run_folder(config.out, context, config.stages):
        return _run_stages(config, context)


def _run_stages(config: TrainConfig, context: DistributedContext) -> list[StageResult]:
    _check_resume(config)
    config = config.with_backbone_preprocessing()
    data: DataSplits = build_datasets(config.data)
    wanted = {
        "head": config.head,
        "backbone": config.backbone,
        "num_classes": data.num_classes,
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
        previous = results[-1] if results else None
        model, resume_state = _stage_model(config, stage, wanted, previous, context)
        stage_metadata = {**metadata, "model_config": model.config, "head": config.head}
        results.append(
            train_stage(
                model,
                data,
                config,
                stage,
                config.out / stage,
                context,
                resume_from=resume_state,
                metadata=stage_metadata,
            )
        )
    return results
