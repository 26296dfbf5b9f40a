"""Would a people-level bootstrap give `faces calibrate --far` an honest error bar?

    python benchmarks/calibration_bootstrap.py MODEL [FOLDER] [--people 10 20] [--seeds 10]

For each seed: N people of an identity folder (drawn as `faces score --calibrate-people`
draws them) choose the FAR threshold from every different-person pair among them; the
calibration people are then resampled with replacement (2,000 times; a pair of people weighs
the product of their draws) to give a 90% interval of the false-accept rate at that threshold;
and the rate actually met on the other people (every different-person pair among them, up to
as many as calibrated) says whether the interval covered it. Embeds the folder once.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from cnnlab.metric_learning.distances import create_distance
from cnnlab.metrics.verification import threshold_at_far
from cnnlab.verifier import FaceVerifier
from cnnlab.verifier.folder import _pairs, embed_identity_folder, split_people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("folder", nargs="?", default="../shared/data/att-faces")
    parser.add_argument("--people", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--far", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    verifier = FaceVerifier.load(args.model, device="cpu")
    embedded = embed_identity_folder(verifier, args.folder, progress=False)
    distance = create_distance(verifier.distance_name)

    def pairs(rows: np.ndarray, seed: int, count: int | None = None):
        """Every different-person pair among `rows` (or `count` of them), as calibration draws them."""
        people = [embedded.people[r] for r in rows]
        labels = np.unique(np.asarray(people, dtype=object), return_inverse=True)[1]
        counts = np.bincount(labels)
        everyone = int((counts.sum() ** 2 - (counts ** 2).sum()) // 2)
        first, second, same, _ = _pairs(people, everyone if count is None else count, seed)
        z = torch.from_numpy(embedded.embeddings[rows])
        d = distance.paired(z[first], z[second]).double().numpy()
        return d, same, labels[first], labels[second]

    rng = np.random.default_rng(0)
    print("| people | target FAR | seeds | interval covered the rate on the others | median interval | median rate met |")
    print("| ---: | ---: | ---: | ---: | --- | ---: |")
    for n_people in args.people:
        for far in args.far:
            covered, lows, highs, met = 0, [], [], []
            for seed in range(args.seeds):
                calibrate_rows, other_rows = split_people(embedded.people, n_people, seed)
                d, same, a, b = pairs(calibrate_rows, seed)
                threshold, _, _ = threshold_at_far(d, same, far)
                neg = ~same
                accepted = (d[neg] <= threshold).astype(float)
                weights = rng.multinomial(n_people, np.full(n_people, 1 / n_people), size=2000).astype(float)
                w = weights[:, a[neg]] * weights[:, b[neg]]
                rates = (w * accepted).sum(1) / np.maximum(w.sum(1), 1e-12)
                low, high = np.quantile(rates, [0.05, 0.95])
                d2, same2, _, _ = pairs(other_rows, seed, count=int(neg.sum()))
                rate = float(np.mean(d2[~same2] <= threshold))
                covered += low <= rate <= high
                lows.append(low), highs.append(high), met.append(rate)
            print(f"| {n_people} | {far:g} | {args.seeds} | {covered} of {args.seeds} | "
                  f"{np.median(lows):.4f}-{np.median(highs):.4f} | {np.median(met):.4f} |")


if __name__ == "__main__":
    main()
