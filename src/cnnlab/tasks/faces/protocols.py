"""LFW runs of the Siamese face verifier (Huang et al. 2007, "Labeled Faces in the Wild";
reporting rules in Huang and Learned-Miller 2014, UM-CS-2014-003).

View 1 trains on DevTrain people, selects the epoch and calibrates the threshold on a seeded
people-disjoint validation split of them, and scores the 1,000 DevTest pairs once
(`train_verifier` is the one training, which View 2 in `cnnlab.tasks.faces.view2` runs ten
times). The untrained baseline scores the pretrained backbone alone the same way. Runs write files; the figures are
drawn from those files afterwards, by the caller (`cnnlab.plots.faces`).

Unreadable images are skipped (named on screen, all of them in the run's bad_files.json), but
one used by a pair that will be scored stops the run before training, in one line: the
protocols score every pair, and an accuracy over fewer pairs would read as comparable to
published results without being so (and training first would waste the whole run).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.faces import FaceDataset, load_identity_folders
from cnnlab.data.images import DecodeReport
from cnnlab.data.lfw import LFWProtocol, Pair, image_relpath
from cnnlab.data.pairs import sample_pairs
from cnnlab.distances import create_distance
from cnnlab.distributed import is_main_process
from cnnlab.engine import Engine, seed_everything
from cnnlab.env import resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.io import save_npz_atomic, save_yaml, to_plain, write_json
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import VerificationReport, best_threshold, evaluate
from cnnlab.models.siamese import SiameseNet, save_model
from cnnlab.models.utils import eval_mode, in_batches, module_device
from cnnlab.task import Callback
from cnnlab.tasks.faces.config import FaceTrainConfig, cache_stage, set_trainable
from cnnlab.tasks.faces.features import FeatureMemo, cached_prefix
from cnnlab.tasks.faces.task import FaceVerificationTask

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
TEST_EMBEDDINGS = "test_embeddings.npz"
TEST_PAIRS = "devtest_pairs.npz"


# ---------------------------------------------------------------------------- embedding helpers
def embed_images(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Embeddings (float32 N x D) of uint8 N x H x W x 3 images, eval mode, from pixels."""
    device = module_device(model)
    with eval_mode(model):
        return in_batches(lambda s: model.embed(torch.from_numpy(images[s]).to(device).permute(0, 3, 1, 2))
                          .float().cpu().numpy(), len(images), batch_size,
                          empty=np.zeros((0, model.embedding_dim), np.float32))


