"""Training and evaluation loops, checkpoints, metrics, distributed setup."""

from bcnn_triton.config import RESUME_MODES, STAGES, TrainConfig
from bcnn_triton.errors import TrainingError
from bcnn_triton.train.checkpoint import (
    BEST_NAME,
    CheckpointError,
    check_compatible,
    checkpoint_paths,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from bcnn_triton.train.distributed import (
    DistributedContext,
    ShardedEvalSampler,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from bcnn_triton.train.engine import AMP_DTYPES, EvalResult, StageResult, evaluate, train_stage
from bcnn_triton.train.reports import plot_confusion_matrix, plot_training_curves, write_json
from bcnn_triton.train.run import build_model, load_model, run_training

__all__ = [
    "AMP_DTYPES",
    "BEST_NAME",
    "RESUME_MODES",
    "STAGES",
    "CheckpointError",
    "DistributedContext",
    "EvalResult",
    "ShardedEvalSampler",
    "StageResult",
    "TrainConfig",
    "TrainingError",
    "build_model",
    "check_compatible",
    "checkpoint_paths",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_model",
    "plot_confusion_matrix",
    "plot_training_curves",
    "resolve_device",
    "run_training",
    "save_checkpoint",
    "shutdown_distributed",
    "train_stage",
    "write_json",
]
