"""Face-verification metrics on (distance, same person?) pairs; a lower distance means "more
likely the same person", and a pair is accepted as same when distance <= threshold.

ROC/AUC follow scikit-learn on the score -distance. The 10-fold procedure is LFW's
(Huang et al. 2007; Huang and Learned-Miller 2014, UM-CS-2014-003): each fold's threshold is
chosen on the other nine folds only, and the mean accuracy is reported with its standard
error (sample std / sqrt(folds)).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

from cnnlab.core.errors import CnnlabError

DEFAULT_FARS = (1e-2, 1e-3)


def _pairs(distances, same) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(same).reshape(-1).astype(bool)
    if d.shape != s.shape:
        raise CnnlabError(f"{d.size} distances but {s.size} same/different labels")
    if d.size == 0:
        raise CnnlabError("no pairs to evaluate")
    if not np.all(np.isfinite(d)):
        raise CnnlabError(f"{int((~np.isfinite(d)).sum())} distances are NaN or infinite")
    return d, s


def _need_both_classes(s: np.ndarray) -> None:
    if s.all() or not s.any():
        raise CnnlabError("ROC metrics need both same-person and different-person pairs")


def accuracy_at(distances, same, threshold: float) -> float:
    d, s = _pairs(distances, same)
    return float(np.mean((d <= threshold) == s))


def best_threshold(distances, same) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct distances (plus one below the
    smallest and one above the largest), so the threshold never sits on a sample; ties go to
    the smallest threshold.
    """
    d, s = _pairs(distances, same)
    order = np.argsort(d, kind="stable")
    d_sorted, s_sorted = d[order], s[order]
    uniq, first = np.unique(d_sorted, return_index=True)
    group_end = np.r_[first[1:], d.size]
    accepted_pos = np.r_[0, np.cumsum(s_sorted)][group_end]     # same pairs with d <= uniq[m]
    accepted_neg = group_end - accepted_pos
    n_neg = int((~s).sum())
    correct = np.r_[n_neg, accepted_pos + (n_neg - accepted_neg)]
    half_gap = (uniq[1] - uniq[0]) / 2 if uniq.size > 1 else 0.5
    end_gap = (uniq[-1] - uniq[-2]) / 2 if uniq.size > 1 else 0.5
    thresholds = np.r_[uniq[0] - half_gap, (uniq[:-1] + uniq[1:]) / 2, uniq[-1] + end_gap]
    best = int(np.argmax(correct))
    return float(thresholds[best]), float(correct[best] / d.size)


def threshold_at_far(distances, same, far_target: float) -> tuple[float, float, bool]:
    """(threshold, false accept rate it gives here, limited): the threshold that accepts as many
    same-person pairs as possible while at most `far_target` of the different-person pairs fall
    within it, placed halfway between the last distance it accepts and the first it rejects.

    With n different-person pairs the smallest non-zero rate they can show is 1/n; for a target
    below that (`limited` = True) the threshold accepts none of them, which is the strictest
    reading of the target these pairs allow, and the rate actually met is unknown below 1/n."""
    if not 0.0 < far_target < 1.0:
        raise CnnlabError(f"FAR target must be in (0, 1), got {far_target}")
    d, s = _pairs(distances, same)
    _need_both_classes(s)
    negatives = np.sort(d[~s])
    allowed = int(np.floor(far_target * negatives.size + 1e-9))  # different-person pairs it may accept
    limited = far_target * negatives.size < 1
    if allowed >= negatives.size:
        threshold = float(d.max()) + 1.0
    else:
        first_rejected = negatives[allowed]
        below = d[d < first_rejected]
        threshold = (float((below.max() + first_rejected) / 2) if below.size
                     else float(np.nextafter(first_rejected, -np.inf)))
    return threshold, float(np.mean(negatives <= threshold)), limited


