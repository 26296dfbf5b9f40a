"""Classification metrics on saved labels, predictions and embeddings.

Embedding quality is measured in cosine geometry throughout: features are L2-normalised
before k-NN, and the silhouette uses the cosine distance. Pooled post-ReLU features differ
in scale between blocks (and between trained and untrained weights), so a Euclidean number
would partly measure feature norm rather than how well classes separate.

- Silhouette coefficient: Rousseeuw, "Silhouettes: a graphical aid to the interpretation and
  validation of cluster analysis", J. Comput. Appl. Math. 1987 (scikit-learn's implementation).
- k-NN accuracy in the embedding, the usual linear-probe-free test of a representation
  (e.g. Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", CVPR 2018), here cross-validated over the test embeddings.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# What cnnlab's `train_acc` is, said beside every table that shows it.
TRAIN_ACC_NOTE = ("train acc = running accuracy over the final epoch's augmented training batches "
                  "(free to measure; usually below clean training accuracy)")


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """`cm[t, p]` = number of samples of true class t predicted as p (int64, C x C)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in length: {labels.size} vs {preds.size}")
    for name, arr in (("labels", labels), ("preds", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}]")
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    # scikit-learn counts; `labels=range(C)` keeps the rows and columns of classes that never
    # occur (it would otherwise size the matrix by the classes present).
    return sk_confusion_matrix(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def pair_rate(cm, a: int, b: int) -> float:
    """How often classes a and b are mixed up: (a as b + b as a) / test images of a and b."""
    cm = np.asarray(cm)
    support = cm[a].sum() + cm[b].sum()
    return float((cm[a, b] + cm[b, a]) / support) if support else 0.0


def top_confused_pairs(cm, class_names: Sequence[str], k: int = 5) -> list[dict]:
    """The k most confused unordered class pairs {a, b}.

    Pairs are symmetric: a cat called a dog and a dog called a cat are one confusion, since
    the question a reader asks is "which classes does the model mix up". `count` sums both
    directions, `a_as_b` / `b_as_a` keep them apart, and `rate` divides `count` by the two
    classes' test samples so pairs stay comparable across models and class sizes.
    Ties are broken by class order, pairs with no confusion are left out.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.shape[0]
    if cm.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"need a square matrix and one name per class, got {cm.shape} and {len(class_names)} names")
    support = cm.sum(axis=1)
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            count = int(cm[a, b] + cm[b, a])
            if count == 0:
                continue
            total = int(support[a] + support[b])
            pairs.append({
                "a": str(class_names[a]), "b": str(class_names[b]),
                "count": count, "a_as_b": int(cm[a, b]), "b_as_a": int(cm[b, a]),
                "rate": count / total if total else 0.0,
            })
    pairs.sort(key=lambda p: -p["count"])  # stable: ties keep class order
    return pairs[:k]


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_accuracy(features, labels, k: int = 5, seed: int = 0, folds: int = 5) -> float:
    """Accuracy of a k-NN classifier (cosine) in the embedding, stratified `folds`-fold
    cross-validated over the given set, so every sample is scored once by neighbours it
    was not part of."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    x = _l2_normalise(features)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"features and labels differ in length: {len(x)} vs {len(y)}")
    # StratifiedKFold needs every class present in every fold; shrink folds for tiny sets.
    min_count = int(np.bincount(y).min(initial=len(y))) if len(y) else 0
    folds = max(2, min(folds, min_count)) if min_count >= 2 else 0
    if folds == 0:
        raise ValueError("k-NN accuracy needs at least two samples of every class present")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    correct = 0
    for train_idx, test_idx in splitter.split(x, y):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train_idx)), algorithm="brute")
        clf.fit(x[train_idx], y[train_idx])
        correct += int((clf.predict(x[test_idx]) == y[test_idx]).sum())
    return correct / len(y)


def silhouette(features, labels, seed: int = 0, sample: int | None = 5000) -> float:
    """Mean silhouette coefficient with cosine distance, in [-1, 1]; computed on a seeded
    random sample of `sample` points when the set is larger (the pairwise distance matrix
    is quadratic), else on every point."""
    from sklearn.metrics import silhouette_score

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("silhouette needs at least two classes")
    sample_size = sample if sample is not None and sample < len(y) else None
    return float(silhouette_score(x, y, metric="cosine", sample_size=sample_size, random_state=seed))
