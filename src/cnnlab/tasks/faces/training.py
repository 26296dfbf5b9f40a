"""One training of the Siamese face verifier, shared by every LFW run (View 1 in
`cnnlab.tasks.faces.view1`, the ten View 2 folds in `cnnlab.tasks.faces.view2`, the margin study,
tuning trials): train on some people, keep the epoch with the best validation AUC and calibrate
the threshold on pairs of other, validation people (`train_verifier`); and what every run needs
around it: LFW images decoded once, the scored pairs checked before training, test metrics at
the calibrated threshold, the model file's extra values.

Unreadable images are skipped (named on screen, all of them in the run's bad_files.json), but
one used by a pair that will be scored stops the run before training, in one line: the
protocols score every pair, and an accuracy over fewer pairs would read as comparable to
published results without being so (and training first would waste the whole run).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.core import runfiles
from cnnlab.core.env import data_root
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import save_npz_atomic, to_plain
from cnnlab.core.progress import no_log, progress_bar
from cnnlab.data.faces import FaceDataset, load_identity_folders
from cnnlab.data.images import DecodeReport
from cnnlab.data.lfw import LFWProtocol, Pair
from cnnlab.metric_learning.distances import create_distance
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import VerificationMetrics, best_threshold, evaluate
from cnnlab.models.siamese import SiameseNet
from cnnlab.models.utils import eval_mode, in_batches, module_device
from cnnlab.tasks.faces.config import SELECT_ON, FaceTrainConfig, cache_stage, set_trainable
from cnnlab.tasks.faces.features import FeatureMemo, cached_prefix
from cnnlab.tasks.faces.task import FaceVerificationTask, ValidationPairs
from cnnlab.training.distributed import is_main_process
from cnnlab.training.engine import Engine
from cnnlab.training.task import Callback

MODEL_FILE = runfiles.MODEL
METRICS_FILE = runfiles.METRICS
TEST_EMBEDDINGS = runfiles.TEST_EMBEDDINGS
TEST_PAIRS = runfiles.TEST_PAIRS
VALIDATION_PAIRS = runfiles.VALIDATION_PAIRS


# ---------------------------------------------------------------------------- embedding helpers
def embed_images(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256, progress: bool | None = False,
                 desc: str = "embed") -> np.ndarray:
    """Embeddings (float32 N x D) of uint8 N x H x W x 3 images, eval mode, from pixels, under a
    progress bar counted in images (`progress` as `cnnlab.core.progress.progress_bar`'s `enable`:
    a test set from pixels takes minutes on a CPU)."""
    device = module_device(model)

    def embed(s: slice) -> np.ndarray:
        z = model.embed(torch.from_numpy(images[s]).to(device).permute(0, 3, 1, 2)).float().cpu().numpy()
        bar.update(s.stop - s.start)
        return z

    with eval_mode(model), progress_bar(total=len(images), enable=progress, desc=desc, unit="img") as bar:
        return in_batches(embed, len(images), batch_size, empty=np.zeros((0, model.embedding_dim), np.float32))


def backbone_features(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """L2-normalised pooled backbone features (no head): what the ImageNet network alone sees."""
    device = module_device(model)
    with eval_mode(model):
        return in_batches(lambda s: F.normalize(model.forward_features(torch.from_numpy(images[s]).to(device)
                                                                       .permute(0, 3, 1, 2)).float(), dim=1)
                          .cpu().numpy(), len(images), batch_size,
                          empty=np.zeros((0, model.backbone.num_features), np.float32))


def pair_distances(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray, distance: str) -> np.ndarray:
    z = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    return create_distance(distance).paired(z[torch.as_tensor(i)], z[torch.as_tensor(j)]).numpy().astype(np.float64)


# ---------------------------------------------------------------------------- one training
class EpochLog(Callback):
    """One line per epoch: validation AUC and accuracy, and the time since training started."""

    def __init__(self, log: Callable[[str], None], epochs: int):
        self.log, self.epochs, self.started = log, epochs, time.perf_counter()

    def on_validation(self, epoch: int, record: dict, selected_epoch: int) -> None:
        extra = (f", extra val AUC {record['val_extra_auc']:.4f} ({record['val_extra_acc']:.2%}, precision@1 "
                 f"{record['val_extra_p1']:.1%})" if "val_extra_auc" in record else "")
        self.log(f"epoch {epoch}/{self.epochs}: val AUC {record['val_auc']:.4f}, val accuracy "
                 f"{record['val_acc']:.2%}, precision@1 {record['val_p1']:.1%}{extra} "
                 f"({time.perf_counter() - self.started:.0f} s)")


class PruningCallback(Callback):
    """`report_epoch(epoch, val_auc)` after each epoch (0-based epoch, as optuna's trial.report
    steps): the tuner's pruner raises there to stop a trial that is behind."""

    def __init__(self, report_epoch: Callable[[int, float], None], metric: str = "auc"):
        self.report_epoch, self.metric = report_epoch, metric  # the metric the kept epoch is chosen by

    def on_validation(self, epoch: int, record: dict, selected_epoch: int) -> None:
        self.report_epoch(epoch - 1, record[f"val_{self.metric}"])


