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
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from bcnn_triton.config import TrainConfig
from bcnn_triton.data import DataSplits, collate_images, split_unreadable
from bcnn_triton.data.seeding import derive_seed
from bcnn_triton.errors import TrainingError, UserInputError, os_error_text
from bcnn_triton.models.timm_backbone import convert_sync_batchnorm
from bcnn_triton.train.checkpoint import (
    BEST_NAME,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_latest_checkpoint,
    load_weights,
    restore_rng_state,
    save_best,
    save_checkpoint,
)
from bcnn_triton.train.distributed import (
    DistributedContext,
    ShardedEvalSampler,
    all_reduce_sum,
    barrier,
    broadcast_state,
    on_main_rank,
)
from bcnn_triton.train.reports import plot_training_curves, write_metrics

__all__ = ["AMP_DTYPES", "EvalResult", "StageResult", "TrainingError", "evaluate", "train_stage"]

logger = logging.getLogger(__name__)

#: ``--amp`` modes (bcnn_triton.config.AMP_MODES) → autocast dtype (None: full precision).
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    return _eval_result(totals, num_classes, description)


def _eval_result(totals: torch.Tensor, num_classes: int, description: str) -> EvalResult:
    """EvalResult from the summed (confusion counts, loss sum, top-5 hits, skipped) vector."""
    confusion = totals[: num_classes * num_classes].round().long().view(num_classes, num_classes)
    count = int(confusion.sum())
    loss_sum, top5_hits, skipped = totals[num_classes * num_classes :].tolist()
    if count == 0:
        what = "all images are unreadable" if skipped else "the split is empty"
        raise UserInputError(f"{description}: no images to evaluate ({what})")
    return EvalResult(
        count=count,
        loss=loss_sum / count,
        top1=float(confusion.diag().sum()) / count,
        top5=top5_hits / count if num_classes > 5 else None,
        confusion=confusion,
        skipped=int(skipped),
    )


def _train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
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


def _check_distributed_options(config: TrainConfig, context: DistributedContext) -> None:
    if config.batch_size % context.world_size:
        raise UserInputError(
            f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
            f"number of processes ({context.world_size})"
        )
    if config.sync_bn and context.distributed and context.device.type != "cuda":
        raise UserInputError("--sync-bn needs CUDA devices (torch's SyncBatchNorm is GPU-only)")


