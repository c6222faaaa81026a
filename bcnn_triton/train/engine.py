"""One stage of the B-CNN recipe (train, validate, checkpoint every epoch) and evaluation.

Determinism: each epoch's order comes from ``DistributedSampler(seed=seed)`` with
``set_epoch(epoch)`` and each sample's augmentation from (seed, epoch, index); nothing draws
from a running RNG, so a run resumed from the checkpoint of epoch k continues exactly as the
uninterrupted run would have (bit-identical weights on CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from bcnn_triton.data import DataSplits, collate_images, split_unreadable
from bcnn_triton.data.seeding import derive_seed
from bcnn_triton.errors import UserInputError
from bcnn_triton.train.checkpoint import (
    BEST_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_best,
    save_checkpoint,
)
from bcnn_triton.train.distributed import (
    DistributedContext,
    ShardedEvalSampler,
    all_reduce_sum,
    barrier,
)
from bcnn_triton.train.reports import plot_training_curves, write_metrics

__all__ = [
    "AMP_DTYPES",
    "STAGES",
    "STAGE_DEFAULTS",
    "EvalResult",
    "StageConfig",
    "StageResult",
    "TrainingError",
    "evaluate",
    "train_stage",
]

logger = logging.getLogger(__name__)

#: Stages of the B-CNN recipe: "fc" trains the head on a frozen backbone, "all" fine-tunes all.
STAGES = ("fc", "all")
#: The published recipe (HaoMood/bilinear-cnn): SGD with momentum 0.9 and these lr / decay.
STAGE_DEFAULTS = {
    "fc": {"lr": 1.0, "weight_decay": 1e-8},
    "all": {"lr": 1e-2, "weight_decay": 1e-5},
}
#: ``--amp`` choices → autocast dtype (None: full precision).
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the message says what to change."""


@dataclass
class StageConfig:
    """Hyperparameters and runtime options of one stage. ``batch_size`` is the global batch."""

    stage: str
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 32
    momentum: float = 0.9
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    workers: int = 0
    amp: str = "off"
    channels_last: bool = False
    sync_bn: bool = False
    seed: int = 0
    skip_bad_images: bool = False
    progress: bool = True


@dataclass
class EvalResult:
    """Counts over a dataset, exact across ranks. ``confusion[t, p]``: true t predicted p."""

    count: int
    loss: float
    top1: float
    top5: float | None  # None with 5 classes or fewer (it would always be 1)
    confusion: torch.Tensor
    skipped: int = 0

    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class (None for a class without samples)."""
        totals = self.confusion.sum(dim=1)
        return [
            None if total == 0 else float(self.confusion[k, k]) / float(total)
            for k, total in enumerate(totals.tolist())
        ]

    def as_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary; with ``classes``, per-class accuracy and the confusion matrix."""
        summary: dict[str, Any] = {
            "count": self.count,
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "skipped_unreadable": self.skipped,
        }
        if classes is not None:
            totals = self.confusion.sum(dim=1).tolist()
            summary["per_class"] = [
                {"class": name, "count": int(total), "accuracy": accuracy}
                for name, total, accuracy in zip(
                    classes, totals, self.per_class_accuracy(), strict=True
                )
            ]
            summary["confusion"] = self.confusion.tolist()
        return summary


@dataclass
class StageResult:
    """What a finished stage leaves: its folder, history, best epoch and test result."""

    stage: str
    directory: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_acc: float
    test: EvalResult


def _progress_disabled(show: bool) -> bool | None:
    # None lets tqdm hide the bar when stderr is not a terminal (logs, CI); per-epoch summaries
    # are logged either way.
    return None if show else True


