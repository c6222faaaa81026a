"""Export a trained model to ONNX or to a torch.export program (``.pt2``), dynamic batch size.

Both files take normalized images ``images`` (N, 3, S, S) float32, S the checkpoint's image
size and any N >= 1, and give ``logits`` (N, num_classes). Both carry the class names and the
preprocessing (ONNX: model metadata ``classes`` and ``preprocessing``, JSON strings; pt2: the
extra file ``bcnn_triton.json``).

- ONNX: our operators are written in standard ONNX operators (see
  :mod:`bcnn_triton.deploy.onnx_ops`), so the file runs in onnxruntime without this package.
  Needs ``onnx`` and ``onnxscript`` (``pip install 'bcnn-triton[export]'``).
- pt2: load it with :func:`load_pt2`, or with ``torch.export.load`` after
  ``import bcnn_triton.ops`` (which registers the operators the program calls). The operator's
  ``backend`` argument is resolved when the program runs, from the tensors' device, so a
  program exported on a CPU runs the Triton kernels on a GPU and vice versa.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import bcnn_triton.ops  # noqa: F401  registers the operators that exported programs call
from bcnn_triton.config import EXPORT_FORMATS
from bcnn_triton.deploy.loading import TrainedModel
from bcnn_triton.errors import UserInputError
from bcnn_triton.train.atomic import atomic_write

__all__ = [
    "EXPORT_FORMATS",
    "PT2_METADATA_FILE",
    "ExportError",
    "compare_onnx_logits",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_pt2",
    "exported_program",
    "load_pt2",
    "missing_translations",
]

#: Name of the JSON metadata (classes, preprocessing, model config) inside a .pt2 file.
PT2_METADATA_FILE = "bcnn_triton.json"
# Operators of this namespace are ours: each needs an ONNX translation.
_OUR_NAMESPACE = "bcnn_triton"
# Above this many bytes of weights the ONNX file keeps them in a side file (protobuf's 2 GB cap).
_EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(UserInputError):
    """The model cannot be exported to the asked format (a missing package or translation)."""


def export_metadata(trained: TrainedModel) -> dict[str, Any]:
    """What an exported file records besides the graph: classes, preprocessing, model config."""
    return {
        "classes": list(trained.classes),
        "preprocessing": trained.preprocessing.as_dict(),
        "model_config": trained.model.config,
        "input": "images (N, 3, S, S) float32, normalized as in preprocessing",
        "output": "logits (N, num_classes)",
    }


def exported_program(trained: TrainedModel) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the model in eval mode, with a dynamic batch dimension."""
    model = trained.model.eval()
    size = trained.preprocessing.image_size
    example = torch.zeros(2, 3, size, size, device=trained.device)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:
        raise _export_failed(trained, "torch.export", error) from error


def _export_failed(trained: TrainedModel, exporter: str, error: Exception) -> ExportError:
    # One line naming the backbone: some (e.g. timm models with data-dependent Python control
    # flow) cannot be traced; the chained exception keeps torch's whole report.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return ExportError(
        f"cannot export a model on backbone {trained.model.config.get('backbone')!r} with "
        f"{exporter}: {type(error).__name__}: {lines[0] if lines else ''}"
    )


def missing_translations(
    program: torch.export.ExportedProgram, table: dict[torch._ops.OpOverload, Any]
) -> list[str]:
    """Names of our operators in ``program`` (``bcnn_triton::...``) that ``table`` lacks."""
    missing = []
    for node in program.graph.nodes:
        target = node.target
        if (
            node.op == "call_function"
            and isinstance(target, torch._ops.OpOverload)
            and target.namespace == _OUR_NAMESPACE
            and target not in table
            and target.name() not in missing
        ):
            missing.append(target.name())
    return missing


def export_pt2(trained: TrainedModel, path: str | Path) -> Path:
    """Save the model as a ``torch.export`` program with its metadata; returns ``path``."""
    program = exported_program(trained)
    extra_files = {PT2_METADATA_FILE: json.dumps(export_metadata(trained))}
    atomic_write(path, lambda handle: torch.export.save(program, handle, extra_files=extra_files))
    return Path(path)


def load_pt2(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """A program saved by :func:`export_pt2` and its metadata (classes, preprocessing, config).

    Example:
        >>> program, metadata = load_pt2("runs/demo/bilinear/fc/best.pt2")
        >>> size = metadata["preprocessing"]["image_size"]
        >>> program.module()(torch.randn(2, 3, size, size)).shape  # logits of 2 images
        torch.Size([2, 4])
        >>> metadata["classes"]
        ['pairing+0', 'pairing+1', 'pairing+2', 'pairing+3']
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"pt2 file {path} does not exist")
    extra_files = {PT2_METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra_files)
    metadata = json.loads(extra_files[PT2_METADATA_FILE] or "{}")
    return program, metadata


def _onnx_translations() -> dict[torch._ops.OpOverload, Any]:
    try:
        from bcnn_triton.deploy.onnx_ops import ONNX_TRANSLATIONS
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs the packages onnx and onnxscript ({error}); install them with "
            "pip install 'bcnn-triton[export]'"
        ) from None
    return ONNX_TRANSLATIONS


def export_onnx(trained: TrainedModel, path: str | Path) -> Path:
    """Save the model as an ONNX file with its metadata; returns ``path``.

    Raises:
        ExportError: onnx or onnxscript is missing, the model contains one of our operators
            without an ONNX translation (named in the message), or the exporter fails on the
            model (the message names the backbone and the exporter's first line).
    """
    table = _onnx_translations()
    program = exported_program(trained)
    missing = missing_translations(program, table)
    if missing:
        raise ExportError(
            f"cannot export to ONNX: the model uses operator {', '.join(missing)}, which has no "
            "ONNX translation yet (add one to ONNX_TRANSLATIONS in bcnn_triton/deploy/onnx_ops.py)"
            "; --format pt2 exports it"
        )
    try:
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            custom_translation_table=table,
            # Names the program's dynamic batch dimension in the file's input and output shapes.
            dynamic_shapes=({0: "batch"},),
            output_names=["logits"],
            verbose=False,
        )
    except Exception as error:
        raise _export_failed(trained, "torch.onnx.export", error) from error
    onnx_program.model.metadata_props.update(
        {key: json.dumps(value) for key, value in export_metadata(trained).items()}
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in trained.model.parameters())
    path = Path(path)
    if weight_bytes > _EXTERNAL_DATA_BYTES:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx_program.save(path, external_data=True)  # the weights in a file beside it
    else:
        serialized = onnx_program.model_proto.SerializeToString()
        atomic_write(path, lambda handle: handle.write(serialized))
    return path


def compare_onnx_logits(
    trained: TrainedModel, path: str | Path, batch_size: int = 3
) -> float | None:
    """Largest |Δ| between the ONNX file's logits in onnxruntime and the model's.

    Runs both on ``batch_size`` random normalized images; None where onnxruntime is missing.
    """
    try:
        import onnxruntime
    except ImportError:
        return None
    size = trained.preprocessing.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=generator)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        expected = trained.model(images.to(trained.device)).float().cpu()
    return float((torch.from_numpy(logits) - expected).abs().max())


def export_model(trained: TrainedModel, path: str | Path, format: str) -> Path:
    """Export ``trained`` to ``path`` in ``format`` (``"onnx"`` or ``"pt2"``)."""
    if format == "onnx":
        return export_onnx(trained, path)
    if format == "pt2":
        return export_pt2(trained, path)
    raise ExportError(f"format must be one of {', '.join(EXPORT_FORMATS)}; got {format!r}")