def _prepare_model(
    model: nn.Module, config: TrainConfig, stage: str, context: DistributedContext
) -> nn.Module:
    """Freeze for stage fc, convert to SyncBatchNorm if asked, move to the device and layout."""
    model.set_backbone_frozen(stage == "fc")
    if config.sync_bn and context.distributed:
        model = convert_sync_batchnorm(model)
    model.to(context.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _data_parallel(model: nn.Module, context: DistributedContext) -> nn.Module:
    # Without find_unused_parameters: in stage "fc" the frozen backbone's parameters do not
    # require grad, so DDP does not track them, and every parameter it does track gets a grad.
    if not context.distributed:
        return model
    device_ids = [context.device] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _train_loader(
    dataset: Dataset, config: TrainConfig, context: DistributedContext
) -> tuple[DataLoader, DistributedSampler]:
    sampler = DistributedSampler(
        dataset,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=config.seed,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size // context.world_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_images,
        pin_memory=context.device.type == "cuda",
        # Worker base seeds come from this generator, not from the global RNG.
        generator=torch.Generator().manual_seed(derive_seed(config.seed, context.rank)),
    )
    return loader, sampler


class _StageRun:
    """The state of one stage while it trains: model, optimizer, schedule, history, best epoch.

    The steps of :func:`train_stage`: set up (``__init__``, restoring a checkpoint if given),
    then ``train_epoch`` and ``save_epoch`` for each remaining epoch, then ``test_best``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        config: TrainConfig,
        stage: str,
        directory: Path,
        context: DistributedContext,
        metadata: Mapping[str, Any],
        resume_from: Mapping[str, Any] | None,
    ) -> None:
        self.model = _prepare_model(model, config, stage, context)
        self.data, self.config, self.stage = data, config, stage
        self.directory, self.context, self.metadata = directory, context, dict(metadata)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            trainable,
            lr=config.lr[stage],
            momentum=config.momentum,
            weight_decay=config.weight_decay[stage],
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="max",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
        )
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16")
        self.epochs = config.epochs[stage]
        self.start_epoch, self.history, self.best = 0, [], (0, -1.0)
        # Rank 0: the best epoch's weights (on the CPU), tested at the end whatever happens to
        # best.pt meanwhile. None until known in memory (an improving epoch, or resuming from
        # the best epoch's checkpoint).
        self.best_weights: dict[str, torch.Tensor] | None = None
        # Names this stage's files (best.pt, checkpoints) as one run's, kept across resumes.
        self.run_id = uuid.uuid4().hex
        if resume_from is not None:
            self._restore(resume_from)
        self.metadata["run_id"] = self.run_id
        self.trained_model = _data_parallel(self.model, context)
        self.loader, self.sampler = _train_loader(data.train, config, context)
        self.warned: set[str] = set()
        self.summary = {
            **self.metadata,
            "stage": stage,
            "train_config": config.stage_options(stage),
        }

    def evaluate(self, dataset: Dataset, description: str) -> EvalResult:
        config = self.config
        return evaluate(
            self.model,
            dataset,
            num_classes=len(self.data.classes),
            context=self.context,
            batch_size=config.batch_size // self.context.world_size,
            workers=config.workers,
            amp=config.amp,
            channels_last=config.channels_last,
            skip_bad_images=config.skip_bad_images,
            description=description,
            progress=config.progress,
        )

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a loaded epoch checkpoint of this stage."""
        source = f"of epoch {state['epoch']} in {self.directory}"
        load_weights(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = (int(state["best_epoch"]), float(state["best_val_acc"]))
        self.run_id = state.get("run_id") or self.run_id
        if self.best[0] == self.start_epoch and self.context.is_main:
            # The checkpoint is the best epoch's, so its weights are the best weights, whatever
            # best.pt holds: a kill between the two writes leaves the previous best there.
            self.best_weights = dict(state["model"])

    def train_epoch(self, epoch: int) -> tuple[dict[str, Any], bool]:
        """Train and validate epoch ``epoch`` (0-based); its history row and whether it is best."""
        started = time.perf_counter()
        self.sampler.set_epoch(epoch)
        _set_dataset_epoch(self.data.train, epoch)
        label = f"{self.stage} {epoch + 1}/{self.epochs}"
        train_loss, train_acc = _train_one_epoch(
            self.trained_model,
            self.loader,
            self.optimizer,
            self.scaler,
            self.config,
            self.context,
            f"{label} train",
            self.warned,
        )
        lr = self.optimizer.param_groups[0]["lr"]
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"stage {self.stage}, epoch {epoch + 1}: the training loss is {train_loss}; the "
                f"run diverged. Lower --lr (it was {lr:g}) or use --amp off; the last good "
                "checkpoint is kept"
            )
        val = self.evaluate(self.data.val, f"{label} val")
        self.scheduler.step(val.top1)
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val.loss,
            "val_acc": val.top1,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(row)
        improved = val.top1 > self.best[1]
        if improved:
            self.best = (epoch + 1, val.top1)
            if self.context.is_main:
                self.best_weights = {
                    name: tensor.detach().to("cpu", copy=True)
                    for name, tensor in self.model.state_dict().items()
                }
        return row, improved

    def save_epoch(self, row: Mapping[str, Any], improved: bool) -> None:
        """Rank 0: the epoch checkpoint, best.pt (if improved), metrics, curves, one log line.

        Raises:
            TrainingError: a file cannot be written (no space...); names the file and the
                last complete checkpoint, which is intact.
        """
        epoch = row["epoch"]
        with self._writing(f"epoch {epoch}"):
            # The checkpoint first: it records the best epoch, and if it is this one, it holds
            # the best weights too (see _restore).
            save_checkpoint(self._checkpoint_state(epoch), self.directory, epoch)
            if improved:
                self.save_best()
            write_metrics(self.directory, self.history, self._summary())
            plot_training_curves(self.history, self.directory / "curves.png")
        logger.info(
            "%s %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  lr %.3g  %.1fs%s",
            self.stage,
            epoch,
            self.epochs,
            row["train_loss"],
            100 * row["train_acc"],
            row["val_loss"],
            100 * row["val_acc"],
            row["lr"],
            row["seconds"],
            "  (best)" if improved else "",
        )

    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            **self.metadata,
            "kind": "epoch",
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "history": self.history,
            "best_epoch": self.best[0],
            "best_val_acc": self.best[1],
        }

    def _summary(self, **extra: Any) -> dict[str, Any]:
        return {**self.summary, "best_epoch": self.best[0], "best_val_acc": self.best[1], **extra}

    def save_best(self) -> None:
        """Rank 0: ``best.pt`` from the best weights in memory."""
        best = {"kind": "best", "epoch": self.best[0], "val_acc": self.best[1]}
        with self._writing(f"epoch {self.best[0]}"):
            save_best({**self.metadata, **best, "model": self.best_weights}, self.directory)

    @contextmanager
    def _writing(self, when: str) -> Iterator[None]:
        """Turn an OSError of the block into a TrainingError that says what is kept."""
        try:
            yield
        except OSError as error:
            try:
                found = load_latest_checkpoint(self.directory)
            except CheckpointError:
                found = None
            kept = (
                "no epoch checkpoint is complete yet"
                if found is None
                else f"the last complete checkpoint, {found[1]}, is intact: continue with "
                "--resume once the file can be written"
            )
            raise TrainingError(
                f"stage {self.stage}, {when}: cannot write {os_error_text(error)}; {kept}"
            ) from None

    def _selected_weights(self) -> dict[str, torch.Tensor]:
        """Rank 0: the best epoch's weights; from best.pt only if it is this run's."""
        if self.best_weights is not None:
            return self.best_weights
        path = self.directory / BEST_NAME
        saved = load_checkpoint(path)
        found = (saved.get("epoch"), saved.get("run_id", self.run_id))
        if found != (self.best[0], self.run_id):
            raise CheckpointError(
                f"{path} is not this run's best epoch: it holds epoch {found[0]} of run "
                f"{found[1]}, the run's checkpoints name epoch {self.best[0]} of run "
                f"{self.run_id}; it was replaced after the run stopped: put the run's own back, "
                "or train again into another --out"
            )
        return saved["model"]

    def test_best(self) -> StageResult:
        """Evaluate the test split once with the best epoch's weights, write metrics.json.

        The weights are those this run selected, kept in memory on rank 0 and sent to the other
        ranks, never re-read from a best.pt that something else could have replaced; a resumed
        run that has not improved since reads best.pt after checking that it is its own.
        """
        weights = on_main_rank(self.context, self._selected_weights)
        if weights is not None:
            load_weights(self.model, weights, self.directory / BEST_NAME)
        broadcast_state(self.model, self.context)
        test = self.evaluate(self.data.test, f"{self.stage} test")
        if self.context.is_main:
            with self._writing("test"):
                write_metrics(
                    self.directory,
                    self.history,
                    self._summary(test=test.as_dict(self.data.classes)),
                )
            logger.info(
                "stage %s: best val accuracy %.2f%% (epoch %d); test accuracy %.2f%% (%d images)",
                self.stage,
                100 * self.best[1],
                self.best[0],
                100 * test.top1,
                test.count,
            )
        barrier(self.context)
        return StageResult(self.stage, self.directory, self.history, *self.best, test)


