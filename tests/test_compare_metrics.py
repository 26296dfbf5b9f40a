"""Paired AUC comparison (`cnnlab.metrics.compare`): weighted AUC by hand and against sklearn,
the people-bootstrap weights by hand, and intervals that behave as a comparison should."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.compare import paired_auc_difference, people_bootstrap_weights, weighted_auc


def test_weighted_auc_by_hand():
    d, same = [0.1, 0.4, 0.35, 0.8], [1, 1, 0, 0]
    # Same-person distances 0.1 and 0.4 against different-person 0.35 and 0.8: 0.4 > 0.35 is the
    # one of four orderings that is wrong.
    assert weighted_auc(d, same) == pytest.approx(3 / 4)
    # Weight 2 on the 0.1 pair: (2*2 + 1*1) right of (2+1) x (1+1) weighted orderings.
    assert weighted_auc(d, same, [2, 1, 1, 1]) == pytest.approx(5 / 6)
    assert weighted_auc([0.3, 0.3], [1, 0]) == pytest.approx(0.5)          # a tie counts one half
    assert weighted_auc(d, same, [1, 0, 1, 1]) == pytest.approx(1.0)       # weight 0 drops the pair


def test_weighted_auc_with_unit_weights_is_sklearns_and_integer_weights_are_repeats():
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.5
    d = np.round(rng.normal(size=400) - same, 1)                            # many ties
    assert weighted_auc(d, same) == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    w = rng.integers(0, 4, 400)
    repeated = np.repeat(np.arange(400), w)
    assert weighted_auc(d, same, w) == pytest.approx(roc_auc_score(same[repeated], -d[repeated]), abs=1e-12)


def test_bootstrap_weights_count_people_drawn():
    # Pairs: (x, x) same person, (x, y) and (y, z) different people.
    a, b = np.array(["x", "x", "y"]), np.array(["x", "y", "z"])
    w = people_bootstrap_weights(a, b, resamples=50, seed=3)
    rng = np.random.default_rng(3)
    for row in w:                         # the same draws, in the same order, by hand
        m = np.bincount(rng.integers(0, 3, 3), minlength=3)               # people sorted: x, y, z
        assert list(row) == [m[0], m[0] * m[1], m[1] * m[2]]
    assert np.array_equal(w, people_bootstrap_weights(a, b, resamples=50, seed=3))


def synthetic(n_people=300, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    same = np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]
    pa = rng.integers(0, n_people, n)
    pb = np.where(same, pa, (pa + rng.integers(1, n_people, n)) % n_people)
    return rng, same, pa, pb


def test_a_clearly_better_verifier_is_found_and_the_same_one_is_not():
    rng, same, pa, pb = synthetic()
    da = rng.normal(size=same.size) + 1.2 * ~same
    db = da - 0.5 * same                         # every same-person pair moved closer
    r = paired_auc_difference(da, db, same, pa, pb, resamples=500)
    assert r.difference > 0 and r.ci_low > 0 and r.b_not_better == 0.0
    assert r.pairs == 1000 and r.people == len(np.unique(np.r_[pa, pb])) and r.resamples == 500
    assert r.auc_a == pytest.approx(roc_auc_score(same, -da)) and r.auc_b == pytest.approx(roc_auc_score(same, -db))
    tie = paired_auc_difference(da, da, same, pa, pb, resamples=200)
    assert tie.difference == 0 and tie.ci_low == 0 and tie.ci_high == 0


def equally_good_pair(n_people: int, seed: int = 0):
    """Two verifiers of equal quality whose errors come from the people: each finds some people
    harder than the other does, so a person's pairs move together."""
    rng, same, pa, pb = synthetic(n_people=n_people, seed=seed)
    effect_a, effect_b = rng.normal(size=(2, n_people))
    base = 1.2 * ~same
    da = base + 0.6 * (effect_a[pa] + effect_a[pb]) * same + 0.5 * rng.normal(size=same.size)
    db = base + 0.6 * (effect_b[pa] + effect_b[pb]) * same + 0.5 * rng.normal(size=same.size)
    return da, db, same, pa, pb


def test_two_equally_good_verifiers_get_an_interval_around_zero_wider_when_fewer_people_share_the_pairs():
    many = paired_auc_difference(*equally_good_pair(300), resamples=1000)
    few = paired_auc_difference(*equally_good_pair(30), resamples=1000)
    assert many.ci_low < 0 < many.ci_high and few.ci_low < 0 < few.ci_high
    # The same number of pairs over 30 people: each person's luck weighs more, so the interval
    # is wider; resampling pairs one by one would not see the difference.
    assert few.ci_high - few.ci_low > 1.5 * (many.ci_high - many.ci_low)


def test_bad_input_is_refused_in_one_line():
    same = np.array([1, 0, 1, 0], bool)
    with pytest.raises(CnnlabError, match="not the same pairs"):
        paired_auc_difference([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3], same, [1, 2, 3, 4], [1, 5, 3, 6])
    with pytest.raises(CnnlabError, match="both same-person and different-person"):
        paired_auc_difference([0.1, 0.2], [0.1, 0.2], [1, 1], [1, 2], [1, 2])
    with pytest.raises(CnnlabError, match="pairs of people"):
        paired_auc_difference([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], same, [1, 2], [1, 2])
    with pytest.raises(CnnlabError, match="resamples must be"):
        paired_auc_difference([0.1, 0.2], [0.1, 0.2], [1, 0], [1, 2], [1, 3], resamples=0)
    with pytest.raises(CnnlabError, match="non-negative weight"):
        weighted_auc([0.1, 0.2], [1, 0], [1, -1])
