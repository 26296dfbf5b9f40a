"""fp32 vs bf16 autocast: training-step throughput per block, at full and quarter width.

Each (block, width) builds one BlockNet and times the engine's training step (autocast from
`Engine.autocast`, cross-entropy with label smoothing, backward, SGD-Nesterov step) in
channels_last, on random images (throughput does not depend on the pixels). The two precisions
alternate in segments of `--steps` steps for `--rounds` rounds, the order swapped every round,
so a busy neighbour or a clock change hits both alike; the first round of each is warm-up and
not counted. Printed: the median images/s of each precision and their ratio, as a Markdown table,
with the CPU model and flags that `precision: auto` decides by.

    python benchmarks/bench_precision.py                       # all six blocks, widths 1.0 and 0.25
    python benchmarks/bench_precision.py --blocks A B --widths 1.0 --rounds 4 --steps 5

Full width uses batch 64, quarter width batch 128 (the quick preset's), unless --batch is given.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def segment(engine, model, optimizer, x, y, steps: int) -> float:
    """`steps` training steps on one batch; images per second."""
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        with engine.autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return steps * len(y) / (time.perf_counter() - start)


def measure(block: str, width: float, batch: int, rounds: int, steps: int, device: str) -> dict[str, float]:
    from cnnlab.models import BlockNet, BlockNetConfig
    from cnnlab.training.engine import Engine, TrainConfig, seed_everything

    runs = {}
    for precision in ("fp32", "bf16"):
        engine = Engine(TrainConfig(precision=precision, device=device, progress=False))
        seed_everything(0)
        model = engine.prepare(BlockNet(BlockNetConfig(block=block, width_multiplier=width)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(batch, 3, 32, 32, device=engine.device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=engine.device)
        runs[precision] = (engine, model, optimizer, x, y)
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds + 1):  # round 0: warm-up (oneDNN picks and caches its kernels)
        order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            speed = segment(*runs[precision], steps)
            if r > 0:
                speeds[precision].append(speed)
    return {p: statistics.median(v) for p, v in speeds.items()}


def main(argv=None) -> int:
    from cnnlab.blocks import BLOCKS
    from cnnlab.core.env import cpu_info, resolve_device, resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", nargs="+", default=BLOCKS.default_names())
    ap.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.25])
    ap.add_argument("--batch", type=int, default=None, help="default: 64 at full width, 128 below")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cpu = cpu_info()
    auto, why = resolve_precision("auto", device)
    print(f"device {device}, {torch.get_num_threads()} threads; CPU {cpu['model']}; flags {' '.join(cpu['flags'])}; "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); auto -> {auto} ({why})")
    print(f"{args.rounds} counted rounds of {args.steps} steps per precision, alternating; median images/s\n")
    print("| block | width | batch | fp32 img/s | bf16 img/s | bf16 / fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for width in args.widths:
        batch = args.batch or (64 if width >= 1.0 else 128)
        ratios = []
        for block in args.blocks:
            speed = measure(block, width, batch, args.rounds, args.steps, args.device)
            ratios.append(speed["bf16"] / speed["fp32"])
            print(f"| {block} | {width:g} | {batch} | {speed['fp32']:,.0f} | {speed['bf16']:,.0f} | "
                  f"{ratios[-1]:.2f}x |", flush=True)
        print(f"| geometric mean | {width:g} | | | | {statistics.geometric_mean(ratios):.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