def backbone_features(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """L2-normalised pooled backbone features (no head): what the ImageNet network alone sees."""
    device = module_device(model)
    with eval_mode(model):
        return in_batches(lambda s: F.normalize(model.forward_features(torch.from_numpy(images[s]).to(device)
                                                                       .permute(0, 3, 1, 2)).float(), dim=1)
                          .cpu().numpy(), len(images), batch_size, empty=np.zeros((0, 0), np.float32))


def pair_distances(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray, distance: str) -> np.ndarray:
    dist = create_distance(distance)
    z = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    return dist.paired(z[torch.as_tensor(i)], z[torch.as_tensor(j)]).numpy().astype(np.float64)


# ---------------------------------------------------------------------------- one training
class EpochLog(Callback):
    """One line per epoch: validation AUC and accuracy, and the time since training started."""

    def __init__(self, log: Callable[[str], None], epochs: int):
        self.log, self.epochs, self.started = log, epochs, time.perf_counter()

    def on_validation(self, epoch: int, record: dict, selected_epoch: int) -> None:
        self.log(f"epoch {epoch}/{self.epochs}: val AUC {record['val_auc']:.4f}, val accuracy "
                 f"{record['val_acc']:.2%} ({time.perf_counter() - self.started:.0f} s)")


class PruningReport(Callback):
    """`report(epoch, val_auc)` after each epoch (0-based epoch, as optuna's trial.report
    steps): the tuner's pruner raises there to stop a trial that is behind."""

    def __init__(self, report: Callable[[int, float], None]):
        self.report = report

    def on_validation(self, epoch: int, record: dict, selected_epoch: int) -> None:
        self.report(epoch - 1, record["val_auc"])


@dataclass
class TrainedVerifier:
    model: SiameseNet
    threshold: float                 # calibrated on the validation pairs
    validation: VerificationReport   # at that threshold (the best one on those pairs)
    history: list[dict]
    best_epoch: int
    train_time_s: float
    cache_time_s: float
    start_stage: int


def train_verifier(config: FaceTrainConfig, dataset: FaceDataset, fit_people: Sequence[str],
                   val_people: Sequence[str], run_dir: str | Path, *, report=None,
                   log: Callable[[str], None] = print, data_info: dict | None = None,
                   features: FeatureMemo | None = None, cache_rows: np.ndarray | None = None) -> TrainedVerifier:
    """Train on `fit_people`, select the epoch and calibrate the threshold on pairs sampled
    among `val_people` (disjoint from them). Writes the engine's run files into `run_dir`.
    `features`: a memo shared with other runs of the same study (see `FeatureMemo`);
    `cache_rows`: the rows whose frozen features are cached (default: the training rows a
    batch can draw and the validation rows; View 2 caches every image once for all folds)."""
    overlap = set(fit_people) & set(val_people)
    if overlap:
        raise CnnlabError(f"{len(overlap)} people are in both the training and validation split, e.g. {sorted(overlap)[:3]}")
    engine = Engine(config.train_config(), run_dir, run_config={
        "faces": to_plain(config), "data": {**(data_info or {}), "fit_people": len(fit_people),
                                            "val_people": len(val_people)}})
    seed_everything(config.seed)
    model = engine.prepare(SiameseNet.from_config(config.model_config()))
    num_stages = len(model.backbone_stages())
    if config.trainable_stages > num_stages:
        raise CnnlabError(f"trainable_stages={config.trainable_stages} but {config.backbone} has {num_stages} stages")
    set_trainable(model, config, 0)
    fit_rows = dataset.indices_of_people(fit_people)
    val_rows = dataset.indices_of_people(val_people)
    stage = cache_stage(config, num_stages)
    prefix, cache_time = None, 0.0
    if stage > 0:
        start = time.perf_counter()
        # Only rows a P x K batch can draw (people with >= 2 images) and the validation rows.
        fit_counts = np.bincount(dataset.labels[fit_rows], minlength=dataset.num_people)
        drawable = fit_rows[fit_counts[dataset.labels[fit_rows]] >= 2]
        rows = np.concatenate([drawable, val_rows]) if cache_rows is None else np.asarray(cache_rows)
        prefix = cached_prefix(model, dataset, rows, stage,
                               batch_size=config.eval_batch_size, progress=config.progress, log=log, memo=features)
        cache_time = time.perf_counter() - start
    task = FaceVerificationTask(config, dataset, fit_rows, val_rows, engine.device, prefix=prefix,
                                start_stage=stage, dist=engine.dist)
    log(f"training on {len(fit_rows)} images of {len(fit_people)} people "
        f"({len(task.sampler)} batches of {config.people_per_batch}x{config.k} per epoch, "
        f"{'from cached stage ' + str(stage) + ' features' if stage else 'from pixels'}); "
        f"validating on {len(task.val_same)} pairs of {len(val_people)} people")
    callbacks = [EpochLog(log, config.epochs)] + ([PruningReport(report)] if report is not None else [])
    result = engine.fit(model, task, callbacks=callbacks)
    model = result.eval_model  # the engine put the selected epoch's weights there
    best_epoch = int(result.final["selected_epoch"])
    model.eval()
    # The threshold comes from the validation people only; the test pairs never choose it.
    # The task embeds them as validation did (from the cached frozen features when there are
    # some: the same numbers as from pixels, without running the frozen stages again).
    with torch.no_grad():
        val_embeddings = task.val_embeddings(model).cpu().numpy()
    vd = pair_distances(val_embeddings, task.val_i.cpu().numpy(), task.val_j.cpu().numpy(), config.distance)
    threshold, _ = best_threshold(vd, task.val_same)
    validation = evaluate(vd, task.val_same, threshold=threshold)
    log(f"kept epoch {best_epoch} (val AUC {validation.auc:.4f}); threshold {threshold:.4f} calibrated on "
        f"{len(vd)} validation pairs (accuracy {validation.accuracy:.2%} there)")
    return TrainedVerifier(model, threshold, validation, result.history, best_epoch,
                           float(result.final["train_time_s"]), cache_time, stage)


# ---------------------------------------------------------------------------- shared by the runs
def default_lfw_root() -> Path:
    return Path(os.environ.get("CNNLAB_DATA", "../shared/data")) / "lfw"


def load_lfw_images(protocol: LFWProtocol, config: FaceTrainConfig, log: Callable[[str], None] = print,
                    files: Sequence[str] | None = None) -> tuple[FaceDataset, DecodeReport]:
    """Every LFW image (or only `files`, see `view1_files`), decoded once into the shared uint8
    cache (one entry serves View 1, View 2 and tuning alike); splits then select people from
    it. Returns the bad-file report too: `record_bad_files` names them once the run is known
    to go ahead."""
    start = time.perf_counter()
    dataset, report = load_identity_folders(protocol.image_root, config.preprocess(), files=files,
                                            progress=config.progress)
    log(f"{dataset.summary(report)} ({time.perf_counter() - start:.0f} s)")
    return dataset, report


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


def check_scored_pairs(dataset: FaceDataset, report: DecodeReport, pairs: Sequence[Pair], source: Path) -> None:
    """Raise one CnnlabError, before any training, when a pair to be scored uses an image
    that did not decode (see the module docstring for why this fails rather than drops pairs)."""
    reasons = dict(report.bad)
    broken = [(pair, rel) for pair in pairs for rel, name, n in ((pair.relpaths[0], pair.name1, pair.n1),
                                                                 (pair.relpaths[1], pair.name2, pair.n2))
              if not dataset.has_image(name, n)]
    if broken:
        pair, rel = broken[0]
        path = str(dataset.root / rel)
        files = {r for _, r in broken}
        pairs_hit = len({id(p) for p, _ in broken})
        raise CnnlabError(f"{source}:{pair.line}: image {path} is unreadable ({reasons.get(path, 'not decoded')}); "
                          f"{pairs_hit} of {len(pairs)} pairs to be scored use {len(files)} unreadable image(s): "
                          "replace them before training (the protocol scores every pair)")


def record_bad_files(report: DecodeReport, out_dir: Path, log: Callable[[str], None]) -> int:
    """Name the skipped files (the first few on screen, all of them in out_dir/bad_files.json);
    returns how many were skipped, for the run's metrics."""
    listed = report.write(out_dir)
    for line in report.preview(listed_in=listed):
        log(f"  {line}")
    return len(report.bad)


def saved_model_extra(config: FaceTrainConfig, trained: TrainedVerifier, **more) -> dict:
    """What model.pt records beside the weights (threshold, distance, preprocessing...)."""
    return {"threshold": trained.threshold, "distance": config.distance, "margin": config.margin,
            "crop": config.crop, "input_size": config.input_size, "val_auc": trained.validation.auc,
            "val_accuracy": trained.validation.accuracy, **config.preprocess().model_extra(), **more}


def test_report(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """Test metrics at the calibrated threshold, plus the best-threshold accuracy (an upper
    bound that peeks at the test labels, reported apart and named so)."""
    calibrated = evaluate(distances, same, threshold=threshold)
    best_t, best_acc = best_threshold(distances, same)
    return {**calibrated.to_dict(), "best_threshold": best_t, "best_threshold_accuracy": best_acc}


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
                evaluate_test: bool, report: Callable[[int, float], None] | None = None,
                log: Callable[[str], None] = print, features: FeatureMemo | None = None) -> dict:
    """Train on View 1's DevTrain people minus a seeded validation split; select and calibrate
    on validation pairs. Only with `evaluate_test` are the 1,000 DevTest pairs read and scored
    (once, at the calibrated threshold). Writes metrics.json, model.pt and the engine's files
    to `out_dir` (plus the test embeddings and pair distances when testing). Returns the metrics."""
    out_dir = Path(out_dir)
    protocol = LFWProtocol(data_root)
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
    main = is_main_process()  # under torchrun rank 0 scores and writes; the other ranks only train
    skipped = record_bad_files(bad, out_dir, log) if main else len(bad.bad)
    trained = train_verifier(config, dataset, fit_people, val_people, out_dir, report=report, log=log,
                             data_info={"protocol": "view1", "root": str(protocol.root)}, features=features)
    metrics = {"protocol": "view1", "validation": trained.validation.to_dict(), "threshold": trained.threshold,
               "best_epoch": trained.best_epoch, "epochs": config.epochs, "train_time_s": trained.train_time_s,
               "feature_cache_time_s": trained.cache_time_s, "trained_from_stage": trained.start_stage,
               "fit_people": len(fit_people), "val_people": len(val_people),
               "fit_images": int(len(dataset.indices_of_people(fit_people))), "skipped_files": skipped,
               "test": None}
    if not main:
        return metrics
    if evaluate_test:
        test_people = [p for p in split.test_people if p in known]  # all of whose images failed: none to embed
        test = dataset.subset(test_people)
        start = time.perf_counter()
        embeddings = embed_images(trained.model, test.images, batch_size=config.eval_batch_size)
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
    save_yaml(config, out_dir / "faces_config.yaml")
    return metrics


def untrained_baseline(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path | None = None, *,
                       log: Callable[[str], None] = print) -> dict:
    """The reference point a trained model must beat: the backbone with its pretrained
    weights and no fine-tuning, Euclidean distance between L2-normalised pooled features,
    threshold calibrated on the same validation people as `train_view1`, DevTest scored once."""
    protocol = LFWProtocol(data_root)
    fit_people, val_people = protocol.validation_people(config.val_fraction, config.seed, config.train_people)
    dataset, bad = load_lfw_images(protocol, config, log,
                                   files=view1_files(protocol, config, [*fit_people, *val_people], test=True))
    split = protocol.view1()
    check_scored_pairs(dataset, bad, split.test_pairs, protocol.root / "pairsDevTest.txt")
    skipped = record_bad_files(bad, Path(out_dir), log) if out_dir is not None else len(bad.bad)
    seed_everything(config.seed)
    model = SiameseNet.from_config(config.model_config()).to(resolve_device(config.device))
    known = set(dataset.people)
    val = dataset.subset([p for p in val_people if p in known])
    vi, vj, vsame = sample_pairs(val.labels, config.val_pairs, seed=config.seed)
    vd = pair_distances(backbone_features(model, val.images, batch_size=config.eval_batch_size), vi, vj, "euclidean")
    threshold, _ = best_threshold(vd, vsame)
    test = dataset.subset([p for p in split.test_people if p in known])
    i, j, same = test.pair_indices(split.test_pairs)
    features = backbone_features(model, test.images, batch_size=config.eval_batch_size)
    d = pair_distances(features, i, j, "euclidean")
    result = {"protocol": "view1", "model": f"{config.backbone} ({config.weights} weights), no fine-tuning",
              "input_size": config.input_size, "crop": config.crop, **config.preprocess().model_extra(),
              "validation": evaluate(vd, vsame, threshold=threshold).to_dict(), "test": test_report(d, same, threshold),
              "retrieval": retrieval_scores(features, test.labels, "euclidean"), "skipped_files": skipped}
    log(format_test(result["test"], "untrained DevTest"))
    log(format_retrieval(result["retrieval"], "untrained " + retrieval_name(config)))
    if out_dir is not None:
        write_json(Path(out_dir) / "baseline.json", result)
    return result
