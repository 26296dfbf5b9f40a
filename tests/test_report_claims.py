"""The reference report's Part 1 claims checked against a run's numbers, on hand-made runs
whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from cnnlab.metrics.classification import top_confused_pairs
from cnnlab.reports.claims import NOT_JUDGED, NOT_SUPPORTED, SUPPORTED, all_pair_rates, check_claims

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BLOCKS = ["A", "B", "C", "D", "D-dw", "E"]


def analysis(silhouette: float, knn: float, confusions: dict[tuple[str, str], int]) -> dict:
    """100 test images per class; `confusions[(a, b)]` images of a predicted as b."""
    cm = np.diag(np.full(10, 100))
    for (a, b), n in confusions.items():
        i, j = NAMES.index(a), NAMES.index(b)
        cm[i, j] += n
        cm[i, i] -= n
    return {"class_names": NAMES, "confusion_matrix": cm.tolist(), "silhouette": silhouette, "knn_accuracy": knn,
            "top_confused_pairs": top_confused_pairs(cm, NAMES, k=2)}


def run(val: dict[str, float], sil: dict[str, float], confusions: dict[str, dict]):
    rows = [{"block": b, "val_acc": v} for b, v in val.items()]
    return check_claims(rows, {b: analysis(sil[b], sil[b], confusions[b]) for b in sil})


CAT_DOG = {("cat", "dog"): 20, ("dog", "cat"): 10}


def test_every_claim_supported_when_b_leads_and_the_named_pairs_dominate():
    confusions = {b: {("airplane", "automobile"): 8, ("dog", "horse"): 6, ("cat", "deer"): 1} for b in BLOCKS}
    val = {b: 0.80 for b in BLOCKS} | {"B": 0.90}
    sil = {b: 0.5 for b in BLOCKS} | {"B": 0.6}
    claims = run(val, sil, confusions)
    assert [c["verdict"] for c in claims] == [SUPPORTED] * 3
    assert "best validation accuracy: B (90.00%); B ranks 1 of 6" in claims[0]["finding"]
    assert "airplane <-> automobile ranks 1 of 45 pairs (mean rate 4.00%), in 6 of 6 blocks' top 2" \
        in claims[2]["finding"]
    assert "dog <-> horse ranks 2 of 45" in claims[2]["finding"]


def test_claims_fail_on_the_numbers_that_contradict_them():
    # A leads validation, C separates best, cat/dog is everyone's top confusion; the named
    # pairs are confused a little in only two blocks.
    confusions = {b: dict(CAT_DOG) for b in BLOCKS}
    confusions["A"] |= {("airplane", "automobile"): 2}
    confusions["B"] |= {("dog", "horse"): 1}
    val = {"A": 0.91, "B": 0.90, "C": 0.89, "D": 0.88, "D-dw": 0.80, "E": 0.85}
    sil = {b: 0.5 for b in BLOCKS} | {"C": 0.7, "B": 0.6}
    claims = run(val, sil, confusions)
    assert [c["verdict"] for c in claims] == [NOT_SUPPORTED] * 3
    assert "best validation accuracy: A (91.00%); B ranks 2 of 6 (90.00%)" == claims[0]["finding"]
    assert "silhouette: best C, B ranks 2 of 6 (0.600)" in claims[1]["finding"]
    assert "most confused pair: cat <-> dog (mean rate 15.00%)" in claims[2]["finding"]
    assert "in 1 of 6 blocks' top 2" in claims[2]["finding"]


def test_no_verdict_until_every_block_of_the_report_is_in():
    claims = run({"A": 0.9, "B": 0.8}, {"A": 0.5, "B": 0.4}, {"A": CAT_DOG, "B": CAT_DOG})
    assert [c["verdict"] for c in claims] == [NOT_JUDGED] * 3
    assert all(c["finding"].endswith("(2 of the report's 6 blocks are in the run)") for c in claims)
    # Trained but not analysed (no embeddings): the ranking claim is judged, the others wait.
    rows = [{"block": b, "val_acc": 0.9 if b == "B" else 0.8} for b in BLOCKS]
    claims = check_claims(rows, {"A": analysis(0.5, 0.5, CAT_DOG)})
    assert [c["verdict"] for c in claims] == [SUPPORTED, NOT_JUDGED, NOT_JUDGED]


def test_pair_rates_count_both_directions_over_both_classes():
    rates = all_pair_rates({"A": analysis(0.5, 0.5, CAT_DOG), "B": analysis(0.5, 0.5, {})})
    assert len(rates) == 45
    assert rates[("cat", "dog")] == pytest.approx(((20 + 10) / 200 + 0.0) / 2)
