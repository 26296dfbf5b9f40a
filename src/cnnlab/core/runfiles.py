"""The files a run folder holds, named once, and what each holds.

Every training run (a CIFAR block, a face run) is a folder written by the engine and its task:

    config.yaml        the engine's resolved config: the training loop's settings (TrainConfig)
                       and the task's, exactly as the run used them; a resumed run refuses to
                       continue under a different one
    environment.json   machine, versions, device and precision of the run
    checkpoint.pt      the last finished epoch (model, optimizer, RNG state, history): resume point
    final.json         the engine's record of the fit: history, selected epoch, train time
    faces_config.yaml  (face runs) the face recipe as the user gave it (FaceTrainConfig), which
                       `cnnlab faces train --config` reads back; config.yaml is the engine's view
    metrics.json       (face runs) the task's results: validation, DevTest, retrieval, threshold,
                       times, plots; what `faces plot`, the demo and the reports read
    model.pt           (face runs) the deployable verifier: weights, config, threshold
    validation_pairs.npz  (face runs) the kept epoch's distance on every validation pair, with
                       who is in it, per validation set: what `cnnlab faces compare` reads
    embeddings_test.npz  (CIFAR runs) test-set embeddings for t-SNE and the embedding analysis

A CIFAR comparison folder holds one run folder per block plus `results.json` (every block's
numbers) and, from the report layer, `results.md`, `analysis.json`, `report.html`.
"""
from __future__ import annotations

CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
CHECKPOINT = "checkpoint.pt"
FINAL = "final.json"
FACE_RECIPE = "faces_config.yaml"
METRICS = "metrics.json"
MODEL = "model.pt"
TEST_EMBEDDINGS = "test_embeddings.npz"
TEST_PAIRS = "devtest_pairs.npz"
VALIDATION_PAIRS = "validation_pairs.npz"
CIFAR_EMBEDDINGS = "embeddings_test.npz"
CIFAR_RESULTS = "results.json"
MARGIN_COMPARISON = "comparison.json"
