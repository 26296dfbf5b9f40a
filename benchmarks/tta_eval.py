"""Test-time flip augmentation, measured on a trained View 1 run without retraining: the same
weights embed each image alone and as the mean with its mirror image (`flip_tta`); the
threshold is recalibrated on the run's validation pairs each way (validation people only),
then DevTest pairs and DevTest-people retrieval are scored. Both ways in one run.

    .venv/bin/python benchmarks/tta_eval.py runs/faces-view1 [more runs...]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from cnnlab.tasks.faces.protocols import embed_images, load_lfw_images, pair_distances, test_report

from cnnlab.core.config import build_config
from cnnlab.core.env import data_root
from cnnlab.core.files import load_yaml
from cnnlab.data.lfw import LFWProtocol
from cnnlab.data.pairs import sample_pairs
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import best_threshold, evaluate
from cnnlab.models.siamese import load_model
from cnnlab.tasks.faces import FaceTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    protocol = LFWProtocol(data_root()[0] / "lfw")
    print("| run | flip TTA | val AUC | DevTest acc (calibrated) | AUC | TAR@FAR=1e-2 | precision@1 | MAP@R | embed s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        config = build_config(FaceTrainConfig, load_yaml(run / "faces_config.yaml"))
        model, _ = load_model(run / "model.pt")
        dataset, _ = load_lfw_images(protocol, config, log=lambda *_: None)
        known = set(dataset.people)
        _, val_people = protocol.validation_people(config.val_fraction, config.seed)
        val = dataset.subset([p for p in val_people if p in known])
        split = protocol.view1()
        test = dataset.subset([p for p in split.test_people if p in known])
        vi, vj, vsame = sample_pairs(val.labels, config.val_pairs, seed=config.seed)
        ti, tj, tsame = test.pair_indices(split.test_pairs)
        for tta in (False, True):
            model.config.flip_tta = tta
            start = time.perf_counter()
            zv = embed_images(model, val.images, batch_size=128)
            zt = embed_images(model, test.images, batch_size=128)
            seconds = time.perf_counter() - start
            vd = pair_distances(zv, vi, vj, config.distance)
            threshold, _ = best_threshold(vd, vsame)
            t = test_report(pair_distances(zt, ti, tj, config.distance), tsame, threshold)
            r = retrieval_scores(zt, test.labels, config.distance)
            print(f"| {run} | {'yes' if tta else 'no'} | {evaluate(vd, vsame).auc:.4f} | {t['accuracy']:.2%} | "
                  f"{t['auc']:.4f} | {t['tar_at_far']['0.01']:.2%} | {r['precision_at_1']:.2%} | {r['map_at_r']:.2%} "
                  f"| {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