def train_stage(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    stage: str,
    directory: str | Path,
    context: DistributedContext,
    *,
    resume_from: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> StageResult:
    """Train stage ``stage`` of ``config``, checkpointing every epoch; test the best epoch.

    Args:
        model: a BilinearCNN or GlobalPoolCNN (CPU, initialised); frozen here for stage "fc".
        data: train / val / test datasets; val drives the LR schedule and picks the best epoch,
            test is evaluated once, at the end, with the best epoch's weights.
        config: the run's options; this stage's epochs, lr and weight decay come from its
            per-stage maps. ``batch_size`` is split evenly over ranks.
        stage: "fc" (backbone frozen) or "all".
        directory: the stage folder (checkpoints, best.pt, metrics.json/csv, curves.png).
        context: rank, world size and device; only rank 0 writes files and shows progress.
        resume_from: a loaded epoch checkpoint of this stage to continue from.
        metadata: JSON-ready facts stored in checkpoints and metrics.json (model config,
            classes, data description...).

    Raises:
        UserInputError: a global batch that the ranks cannot share evenly, unreadable images.
        TrainingError: a non-finite training loss.
    """
    _check_distributed_options(config, context)
    run = _StageRun(
        model, data, config, stage, Path(directory), context, metadata or {}, resume_from
    )
    if run.best_weights is not None:
        run.save_best()  # resumed from the best epoch: best.pt may lag behind its checkpoint
    if run.start_epoch >= run.epochs and context.is_main:
        logger.info("stage %s: all %d epochs already done in %s", stage, run.epochs, directory)
    for epoch in range(run.start_epoch, run.epochs):
        row, improved = run.train_epoch(epoch)
        if context.is_main:
            run.save_epoch(row, improved)
        barrier(context)
    return run.test_best()
