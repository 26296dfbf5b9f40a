"""Face embedding throughput on the CPU (issue 14): images/s of the default face model at its
input size through each way of running it, measured in one run, with ratios to eager batched fp32.

Paths: eager PyTorch fp32 (batched), the same with channels_last, eager one image at a time,
onnxruntime on the model's checked ONNX export (`cnnlab.verifier.export`) at several batch sizes, and
`FaceVerifier.embed_faces` as it runs by default (what `embed` and `faces index build` use).
Each round times every path on the same images, rounds interleave the paths so a busy
neighbour slows them alike, and the median round is reported. Weights do not change the
speed, so the network is built with random weights (`--weights imagenet` for the real ones).

    python benchmarks/bench_embed.py                       # Lite0, 192 px, 128-d, 64 images, 3 rounds
    python benchmarks/bench_embed.py --images 128 --rounds 5 --json bench.json
    python benchmarks/bench_embed.py --search              # also exact torch vs FAISS search, 100k gallery
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def timed(fn, images: np.ndarray) -> float:
    start = time.perf_counter()
    fn(images)
    return len(images) / (time.perf_counter() - start)


def in_batches(run, batch: int):
    def embed(images):
        return [run(images[s:s + batch]) for s in range(0, len(images), batch)]
    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images embedded per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--batch-size", type=int, default=64, help="batch of the eager fp32 baseline")
    parser.add_argument("--ort-batches", type=int, nargs="+", default=[1, 8, 16, 64])
    parser.add_argument("--weights", default="none", help="none (default) or imagenet")
    parser.add_argument("--search", action="store_true", help="also time exact torch vs FAISS gallery search")
    parser.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = parser.parse_args()

    os.environ.setdefault("CNNLAB_CACHE", tempfile.mkdtemp(prefix="bench-embed-"))  # the ONNX export goes here
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces import FaceTrainConfig
    from cnnlab.verifier import FaceVerifier
    from cnnlab.verifier.api import model_fingerprint
    from cnnlab.verifier.images import CentreCrop
    from cnnlab.verifier.runtime import OnnxRuntime, TorchRuntime, exported_onnx

    recipe = FaceTrainConfig(weights=args.weights)
    size = recipe.input_size
    model = SiameseNet(recipe.model_config()).eval()
    face = CentreCrop(recipe.crop, size)
    print(f"model: {recipe.backbone}, {size} px, {recipe.embedding_dim}-d, {args.weights} weights; "
          f"{args.images} images x {args.rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)

    eager = TorchRuntime(model)
    paths = {f"eager fp32, batch {args.batch_size}": in_batches(eager, args.batch_size),
             "eager fp32, one image at a time": in_batches(eager, 1)}
    channels_last_model = SiameseNet(recipe.model_config()).eval()
    channels_last_model.load_state_dict(model.state_dict())
    paths[f"eager channels_last, batch {args.batch_size}"] = in_batches(
        TorchRuntime(channels_last_model, channels_last=True), args.batch_size)
    onnx = OnnxRuntime(exported_onnx(model, model_fingerprint(model, face), size))
    for b in args.ort_batches:
        paths[f"onnxruntime, batch {b}"] = in_batches(onnx, b)
    verifier = FaceVerifier(model, {"crop": recipe.crop, "input_size": size, "distance": recipe.distance,
                                    "threshold": 1.0})
    paths[f"FaceVerifier default ({verifier.runtime.name}, batch {verifier.batch_size})"] = verifier.embed_faces

    figures: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds + 1):
        for name, fn in paths.items():
            ips = timed(fn, images)
            if r:  # round 0 warms up caches, allocators and onnxruntime's kernels
                figures[name].append(ips)
        print(f"round {r}{' (warm-up)' if r == 0 else ''} done", flush=True)

    base = statistics.median(figures[f"eager fp32, batch {args.batch_size}"])
    rows = []
    print(f"\n| path | images/s (median) | rounds | vs eager fp32 batch {args.batch_size} |\n| --- | ---: | --- | ---: |")
    for name, values in figures.items():
        med = statistics.median(values)
        rows.append({"path": name, "images_per_s": med, "rounds": values, "ratio": med / base})
        print(f"| {name} | {med:.1f} | {' / '.join(f'{v:.0f}' for v in values)} | {med / base:.2f}x |")
    result = {"model": recipe.backbone, "input_size": size, "images": args.images, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows}
    if args.search:
        result["search"] = bench_search()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def bench_search(gallery_rows: int = 100_000, dim: int = 128, queries: int = 50, k: int = 5) -> dict:
    """ms per query of `nearest_neighbours` with the torch and the FAISS backend."""
    from cnnlab.metrics.retrieval import FaissGallery, faiss_available, nearest_neighbours
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(gallery_rows, dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    q = gallery[:queries] + 0.01 * rng.normal(size=(queries, dim)).astype(np.float32)
    out = {}
    for backend in ["torch"] + (["faiss"] if faiss_available() else []):
        start = time.perf_counter()
        # What a gallery index does: FAISS gets its copy of the gallery once, then searches.
        searched = FaissGallery(gallery) if backend == "faiss" else gallery
        load_ms = (time.perf_counter() - start) * 1000
        nearest_neighbours(q[:1], searched, k, backend=backend)
        start = time.perf_counter()
        for i in range(queries):  # one query at a time, as a service answers them
            nearest_neighbours(q[i:i + 1], searched, k, backend=backend)
        single = (time.perf_counter() - start) / queries * 1000
        start = time.perf_counter()
        nearest_neighbours(q, searched, k, backend=backend)
        batched = (time.perf_counter() - start) / queries * 1000
        out[backend] = {"load_ms": load_ms, "ms_per_query_single": single, "ms_per_query_batched": batched}
        print(f"search {gallery_rows:,} x {dim}, k={k}, {backend}: {single:.2f} ms/query one at a time, "
              f"{batched:.2f} ms/query in a batch of {queries} (loading the gallery: {load_ms:.0f} ms)")
    return out


if __name__ == "__main__":
    main()
