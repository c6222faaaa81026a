"""The stage loop: freezing, stage chaining, output files, AMP / channels_last, bad runs."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from data.image_trees import make_folder, write_corrupt

from bcnn_triton.data import DataConfig, build_datasets
from bcnn_triton.errors import UserInputError
from bcnn_triton.models import create_model
from bcnn_triton.train import (
    ShardedEvalSampler,
    TrainingError,
    evaluate,
    load_checkpoint,
    reports,
    run_training,
)


@pytest.mark.parametrize("size", [0, 1, 7, 10])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_shards_cover_every_sample_once(size, world_size):
    shards = [list(ShardedEvalSampler(size, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(ShardedEvalSampler(size, r, world_size)) for r in range(world_size)] == list(
        map(len, shards)
    )


@pytest.mark.slow
def test_fc_stage_trains_only_the_head(tiny_config, cpu):
    config = tiny_config()
    [result] = run_training(config, cpu)
    torch.manual_seed(config.seed)
    initial = create_model("bilinear", backbone="tiny", num_classes=4).state_dict()
    trained = load_checkpoint(result.directory / "checkpoint-0002.pt")["model"]
    for name, value in initial.items():
        if name.startswith("features."):
            # Weights and BatchNorm running statistics alike.
            assert torch.equal(trained[name], value), name
    assert not torch.equal(trained["fc.weight"], initial["fc.weight"])


@pytest.mark.slow
def test_all_stage_starts_from_the_fc_stage_and_trains_the_backbone(tiny_config, cpu, caplog):
    caplog.set_level(logging.INFO, logger="bcnn_triton")
    run_training(tiny_config(stages=("fc",)), cpu)
    [result] = run_training(tiny_config(stages=("all",), epochs={"all": 1}), cpu)
    fc_best = load_checkpoint(result.directory.parent / "fc" / "best.pt")["model"]
    assert f"starting from {result.directory.parent / 'fc' / 'best.pt'}" in caplog.text
    trained = load_checkpoint(result.directory / "checkpoint-0001.pt")["model"]
    assert not torch.equal(trained["features.0.0.weight"], fc_best["features.0.0.weight"])


def test_all_stage_without_fc_weights(tiny_config, cpu):
    with pytest.raises(UserInputError, match=r"fc/best\.pt does not exist.*--init"):
        run_training(tiny_config(stages=("all",)), cpu)


def test_init_from_another_backbone_is_refused(tiny_config, cpu, tmp_path):
    [gap] = run_training(tiny_config("gap", head="gap"), cpu)
    with pytest.raises(UserInputError, match="made for another model: head 'gap'"):
        run_training(tiny_config(stages=("all",), init=gap.directory / "best.pt"), cpu)


def test_output_files(tiny_config, cpu):
    [result] = run_training(tiny_config(), cpu)
    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert metrics["test"]["count"] == 16 and metrics["test"]["top5"] is None
    assert len(metrics["test"]["per_class"]) == 4
    assert metrics["model_config"]["backbone"] == "tiny"
    csv = (result.directory / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,lr,train_loss,train_acc,val_loss,val_acc")
    assert len(csv) == 3
    assert (result.directory / "curves.png").read_bytes()[:4] == b"\x89PNG"
    names = sorted(p.name for p in result.directory.iterdir())
    assert names == [
        "best.pt",
        "checkpoint-0001.pt",
        "checkpoint-0002.pt",
        "curves.png",
        "metrics.csv",
        "metrics.json",
    ]


def test_checkpoints_describe_classes_and_preprocessing(tiny_config, cpu):
    [result] = run_training(tiny_config(), cpu)
    for name in ("best.pt", "checkpoint-0002.pt"):
        state = load_checkpoint(result.directory / name)
        assert state["classes"] == ["pairing+0", "pairing+1", "pairing+2", "pairing+3"]
        assert state["preprocessing"] == {
            "image_size": 32,
            "resize": "shorter_side",
            "crop": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
        assert state["model_config"]["backbone"] == "tiny"


def test_bf16_autocast_and_channels_last(tiny_config, cpu):
    [result] = run_training(tiny_config(amp="bf16", channels_last=True, epochs={"fc": 1}), cpu)
    assert result.test.count == 16


def test_diverging_run_stops_with_a_clear_error(tiny_config, cpu):
    with pytest.raises(TrainingError, match=r"diverged\. Lower --lr"):
        run_training(tiny_config(lr={"fc": 1e38}), cpu)


def test_top5_and_per_class_accuracy(cpu):
    data = build_datasets(
        DataConfig(
            image_size=32, synthetic_classes=6, synthetic_train_size=12, synthetic_test_size=16
        )
    )
    model = create_model("gap", backbone="tiny", num_classes=6)
    result = evaluate(model, data.test, num_classes=6, context=cpu, batch_size=5, progress=False)
    assert result.count == 16 and result.top5 is not None
    assert result.top1 <= result.top5 <= 1
    per_class = result.per_class_accuracy()
    assert len(per_class) == 6 and int(result.confusion.sum()) == 16


def test_skip_bad_images_during_training(tmp_path, tiny_config, cpu, caplog):
    make_folder(tmp_path / "images", classes=2, per_class=6)
    write_corrupt(tmp_path / "images" / "c1" / "img_9.png")
    data = DataConfig(dataset="folder", root=str(tmp_path / "images"), image_size=16, seed=1)
    with pytest.raises(UserInputError, match=r"cannot read image .*img_9\.png"):
        run_training(tiny_config("strict", data=data), cpu)
    [result] = run_training(tiny_config("lenient", data=data, skip_bad_images=True), cpu)
    assert "skipping unreadable image" in caplog.text
    assert result.history[-1]["epoch"] == 2


def test_without_matplotlib_the_plots_are_skipped(tiny_config, cpu, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bcnn_triton")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setattr(reports, "_warned_no_matplotlib", False)
    [result] = run_training(tiny_config(), cpu)
    assert not (result.directory / "curves.png").exists()
    assert (result.directory / "metrics.json").is_file()
    notices = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(notices) == 1


def test_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(reports, "_save_figure", lambda figure, path: figures.append(figure))
    history = [
        {"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5}
        for e in range(1, 5)
    ]
    assert reports.plot_training_curves(history, tmp_path / "curves.png")
    [figure] = figures
    for axis in figure.axes:
        ticks = [tick for tick in axis.get_xticks() if 1 <= tick <= 4]
        assert ticks and all(tick == int(tick) for tick in ticks), ticks
