"""LFW View 1 (Huang et al. 2007, "Labeled Faces in the Wild"; reporting rules in Huang and
Learned-Miller 2014, UM-CS-2014-003): train on DevTrain people, select the epoch and calibrate the
threshold on a seeded people-disjoint validation split of them (`train_verifier`), and score the
1,000 DevTest pairs once. The untrained baseline scores the pretrained backbone alone the same
way. Runs write files; the figures are drawn from them afterwards, by the caller
(`cnnlab.pipelines`, `cnnlab.reports.plots.faces`).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cnnlab.core import runfiles
from cnnlab.core.env import resolve_device
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import save_npz_atomic, save_yaml, write_json
from cnnlab.core.progress import no_log
from cnnlab.core.rng import seed_everything
from cnnlab.data.faces import FaceDataset
from cnnlab.data.lfw import LFWProtocol, image_relpath
from cnnlab.data.pairs import sample_pairs
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import best_threshold, evaluate
from cnnlab.models.siamese import SiameseNet, save_model
from cnnlab.tasks.faces.config import FaceTrainConfig
from cnnlab.tasks.faces.extra import add_extra_people, extra_metrics, extra_sources, merged_report, training_record
from cnnlab.tasks.faces.features import FeatureMemo
from cnnlab.tasks.faces.training import (
    METRICS_FILE,
    MODEL_FILE,
    TEST_EMBEDDINGS,
    TEST_PAIRS,
    backbone_features,
    check_scored_pairs,
    embed_images,
    load_lfw_images,
    pair_distances,
    record_bad_files,
    saved_model_extra,
    test_report,
    train_verifier,
)
from cnnlab.training.distributed import is_main_process


def view1_files(protocol: LFWProtocol, config: FaceTrainConfig, train_people: Sequence[str],
                test: bool) -> list[str] | None:
    """The LFW files a View 1 run reads (relative to the image folder): None, i.e. every image
    (the cache entry every full run shares), unless the recipe samples `train_people` or embeds
    only the test pairs' images; then the sampled people's images and the test images asked
    for (`config.test_images`), when `test`."""
    if not config.train_people and config.test_images == "people":
        return None
    counts = protocol.view1_train_people
    files = {image_relpath(p, n) for p in train_people for n in range(1, counts[p] + 1)}
    if test and config.test_images == "pairs":
        files.update(rel for pair in protocol.view1_test_pairs for rel in pair.relpaths)
    elif test:
        files.update(image_relpath(p, n) for p, c in protocol.view1_test_people.items() for n in range(1, c + 1))
    return sorted(files)


def retrieval_name(config: FaceTrainConfig) -> str:
    """What the DevTest retrieval figures are over (see `FaceTrainConfig.test_images`)."""
    return "DevTest people" if config.test_images == "people" else "DevTest pair images"


def format_retrieval(scores: dict, name: str) -> str:
    return (f"{name} retrieval (leave-one-out, {scores['queries']} queries): precision@1 "
            f"{scores['precision_at_1']:.2%}, R-precision {scores['r_precision']:.2%}, MAP@R {scores['map_at_r']:.2%}")


def format_test(test: dict, name: str) -> str:
    far = ", ".join(f"TAR@FAR={k} {v:.2%}" for k, v in test["tar_at_far"].items())
    return (f"{name}: accuracy {test['accuracy']:.2%} at the calibrated threshold {test['threshold']:.3f} "
            f"(best-threshold accuracy {test['best_threshold_accuracy']:.2%}), AUC {test['auc']:.4f}, "
            f"EER {test['eer']:.2%}, {far}")


def save_test_outputs(out_dir: Path, embeddings: np.ndarray, test: FaceDataset, d: np.ndarray,
                      same: np.ndarray, threshold: float) -> None:
    """What the plots and the margin comparison read: test embeddings with who they are,
    and the DevTest pair distances."""
    save_npz_atomic(out_dir / TEST_EMBEDDINGS, {
        "embeddings": embeddings.astype(np.float32), "labels": test.labels,
        "people": np.array(test.people, dtype=str), "paths": np.array(test.paths, dtype=str),
        "root": np.array(str(test.root))})
    save_npz_atomic(out_dir / TEST_PAIRS, {"distances": d, "same": same, "threshold": np.array(threshold)})


def record_plots(out_dir: str | Path, metrics: dict, plots: Sequence[str | Path]) -> dict:
    """The run's metrics with the figures drawn from its files listed under "plots" (saved)."""
    metrics["plots"] = [str(p) for p in plots]
    write_json(Path(out_dir) / METRICS_FILE, metrics)
    return metrics


