"""Which face step gives the pretrained backbone the most to work with? A cheap probe run
before any training: for the centre crop and for landmark alignment at several paddings, the
untrained Lite0's L2-normalised pooled features of the View 1 *validation* people (a seeded,
people-disjoint part of DevTrain; DevTest is never read) are scored by pair AUC on the seeded
validation pairs and by leave-one-out retrieval. All variants in one run, same people.

    .venv/bin/python benchmarks/align_probe.py [--paddings 0 0.25 0.5] [--size 192]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from cnnlab.tasks.faces.protocols import backbone_features, load_lfw_images, pair_distances

from cnnlab.core.env import data_root
from cnnlab.data.lfw import LFWProtocol
from cnnlab.data.pairs import sample_pairs
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import evaluate
from cnnlab.models.siamese import SiameseNet
from cnnlab.tasks.faces import FaceTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paddings", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--crop", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    protocol = LFWProtocol(data_root()[0] / "lfw")
    variants = [("centre crop", FaceTrainConfig(crop=args.crop, input_size=args.size, progress=False))]
    variants += [(f"aligned, padding {p}", FaceTrainConfig(align=True, align_padding=p, input_size=args.size,
                                                           progress=False)) for p in args.paddings]
    model = SiameseNet.from_config(variants[0][1].model_config()).eval()
    print("| face step | val pair AUC | val accuracy | precision@1 | R-precision | MAP@R | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, config in variants:
        start = time.perf_counter()
        _, val_people = protocol.validation_people(config.val_fraction, config.seed)
        dataset, _ = load_lfw_images(protocol, config, log=lambda *_: None)
        val = dataset.subset([p for p in val_people if p in set(dataset.people)])
        z = backbone_features(model, val.images, batch_size=128)
        i, j, same = sample_pairs(val.labels, config.val_pairs, seed=config.seed)
        rep = evaluate(pair_distances(z, i, j, "euclidean"), same)
        r = retrieval_scores(z, val.labels)
        print(f"| {name} | {rep.auc:.4f} | {rep.accuracy:.2%} | {r['precision_at_1']:.2%} | {r['r_precision']:.2%} "
              f"| {r['map_at_r']:.2%} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
