"""Embedding analysis of trained classifiers, from the saved test-set embeddings file alone
(written once by `cnnlab.tasks.classification.save_embeddings`): how well classes separate
and which ones the model confuses. Nothing here runs a model.

- t-SNE: van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008 (scikit-learn's
  Barnes-Hut implementation, PCA initialisation as recommended by Kobak & Berens, "The art of
  using t-SNE for single-cell transcriptomics", Nat. Commun. 2019).
- Silhouette and k-NN accuracy: see `cnnlab.metrics.classification`. Both are computed on
  the full-dimensional embedding; the 2-D t-SNE picture is for the eye only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.core import runfiles
from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.classification import confusion_matrix, knn_accuracy, silhouette, top_confused_pairs

EMBEDDINGS_FILE = runfiles.CIFAR_EMBEDDINGS


def load_embeddings(npz_path: str | Path) -> dict[str, np.ndarray]:
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise CnnlabError(f"embeddings file not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("features", "labels", "logits", "class_names")}
    except (KeyError, ValueError, OSError) as exc:
        raise CnnlabError(f"{npz_path} is not a cnnlab embeddings file: {exc}") from None
    return arrays


def stratified_sample(labels: np.ndarray, n_points: int, seed: int) -> np.ndarray:
    """Indices of a seeded sample of about `n_points`, keeping class proportions (every
    class present keeps at least one point), sorted."""
    labels = np.asarray(labels)
    if n_points >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        take = max(1, int(round(n_points * len(idx) / len(labels))))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def tsne_2d(features: np.ndarray, labels: np.ndarray, n_points: int = 2000,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of a stratified seeded sample of at most `n_points` embeddings.

    Features are L2-normalised (the cosine geometry the metrics use) and reduced to 50
    dimensions by PCA first, the standard speed-up that leaves neighbourhoods intact.
    Returns (xy float32 n x 2, labels of those points).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    idx = stratified_sample(labels, n_points, seed)
    x = np.asarray(features, dtype=np.float64)[idx]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n_components = min(50, x.shape[0], x.shape[1])
    if x.shape[1] > n_components:
        x = PCA(n_components=n_components, random_state=seed).fit_transform(x)
    # Perplexity must stay below the number of points; 30 is the usual value.
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One thread: the picture is then the same on every machine (threaded gradient sums
    # may round differently), and on a shared machine threads fighting for cores are slower
    # than one (docs/report.md has the timings).
    with threadpool_limits(limits=1):
        xy = tsne.fit_transform(x)
    return xy.astype(np.float32), np.asarray(labels)[idx]


def analyse_embeddings(npz_path: str | Path, *, tsne_points: int = 2000, seed: int = 0,
                       knn_k: int = 5, silhouette_sample: int = 5000, top_k: int = 5) -> dict:
    """Numbers and pictures' inputs for one model's saved test embeddings.

    Returns a dict: `n`, `dim`, `class_names`, `accuracy` (argmax of the saved logits),
    `per_class_accuracy`, `silhouette` (cosine, on the full embedding, a seeded sample of
    `silhouette_sample` points), `knn_accuracy` (k=`knn_k`, cosine, 5-fold cross-validated
    on the test embeddings), `confusion_matrix` (list of lists, rows = true class),
    `top_confused_pairs`, the settings used, and `tsne` = {"xy", "labels"} numpy arrays
    (absent when `tsne_points` is 0).
    """
    arrays = load_embeddings(npz_path)
    features, labels, logits = arrays["features"], arrays["labels"], arrays["logits"]
    class_names = [str(c) for c in arrays["class_names"]]
    num_classes = len(class_names)
    preds = logits.argmax(axis=1)
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(class_names)}
    result = {
        "n": int(len(labels)),
        "dim": int(features.shape[1]),
        "class_names": class_names,
        "accuracy": float((preds == labels).mean()),
        "per_class_accuracy": per_class,
        "silhouette": silhouette(features, labels, seed=seed, sample=silhouette_sample),
        "knn_accuracy": knn_accuracy(features, labels, k=knn_k, seed=seed),
        "confusion_matrix": cm.tolist(),
        "top_confused_pairs": top_confused_pairs(cm, class_names, k=top_k),
        "settings": {"metric": "cosine", "knn_k": knn_k, "knn_folds": 5, "seed": seed,
                     "silhouette_sample": silhouette_sample, "tsne_points": tsne_points,
                     "top_k": top_k},
    }
    if tsne_points > 0:
        xy, xy_labels = tsne_2d(features, labels, tsne_points, seed)
        result["tsne"] = {"xy": xy, "labels": xy_labels}
    return result
