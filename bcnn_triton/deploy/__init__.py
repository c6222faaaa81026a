"""From a trained model to predictions: loading checkpoints for inference, predicting image
files, and exporting to ONNX or torch.export."""

from bcnn_triton.deploy.loading import TrainedModel, find_checkpoint, load_trained_model
from bcnn_triton.deploy.outputs import OUTPUT_FORMATS, output_format, write_predictions
from bcnn_triton.deploy.predictor import Prediction, PredictionResult, Predictor, collect_images

__all__ = [
    "OUTPUT_FORMATS",
    "Prediction",
    "PredictionResult",
    "Predictor",
    "TrainedModel",
    "collect_images",
    "find_checkpoint",
    "load_trained_model",
    "output_format",
    "write_predictions",
]