@dataclass
class TrainedVerifier:
    model: SiameseNet
    threshold: float                 # calibrated on the validation pairs
    validation: VerificationMetrics  # at that threshold (the best one on those pairs)
    history: list[dict]
    best_epoch: int
    train_time_s: float
    cache_time_s: float
    start_stage: int
    extra_validation: dict | None = None  # extra_val's pairs at the kept epoch, at `threshold`
    validation_retrieval: dict | None = None  # leave-one-out over the validation people's images


def train_verifier(config: FaceTrainConfig, dataset: FaceDataset, fit_people: Sequence[str],
                   val_people: Sequence[str], run_dir: str | Path, *, report_epoch=None,
                   log: Callable[[str], None] = no_log, data_info: dict | None = None,
                   features: FeatureMemo | None = None, cache_rows: np.ndarray | None = None,
                   extra_val_people: Sequence[str] = ()) -> TrainedVerifier:
    """Train on `fit_people`, select the epoch and calibrate the threshold on pairs sampled
    among `val_people` (disjoint from them); `extra_val_people`, a second validation set
    (`cnnlab.tasks.faces.extra`), is scored beside them. Writes the engine's run files into `run_dir`.
    `features`: a memo shared with other runs of the same study (see `FeatureMemo`);
    `cache_rows`: the rows whose frozen features are cached (default: the training rows a
    batch can draw and the validation rows; View 2 caches every image once for all folds)."""
    overlap = set(fit_people) & (set(val_people) | set(extra_val_people))
    if overlap:
        raise CnnlabError(f"{len(overlap)} people are in both the training and validation split, "
                          f"e.g. {sorted(overlap)[:3]}")
    engine = Engine(config.train_config(), run_dir, run_config={
        "faces": to_plain(config), "data": {**(data_info or {}), "fit_people": len(fit_people),
                                            "val_people": len(val_people),
                                            **({"extra_val_people": len(extra_val_people)} if extra_val_people
                                               else {})}})
    model = engine.build_model(lambda: SiameseNet.from_config(config.model_config()))
    num_stages = len(model.backbone_stages())
    if config.trainable_stages > num_stages:
        raise CnnlabError(f"trainable_stages={config.trainable_stages} but {config.backbone} has {num_stages} stages")
    set_trainable(model, config, 0)
    fit_rows = dataset.indices_of_people(fit_people)
    val_rows = dataset.indices_of_people(val_people)
    extra_rows = dataset.indices_of_people(extra_val_people)
    stage = cache_stage(config, num_stages)
    fit_counts = np.bincount(dataset.labels[fit_rows], minlength=dataset.num_people)
    singles = int((fit_counts == 1).sum())
    prefix, cache_time = None, 0.0
    if stage > 0:
        start = time.perf_counter()
        # Only rows a batch can draw (people with >= 2 images, and with singles_per_batch the
        # single-image people) and the validation rows.
        drawable = fit_rows[fit_counts[dataset.labels[fit_rows]] >= config.min_images_drawn]
        rows = np.concatenate([drawable, val_rows, extra_rows]) if cache_rows is None else np.asarray(cache_rows)
        # Augmented views only of rows training draws; with a cache shared by the runs of a
        # study (View 2's folds) of every cached row a run may train on, so all share one entry.
        view_rows = drawable if cache_rows is None else rows[~np.isin(rows, extra_rows)]
        prefix = cached_prefix(model, dataset, rows, stage,
                               batch_size=config.eval_batch_size, progress=config.progress, log=log, memo=features,
                               views=config.augment_views, view_rows=view_rows)
        cache_time = time.perf_counter() - start
    task = FaceVerificationTask(config, dataset, fit_rows, val_rows, engine.device, prefix=prefix,
                                start_stage=stage, dist=engine.dist, extra_val_rows=extra_rows)
    # Said every run: a pair loss cannot use a person's only image unless it is asked to.
    per_batch = f" + {task.sampler.singles_per_batch} single-image people" if config.singles_per_batch else ""
    unused = (f"; the {singles} people with one image are never drawn (--singles-per-batch)"
              if singles and not config.singles_per_batch else "")
    log(f"training on {len(fit_rows)} images of {len(fit_people)} people "
        f"({len(task.sampler)} batches of {config.people_per_batch}x{config.k}{per_batch} per epoch, "
        f"{'from cached stage ' + str(stage) + ' features' if stage else 'from pixels'}{unused}); "
        f"validating on {len(task.val_same)} pairs of {len(val_people)} people"
        + (f", and {len(task.extra_val.same)} pairs of {len(extra_val_people)} extra_val people"
           if task.extra_val is not None else ""))
    if task.classes is not None and config.class_init == "imprint":
        start = time.perf_counter()
        task.imprint_classes(model)
        per_class = f" x {config.class_subcenters} sub-centers" if config.class_subcenters > 1 else ""
        log(f"{config.loss}: {task.classes.num_classes}{per_class} class vectors imprinted from the starting "
            f"network's embeddings ({time.perf_counter() - start:.0f} s)")
    select = SELECT_ON[config.select_on]
    callbacks = [EpochLog(log, config.epochs)] + ([PruningCallback(report_epoch, select)]
                                                  if report_epoch is not None else [])
    result = engine.fit(model, task, callbacks=callbacks)
    model, best_epoch = result.eval_model, result.selected_epoch  # the selected epoch's weights
    model.eval()
    # The threshold comes from the validation people only; the test pairs never choose it.
    # The task embeds them as validation did (from the cached frozen features when there are
    # some: the same numbers as from pixels, without running the frozen stages again).
    with torch.no_grad():
        val_embeddings = task.val_embeddings(model).cpu().numpy()
    vd = pair_distances(val_embeddings, task.val_i.cpu().numpy(), task.val_j.cpu().numpy(), config.distance)
    threshold, _ = best_threshold(vd, task.val_same)
    validation = evaluate(vd, task.val_same, threshold=threshold)
    val_retrieval = retrieval_scores(val_embeddings, task.val.labels, config.distance)
    log(f"kept epoch {best_epoch} (val AUC {validation.auc:.4f}, precision@1 {val_retrieval['precision_at_1']:.1%});"
        f" threshold {threshold:.4f} calibrated on {len(vd)} validation pairs (accuracy {validation.accuracy:.2%} "
        "there)")
    pairs = pair_record("val", dataset, task.val, vd)
    extra = None
    if task.extra_val is not None:  # at LFW's threshold: extra_val never chooses one
        with torch.no_grad():
            ed, extra_retrieval = task.distances_and_retrieval(model, task.extra_val)
        pairs.update(pair_record("extra_val", dataset, task.extra_val, ed))
        extra = {**test_report(ed.astype(np.float64), task.extra_val.same, threshold), "pairs": len(ed),
                 "matched": int(task.extra_val.same.sum()), "people": len(extra_val_people),
                 "images": len(extra_rows), "retrieval": extra_retrieval}
        log(f"extra_val at the kept epoch: AUC {extra['auc']:.4f}, accuracy {extra['accuracy']:.2%} at the "
            f"threshold (best-threshold accuracy {extra['best_threshold_accuracy']:.2%}), precision@1 "
            f"{extra_retrieval['precision_at_1']:.1%}")
    if is_main_process():
        save_npz_atomic(Path(run_dir) / VALIDATION_PAIRS, pairs, compressed=True)
    return TrainedVerifier(model, threshold, validation, result.history, best_epoch,
                           float(result.final["train_time_s"]), cache_time, stage, extra, val_retrieval)


