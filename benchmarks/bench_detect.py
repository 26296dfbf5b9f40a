"""MTCNN face detection throughput: torch's default thread count vs the detector's own setting.

Small convolutions on a few images are where OpenMP's thread barriers hurt: when another
process keeps a core busy, every op of a two-thread pool waits for the thread that is not
getting the CPU. The two settings alternate in rounds on the same LFW images (one round of
warm-up), so a neighbour's load hits both alike. Run it once on an idle machine and once beside
a busy process (e.g. a training run, or `python -c "while True: pass"`), and compare the ratios.

    python benchmarks/bench_detect.py                      # 48 LFW images, 3 rounds
    python benchmarks/bench_detect.py --images 96 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    import torch

    from cnnlab.core.env import data_root
    from cnnlab.data import align
    from cnnlab.data.images import open_rgb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    root = data_root()[0] / "lfw" / "lfw-deepfunneled"
    paths = sorted(root.glob("*/*.jpg"))[: args.images]
    if not paths:
        raise SystemExit(f"no LFW images under {root}")
    images = [open_rgb(p) for p in paths]
    default_threads = torch.get_num_threads()
    det = align.detector()
    settings = {f"torch default ({default_threads} threads)": None, f"detector ({align.DETECT_THREADS} thread)": "own"}
    speeds = {name: [] for name in settings}
    for r in range(args.rounds + 1):
        for name, how in (settings.items() if r % 2 == 0 else reversed(settings.items())):
            start = time.perf_counter()
            if how is None:  # torch's pool as the process has it, the detector's setting bypassed
                with align.torch_threads(default_threads):
                    det._detect(images)
            else:
                det.detect(images)
            if r > 0:
                speeds[name].append(len(images) / (time.perf_counter() - start))
    print(f"{len(images)} LFW images (250x250), {args.rounds} rounds after one warm-up; median images/s")
    for name, values in speeds.items():
        print(f"  {name:<28} {statistics.median(values):7.1f} img/s  (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    names = list(speeds)
    print(f"  ratio detector / default: {statistics.median(speeds[names[1]]) / statistics.median(speeds[names[0]]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
