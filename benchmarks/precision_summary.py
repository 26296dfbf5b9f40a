"""The table of `benchmarks/precision_accuracy.sh`: test and validation accuracy per seed and
precision, the per-seed difference, the mean and the seed-to-seed spread of each precision, and
the validation curve (every epoch) so the two precisions can be compared over training, not only
at the end. Reads the run folders' final.json and metrics.jsonl; runs still training are listed
with the epochs they have.

    python benchmarks/precision_summary.py runs/precision-check
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"^(?P<block>.+)-(?P<precision>fp32|bf16|[a-z0-9_]+)-s(?P<seed>\d+)$")


def load(out: Path) -> dict[tuple[str, str, int], dict]:
    runs = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        match = NAME.match(folder.name)
        if not match or not (folder / "metrics.jsonl").is_file():
            continue
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        final = json.loads((folder / "final.json").read_text()) if (folder / "final.json").is_file() else {}
        key = (match["block"], match["precision"], int(match["seed"]))
        runs[key] = {"history": history, "final": final}
    return runs


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.2%} ± {sd:.2%} (range {min(values):.2%}-{max(values):.2%})"


def main(out: Path) -> int:
    runs = load(out)
    if not runs:
        print(f"no runs in {out}")
        return 1
    precisions = sorted({k[1] for k in runs}, key=lambda p: (p != "fp32", p))
    seeds = sorted({k[2] for k in runs})
    for block in sorted({k[0] for k in runs}):
        print(f"## block {block}\n")
        print("| seed | " + " | ".join(f"{p} test acc | {p} val acc | {p} train time (s)" for p in precisions)
              + " | test diff (" + " - ".join(precisions[:2][::-1]) + ") |")
        print("| ---: |" + " ---: | ---: | ---: |" * len(precisions) + " ---: |")
        tests = {p: [] for p in precisions}
        for seed in seeds:
            cells, accs = [], []
            for p in precisions:
                run = runs.get((block, p, seed))
                final = run["final"] if run else {}
                if "test_acc" in final:
                    tests[p].append(final["test_acc"])
                    accs.append(final["test_acc"])
                    cells += [f"{final['test_acc']:.2%}", f"{final['val_acc']:.2%}", f"{final['train_time_s']:.0f}"]
                else:
                    done = len(run["history"]) if run else 0
                    cells += [f"(epoch {done})", "-", "-"]
                    accs.append(None)
            diff = (f"{accs[1] - accs[0]:+.2%}" if len(accs) > 1 and None not in accs[:2] else "-")
            print(f"| {seed} | " + " | ".join(cells) + f" | {diff} |")
        print()
        for p in precisions:
            print(f"- {p}: test {spread(tests[p])} over {len(tests[p])} seeds")
        print("\nValidation accuracy per epoch (mean over the seeds that reached it):\n")
        epochs = max(len(r["history"]) for k, r in runs.items() if k[0] == block)
        print("| epoch | " + " | ".join(precisions) + " |")
        print("| ---: |" + " ---: |" * len(precisions))
        for e in range(epochs):
            cells = []
            for p in precisions:
                vals = [r["history"][e]["val_acc"] for k, r in runs.items()
                        if k[0] == block and k[1] == p and len(r["history"]) > e]
                cells.append(f"{statistics.fmean(vals):.2%} (n={len(vals)})" if vals else "-")
            print(f"| {e + 1} | " + " | ".join(cells) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/precision-check")))
