"""How long `cnnlab --help` takes, as a ratio to `python -c "import torch"` measured in the same run.

A ratio, because absolute times move with the machine and its load: help that imports no torch
is a small fraction of one torch import. Each command runs in a fresh interpreter, the commands
interleaved, `--repeats` times; the median of each is reported.

    python benchmarks/cli_help_time.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "cnnlab --help": [sys.executable, "-m", "cnnlab", "--help"],
    "cnnlab faces train --help": [sys.executable, "-m", "cnnlab", "faces", "train", "--help"],
    "cnnlab cifar compare --help": [sys.executable, "-m", "cnnlab", "cifar", "compare", "--help"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}
REFERENCE = 'python -c "import torch"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # one untimed run each: the file cache warm for all
        subprocess.run(command, check=True, capture_output=True)
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(times[REFERENCE])
    print(f"median of {args.repeats} runs each, interleaved")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:7.3f} s  (min {min(values):.3f}, max {max(values):.3f})  "
              f"ratio to import torch {median / reference:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
