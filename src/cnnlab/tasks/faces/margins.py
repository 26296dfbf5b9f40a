"""The contrastive margin study: one View 1 model per margin m of the loss of Hadsell, Chopra
and LeCun (2006), everything else equal, compared on DevTest (Huang et al. 2007) by their
metrics and their outliers: same-person pairs beyond the threshold, different-person pairs
within it, and images whose nearest other image is another person.

`compare_margins` trains and measures (OUT/margin-M/ and OUT/comparison.json); the figures
are drawn afterwards from those files, and the Markdown comparison that embeds them written, by
the report layer (`cnnlab.reports.margins`, run by `cnnlab.pipelines`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cnnlab.core import runfiles
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import to_plain, write_json
from cnnlab.core.progress import no_log
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.tasks.faces.config import FaceTrainConfig
from cnnlab.tasks.faces.features import FeatureMemo
from cnnlab.tasks.faces.training import TEST_EMBEDDINGS, TEST_PAIRS
from cnnlab.tasks.faces.view1 import train_view1

COMPARISON_JSON = runfiles.MARGIN_COMPARISON


def outlier_counts(distances: np.ndarray, same: np.ndarray, threshold: float, embeddings: np.ndarray,
                   labels: np.ndarray, distance: str) -> dict:
    """Same-person pairs beyond the threshold, different-person pairs within it, and queries
    (images whose person has another image) whose nearest other image is another person."""
    # The nearest-neighbour error is precision@1's complement: one definition, one k-NN.
    retrieval = retrieval_scores(embeddings, labels, distance)
    wrong_nn = int(round(retrieval["queries"] * (1.0 - retrieval["precision_at_1"]))) if retrieval["queries"] else 0
    # Tightness without the margin's scale: a larger margin spreads every distance out, so the
    # same-person median is compared with the different-person median of the same model.
    same_median = float(np.median(distances[same])) if same.any() else float("nan")
    different_median = float(np.median(distances[~same])) if (~same).any() else float("nan")
    return {"same_beyond_threshold": int((same & (distances > threshold)).sum()),
            "same_median": same_median, "different_median": different_median,
            "same_to_different_median": same_median / different_median if different_median else float("nan"),
            "different_within_threshold": int((~same & (distances <= threshold)).sum()),
            "nn_queries": int(retrieval["queries"]), "nn_other_person": wrong_nn,
            "nn_error_rate": float(wrong_nn / max(retrieval["queries"], 1))}


def compare_margins(config: FaceTrainConfig, margins: Sequence[float], data_root: str | Path,
                    out_dir: str | Path, *, log: Callable[[str], None] = no_log) -> dict:
    """One View 1 model per margin, everything else equal, in OUT/margin-M/; their metrics
    and outlier counts in OUT/comparison.json. Returns the comparison."""
    out_dir = Path(out_dir)
    if len(margins) < 1:
        raise CnnlabError("give at least one margin")
    # The margin changes nothing before the loss: every run trains on the same frozen features.
    features = FeatureMemo()
    runs = []
    for m in margins:
        run_config = replace(config, margin=float(m))
        run_dir = out_dir / f"margin-{float(m):g}"
        log(f"[margin {m:g}]")
        metrics = train_view1(run_config, data_root, run_dir, evaluate_test=True, log=log, features=features)
        with np.load(run_dir / TEST_EMBEDDINGS) as e, np.load(run_dir / TEST_PAIRS) as p:
            outliers = outlier_counts(p["distances"], p["same"], float(p["threshold"]), e["embeddings"],
                                      e["labels"], config.distance)
        runs.append({"margin": float(m), "run_dir": str(run_dir), "test": metrics["test"],
                     "validation": metrics["validation"], "outliers": outliers,
                     "retrieval": metrics.get("retrieval"),
                     "train_time_s": metrics["train_time_s"]})
    comparison = {"margins": [float(m) for m in margins], "config": to_plain(config), "runs": runs}
    write_json(out_dir / COMPARISON_JSON, comparison)
    return comparison
