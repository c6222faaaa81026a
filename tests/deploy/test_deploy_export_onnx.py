"""ONNX export: our operator in standard ONNX operators, run by onnxruntime without our package.

The operator's translation is checked against the float64 reference; whole models against
their PyTorch logits (max |Δ| <= 1e-4 in float32 on CPU, batch sizes 1 and 3, dynamic batch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from deploy.checkpoints import CLASSES, IMAGE_SIZE, MEAN, STD, tiny_model, write_checkpoint
from reference import (
    bilinear_pool_reference,
    feature_like,
    isqrt_cov_pool_reference,
    newton_schulz_sqrt_reference,
    spd_like,
)

from bcnn_triton import bilinear_pool, isqrt_cov_pool, matrix_sqrt_newton_schulz
from bcnn_triton.deploy import (
    ExportError,
    TrainedModel,
    export_onnx,
    exported_program,
    load_trained_model,
    missing_translations,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from bcnn_triton.deploy.onnx_ops import ONNX_TRANSLATIONS  # noqa: E402  (needs onnxscript)


class Pool(torch.nn.Module):
    """The functional op with fixed options, as a module to export (one or two streams)."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, x, y=None):
        return bilinear_pool(x, y, **self.options)


def onnx_session(module, inputs, path):
    dims = [{0: torch.export.Dim.DYNAMIC} for _ in inputs]
    program = torch.onnx.export(
        module,
        tuple(inputs),
        dynamo=True,
        dynamic_shapes=tuple(dims),
        custom_translation_table=ONNX_TRANSLATIONS,
        verbose=False,
    )
    program.save(path)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(session, *arrays):
    names = [given.name for given in session.get_inputs()]
    return session.run(None, dict(zip(names, arrays, strict=True)))[0]


# (options, Cx, Cy or None, spatial, mixed signs): ReLU-like maps with a dead channel (exact
# zeros in the Gram), or Gaussian maps whose Gram has negative entries.
OP_CASES = [
    (dict(), 6, None, (3, 5), False),
    (dict(), 5, None, (4, 4), True),
    (dict(signed_sqrt=False, normalize=False), 6, None, (3, 5), True),
    (dict(signed_sqrt=False), 4, None, 7, False),
    (dict(eps=1e-3), 4, None, (2, 3), True),
    (dict(triu=True), 7, None, (3, 3), True),
    (dict(), 5, 3, (2, 4), False),
    (dict(normalize=False), 3, 4, 6, True),
    (dict(center=True), 6, None, (3, 5), False),
    (dict(center=True, triu=True), 5, None, (4, 2), True),
    (dict(center=True, signed_sqrt=False), 4, 3, (3, 3), False),
]


def features(num, channels, spatial, mixed):
    spatial = spatial if isinstance(spatial, tuple) else (spatial,)
    if mixed:
        return torch.randn(num, channels, *spatial)
    return feature_like(num, channels, *spatial, dead=0.2)


@pytest.mark.parametrize(("options", "cx", "cy", "spatial", "mixed"), OP_CASES)
def test_operator_translation_matches_the_reference(tmp_path, options, cx, cy, spatial, mixed):
    streams = [features(2, cx, spatial, mixed)]
    if cy is not None:
        streams.append(features(2, cy, spatial, mixed))
    session = onnx_session(Pool(**options).eval(), streams, tmp_path / "pool.onnx")
    for num in (1, 3):
        inputs = [features(num, t.shape[1], spatial, mixed) for t in streams]
        got = torch.from_numpy(run(session, *(t.numpy() for t in inputs)))
        expected = bilinear_pool_reference(*inputs, **options)
        torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)


class MatrixSqrt(torch.nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, a):
        return matrix_sqrt_newton_schulz(a, **self.options)


@pytest.mark.parametrize(
    "options", [dict(), dict(triu=True, iterations=3), dict(iterations=1, eps=1e-3)], ids=str
)
def test_matrix_sqrt_translation_matches_the_reference(tmp_path, options):
    session = onnx_session(MatrixSqrt(**options).eval(), [spd_like(2, 7, 5)], tmp_path / "s.onnx")
    for num in (1, 3):
        a = spd_like(num, 7, 5)  # rank 4
        got = torch.from_numpy(run(session, a.numpy()))
        expected = newton_schulz_sqrt_reference(a, **options)
        torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)


class ISqrtPool(torch.nn.Module):
    def forward(self, x):
        return isqrt_cov_pool(x)


