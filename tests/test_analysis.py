"""Metrics and embedding analysis: numbers checked against scikit-learn and hand-built cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from cnnlab.metrics import confusion_matrix, knn_accuracy, silhouette, top_confused_pairs
from cnnlab.models import create_model
from cnnlab.reports.analysis import analyse_embeddings, load_embeddings, stratified_sample, tsne_2d
from cnnlab.tasks.classification import save_embeddings


def test_confusion_matrix_by_hand_keeps_classes_that_never_occur():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 2, 2]  # class 3 neither occurs nor is predicted: its row and column stay
    cm = confusion_matrix(labels, preds, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 2, 0, 0],
                                       [0, 1, 1, 0],
                                       [0, 0, 1, 0],
                                       [0, 0, 0, 0]])


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="preds must lie"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 3)


def test_top_confused_pairs_on_hand_built_matrix():
    names = ["airplane", "bird", "cat", "dog"]
    cm = np.array([[90, 7, 0, 0],    # airplane -> bird 7: the largest single direction
                   [0, 95, 0, 1],
                   [0, 0, 80, 3],
                   [0, 0, 5, 88]])   # cat <-> dog 3 + 5 = 8: the most confused pair
    pairs = top_confused_pairs(cm, names, k=2)
    assert [(p["a"], p["b"]) for p in pairs] == [("cat", "dog"), ("airplane", "bird")]
    assert pairs[0]["count"] == 8 and (pairs[0]["a_as_b"], pairs[0]["b_as_a"]) == (3, 5)
    assert pairs[0]["rate"] == pytest.approx(8 / (83 + 93))
    assert (pairs[1]["count"], pairs[1]["a_as_b"], pairs[1]["b_as_a"]) == (7, 7, 0)
    # Pairs never confused are not listed, however large k is.
    assert len(top_confused_pairs(cm, names, k=10)) == 3


def test_knn_accuracy_separated_clusters_vs_random_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = np.eye(4, 16) * 10
    features = centres[labels] + rng.normal(0, 1, (200, 16))
    assert knn_accuracy(features, labels, k=5, seed=0) == 1.0
    shuffled = rng.permutation(labels)
    assert knn_accuracy(features, shuffled, k=5, seed=0) < 0.5  # chance is 0.25
    assert 0.0 <= knn_accuracy(rng.normal(size=(200, 16)), labels, k=5, seed=0) <= 1.0


def test_silhouette_is_sklearns_cosine_silhouette():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 8)) + 3 * np.eye(3, 8)[labels]
    full = silhouette(features, labels, seed=0, sample=None)
    assert full == pytest.approx(silhouette_score(features, labels, metric="cosine"))
    assert 0.0 < full <= 1.0
    sampled = silhouette(features, labels, seed=0, sample=60)
    assert -1.0 <= sampled <= 1.0 and sampled == silhouette(features, labels, seed=0, sample=60)


def test_save_embeddings_writes_features_logits_and_restores_mode(tmp_path):
    model = create_model("A", width_multiplier=0.125, dropout=0.5, num_classes=4)
    model.train()
    x = torch.randn(10, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    names = ["airplane", "automobile", "bird", "cat"]
    path = save_embeddings(model, [(x[:6], y[:6]), (x[6:], y[6:])], tmp_path / "e.npz", names)
    assert model.training, "the caller's train mode must come back"
    arrays = load_embeddings(path)
    assert arrays["features"].dtype == np.float32 and arrays["features"].shape == (10, model.embedding_dim)
    assert arrays["logits"].dtype == np.float32 and arrays["logits"].shape == (10, 4)
    assert arrays["labels"].dtype == np.int64 and arrays["labels"].tolist() == y.tolist()
    assert arrays["class_names"].tolist() == names
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(arrays["logits"], model(x).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(arrays["features"], model.forward_features(x).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="class names"):
        save_embeddings(model, [(x, y)], tmp_path / "bad.npz", names[:3])


def test_stratified_sample_keeps_every_class():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = stratified_sample(labels, 20, seed=0)
    assert set(labels[idx]) == {0, 1, 2} and 18 <= len(idx) <= 22
    assert len(np.unique(idx)) == len(idx)
    np.testing.assert_array_equal(stratified_sample(labels, 500, seed=0), np.arange(100))


def test_tsne_2d_is_seeded_and_samples():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 64)) + 4 * np.eye(3, 64)[labels]
    xy, xy_labels = tsne_2d(features, labels, n_points=60, seed=3)
    assert xy.shape == (60, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    assert np.bincount(xy_labels).tolist() == [20, 20, 20]
    xy2, _ = tsne_2d(features, labels, n_points=60, seed=3)
    np.testing.assert_array_equal(xy, xy2)


def test_analyse_embeddings_numbers(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    features = (rng.normal(size=(90, 16)) + 5 * np.eye(3, 16)[labels]).astype(np.float32)
    logits = np.eye(3, dtype=np.float32)[labels]
    logits[:9] = np.roll(logits[:9], 1, axis=1)  # 9 class-0 images predicted as class 1
    path = tmp_path / "e.npz"
    np.savez(path, features=features, labels=labels, logits=logits, class_names=np.array(["cat", "dog", "frog"]))
    a = analyse_embeddings(path, tsne_points=45, seed=0)
    assert a["accuracy"] == pytest.approx(81 / 90)
    assert a["confusion_matrix"][0] == [21, 9, 0]
    assert a["top_confused_pairs"][0] == {"a": "cat", "b": "dog", "count": 9, "a_as_b": 9, "b_as_a": 0,
                                          "rate": pytest.approx(9 / 60)}
    assert a["per_class_accuracy"]["cat"] == pytest.approx(0.7)
    assert 0.5 < a["silhouette"] <= 1.0 and a["knn_accuracy"] == 1.0
    assert a["tsne"]["xy"].shape == (45, 2)
    assert "tsne" not in analyse_embeddings(path, tsne_points=0)