def pair_record(name: str, dataset: FaceDataset, pairs: ValidationPairs, distances: np.ndarray
                ) -> dict[str, np.ndarray]:
    """One validation set's pairs as `validation_pairs.npz` keeps them (`<name>_distances`,
    `_same`, `_person_a`, `_person_b`, `_image_a`, `_image_b`): two runs that sampled the same
    pairs can be compared pair by pair (`cnnlab.tasks.faces.compare`). An image is its file
    name, which with its person names it: a data folder may sit elsewhere on another machine."""
    rows = pairs.rows.cpu().numpy()
    a, b = rows[pairs.i.cpu().numpy()], rows[pairs.j.cpu().numpy()]
    people = np.array(dataset.people, dtype=str)
    paths = np.array([Path(p).name for p in dataset.paths], dtype=str)
    return {f"{name}_distances": np.asarray(distances, dtype=np.float64), f"{name}_same": np.asarray(pairs.same),
            f"{name}_person_a": people[dataset.labels[a]], f"{name}_person_b": people[dataset.labels[b]],
            f"{name}_image_a": paths[a], f"{name}_image_b": paths[b]}


# ---------------------------------------------------------------------------- shared by the runs
def default_lfw_root() -> Path:
    """`lfw/` in the data root (`cnnlab.core.env.data_root`): where the commands look without --data."""
    return data_root()[0] / "lfw"


def load_lfw_images(protocol: LFWProtocol, config: FaceTrainConfig, log: Callable[[str], None] = no_log,
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
    return {"threshold": trained.threshold, "distance": config.distance, "loss": config.loss, "margin": config.margin,
            "crop": config.crop, "input_size": config.input_size, "val_auc": trained.validation.auc,
            "val_accuracy": trained.validation.accuracy, **config.preprocess().model_extra(), **more}


def test_report(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """Test metrics at the calibrated threshold, plus the best-threshold accuracy (an upper
    bound that peeks at the test labels, reported apart and named so)."""
    calibrated = evaluate(distances, same, threshold=threshold)
    best_t, best_acc = best_threshold(distances, same)
    return {**calibrated.to_dict(), "best_threshold": best_t, "best_threshold_accuracy": best_acc}