def roc_curve(distances, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds): accepting d <= thresholds[k] gives false accept rate far[k]
    and true accept rate tar[k]; every operating point is kept."""
    d, s = _pairs(distances, same)
    _need_both_classes(s)
    far, tar, score_thresholds = _sk_roc_curve(s, -d, drop_intermediate=False)
    return far, tar, -score_thresholds


def auc(distances, same) -> float:
    d, s = _pairs(distances, same)
    _need_both_classes(s)
    return float(roc_auc_score(s, -d))


def eer(distances, same) -> float:
    """Equal error rate: where false accept rate = false reject rate, linearly interpolated
    between the two ROC points that bracket the crossing."""
    far, tar, _ = roc_curve(distances, same)
    diff = far - (1.0 - tar)        # rises from -1 (accept nothing) to +1 (accept everything)
    k = int(np.argmax(diff >= 0))
    if diff[k] == 0 or k == 0:
        return float(far[k])
    t = -diff[k - 1] / (diff[k] - diff[k - 1])
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def tar_at_far(distances, same, far_target: float) -> float:
    """Highest true accept rate whose false accept rate is <= `far_target` (with n different-
    person pairs, a target below 1/n means no false accept at all)."""
    if not 0.0 <= far_target <= 1.0:
        raise CnnlabError(f"FAR target must be in [0, 1], got {far_target}")
    far, tar, _ = roc_curve(distances, same)
    return float(tar[far <= far_target].max())


def far_key(far: float) -> str:
    return f"{far:g}"


@dataclass
class VerificationMetrics:
    """Metrics of one set of pairs. `threshold` is the operating point the accuracy is taken
    at: the calibrated one passed in (a later `verify` reuses it), else the best on these pairs
    (`threshold_source` says which; only the former is an honest test accuracy)."""
    accuracy: float
    threshold: float
    auc: float
    eer: float
    tar_at_far: dict[str, float]
    n_pairs: int
    threshold_source: str = "calibrated"

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(distances, same, threshold: float | None = None,
             fars: Sequence[float] = DEFAULT_FARS) -> VerificationMetrics:
    d, s = _pairs(distances, same)
    if threshold is None:
        threshold, accuracy = best_threshold(d, s)
        source = "best on these pairs"
    else:
        accuracy, source = accuracy_at(d, s, threshold), "calibrated"
    return VerificationMetrics(accuracy=accuracy, threshold=float(threshold), auc=auc(d, s), eer=eer(d, s),
                              tar_at_far={far_key(f): tar_at_far(d, s, f) for f in fars},
                              n_pairs=int(d.size), threshold_source=source)


@dataclass
class KFoldAccuracy:
    """LFW's k-fold result: per-fold accuracy at a threshold chosen on the other folds."""
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    mean_accuracy: float
    std_accuracy: float          # sample standard deviation over folds (ddof=1)
    standard_error: float        # std / sqrt(folds), what LFW asks to report
    n_pairs: int
    folds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def kfold_accuracy(distances, same, folds) -> KFoldAccuracy:
    """For each fold f: threshold = best_threshold on the pairs of every other fold, then the
    accuracy of fold f's pairs at that threshold. Fold f's pairs are never passed to the
    threshold search (only `others`' arrays are)."""
    d, s = _pairs(distances, same)
    folds = np.asarray(folds).reshape(-1)
    if folds.shape != d.shape:
        raise CnnlabError(f"{folds.size} fold ids for {d.size} pairs")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise CnnlabError("k-fold evaluation needs at least 2 folds")
    accuracies, thresholds = [], []
    for f in fold_ids:
        held_out = folds == f
        others = ~held_out
        threshold, _ = best_threshold(d[others], s[others])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(d[held_out], s[held_out], threshold))
    acc = np.array(accuracies)
    std = float(acc.std(ddof=1))
    return KFoldAccuracy(fold_accuracies=accuracies, fold_thresholds=thresholds, mean_accuracy=float(acc.mean()),
                       std_accuracy=std, standard_error=std / np.sqrt(acc.size), n_pairs=int(d.size),
                       folds=[int(f) for f in fold_ids])
