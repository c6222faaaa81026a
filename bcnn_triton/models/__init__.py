"""B-CNN and iSQRT-COV models on torchvision or timm backbones, and the global-average-pooling
baseline."""

from bcnn_triton.models.backbones import BACKBONES, feature_channels
from bcnn_triton.models.bilinear_cnn import BilinearCNN
from bcnn_triton.models.factory import HEADS, create_model, model_from_config
from bcnn_triton.models.global_pool_cnn import GlobalPoolCNN
from bcnn_triton.models.isqrt_cov_cnn import ISqrtCovCNN
from bcnn_triton.models.weights import WeightsUnavailableError

__all__ = [
    "BACKBONES",
    "HEADS",
    "BilinearCNN",
    "GlobalPoolCNN",
    "ISqrtCovCNN",
    "WeightsUnavailableError",
    "create_model",
    "feature_channels",
    "model_from_config",
]
