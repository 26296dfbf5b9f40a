"""CPU cost of the report's BlockNet layout against the layout it replaced (issue 12).

The old layout (stem 3->64, stages of 2, 3, 3 blocks with the max-pool after each stage's
first block, two-conv D, D-dw with BN+ReLU inside its separable convs, E at width out/2) is
read from git at `--old-commit` into a temporary package, so both layouts are built by the
code that defined them. For each of the six blocks at the quick preset's width it prints
parameters and MACs per image (`count_macs`), then the time of one training step (batch 128,
channels_last, SGD-Nesterov, label smoothing 0.1: the quick recipe's step without the data
pipeline). Old and new alternate in segments of `--steps` steps for `--rounds` rounds after
one warm-up segment, so a busy neighbour slows both alike; the median segment is reported.

    python benchmarks/bench_layout.py                       # one torch thread
    python benchmarks/bench_layout.py --threads 2 --rounds 7
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ["A", "B", "C", "D", "D-dw", "E"]
OLD_FILES = ["blocks/__init__.py", "blocks/attention.py", "blocks/bottleneck.py", "blocks/plain.py",
             "blocks/registry.py", "blocks/residual.py", "models/blocknet.py"]


def old_create_model(commit: str, tmp: Path):
    """`create_model` of the layout at `commit`, as package `cnnlab_old` (its own registry)."""
    for name in OLD_FILES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/cnnlab/{name}"],
                              check=True, capture_output=True, text=True).stdout
        path = tmp / "cnnlab_old" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("cnnlab.blocks", "cnnlab_old.blocks"))
    for package in ("cnnlab_old", "cnnlab_old/models"):
        (tmp / package / "__init__.py").touch()
    sys.path.insert(0, str(tmp))
    return importlib.import_module("cnnlab_old.models.blocknet").create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-commit", default="ff47175", help="commit holding the replaced layout")
    parser.add_argument("--width-multiplier", type=float, default=0.25, help="default: the quick preset's")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from cnnlab.models import count_parameters, create_model
    from cnnlab.tasks.classification import count_macs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {"old": old_create_model(args.old_commit, Path(tmp)), "new": create_model}
        models = {}
        for block in BLOCKS:
            for layout, build in layouts.items():
                model = build(block, width_multiplier=args.width_multiplier)
                stats = (count_parameters(model), count_macs(model))
                model = model.to(memory_format=torch.channels_last).train()
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
                models[block, layout] = (model, optimizer, stats)

    def segment(key) -> float:
        model, optimizer, _ = models[key]
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / args.steps

    for key in models:
        segment(key)  # warm-up: allocator, oneDNN kernel choice
    times = {key: [] for key in models}
    for _ in range(args.rounds):
        for key in models:
            times[key].append(segment(key))

    print(f"width x{args.width_multiplier}, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.rounds} rounds of {args.steps} steps; old = {args.old_commit}")
    print("| block | params old | params new | MACs old | MACs new | ms/step old | ms/step new | new/old |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = {"old": 0.0, "new": 0.0}
    for block in BLOCKS:
        row = [block]
        med = {layout: statistics.median(times[block, layout]) for layout in layouts}
        for i in range(2):
            row += [f"{models[block, layout][2][i] / (1 if i == 0 else 1e6):,.{0 if i == 0 else 1}f}"
                    + ("" if i == 0 else "M") for layout in layouts]
        row += [f"{1000 * med['old']:.0f}", f"{1000 * med['new']:.0f}", f"{med['new'] / med['old']:.2f}"]
        total["old"] += med["old"]
        total["new"] += med["new"]
        print("| " + " | ".join(row) + " |")
    print(f"| all six | | | | | {1000 * total['old']:.0f} | {1000 * total['new']:.0f} | "
          f"{total['new'] / total['old']:.2f} |")


if __name__ == "__main__":
    main()
