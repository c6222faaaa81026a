"""What a run keeps when writing fails or is cut short, and which weights its test step uses."""

from __future__ import annotations

import errno
import gc

import pytest
import torch
from train.faults import full_disk_when, temp_files
from train.test_train_resume import assert_same_tensors

from bcnn_triton.data import build_datasets
from bcnn_triton.errors import TrainingError
from bcnn_triton.models import model_from_config
from bcnn_triton.train import (
    CheckpointError,
    DistributedContext,
    engine,
    evaluate,
    load_checkpoint,
    run_training,
)
from bcnn_triton.train.atomic import atomic_torch_save, atomic_write_text
from bcnn_triton.train.checkpoint import save_best


def test_a_full_disk_names_the_file_and_removes_the_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint-0001.pt"
    atomic_write_text(target, "previous")
    full_disk_when(monkeypatch, lambda: True)
    for write in (
        lambda: atomic_torch_save({"w": torch.zeros(100_000)}, target),  # torch's RuntimeError
        lambda: atomic_write_text(target, "new"),
    ):
        with pytest.raises(OSError) as failed:
            write()
        assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(target))
        assert failed.value.strerror == "No space left on device"
        assert target.read_text() == "previous" and temp_files(tmp_path) == []
    # torch's zip writer, left half-done, must not abort the process when it is collected.
    gc.collect()


def test_disk_full_in_the_second_epoch_keeps_the_first(tiny_config, cpu, monkeypatch):
    config = tiny_config("full", epochs={"fc": 2})
    stage = config.out / "fc"
    first = stage / "checkpoint-0001.pt"
    kept: dict[str, object] = {"armed": False}
    train_epoch = engine._StageRun.train_epoch

    def train_then_fill_the_disk(run, epoch):
        row = train_epoch(run, epoch)
        if epoch == 1:  # 0-based: the second epoch's files find the disk full
            kept.update(armed=True, first=first.read_bytes())
        return row

    monkeypatch.setattr(engine._StageRun, "train_epoch", train_then_fill_the_disk)
    full_disk_when(monkeypatch, lambda: kept["armed"])
    with pytest.raises(TrainingError) as failed:
        run_training(config, cpu)
    assert str(failed.value) == (
        f"stage fc, epoch 2: cannot write {stage / 'checkpoint-0002.pt'}: No space left on "
        f"device; the last complete checkpoint, {first}, is intact: continue with --resume once "
        "the file can be written"
    )
    assert first.read_bytes() == kept["first"] and load_checkpoint(first)["epoch"] == 1
    assert temp_files(stage) == [] and not (stage / "checkpoint-0002.pt").exists()

    monkeypatch.undo()  # the disk has room again
    [result] = run_training(tiny_config("full", epochs={"fc": 2}, resume="required"), cpu)
    assert [row["epoch"] for row in result.history] == [1, 2]


def evaluate_weights(config, weights) -> float:
    """Test loss of ``weights`` (a state dict of the run's model), evaluated here."""
    data = build_datasets(config.data)
    model = model_from_config(load_checkpoint(config.out / "fc" / "best.pt")["model_config"])
    model.load_state_dict(weights)
    context = DistributedContext()
    return evaluate(model, data.test, num_classes=len(data.classes), context=context).loss


def replace_best(directory, change) -> None:
    """Overwrite ``directory/best.pt`` as another run would: ``change`` edits the state first."""
    state = load_checkpoint(directory / "best.pt")
    state.pop("format")
    change(state)
    save_best(state, directory)


def shift_classifier(state) -> None:
    state["model"]["fc.weight"] += 1.0
    state["run_id"] = "another-run"


def test_the_test_step_uses_the_weights_it_selected(tiny_config, cpu, monkeypatch):
    """best.pt replaced between training and testing: the test still uses the run's own."""
    config = tiny_config("run", epochs={"fc": 2})
    test_best = engine._StageRun.test_best

    def replaced_then_tested(run):
        replace_best(run.directory, shift_classifier)
        return test_best(run)

    monkeypatch.setattr(engine._StageRun, "test_best", replaced_then_tested)
    [result] = run_training(config, cpu)
    own = load_checkpoint(config.out / "fc" / f"checkpoint-{result.best_epoch:04d}.pt")["model"]
    foreign = load_checkpoint(config.out / "fc" / "best.pt")["model"]
    assert result.test.loss == evaluate_weights(config, own)
    assert result.test.loss != evaluate_weights(config, foreign)


def test_a_resumed_run_tests_best_pt_only_if_it_is_its_own(tiny_config, cpu):
    # A learning rate too small to change a prediction: epoch 1 stays the best of 2.
    config = tiny_config("run", epochs={"fc": 2}, lr={"fc": 1e-12})
    [first] = run_training(config, cpu)
    assert first.best_epoch == 1
    resumed = tiny_config("run", epochs={"fc": 2}, lr={"fc": 1e-12}, resume="required")
    [again] = run_training(resumed, cpu)  # nothing left to train: tested from best.pt
    assert again.test.loss == first.test.loss
    replace_best(config.out / "fc", shift_classifier)
    with pytest.raises(CheckpointError, match=r"best.pt is not this run's best epoch"):
        run_training(resumed, cpu)


def test_killed_between_checkpoint_and_best_pt(tiny_config, cpu, monkeypatch):
    """The checkpoint of the best epoch is complete, best.pt is not: resuming rewrites it."""
    config = tiny_config("run", epochs={"fc": 1})

    def killed(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._StageRun, "save_best", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, cpu)
    stage = config.out / "fc"
    assert (stage / "checkpoint-0001.pt").is_file() and not (stage / "best.pt").exists()
    monkeypatch.undo()
    [result] = run_training(tiny_config("run", epochs={"fc": 1}, resume="required"), cpu)
    weights = load_checkpoint(stage / "checkpoint-0001.pt")["model"]
    assert_same_tensors(load_checkpoint(stage / "best.pt")["model"], weights)
    assert result.test.loss == evaluate_weights(config, weights)
