"""The margin study's report: comparison.md, a Markdown table of the runs `compare_margins`
measured, with the figures drawn from their files embedded (the task measures; this writes)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnlab.core.files import atomic_write_text, write_json
from cnnlab.core.runfiles import MARGIN_COMPARISON as COMPARISON_JSON

COMPARISON_MD = "comparison.md"


def write_margins_report(out_dir: str | Path, comparison: dict, figures: Sequence[str | Path]) -> dict:
    """The comparison with its figures: comparison.json lists them, comparison.md embeds them."""
    out_dir = Path(out_dir)
    comparison["figures"] = [str(f) for f in figures]
    write_json(out_dir / COMPARISON_JSON, comparison)
    atomic_write_text(out_dir / COMPARISON_MD, margins_markdown(comparison))
    return comparison


def margins_markdown(comparison: dict) -> str:
    lines = ["| margin | DevTest acc (calibrated) | best-threshold acc | AUC | EER | TAR@FAR=0.01 | threshold | "
             "same beyond threshold | different within | NN is another person | same / different median distance | "
             "MAP@R | train time (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in comparison["runs"]:
        t, o = r["test"], r["outliers"]
        lines.append(f"| {r['margin']:g} | {t['accuracy']:.2%} | {t['best_threshold_accuracy']:.2%} | {t['auc']:.4f} | "
                     f"{t['eer']:.2%} | {t['tar_at_far'].get('0.01', float('nan')):.2%} | {t['threshold']:.3f} | "
                     f"{o['same_beyond_threshold']} | {o['different_within_threshold']} | "
                     f"{o['nn_other_person']} / {o['nn_queries']} | "
                     f"{o.get('same_to_different_median', float('nan')):.3f} | "
                     f"{(r.get('retrieval') or {}).get('map_at_r', float('nan')):.2%} | {r['train_time_s']:.0f} |")
    figures = "\n".join(f"![{Path(f).stem}]({Path(f).name})" for f in comparison.get("figures", []))
    return ("# Contrastive margin comparison (LFW View 1 DevTest)\n\n" + "\n".join(lines)
            + "\n\nEverything but the margin is the same; thresholds are calibrated on validation people. "
              "Outliers: same-person DevTest pairs beyond the threshold, different-person pairs within it, "
              "and test images whose nearest other test image is another person. Cluster tightness: the "
              "median same-person DevTest pair distance over the median different-person one (lower = "
              "tighter, independent of the margin's scale).\n\n" + figures + "\n")
