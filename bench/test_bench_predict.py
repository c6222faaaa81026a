"""CPU throughput of prediction (images/s) at 224 px: eager vs torch.compile vs onnxruntime.

    pytest bench/test_bench_predict.py --benchmark-only --benchmark-json=predict.json
    python bench/summarize_predict.py predict.json

Each model call takes a batch of ``BATCH`` preprocessed images (N, 3, 224, 224) and ends in
the top-5 classes with their probabilities, as ``bcnn-triton predict`` computes them:

- ``eager``: ``Predictor.probabilities`` (the model under ``torch.inference_mode``) + top-k;
- ``eager_channels_last``: the same with ``Predictor(channels_last=True)``;
- ``compile``: the same with ``torch.compile(model)`` (compiled during the warm-up round);
- ``onnxruntime``: the file of ``bcnn-triton export --format onnx`` in onnxruntime's CPU
  provider, softmax and top-k in NumPy.

``end_to_end`` times ``Predictor.predict`` on a folder of JPEG photos (decoding, resize and
crop in this process, then the eager model). Models are B-CNNs with random weights and 200
classes (CUB's count; the classifier has 512² × 200 weights for resnet18).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcnn_triton.data import Preprocessing
from bcnn_triton.deploy import Predictor, TrainedModel, export_onnx
from bcnn_triton.models import BilinearCNN

IMAGE_SIZE, BATCH, NUM_CLASSES, TOP_K = 224, 16, 200, 5
PHOTOS = 32  # 500×375 JPEGs for the end-to-end case


@pytest.fixture(scope="module", params=["tiny", "resnet18"])
def trained(request):
    torch.manual_seed(0)
    model = BilinearCNN(request.param, num_classes=NUM_CLASSES).eval()
    classes = [f"class {i}" for i in range(NUM_CLASSES)]
    return TrainedModel(model, classes, Preprocessing(IMAGE_SIZE), Path("random weights"), {})


@pytest.fixture(scope="module")
def images():
    return torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def eager_call(trained, channels_last=False):
    if channels_last:  # converts the weights in place: leave the shared model as it is
        trained = dataclasses.replace(trained, model=copy.deepcopy(trained.model))
    predictor = Predictor(trained, top_k=TOP_K, channels_last=channels_last)
    return lambda batch: predictor.probabilities(batch).topk(TOP_K, dim=1)


def compile_call(trained):
    return eager_call(dataclasses.replace(trained, model=torch.compile(trained.model)))


def onnxruntime_call(trained, tmp_path_factory):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(trained, tmp_path_factory.mktemp("onnx") / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def call(batch):
        logits = session.run(["logits"], {"images": batch.numpy()})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        top = np.argpartition(-probabilities, TOP_K, axis=1)[:, :TOP_K]
        return np.take_along_axis(probabilities, top, axis=1), top

    return call


def describe(benchmark, trained, runtime, images_per_call):
    backbone = trained.model.config["backbone"]
    benchmark.group = f"predict {backbone} {IMAGE_SIZE}px"
    benchmark.extra_info.update(
        backbone=backbone,
        runtime=runtime,
        images_per_call=images_per_call,
        image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
        torch_threads=torch.get_num_threads(),
    )


@pytest.mark.parametrize("runtime", ["eager", "eager_channels_last", "compile", "onnxruntime"])
def test_predict_batch(benchmark, trained, images, runtime, tmp_path_factory):
    if runtime == "onnxruntime":
        call = onnxruntime_call(trained, tmp_path_factory)
    elif runtime == "compile":
        call = compile_call(trained)
    else:
        call = eager_call(trained, channels_last=runtime == "eager_channels_last")
    describe(benchmark, trained, runtime, BATCH)
    benchmark.pedantic(call, args=(images,), rounds=10, warmup_rounds=1)


def test_predict_end_to_end(benchmark, trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(PHOTOS):
        pixels = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.jpg", quality=90)
    predictor = Predictor(trained, batch_size=BATCH, top_k=TOP_K)
    describe(benchmark, trained, "end_to_end", PHOTOS)
    benchmark.pedantic(predictor.predict, args=([folder],), rounds=5, warmup_rounds=1)