def _to_device(
    images: torch.Tensor, labels: torch.Tensor, context: DistributedContext, channels_last: bool
):
    images = images.to(context.device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(context.device, non_blocking=True)


def _autocast(context: DistributedContext, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(context.device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    context: DistributedContext,
    batch_size: int = 64,
    workers: int = 0,
    amp: str = "off",
    channels_last: bool = False,
    skip_bad_images: bool = False,
    description: str = "eval",
    progress: bool = True,
) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of ``model`` on ``dataset``.

    Each rank evaluates its own shard (no padding, see ShardedEvalSampler) with the unwrapped
    model; counts are summed over ranks, so every sample counts exactly once.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardedEvalSampler(len(dataset), context.rank, context.world_size),
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=context.device.type == "cuda",
    )
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=context.device)
    # loss sum, top-5 hits, skipped unreadable images
    sums = torch.zeros(3, dtype=torch.float64, device=context.device)
    warned: set[str] = set()
    bar = tqdm(
        loader,
        desc=description,
        disable=_progress_disabled(progress and context.is_main),
        leave=False,
        unit="batch",
        dynamic_ncols=True,
    )
    for batch in bar:
        skipped = len(batch.unreadable)
        batch = split_unreadable(batch, skip_bad_images=skip_bad_images, already_warned=warned)
        sums[2] += skipped
        if batch.labels.numel() == 0:
            continue
        images, labels = _to_device(batch.images, batch.labels, context, channels_last)
        with _autocast(context, amp):
            logits = model(images)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        predictions = logits.argmax(dim=1)
        confusion += torch.bincount(
            labels * num_classes + predictions, minlength=num_classes * num_classes
        ).double()
        if num_classes > 5:
            top5 = logits.topk(5, dim=1).indices
            sums[1] += (top5 == labels[:, None]).any(dim=1).sum().double()
    model.train(was_training)
    totals = all_reduce_sum(torch.cat([confusion, sums]), context).cpu()
    confusion_matrix = (
        totals[: num_classes * num_classes].round().long().view(num_classes, num_classes)
    )
    count = int(confusion_matrix.sum())
    loss_sum, top5_hits, skipped_total = totals[num_classes * num_classes :].tolist()
    if count == 0:
        raise UserInputError(f"{description}: no readable images to evaluate")
    return EvalResult(
        count=count,
        loss=loss_sum / count,
        top1=float(confusion_matrix.diag().sum()) / count,
        top5=top5_hits / count if num_classes > 5 else None,
        confusion=confusion_matrix,
        skipped=int(skipped_total),
    )


def _train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: StageConfig,
    context: DistributedContext,
    description: str,
    warned: set[str],
) -> tuple[float, float]:
    """One pass over the training shard; returns (mean loss, accuracy) over all ranks."""
    model.train()
    # loss sum, correct, count — kept on the device so no step waits for a host sync.
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)
    show_progress = config.progress and context.is_main
    bar = tqdm(
        loader,
        desc=description,
        disable=_progress_disabled(show_progress),
        leave=False,
        unit="batch",
        dynamic_ncols=True,
    )
    for step, batch in enumerate(bar):
        batch = split_unreadable(
            batch, skip_bad_images=config.skip_bad_images, already_warned=warned
        )
        if batch.labels.numel() == 0:
            if context.distributed:
                # Every rank must join each gradient all-reduce; an empty step cannot.
                raise UserInputError(
                    "a whole batch of unreadable images on one rank; remove the unreadable "
                    "files (the warnings above name them)"
                )
            continue
        images, labels = _to_device(batch.images, batch.labels, context, config.channels_last)
        with _autocast(context, config.amp):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == labels).sum()
            count = labels.numel()
            totals[0] += loss.detach().double() * count
            totals[1] += correct
            totals[2] += count
        if not bar.disable and step % 10 == 0:
            loss_sum, hits, seen = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{hits / seen:.3f}")
    all_reduce_sum(totals, context)
    loss_sum, hits, seen = totals.tolist()
    if seen == 0:
        raise UserInputError("no readable training images in this epoch")
    return loss_sum / seen, hits / seen


def _set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    # Image datasets draw augmentations from (seed, epoch, index); the synthetic one does not
    # augment (a flip would change its orientations, i.e. its classes).
    set_epoch = getattr(dataset, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def _epoch_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
    epoch: int,
    history: list[dict[str, Any]],
    best: tuple[int, float],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        **metadata,
        "kind": "epoch",
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "history": history,
        "best_epoch": best[0],
        "best_val_acc": best[1],
    }


