"""Two verifiers compared on the same pairs: the difference of their AUCs with a confidence
interval from a people bootstrap.

Pairs that share a person are not independent (one hard person moves all of their pairs), so
resampling pairs one by one understates the noise. The bootstrap here resamples people with
replacement (the "subsets bootstrap" of Bolle, Ratha and Pankanti 2004 for biometric error
rates, where the subsets are a person's pairs): a person drawn m times counts m times, a
same-person pair of theirs m times, and a pair of two different people m_a x m_b times. Both
verifiers see the same resamples, so the difficulty the pairs share cancels (a paired comparison).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.verification import _need_both_classes, _pairs, auc


def _tie_groups(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the pairs sorted by distance, and where each run of equal distances starts."""
    order = np.argsort(distances, kind="stable")
    d = distances[order]
    starts = np.r_[0, np.flatnonzero(np.diff(d)) + 1]
    return order, starts


def _weighted_aucs(distances: np.ndarray, same: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of `weights` (R x pairs): the weighted share of (same, different) pairs
    whose same-person distance is the smaller, ties counting one half. NaN for a row that
    leaves no weight on one of the classes."""
    order, starts = _tie_groups(distances)
    w = weights[:, order]
    s = same[order]
    pos = np.add.reduceat(w * s, starts, axis=1)        # per tie group
    neg = np.add.reduceat(w * ~s, starts, axis=1)
    neg_after = neg.sum(axis=1, keepdims=True) - np.cumsum(neg, axis=1)  # larger distances only
    numerator = (pos * (neg_after + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_auc(distances, same, weights=None) -> float:
    """AUC of the score -distance with a weight per pair (all 1: the usual AUC)."""
    d, s = _pairs(distances, same)
    _need_both_classes(s)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != d.shape or np.any(w < 0):
        raise CnnlabError(f"need one non-negative weight per pair ({d.size}), got shape {w.shape}")
    return float(_weighted_aucs(d, s, w[None, :])[0])


def people_bootstrap_weights(person_a, person_b, resamples: int, seed: int) -> np.ndarray:
    """(resamples x pairs) weights: for each resample of the people with replacement, how many
    times each pair is drawn (m_a for a same-person pair, m_a x m_b otherwise)."""
    a, b = np.asarray(person_a).reshape(-1), np.asarray(person_b).reshape(-1)
    if a.shape != b.shape:
        raise CnnlabError(f"{a.size} first people but {b.size} second people")
    people, idx = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = idx[:a.size], idx[a.size:]
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people))
                       for _ in range(resamples)]).astype(np.float64)
    return np.where(ia == ib, counts[:, ia], counts[:, ia] * counts[:, ib])


@dataclass
class PairedAUC:
    auc_a: float
    auc_b: float
    difference: float      # auc_b - auc_a on all pairs
    ci_low: float          # the 2.5th and 97.5th percentiles of the resampled differences
    ci_high: float
    b_not_better: float    # share of resamples in which B's AUC <= A's
    resamples: int         # those that kept both classes (the others are dropped)
    pairs: int
    people: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_auc_difference(distances_a, distances_b, same, person_a, person_b, *, resamples: int = 2000,
                          seed: int = 0) -> PairedAUC:
    """AUC of B minus AUC of A on the same pairs, with a people-bootstrap 95% interval."""
    if resamples < 1:
        raise CnnlabError(f"resamples must be >= 1, got {resamples}")
    if np.size(distances_a) != np.size(distances_b):
        raise CnnlabError(f"A has {np.size(distances_a)} distances, B {np.size(distances_b)}: not the same pairs")
    da, s = _pairs(distances_a, same)
    db, _ = _pairs(distances_b, same)
    _need_both_classes(s)
    weights = people_bootstrap_weights(person_a, person_b, resamples, seed)
    if weights.shape[1] != s.size:
        raise CnnlabError(f"{weights.shape[1]} pairs of people for {s.size} distances")
    diffs = _weighted_aucs(db, s, weights) - _weighted_aucs(da, s, weights)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        raise CnnlabError("no resample kept both same-person and different-person pairs")
    auc_a, auc_b = auc(da, s), auc(db, s)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return PairedAUC(auc_a, auc_b, auc_b - auc_a, float(low), float(high), float(np.mean(diffs <= 0)),
                     int(diffs.size), int(s.size), len(np.unique(np.concatenate([np.asarray(person_a),
                                                                                  np.asarray(person_b)]))))
