"""LFW View 2, the field's protocol: ten trainings, each on nine folds' people, each tested on
the tenth fold's 600 pairs; resumable, since it takes hours (see `train_view2`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cnnlab.core import runfiles
from cnnlab.core.config import RUN_ONLY_FIELDS
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import read_json, save_yaml, to_plain, write_json
from cnnlab.core.progress import no_log
from cnnlab.data.lfw import LFWProtocol, split_people
from cnnlab.metrics.verification import evaluate, kfold_accuracy
from cnnlab.models.siamese import save_model
from cnnlab.models.utils import eval_mode
from cnnlab.tasks.faces.config import FaceTrainConfig, saved_recipe
from cnnlab.tasks.faces.extra import add_extra_people, extra_sources, merged_report, training_record
from cnnlab.tasks.faces.features import FeatureMemo, embed_from_prefix
from cnnlab.tasks.faces.training import (
    METRICS_FILE,
    MODEL_FILE,
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


def train_view2(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path, *,
                folds: Sequence[int] | None = None, log: Callable[[str], None] = no_log) -> dict:
    """LFW View 2: for each fold, train on the other nine folds' people (a seeded validation
    split of them selects the epoch and calibrates a threshold), then test on the fold's 600
    pairs. Two accuracies per fold, both at thresholds chosen without the fold's own pairs, as
    the protocol asks: `accuracy_val_threshold`, at the threshold calibrated on the validation
    people (held out from training: View 1's rule), and `accuracy`, at the threshold that is
    best on the other nine folds' pairs embedded by the fold's model. The latter is the usual
    recipe for models trained elsewhere; here those pairs are mostly of people the model trained
    on, whose same-person distances are tighter than unseen people's, so it chooses a lower
    threshold (docs/results/faces.md measures the effect). Reports mean and standard deviation of both
    over the folds that ran."""
    if config.train_people or config.test_images != "people":
        raise CnnlabError("train_people and test_images are View 1 options: View 2 trains each fold on all "
                          "of the other folds' people and embeds every image its 6,000 pairs use")
    out_dir = Path(out_dir)
    protocol = LFWProtocol(data_root)
    extra_sources(config)  # a bad path fails now, not after LFW is read
    # Ten trainings take hours: folds that an earlier run of the same recipe finished in
    # out_dir are kept, not trained again (an interrupted run resumes at its next fold).
    done = finished_view2_folds(out_dir, config)
    folds = list(range(protocol.num_folds)) if folds is None else list(folds)
    if done and is_main_process():
        log(f"{out_dir}: keeping fold(s) {', '.join(str(f + 1) for f in sorted(done))} finished earlier "
            "with the same recipe")
    dataset, bad = load_lfw_images(protocol, config, log)
    all_pairs = protocol.view2_pairs
    # Every fold's pairs, not only the folds asked for: each fold's threshold comes from the others.
    check_scored_pairs(dataset, bad, all_pairs, protocol.root / "pairs.txt")
    # Extra people join every fold's training side only (extra_val's held-out people validate).
    extra = add_extra_people(config, dataset, protocol.image_root, log=log)
    dataset = extra.dataset
    main = is_main_process()  # under torchrun rank 0 scores and writes; the other ranks only train
    if main:  # before the first fold, so that a later run can tell whether it has the same recipe
        save_yaml(config, out_dir / runfiles.FACE_RECIPE)
    skipped = record_bad_files(merged_report(bad, extra), out_dir, log) if main else len(bad.bad)
    recorded = {"skipped_files": skipped, "extra_train": extra.sources, "extra_validation": extra.validation}
    pair_fold = np.array([p.fold for p in all_pairs])
    i, j, same = dataset.pair_indices(all_pairs)
    used = np.unique(np.concatenate([i, j]))
    # Every fold starts from the same frozen weights: the frozen stages' features of every
    # image are computed once (or loaded from the disk cache) and shared by the ten trainings.
    memo, every_image = FeatureMemo(), np.arange(len(dataset))
    rows = [done[f] for f in sorted(done)]
    for fold in folds:
        if fold in done:
            continue
        split = protocol.view2_fold(fold)
        counts = [protocol.view2_people[f][n] for f in range(protocol.num_folds) if f != fold
                  for n in protocol.view2_people[f]]
        fit_people, val_people = split_people(list(split.train_people), counts, config.val_fraction, config.seed)
        log(f"[fold {fold + 1}/{protocol.num_folds}]")
        trained = train_verifier(config, dataset, [*fit_people, *extra.fit_people], val_people,
                                 out_dir / f"fold-{fold + 1:02d}", log=log,
                                 data_info={"protocol": "view2", "fold": fold, "root": str(protocol.root),
                                            "training_data": training_record(str(protocol.root), fit_people,
                                                                             dataset, extra)},
                                 features=memo, cache_rows=every_image, extra_val_people=extra.val_people)
        if not main:
            continue
        z = np.zeros((len(dataset), config.embedding_dim), np.float32)
        if memo.features is not None:  # every image's frozen stages are cached: run only the rest
            with eval_mode(trained.model), torch.no_grad():
                z[used] = embed_from_prefix(trained.model, memo.features, used,
                                            batch_size=config.eval_batch_size).cpu().numpy()
        else:
            z[used] = embed_images(trained.model, dataset.images[used], batch_size=config.eval_batch_size,
                                   progress=config.progress, desc=f"embed fold {fold + 1} test images")
        d = pair_distances(z, i, j, config.distance)
        # Every fold's threshold from the other folds; only this fold's model embedded them, so
        # only this fold's entry is its result.
        kfold = kfold_accuracy(d, same, pair_fold)
        threshold = kfold.fold_thresholds[kfold.folds.index(fold)]
        held = pair_fold == fold
        test = test_report(d[held], same[held], threshold)
        row = {"fold": fold + 1, "accuracy": test["accuracy"], "threshold": threshold,
               "accuracy_val_threshold": evaluate(d[held], same[held], threshold=trained.threshold).accuracy,
               "val_threshold": trained.threshold, "auc": test["auc"], "eer": test["eer"],
               "tar_at_far": test["tar_at_far"], "val_auc": trained.validation.auc,
               "val_precision_at_1": trained.validation_retrieval["precision_at_1"],
               "best_epoch": trained.best_epoch, "train_time_s": trained.train_time_s}
        if trained.extra_validation is not None:
            row["extra_val_auc"] = trained.extra_validation["auc"]
        rows.append(row)
        rows.sort(key=lambda r: r["fold"])
        save_model(trained.model, out_dir / f"fold-{fold + 1:02d}" / MODEL_FILE,
                   extra=saved_model_extra(config, trained, fold=fold + 1))
        log(f"fold {fold + 1}: accuracy {row['accuracy_val_threshold']:.2%} at the threshold calibrated on the "
            f"validation people, {row['accuracy']:.2%} at the one from the other folds' pairs; AUC {row['auc']:.4f}")
        write_json(out_dir / METRICS_FILE, {**view2_summary(rows, protocol.num_folds), **recorded})
    if not main:
        return {"protocol": "view2", "folds_run": 0, "num_folds": protocol.num_folds, "folds": []}
    summary = {**view2_summary(rows, protocol.num_folds), **recorded}
    write_json(out_dir / METRICS_FILE, summary)
    return summary


def finished_view2_folds(out_dir: Path, config: FaceTrainConfig) -> dict[int, dict]:
    """{fold (0-based): its result row} for the folds an earlier View 2 run finished in
    `out_dir` (a row in metrics.json and the fold's model.pt), when that run had this recipe
    (settings that only say where and how visibly it ran aside). Results of another recipe, or
    of an unknown one, are never mixed in nor deleted: that is a one-line error."""
    metrics_file, recipe_file = out_dir / METRICS_FILE, out_dir / runfiles.FACE_RECIPE
    if not metrics_file.is_file():
        return {}
    earlier = read_json(metrics_file)
    if earlier.get("protocol") != "view2":
        raise CnnlabError(f"{out_dir} holds a {earlier.get('protocol', 'different')} run, not View 2 folds; "
                          "use another --out")
    rows = {int(r["fold"]) - 1: r for r in earlier.get("folds", [])
            if (out_dir / f"fold-{int(r['fold']):02d}" / MODEL_FILE).is_file()}
    if not rows:
        return {}
    if not recipe_file.is_file():
        raise CnnlabError(f"{out_dir} holds View 2 folds but no faces_config.yaml saying how they were trained; "
                          "use another --out")
    before = saved_recipe(recipe_file)
    ignore = set(RUN_ONLY_FIELDS)
    now, then = to_plain(config), to_plain(before)
    diff = sorted(k for k in now if k not in ignore and now[k] != then.get(k))
    if diff:
        raise CnnlabError(f"{out_dir} holds View 2 folds trained with another recipe (differs in "
                          f"{', '.join(diff)}); use another --out, or the same settings to resume")
    return rows


def view2_summary(rows: list[dict], num_folds: int) -> dict:
    def stats(key):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    extra = {"extra_val_auc": stats("extra_val_auc")} if rows and all("extra_val_auc" in r for r in rows) else {}
    return {"protocol": "view2", "folds_run": len(rows), "num_folds": num_folds, "folds": rows,
            "accuracy": stats("accuracy"), "accuracy_val_threshold": stats("accuracy_val_threshold"),
            "auc": stats("auc"), "eer": stats("eer"), **extra, "complete": len(rows) == num_folds}
