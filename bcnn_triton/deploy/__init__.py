"""From a trained model to predictions: loading checkpoints for inference, predicting image
files, and exporting to ONNX or torch.export."""

from bcnn_triton.deploy.export import (
    EXPORT_FORMATS,
    PT2_METADATA_FILE,
    ExportError,
    compare_onnx_logits,
    export_metadata,
    export_model,
    export_onnx,
    export_pt2,
    exported_program,
    load_pt2,
    missing_translations,
)
from bcnn_triton.deploy.loading import (
    TrainedModel,
    best_checkpoint_in,
    find_checkpoint,
    load_trained_model,
)
from bcnn_triton.deploy.outputs import OUTPUT_FORMATS, output_format, write_predictions
from bcnn_triton.deploy.predictor import Prediction, PredictionResult, Predictor, collect_images

__all__ = [
    "EXPORT_FORMATS",
    "OUTPUT_FORMATS",
    "PT2_METADATA_FILE",
    "ExportError",
    "Prediction",
    "PredictionResult",
    "Predictor",
    "TrainedModel",
    "best_checkpoint_in",
    "collect_images",
    "compare_onnx_logits",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_pt2",
    "exported_program",
    "find_checkpoint",
    "load_pt2",
    "load_trained_model",
    "missing_translations",
    "output_format",
    "write_predictions",
]
