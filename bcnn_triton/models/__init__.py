"""B-CNN models on torchvision backbones."""
