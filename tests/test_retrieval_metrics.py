"""precision@1, R-precision and MAP@R: by hand on a tiny example and against
pytorch-metric-learning's AccuracyCalculator (the definition the field uses)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.metrics.retrieval import retrieval_scores


def test_retrieval_scores_by_hand():
    # person 0 at x = 0, 1, 10 (R = 2 each); person 1 at -1.5, 11 (R = 1 each); person 2 at 50
    # (a single image: never a query, only a distractor).
    z = np.array([[0.0], [1.0], [10.0], [-1.5], [11.0], [50.0]], np.float32)
    labels = [0, 0, 0, 1, 1, 2]
    s = retrieval_scores(z, labels)
    # first R neighbours, hit or not: q0 [1+, 3-]; q1 [0+, 3-]; q2 [4-, 1+]; q3 [0-]; q4 [2-]
    assert s["queries"] == 5
    assert s["precision_at_1"] == pytest.approx(2 / 5)
    assert s["r_precision"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 5)
    # MAP@R: q0 (1/1)/2, q1 (1/1)/2, q2 (1/2)/2 (its hit comes second), q3 0, q4 0
    assert s["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 5)


def test_perfect_clusters_score_one():
    z = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]], np.float32)
    s = retrieval_scores(z, [0, 0, 0, 1, 1])
    assert s == {"queries": 5, "precision_at_1": 1.0, "r_precision": 1.0, "map_at_r": 1.0}


def test_matches_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, 400)
    z = (rng.normal(size=(400, 8)) + 0.3 * labels[:, None] % 3).astype(np.float32)
    ours = retrieval_scores(z, labels, chunk=64)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count")
    ref = calc.get_accuracy(torch.from_numpy(z), torch.from_numpy(labels))
    assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-9)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-9)


def test_no_person_with_two_images_gives_no_queries():
    s = retrieval_scores(np.eye(3, dtype=np.float32), [0, 1, 2])
    assert s["queries"] == 0 and np.isnan(s["precision_at_1"])
