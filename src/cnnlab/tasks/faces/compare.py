"""Two face runs compared on the validation pairs both scored (`cnnlab faces compare A B`): per
validation set, the AUC of each, B - A, and its 95% interval from a people bootstrap
(`cnnlab.metrics.compare`). Runs with the same seed, validation split and extra_val source
sample the same pairs; runs that did not are refused, since their AUCs differ by their pairs too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.compare import paired_auc_difference
from cnnlab.tasks.faces.training import VALIDATION_PAIRS

SET_NAMES = {"val": "LFW validation", "extra_val": "extra_val (held-out people)"}
_FIELDS = ("distances", "same", "person_a", "person_b", "image_a", "image_b")


def load_validation_pairs(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{set name: {field: array}} from a run folder's validation_pairs.npz."""
    path = Path(run_dir) / VALIDATION_PAIRS
    if not path.is_file():
        raise CnnlabError(f"{run_dir} has no {VALIDATION_PAIRS}: give a face run's folder (a View 1 run or one "
                          "View 2 fold-NN folder)")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sets = {}
    for name in SET_NAMES:
        if f"{name}_distances" in arrays:
            missing = [f for f in _FIELDS if f"{name}_{f}" not in arrays]
            if missing:
                raise CnnlabError(f"{path} lacks {', '.join(name + '_' + f for f in missing)}")
            sets[name] = {f: arrays[f"{name}_{f}"] for f in _FIELDS}
    if not sets:
        raise CnnlabError(f"{path} holds no validation set")
    return sets


def _same_pairs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """Why these are not the same pairs (None when they are)."""
    if len(a["same"]) != len(b["same"]):
        return f"{len(a['same'])} pairs against {len(b['same'])}"
    for field in ("same", "person_a", "person_b", "image_a", "image_b"):
        x, y = a[field], b[field]
        differ = np.flatnonzero(x != y)
        if differ.size:
            k = int(differ[0])
            return f"pair {k + 1} differs in {field} ({x[k]} against {y[k]})"
    return None


def compare_runs(run_a: str | Path, run_b: str | Path, *, resamples: int = 2000, seed: int = 0) -> dict:
    """{"sets": {name: PairedAUC as a dict}, "only_in_one": {name: which run has it}}."""
    pairs_a, pairs_b = load_validation_pairs(run_a), load_validation_pairs(run_b)
    result = {"run_a": str(run_a), "run_b": str(run_b), "resamples": resamples, "seed": seed,
              "method": "people bootstrap (cnnlab.metrics.compare)", "sets": {}, "only_in_one": {}}
    for name in SET_NAMES:
        if name in pairs_a and name in pairs_b:
            a, b = pairs_a[name], pairs_b[name]
            why = _same_pairs(a, b)
            if why:
                raise CnnlabError(f"{run_a} and {run_b} validated on different {SET_NAMES[name]} pairs ({why}): "
                                  "compare runs with the same seed, validation split and data")
            result["sets"][name] = paired_auc_difference(a["distances"], b["distances"], a["same"], a["person_a"],
                                                         a["person_b"], resamples=resamples, seed=seed).to_dict()
        elif name in pairs_a or name in pairs_b:
            result["only_in_one"][name] = str(run_a if name in pairs_a else run_b)
    return result


def format_comparison(result: dict) -> list[str]:
    lines = [f"A = {result['run_a']}", f"B = {result['run_b']}",
             f"{'validation set':<28} {'pairs':>5} {'people':>6} {'AUC A':>7} {'AUC B':>7} {'B - A':>8}  "
             f"{'95% interval':<19} {'B <= A in':>9}"]
    for name, r in result["sets"].items():
        lines.append(f"{SET_NAMES[name]:<28} {r['pairs']:>5} {r['people']:>6} {r['auc_a']:>7.4f} {r['auc_b']:>7.4f} "
                     f"{r['difference']:>+8.4f}  [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                     f"{r['b_not_better']:>8.1%}")
    lines.append(f"({result['resamples']} resamples of the people with replacement, seed {result['seed']}; the "
                 "last column: the share of resamples in which B's AUC is not above A's)")
    for name, run in result["only_in_one"].items():
        lines.append(f"{SET_NAMES[name]}: only {run} has it, not compared")
    return lines
