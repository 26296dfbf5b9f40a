"""Did a change alter what `make demo` produces? Compares two demo output folders value by value.

    python benchmarks/demo_diff.py BEFORE_DIR AFTER_DIR

Reads the numbers each step writes (CIFAR results and embedding analysis, the face run's
metrics and final record), leaves out times, throughput, paths and the environment (they
differ between any two runs), and prints every value that differs or exists on one side only,
then a count per file. Run the two demos one after the other on an idle machine with empty
caches; compare their wall clocks from `/usr/bin/time`, not from this script.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FILES = ["cifar/results.json", "cifar/analysis.json", "faces-view1/metrics.json", "faces-view1/final.json"]
# Keys that change from run to run without the code changing.
VOLATILE = ("time", "_s", "img_s", "per_s", "date", "elapsed", "path", "environment", "plots")


def flat(value, prefix: str = ""):
    """(dotted key, leaf) pairs; list items of dicts with a `block` are keyed by it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flat(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            key = item.get("block", i) if isinstance(item, dict) else i
            yield from flat(item, f"{prefix}[{key}]")
    else:
        yield prefix, value


def compare(before: Path, after: Path) -> int:
    changed = 0
    for rel in FILES:
        if not (before / rel).is_file() or not (after / rel).is_file():
            print(f"== {rel}: missing in {'before' if not (before / rel).is_file() else 'after'}")
            changed += 1
            continue
        a = dict(flat(json.loads((before / rel).read_text())))
        b = dict(flat(json.loads((after / rel).read_text())))
        equal = differ = 0
        for key in sorted(set(a) | set(b)):
            if any(word in key.lower() for word in VOLATILE):
                continue
            if key not in a or key not in b:
                print(f"{rel}: {key} only {'after' if key in b else 'before'}")
            elif a[key] != b[key]:
                differ += 1
                print(f"{rel}: {key}: {a[key]!r} -> {b[key]!r}")
            else:
                equal += 1
        changed += differ
        print(f"== {rel}: {equal} equal, {differ} different")
    return changed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    compare(Path(sys.argv[1]), Path(sys.argv[2]))
