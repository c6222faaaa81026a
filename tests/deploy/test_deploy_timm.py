"""A checkpoint with a timm ViT backbone: loaded for inference with its bicubic preprocessing,
exported to ONNX (run in onnxruntime) and to a torch.export program, predictions on files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deploy.checkpoints import CLASSES, write_checkpoint, write_photo
from PIL import Image

from bcnn_triton.deploy import (
    ExportError,
    Predictor,
    export_onnx,
    export_pt2,
    load_trained_model,
)
from bcnn_triton.models import create_model

pytest.importorskip("timm")

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

SIZE = 32  # 2×2 patches of 16 px: the ViT's 14×14 position grid is resampled in the graph
PREPROCESSING = {
    "image_size": SIZE,
    "resize": "shorter_side",
    "crop": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(
        "bilinear", backbone="timm/vit_tiny_patch16_224", num_classes=len(CLASSES), reduce_dim=8
    )
    directory = tmp_path_factory.mktemp("vit")
    return write_checkpoint(directory, model.eval(), preprocessing=PREPROCESSING)


def test_onnx_export_matches_pytorch_and_records_the_preprocessing(tmp_path, checkpoint):
    trained = load_trained_model(checkpoint)
    path = export_onnx(trained, tmp_path / "vit.onnx")
    metadata = {prop.key: json.loads(prop.value) for prop in onnx.load(path).metadata_props}
    assert metadata["preprocessing"] == PREPROCESSING
    assert metadata["model_config"]["backbone"] == "timm/vit_tiny_patch16_224"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for num in (1, 3):
        images = torch.randn(num, 3, SIZE, SIZE)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = trained.model(images).numpy()
        assert np.abs(logits - expected).max() <= 1e-4


def test_pt2_export_runs_after_loading(tmp_path, checkpoint):
    trained = load_trained_model(checkpoint)
    program = torch.export.load(export_pt2(trained, tmp_path / "vit.pt2"))
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), trained.model(images))


def test_predictor_prepares_files_with_bicubic_resizing(tmp_path, checkpoint):
    photo = write_photo(tmp_path / "bird.png", (48, 40), seed=1)
    predictor = Predictor(checkpoint, device="cpu", top_k=len(CLASSES))
    [prediction] = predictor.predict([photo]).predictions
    # Independent: PIL bicubic to 38×32, centre crop 32×32, mean/std 0.5.
    with Image.open(photo) as opened:
        resized = opened.convert("RGB").resize((38, 32), Image.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float64)[:, 3:35] / 255.0
    images = torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1)).float()[None]
    trained = load_trained_model(checkpoint)
    with torch.no_grad():
        values, indices = trained.model(images).double().softmax(dim=1)[0].sort(descending=True)
    assert prediction.indices == indices.tolist()
    # PIL here and through torchvision there differ by rounding only.
    torch.testing.assert_close(
        torch.tensor(prediction.probabilities, dtype=torch.float64), values, atol=1e-4, rtol=0
    )


def test_a_model_the_exporter_refuses_gives_one_line_naming_the_backbone(
    tmp_path, checkpoint, monkeypatch
):
    def refuses(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 0\n(details...)")

    monkeypatch.setattr(torch.export, "export", refuses)
    with pytest.raises(ExportError) as raised:
        export_pt2(load_trained_model(checkpoint), tmp_path / "vit.pt2")
    assert str(raised.value) == (
        "cannot export a model on backbone 'timm/vit_tiny_patch16_224' with torch.export: "
        "RuntimeError: Could not guard on data-dependent expression u0 > 0"
    )
    assert not (tmp_path / "vit.pt2").exists()
