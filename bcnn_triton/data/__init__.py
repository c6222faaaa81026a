"""Datasets and transforms for fine-grained recognition."""