# ---------------------------------------------------------------------------- View 1
def train_view1(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path, *,
                evaluate_test: bool, report_epoch: Callable[[int, float], None] | None = None,
                log: Callable[[str], None] = no_log, features: FeatureMemo | None = None) -> dict:
    """Train on View 1's DevTrain people minus a seeded validation split; select and calibrate
    on validation pairs. Only with `evaluate_test` are the 1,000 DevTest pairs read and scored
    (once, at the calibrated threshold). Writes metrics.json, model.pt and the engine's files
    to `out_dir` (plus the test embeddings and pair distances when testing). Returns the metrics."""
    out_dir = Path(out_dir)
    protocol = LFWProtocol(data_root)
    extra_sources(config)  # a bad path fails now, not after LFW is read
    # Only the DevTrain people file chooses anything; the DevTest pairs are read before
    # training only with `evaluate_test`, to check that their images decoded.
    fit_people, val_people = protocol.validation_people(config.val_fraction, config.seed, config.train_people)
    files = view1_files(protocol, config, [*fit_people, *val_people], test=evaluate_test)
    dataset, bad = load_lfw_images(protocol, config, log, files=files)
    known = set(dataset.people)
    fit_people = [p for p in fit_people if p in known]
    val_people = [p for p in val_people if p in known]
    if evaluate_test:
        split = protocol.view1()
        check_scored_pairs(dataset, bad, split.test_pairs, protocol.root / "pairsDevTest.txt")
    # Extra people join the training side only (and extra_val's held-out people validate).
    extra = add_extra_people(config, dataset, protocol.image_root, log=log)
    dataset, lfw_fit_people, fit_people = extra.dataset, fit_people, [*fit_people, *extra.fit_people]
    main = is_main_process()  # under torchrun rank 0 scores and writes; the other ranks only train
    skipped = record_bad_files(merged_report(bad, extra), out_dir, log) if main else len(bad.bad)
    trained = train_verifier(config, dataset, fit_people, val_people, out_dir, report_epoch=report_epoch, log=log,
                             data_info={"protocol": "view1", "root": str(protocol.root)}, features=features,
                             extra_val_people=extra.val_people)
    metrics = {"protocol": "view1", "validation": trained.validation.to_dict(),
               "validation_retrieval": trained.validation_retrieval, "threshold": trained.threshold,
               "best_epoch": trained.best_epoch, "epochs": config.epochs, "train_time_s": trained.train_time_s,
               "feature_cache_time_s": trained.cache_time_s, "trained_from_stage": trained.start_stage,
               "fit_people": len(fit_people), "val_people": len(val_people),
               "fit_images": int(len(dataset.indices_of_people(fit_people))), "skipped_files": skipped,
               "training_data": training_record(str(protocol.root), lfw_fit_people, dataset, extra),
               **extra_metrics(config, trained, extra), "test": None}
    if not main:
        return metrics
    if evaluate_test:
        test_people = [p for p in split.test_people if p in known]  # all of whose images failed: none to embed
        test = dataset.subset(test_people)
        start = time.perf_counter()
        log(f"scoring the {len(split.test_pairs)} DevTest pairs: embedding {len(test)} images of "
            f"{len(test_people)} people")
        embeddings = embed_images(trained.model, test.images, batch_size=config.eval_batch_size,
                                  progress=config.progress, desc="embed DevTest")
        i, j, same = test.pair_indices(split.test_pairs)
        d = pair_distances(embeddings, i, j, config.distance)
        metrics["test"] = test_report(d, same, trained.threshold)
        metrics["test_embed_time_s"] = time.perf_counter() - start
        metrics["test_images"] = len(test)
        metrics["retrieval"] = retrieval_scores(embeddings, test.labels, config.distance)
        save_test_outputs(out_dir, embeddings, test, d, same, trained.threshold)
        log(format_test(metrics["test"], "DevTest"))
        log(format_retrieval(metrics["retrieval"], retrieval_name(config)))
    save_model(trained.model, out_dir / MODEL_FILE, extra=saved_model_extra(config, trained))
    write_json(out_dir / METRICS_FILE, metrics)
    save_yaml(config, out_dir / runfiles.FACE_RECIPE)
    return metrics


