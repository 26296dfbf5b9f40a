"""The reference report's Part 1 findings, checked against a comparison run's numbers.

Three claims (`cnnlab.blocks.reference`): B has the best validation accuracy; B's t-SNE shows
the best class separation (judged on the embeddings themselves: silhouette and k-NN accuracy,
not on the 2-D picture); the most common confusions, consistent across most models, are
airplane vs automobile and dog vs horse (judged by where those pairs rank among all class pairs,
by mean confusion rate over the blocks, and in how many blocks' top-k they are).

A claim about "the best" or "most models" is judged only when every block the report trained
is in the run; before that each finding says how many are in and gives no verdict.
"""
from __future__ import annotations

import numpy as np

from cnnlab.blocks.reference import REPORT_BEST_BLOCK, REPORT_COMMON_CONFUSIONS, REPORT_VAL_ACC
from cnnlab.metrics.classification import pair_rate

SUPPORTED, NOT_SUPPORTED, NOT_JUDGED = "supported", "not supported", "not judged yet"


def _ranked(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda b: -values[b])


def _rank_text(block: str, order: list[str], values: dict[str, float], fmt) -> str:
    if block not in values:
        return f"{block} not in the run"
    return f"{block} ranks {order.index(block) + 1} of {len(order)} ({fmt(values[block])})"


def all_pair_rates(analyses: dict[str, dict]) -> dict[tuple[str, str], float]:
    """Every unordered class pair's confusion rate, (a as b + b as a) / images of a and b,
    averaged over the blocks."""
    rates: dict[tuple[str, str], list[float]] = {}
    for a in analyses.values():
        cm, names = np.asarray(a["confusion_matrix"], dtype=float), a["class_names"]
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                rates.setdefault(tuple(sorted((names[i], names[j]))), []).append(pair_rate(cm, i, j))
    return {pair: float(np.mean(r)) for pair, r in rates.items()}


def check_claims(rows: list[dict], analyses: dict[str, dict]) -> list[dict]:
    """One record per claim: `claim`, `finding` (numbers), `verdict` (SUPPORTED,
    NOT_SUPPORTED or NOT_JUDGED)."""
    best = REPORT_BEST_BLOCK
    trained = {r["block"] for r in rows if r.get("val_acc") is not None}
    complete = set(REPORT_VAL_ACC) <= trained
    n_in = len(trained & set(REPORT_VAL_ACC))
    waiting = f"{n_in} of the report's {len(REPORT_VAL_ACC)} blocks {'is' if n_in == 1 else 'are'} in the run"
    pct = "{:.2%}".format
    claims = []

    val = {r["block"]: float(r["val_acc"]) for r in rows if r.get("val_acc") is not None}
    order = _ranked(val)
    finding = (f"best validation accuracy: {order[0]} ({pct(val[order[0]])}); "
               + _rank_text(best, order, val, pct)) if val else "no block trained"
    claims.append({"claim": f"{best} has the best validation accuracy", "finding": finding,
                   "verdict": (SUPPORTED if order[0] == best else NOT_SUPPORTED) if complete else NOT_JUDGED})

    analysed = complete and set(REPORT_VAL_ACC) <= set(analyses)
    sil = {b: float(a["silhouette"]) for b, a in analyses.items()}
    knn = {b: float(a["knn_accuracy"]) for b, a in analyses.items()}
    if analyses:
        finding = (f"silhouette: best {_ranked(sil)[0]}, " + _rank_text(best, _ranked(sil), sil, "{:.3f}".format)
                   + f"; k-NN accuracy: best {_ranked(knn)[0]}, " + _rank_text(best, _ranked(knn), knn, pct))
    else:
        finding = "no block's embeddings analysed"
    separated = bool(analyses) and _ranked(sil)[0] == best and _ranked(knn)[0] == best
    claims.append({"claim": f"{best}'s embedding separates the classes best (its t-SNE)", "finding": finding,
                   "verdict": (SUPPORTED if separated else NOT_SUPPORTED) if analysed else NOT_JUDGED})

    rates = all_pair_rates(analyses)
    pair_order = _ranked(rates)
    top_k = max((len(a["top_confused_pairs"]) for a in analyses.values()), default=0)
    parts, listed_by_most = [], True
    for a_name, b_name in REPORT_COMMON_CONFUSIONS:
        pair = tuple(sorted((a_name, b_name)))
        if pair not in rates:
            parts.append(f"{a_name} <-> {b_name}: not among the classes")
            listed_by_most = False
            continue
        in_top = sum(any({p["a"], p["b"]} == set(pair) for p in a["top_confused_pairs"]) for a in analyses.values())
        listed_by_most &= in_top > len(analyses) / 2
        parts.append(f"{a_name} <-> {b_name} ranks {pair_order.index(pair) + 1} of {len(pair_order)} pairs "
                     f"(mean rate {pct(rates[pair])}), in {in_top} of {len(analyses)} blocks' top {top_k}")
    if pair_order:
        top = pair_order[0]
        parts.append(f"most confused pair: {top[0]} <-> {top[1]} (mean rate {pct(rates[top])})")
    claims.append({"claim": "the most common confusions, across most models, are "
                            + " and ".join(f"{a} vs {b}" for a, b in REPORT_COMMON_CONFUSIONS),
                   "finding": "; ".join(parts) if analyses else "no block's confusions analysed",
                   "verdict": (SUPPORTED if listed_by_most else NOT_SUPPORTED) if analysed else NOT_JUDGED})
    if not complete:
        for c in claims:
            c["finding"] += f" ({waiting})"
    return claims
