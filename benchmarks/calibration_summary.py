"""The table of `calibration_check.sh`: per objective, over seeds, how the threshold calibrated
on N people does on the others, against the model's own (LFW) threshold and the others' best
threshold (which peeks at their labels).

    python benchmarks/calibration_summary.py OUT

Columns: accuracy at the calibrated threshold and its gap to the best-threshold accuracy (mean,
and how many seeds are within 2 points); the false-accept rate it gives on the others (median,
range, and how many seeds are within 2x of the target: target/2 to 2 x target); pairs counts.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(out: Path) -> None:
    runs = defaultdict(list)
    for path in sorted(out.glob("*-s*.json")):
        runs[re.sub(r"-s\d+$", "", path.stem)].append(json.loads(path.read_text()))
    if not runs:
        sys.exit(f"no runs in {out}")
    mean, median = statistics.fmean, statistics.median
    print("| objective | seeds | threshold (range) | accuracy at it | best-threshold accuracy | gap, points (seeds within 2) "
          "| accuracy at the model's threshold | FAR on the others: median (range) | seeds within 2x of the target "
          "| TAR at it | pairs calibrated / scored (same + different) |")
    print("| --- | ---: | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |")
    for objective, results in sorted(runs.items()):
        cal = [r["at_calibrated_threshold"] for r in results]
        gaps = [100 * (r["best_threshold_accuracy"] - c["accuracy"]) for r, c in zip(results, cal)]
        thresholds = [c["threshold"] for c in cal]
        fars = [c["far"] for c in cal]
        target = results[0]["calibration"]["far_target"]
        within = "-" if target is None else f"{sum(target / 2 <= f <= 2 * target for f in fars)} of {len(fars)}"
        cp, sp = results[0]["calibration"]["pairs"], results[0]["pairs"]
        print(f"| {objective} | {len(results)} | {mean(thresholds):.3f} ({min(thresholds):.3f}-{max(thresholds):.3f}) "
              f"| {mean(c['accuracy'] for c in cal):.2%} | {mean(r['best_threshold_accuracy'] for r in results):.2%} "
              f"| {mean(gaps):.2f} ({sum(g <= 2 for g in gaps)} of {len(gaps)}; max {max(gaps):.2f}) "
              f"| {mean(r['at_model_threshold']['accuracy'] for r in results):.2%} "
              f"| {median(fars):.4f} ({min(fars):.4f}-{max(fars):.4f}) | {within} | {mean(c['tar'] for c in cal):.2%} "
              f"| {cp['matched']} + {cp['mismatched']} / {sp['matched']} + {sp['mismatched']} |")
    first = next(iter(runs.values()))[0]
    print(f"\nper seed: {first['calibration']['people']} people calibrate, the other {first['people']} are scored; "
          f"the model's own threshold {first['calibration']['replaced']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