def untrained_baseline(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path | None = None, *,
                       log: Callable[[str], None] = no_log) -> dict:
    """The reference point a trained model must beat: the backbone with its pretrained
    weights and no fine-tuning, Euclidean distance between L2-normalised pooled features,
    threshold calibrated on the same validation people as `train_view1`, DevTest scored once.
    With `extra_val`, its held-out people are scored too, on the pairs a trained run validates
    on, at the LFW threshold (`extra_validation`)."""
    if config.extra_train:
        raise CnnlabError("faces baseline trains nothing: --extra-train does not apply to it (--extra-val scores "
                          "a second validation set)")
    protocol = LFWProtocol(data_root)
    fit_people, val_people = protocol.validation_people(config.val_fraction, config.seed, config.train_people)
    dataset, bad = load_lfw_images(protocol, config, log,
                                   files=view1_files(protocol, config, [*fit_people, *val_people], test=True))
    split = protocol.view1()
    check_scored_pairs(dataset, bad, split.test_pairs, protocol.root / "pairsDevTest.txt")
    extra = add_extra_people(config, dataset, protocol.image_root, log=log)
    report = merged_report(bad, extra)
    skipped = record_bad_files(report, Path(out_dir), log) if out_dir is not None else len(report.bad)
    seed_everything(config.seed)
    model = SiameseNet.from_config(config.model_config()).to(resolve_device(config.device))
    known = set(dataset.people)
    val = dataset.subset([p for p in val_people if p in known])
    vi, vj, vsame = sample_pairs(val.labels, config.val_pairs, seed=config.seed)
    val_features = backbone_features(model, val.images, batch_size=config.eval_batch_size)
    vd = pair_distances(val_features, vi, vj, "euclidean")
    threshold, _ = best_threshold(vd, vsame)
    test = dataset.subset([p for p in split.test_people if p in known])
    i, j, same = test.pair_indices(split.test_pairs)
    features = backbone_features(model, test.images, batch_size=config.eval_batch_size)
    d = pair_distances(features, i, j, "euclidean")
    result = {"protocol": "view1", "model": f"{config.backbone} ({config.weights} weights), no fine-tuning",
              "input_size": config.input_size, "crop": config.crop, **config.preprocess().model_extra(),
              "validation": evaluate(vd, vsame, threshold=threshold).to_dict(),
              "validation_retrieval": retrieval_scores(val_features, val.labels, "euclidean"),
              "test": test_report(d, same, threshold),
              "retrieval": retrieval_scores(features, test.labels, "euclidean"), "skipped_files": skipped}
    if extra.val_people:
        rows = extra.dataset.indices_of_people(extra.val_people)
        ei, ej, esame = sample_pairs(extra.dataset.labels[rows], config.val_pairs, seed=config.seed)
        extra_features = backbone_features(model, extra.dataset.images[rows], batch_size=config.eval_batch_size)
        ed = pair_distances(extra_features, ei, ej, "euclidean")
        result["extra_validation"] = {**extra.validation, **test_report(ed, esame, threshold), "pairs": len(ed),
                                      "matched": int(esame.sum()),
                                      "retrieval": retrieval_scores(extra_features, extra.dataset.labels[rows],
                                                                    "euclidean")}
        log(f"untrained extra_val: AUC {result['extra_validation']['auc']:.4f}, accuracy "
            f"{result['extra_validation']['accuracy']:.2%} at the LFW threshold")
    log(format_test(result["test"], "untrained DevTest"))
    log(format_retrieval(result["retrieval"], "untrained " + retrieval_name(config)))
    if out_dir is not None:
        write_json(Path(out_dir) / "baseline.json", result)
    return result
