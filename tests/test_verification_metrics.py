"""Verification metrics: sklearn agreement, hand-computed EER/TAR@FAR, and the LFW 10-fold rule."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import cnnlab.metrics.verification as V
from cnnlab.core.errors import CnnlabError


def labelled(pos, neg):
    d = np.r_[pos, neg].astype(float)
    s = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    return d, s


def test_auc_equals_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        same = rng.random(500) < 0.4
        d = rng.normal(size=500) - 0.7 * same
        d[:50] = np.round(d[:50], 1)   # ties too
        assert V.auc(d, same) == pytest.approx(roc_auc_score(same, -d), abs=1e-12)


def test_perfect_separation():
    d, s = labelled([0.1, 0.2, 0.3], [0.8, 0.9, 1.5, 2.0])
    report = V.evaluate(d, s)
    assert report.accuracy == 1.0 and report.auc == 1.0 and report.eer == 0.0
    assert 0.3 < report.threshold < 0.8
    assert report.tar_at_far == {"0.01": 1.0, "0.001": 1.0}
    assert report.n_pairs == 7 and report.threshold_source == "best on these pairs"


def test_best_threshold_brute_force_agreement():
    rng = np.random.default_rng(1)
    same = rng.random(200) < 0.5
    d = np.round(rng.normal(size=200) - same, 1)
    t, acc = V.best_threshold(d, same)
    brute = max(np.mean((d <= c) == same) for c in np.r_[d - 1e-9, d + 1e-9])
    assert acc == pytest.approx(brute) and V.accuracy_at(d, same, t) == pytest.approx(acc)
    assert not np.any(d == t)  # never on a sample


def test_accuracy_at_a_given_threshold_is_not_retuned():
    d, s = labelled([0.1, 0.2, 0.6], [0.4, 0.7])
    # 0.1, 0.2 accepted, 0.4 false accept, 0.6 rejected, 0.7 rejected
    assert V.accuracy_at(d, s, 0.5) == pytest.approx(3 / 5)
    report = V.evaluate(d, s, threshold=0.5)
    assert report.accuracy == pytest.approx(0.6) and report.threshold == 0.5
    assert report.threshold_source == "calibrated"
    assert set(report.to_dict()) >= {"accuracy", "threshold", "auc", "eer", "tar_at_far", "n_pairs"}


def test_eer_known_answers():
    # threshold in (0.4, 0.6): 1 of 4 same pairs rejected (0.6), 1 of 4 different accepted (0.4)
    d, s = labelled([0.1, 0.2, 0.3, 0.6], [0.4, 0.7, 0.8, 0.9])
    assert V.eer(d, s) == pytest.approx(0.25)
    # crossing between ROC points: FAR/FRR go (0.5, 1) -> (0.5, 0) so they meet at 0.5
    d, s = labelled([0.3], [0.1, 0.5])
    assert V.eer(d, s) == pytest.approx(0.5)
    # fully inverted: every error rate is 1 at the crossing
    d, s = labelled([0.9, 0.8], [0.1, 0.2])
    assert V.eer(d, s) == pytest.approx(1.0)


def test_tar_at_far_known_answers():
    # 100 different-person pairs at distances 1..100; same-person pairs at 0.5, 1.5, 5, 200
    d, s = labelled([0.5, 1.5, 5.0, 200.0], np.arange(1, 101))
    assert V.tar_at_far(d, s, 1e-2) == pytest.approx(0.5)    # one false accept allowed: d <= 1.x
    assert V.tar_at_far(d, s, 1e-3) == pytest.approx(0.25)   # none allowed: d < 1
    assert V.tar_at_far(d, s, 0.05) == pytest.approx(0.75)   # five allowed: d <= 5
    far, tar, thr = V.roc_curve(d, s)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0) and np.all(np.diff(thr) >= 0)


def test_bad_inputs_are_user_errors():
    with pytest.raises(CnnlabError):
        V.evaluate([0.1, 0.2], [True])
    with pytest.raises(CnnlabError):
        V.auc([0.1, 0.2], [True, True])
    with pytest.raises(CnnlabError):
        V.evaluate([0.1, np.nan], [True, False])


def ten_folds(seed=0):
    rng = np.random.default_rng(seed)
    folds = np.repeat(np.arange(10), 60)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    d = rng.normal(size=600) + 1.5 * (~same)
    return d, same, folds


def test_kfold_matches_a_manual_leave_one_fold_out():
    d, same, folds = ten_folds()
    report = V.kfold_accuracy(d, same, folds)
    assert len(report.fold_accuracies) == 10 and report.folds == list(range(10))
    for f in range(10):
        t, _ = V.best_threshold(d[folds != f], same[folds != f])
        assert report.fold_thresholds[f] == t
        assert report.fold_accuracies[f] == V.accuracy_at(d[folds == f], same[folds == f], t)
    assert report.mean_accuracy == pytest.approx(np.mean(report.fold_accuracies))
    assert report.std_accuracy == pytest.approx(np.std(report.fold_accuracies, ddof=1))
    assert report.standard_error == pytest.approx(report.std_accuracy / np.sqrt(10))
    assert report.to_dict()["n_pairs"] == 600


def test_kfold_never_uses_a_folds_own_pairs_for_its_threshold():
    d, same, folds = ten_folds()
    before = V.kfold_accuracy(d, same, folds)
    # Rewrite fold 3 so that, alone, it would pick a far different threshold (its same pairs
    # now lie around 10, its different pairs around 20).
    d2 = d.copy()
    in3 = folds == 3
    d2[in3 & same] += 10
    d2[in3 & ~same] += 20
    own_t, _ = V.best_threshold(d2[in3], same[in3])
    assert abs(own_t - before.fold_thresholds[3]) > 5
    after = V.kfold_accuracy(d2, same, folds)
    assert after.fold_thresholds[3] == before.fold_thresholds[3]   # fold 3's threshold ignores fold 3
    assert after.fold_accuracies[3] < 0.6                           # and is applied to its shifted pairs


def test_kfold_threshold_search_never_sees_the_held_out_fold(monkeypatch):
    d, same, folds = ten_folds()
    seen = []
    real = V.best_threshold

    def spy(distances, s):
        seen.append(np.asarray(distances).copy())
        return real(distances, s)

    monkeypatch.setattr(V, "best_threshold", spy)
    V.kfold_accuracy(d, same, folds)
    assert len(seen) == 10
    for f, passed in enumerate(seen):
        assert len(passed) == 540
        assert not np.isin(d[folds == f], passed).any()        # no held-out distance reaches the search
        assert np.isin(d[folds != f], passed).all()


def test_kfold_needs_two_folds():
    with pytest.raises(CnnlabError):
        V.kfold_accuracy([0.1, 0.9], [True, False], [0, 0])