def train_stage(
    model: nn.Module,
    data: DataSplits,
    config: StageConfig,
    directory: str | Path,
    context: DistributedContext,
    *,
    resume_from: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> StageResult:
    """Train one stage, checkpointing every epoch into ``directory``; test the best epoch.

    Args:
        model: a BilinearCNN or GlobalPoolCNN (CPU, initialised); frozen here for stage "fc".
        data: train / val / test datasets; val drives the LR schedule and picks the best epoch,
            test is evaluated once, at the end, with the best epoch's weights.
        config: the stage's hyperparameters; ``batch_size`` is split evenly over ranks.
        directory: the stage folder (checkpoints, best.pt, metrics.json/csv, curves.png).
        context: rank, world size and device; only rank 0 writes files and shows progress.
        resume_from: a loaded epoch checkpoint of this stage to continue from.
        metadata: JSON-ready facts stored in checkpoints and metrics.json (model config,
            classes, data description...).

    Raises:
        UserInputError: a global batch that the ranks cannot share evenly, unreadable images.
        TrainingError: a non-finite training loss.
    """
    directory = Path(directory)
    metadata = dict(metadata or {})
    if config.batch_size % context.world_size:
        raise UserInputError(
            f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
            f"number of processes ({context.world_size})"
        )
    if config.sync_bn and context.distributed and context.device.type != "cuda":
        raise UserInputError("--sync-bn needs CUDA devices (torch's SyncBatchNorm is GPU-only)")
    per_rank_batch = config.batch_size // context.world_size
    num_classes = len(data.classes)

    model.set_backbone_frozen(config.stage == "fc")
    if config.sync_bn and context.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(context.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
    )
    scaler = torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16")
    start_epoch, history, best = 0, [], (0, -1.0)
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        restore_rng_state(resume_from["rng"])
        start_epoch = int(resume_from["epoch"])
        history = list(resume_from["history"])
        best = (int(resume_from["best_epoch"]), float(resume_from["best_val_acc"]))

    # Without find_unused_parameters: in stage "fc" the frozen backbone's parameters do not
    # require grad, so DDP does not track them, and every parameter it does track gets a grad.
    trained_model = (
        DistributedDataParallel(
            model, device_ids=[context.device] if context.device.type == "cuda" else None
        )
        if context.distributed
        else model
    )
    sampler = DistributedSampler(
        data.train,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=config.seed,
    )
    loader = DataLoader(
        data.train,
        batch_size=per_rank_batch,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_images,
        pin_memory=context.device.type == "cuda",
        # Worker base seeds come from this generator, not from the global RNG.
        generator=torch.Generator().manual_seed(derive_seed(config.seed, context.rank)),
    )
    eval_options = {
        "num_classes": num_classes,
        "context": context,
        "batch_size": per_rank_batch,
        "workers": config.workers,
        "amp": config.amp,
        "channels_last": config.channels_last,
        "skip_bad_images": config.skip_bad_images,
        "progress": config.progress,
    }
    summary = {**metadata, "stage": config.stage, "train_config": asdict(config)}
    warned: set[str] = set()
    if start_epoch >= config.epochs and context.is_main:
        logger.info(
            "stage %s: all %d epochs already done in %s", config.stage, config.epochs, directory
        )
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        _set_dataset_epoch(data.train, epoch)
        label = f"{config.stage} {epoch + 1}/{config.epochs}"
        train_loss, train_acc = _train_one_epoch(
            trained_model, loader, optimizer, scaler, config, context, f"{label} train", warned
        )
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"stage {config.stage}, epoch {epoch + 1}: the training loss is {train_loss}; "
                f"the run diverged. Lower --lr (it was {optimizer.param_groups[0]['lr']:g}) or "
                "use --amp off; the last good checkpoint is kept"
            )
        val = evaluate(model, data.val, description=f"{label} val", **eval_options)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val.top1)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val.loss,
            "val_acc": val.top1,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        improved = val.top1 > best[1]
        if improved:
            best = (epoch + 1, val.top1)
        if context.is_main:
            if improved:
                save_best(
                    {
                        **metadata,
                        "kind": "best",
                        "epoch": epoch + 1,
                        "val_acc": val.top1,
                        "model": model.state_dict(),
                    },
                    directory,
                )
            state = _epoch_state(
                model, optimizer, scheduler, scaler, epoch + 1, history, best, metadata
            )
            save_checkpoint(state, directory, epoch + 1)
            write_metrics(
                directory, history, {**summary, "best_epoch": best[0], "best_val_acc": best[1]}
            )
            plot_training_curves(history, directory / "curves.png")
            logger.info(
                "%s  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  lr %.3g  %.1fs%s",
                label,
                train_loss,
                100 * train_acc,
                val.loss,
                100 * val.top1,
                lr,
                row["seconds"],
                "  (best)" if improved else "",
            )
        barrier(context)

    best_state = load_checkpoint(directory / BEST_NAME)
    model.load_state_dict(best_state["model"])
    test = evaluate(model, data.test, description=f"{config.stage} test", **eval_options)
    if context.is_main:
        write_metrics(
            directory,
            history,
            {
                **summary,
                "best_epoch": best[0],
                "best_val_acc": best[1],
                "test": test.as_dict(data.classes),
            },
        )
        logger.info(
            "stage %s: best val accuracy %.2f%% (epoch %d); test accuracy %.2f%% (%d images)",
            config.stage,
            100 * best[1],
            best[0],
            100 * test.top1,
            test.count,
        )
    barrier(context)
    return StageResult(config.stage, directory, history, best[0], best[1], test)
