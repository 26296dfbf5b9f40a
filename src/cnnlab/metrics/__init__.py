"""Metrics computed from saved predictions and embeddings (never from a live model).

`classification` serves Part 1 (CIFAR); face verification metrics live in their own module
and are imported from there directly, so this package stays light to import.
"""
from cnnlab.metrics.classification import (
    confusion_matrix,
    knn_accuracy,
    silhouette,
    top_confused_pairs,
)

__all__ = ["confusion_matrix", "knn_accuracy", "silhouette", "top_confused_pairs"]
