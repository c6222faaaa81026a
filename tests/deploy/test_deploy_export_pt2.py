"""pt2 export: torch.export with a dynamic batch; loading needs only ``import bcnn_triton.ops``
(or ``bcnn_triton.deploy.load_pt2``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from deploy.checkpoints import CLASSES, IMAGE_SIZE, tiny_model, write_checkpoint
from torch.export.passes import move_to_device_pass

from bcnn_triton.deploy import (
    PT2_METADATA_FILE,
    export_pt2,
    exported_program,
    load_pt2,
    load_trained_model,
)
from bcnn_triton.errors import UserInputError


def pool_calls(program):
    target = torch.ops.bcnn_triton.bilinear_pool.default
    return [node for node in program.graph.nodes if node.target is target]


MODELS = {
    "bilinear": dict(),
    "triu": dict(triu=True),
    "two-stream": dict(second_backbone="tiny"),
    "isqrt": dict(head="isqrt", reduce_dim=8),
}

# Load each program in a fresh process, as docs/deploy.md shows; save outputs, print metadata.
LOAD_WITH_TORCH = """
import json
import torch
import bcnn_triton.ops  # registers the operators the programs call
def load(path):
    extra = {"bcnn_triton.json": ""}
    program = torch.export.load(path, extra_files=extra)
    return program, json.loads(extra["bcnn_triton.json"])
"""
LOAD_WITH_OUR_LOADER = """
from bcnn_triton.deploy import load_pt2 as load
"""
RUN_ALL = """
import json, sys
import torch
inputs = torch.load(sys.argv[1])
outputs, metadata = {}, {}
for path in sys.argv[3:]:
    program, metadata[path] = load(path)
    outputs[path] = {num: program.module()(images) for num, images in inputs.items()}
torch.save(outputs, sys.argv[2])
print(json.dumps(metadata))
"""


@pytest.mark.slow
@pytest.mark.parametrize("loader", [LOAD_WITH_TORCH, LOAD_WITH_OUR_LOADER], ids=["torch", "ours"])
def test_round_trip_in_a_fresh_process(tmp_path, loader):
    assert PT2_METADATA_FILE == "bcnn_triton.json"  # the name the loader (and docs/deploy.md) uses
    models = {}
    for name, options in MODELS.items():
        trained = load_trained_model(write_checkpoint(tmp_path / name, tiny_model(**options)))
        models[str(export_pt2(trained, tmp_path / f"{name}.pt2"))] = trained
    inputs = {num: torch.randn(num, 3, IMAGE_SIZE, IMAGE_SIZE) for num in (1, 3)}
    torch.save(inputs, tmp_path / "inputs.pt")
    code = loader + RUN_ALL
    done = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "inputs.pt", tmp_path / "out.pt", *models],
        capture_output=True,
        text=True,
        check=True,
    )
    outputs = torch.load(tmp_path / "out.pt")
    metadata = json.loads(done.stdout)
    for path, trained in models.items():
        with torch.no_grad():
            for num, images in inputs.items():
                expected = trained.model(images)
                torch.testing.assert_close(outputs[path][num], expected, atol=1e-5, rtol=1e-5)
        assert metadata[path]["classes"] == CLASSES
        assert metadata[path]["preprocessing"]["image_size"] == IMAGE_SIZE
        assert metadata[path]["model_config"] == trained.model.config


def test_program_has_a_dynamic_batch_and_one_pool_call(tmp_path):
    program = exported_program(load_trained_model(write_checkpoint(tmp_path)))
    [images] = [
        spec for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"
    ]
    [placeholder] = [n for n in program.graph.nodes if n.name == images.arg.name]
    batch, *rest = placeholder.meta["val"].shape
    assert isinstance(batch, torch.SymInt) and rest == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert len(pool_calls(program)) == 1


def test_the_graph_does_not_hard_wire_the_exporting_machines_backend(tmp_path):
    program = exported_program(load_trained_model(write_checkpoint(tmp_path)))
    [call] = pool_calls(program)
    assert call.args[-1] == "auto"


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(UserInputError, match=r"pt2 file .*missing\.pt2 does not exist"):
        load_pt2(tmp_path / "missing.pt2")


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch):
    trained = load_trained_model(write_checkpoint(tmp_path))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_pt2(trained, tmp_path / "model.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


@pytest.mark.gpu
@pytest.mark.parametrize(("export_on", "run_on"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_exported_on_one_device_runs_on_the_other(tmp_path, export_on, run_on):
    checkpoint = write_checkpoint(tmp_path)
    path = export_pt2(load_trained_model(checkpoint, device=export_on), tmp_path / "model.pt2")
    module = move_to_device_pass(torch.export.load(path), run_on).module()
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    reference = load_trained_model(checkpoint, device="cpu").model
    with torch.no_grad():
        expected = reference(images)
        got = module(images.to(run_on)).cpu()
    # On CUDA the Triton kernels run (TF32 where torch allows it for float32 matmuls).
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