def test_isqrt_cov_pool_translates_through_both_operators(tmp_path):
    x = feature_like(2, 6, 3, 5)
    session = onnx_session(ISqrtPool().eval(), [x], tmp_path / "isqrt.onnx")
    x = feature_like(3, 6, 3, 5, dead=0.2)
    got = torch.from_numpy(run(session, x.numpy()))
    torch.testing.assert_close(got.double(), isqrt_cov_pool_reference(x), atol=2e-6, rtol=1e-5)


def model_logits_difference(trained, path, num):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(num, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = trained.model(images).numpy()
    return np.abs(run(session, images.numpy()) - expected).max()


MODELS = {
    "bilinear": dict(),
    "gap": dict(head="gap"),
    "triu": dict(triu=True),
    "two-stream+reduce": dict(second_backbone="tiny", reduce_dim=8),
    "isqrt+reduce": dict(head="isqrt", reduce_dim=8),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_models_match_pytorch_logits(tmp_path, name):
    checkpoint = write_checkpoint(tmp_path, tiny_model(**MODELS[name]))
    trained = load_trained_model(checkpoint)
    path = export_onnx(trained, tmp_path / "model.onnx")
    for num in (1, 3):
        assert model_logits_difference(trained, path, num) <= 1e-4


def test_file_uses_standard_operators_and_records_classes_and_preprocessing(tmp_path):
    trained = load_trained_model(write_checkpoint(tmp_path))
    path = export_onnx(trained, tmp_path / "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert not model.functions
    assert {"MatMul", "Sign", "Sqrt", "ReduceSumSquare"} <= {n.op_type for n in model.graph.node}
    [images] = model.graph.input
    dims = images.type.tensor_type.shape.dim
    assert images.name == "images" and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, IMAGE_SIZE, IMAGE_SIZE]
    [logits] = model.graph.output
    assert logits.name == "logits"
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == [
        "batch",
        len(CLASSES),
    ]
    metadata = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert metadata["classes"] == CLASSES
    assert metadata["preprocessing"]["image_size"] == IMAGE_SIZE
    assert metadata["preprocessing"]["mean"] == list(MEAN)
    assert metadata["preprocessing"]["std"] == list(STD)
    assert metadata["model_config"]["backbone"] == "tiny"


def test_onnxruntime_runs_it_without_torch_or_our_package(tmp_path):
    trained = load_trained_model(write_checkpoint(tmp_path))
    path = export_onnx(trained, tmp_path / "model.onnx")
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    np.save(tmp_path / "images.npy", images.numpy())
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = sys.modules["bcnn_triton"] = None  # importing them fails
        import json
        import numpy as np
        import onnxruntime
        session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
        logits = session.run(["logits"], {"images": np.load(sys.argv[2])})[0]
        np.save(sys.argv[3], logits)
        print(json.dumps([classes[i] for i in logits.argmax(axis=1)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, path, tmp_path / "images.npy", tmp_path / "out.npy"],
        capture_output=True,
        text=True,
        check=True,
    )
    with torch.no_grad():
        expected = trained.model(images)
    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    assert (got - expected).abs().max() <= 1e-4
    assert json.loads(done.stdout) == [CLASSES[i] for i in expected.argmax(dim=1)]


@torch.library.custom_op("bcnn_triton::_test_untranslated_square", mutates_args=())
def _untranslated_square(x: torch.Tensor) -> torch.Tensor:
    return x * x


@_untranslated_square.register_fake
def _(x):
    return torch.empty_like(x)


class ModelWithAnUntranslatedOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = {"head": "test", "num_classes": 2}
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, images):
        pooled = torch.ops.bcnn_triton._test_untranslated_square(images).mean(dim=(2, 3))
        return self.fc(bilinear_pool(images.flatten(2)).view(-1, 3, 3).mean(2) + pooled)


def test_an_operator_without_translation_is_named(tmp_path):
    from bcnn_triton.data import Preprocessing

    trained = TrainedModel(
        ModelWithAnUntranslatedOp(), ["a", "b"], Preprocessing(4), tmp_path / "x.pt", {}
    )
    program = exported_program(trained)
    assert missing_translations(program, ONNX_TRANSLATIONS) == [
        "bcnn_triton::_test_untranslated_square"
    ]
    with pytest.raises(ExportError, match=r"operator bcnn_triton::_test_untranslated_square"):
        export_onnx(trained, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_missing_onnxscript_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.delitem(sys.modules, "bcnn_triton.deploy.onnx_ops")
    trained = load_trained_model(write_checkpoint(tmp_path))
    with pytest.raises(ExportError, match=r"pip install 'bcnn-triton\[export\]'"):
        export_onnx(trained, tmp_path / "model.onnx")
