"""Faces beyond LFW: more people to train on, and a validation set that is not LFW.

LFW's training side has 3,635 fit people in View 1; the field's verifiers train on 10,000 or
more identities (DeepID2, Sun et al. 2014, on CelebFaces+). `extra_train` sources
(`cnnlab.data.identities`: identity folders, CelebA's layout) add their people to the training
side of a run, and only to it: LFW's validation people, View 1's DevTest and each View 2 test
fold are chosen from LFW's protocol files exactly as without them, and every extra person is
named `tag/person` in the run's dataset, so no extra person can be mistaken for an LFW one.
An extra person whose name is an LFW person's (identity folders in LFW's naming) is left out.

`extra_val` holds out `extra_val_people` seeded people (with two or more images) of a source as
a second validation set, scored beside LFW's each epoch; they are never trained on, also when the
same source is in `extra_train`. The draw depends on the decoded source and the seed only, so a
run without extra training data validates on the very same people (the baseline of a comparison).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.core.progress import no_log
from cnnlab.data.faces import FaceDataset, merge_datasets
from cnnlab.data.identities import IdentitySource, LoadedSource, load_source
from cnnlab.data.images import DecodeReport, list_folders
from cnnlab.tasks.faces.config import SELECT_ON, FaceTrainConfig
from cnnlab.tasks.faces.training import TrainedVerifier


@dataclass
class ExtraPeople:
    """LFW's dataset with the extra sources' people after its own (`merge_datasets`), which of
    them train and which validate, and what the run records about them."""
    dataset: FaceDataset
    fit_people: list[str] = field(default_factory=list)     # extra people trained on
    val_people: list[str] = field(default_factory=list)     # extra_val's held-out people
    sources: list[dict] = field(default_factory=list)       # one record per extra_train source
    validation: dict | None = None                          # extra_val's record
    reports: list[DecodeReport] = field(default_factory=list)


def hold_out_people(dataset: FaceDataset, n: int, seed: int, source: str) -> list[str]:
    """`n` people with two or more images (same-person pairs need them), drawn with `seed` from
    a stream of their own (the draw does not move with LFW's validation split)."""
    counts = dataset.images_per_person()
    multi = [p for p, c in zip(dataset.people, counts) if c >= 2]
    if n > len(multi):
        raise CnnlabError(f"extra_val_people={n} but {source} has {len(multi)} people with two or more readable "
                          "images")
    chosen = np.random.default_rng([seed, 2]).permutation(len(multi))[:n]
    return sorted(multi[i] for i in chosen)


def _lfw_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def extra_sources(config: FaceTrainConfig) -> tuple[list[IdentitySource], IdentitySource | None]:
    """`extra_train` and `extra_val` with their folders checked and their layouts known: called
    before LFW is read too, so a mistyped path is a one-line error before minutes of work."""
    train = [IdentitySource.parse(s).resolved() for s in config.extra_train]
    return train, IdentitySource.parse(config.extra_val).resolved() if config.extra_val else None


def add_extra_people(config: FaceTrainConfig, lfw: FaceDataset, lfw_images: str | Path, *,
                     log: Callable[[str], None] = no_log) -> ExtraPeople:
    """The extra sources of `config` (`extra_train`, `extra_val`) decoded through the recipe's
    face step and merged after `lfw`. `lfw_images`: LFW's image folder, one folder per person
    (an extra person named as one of them is left out; no protocol file is read for it, so
    a run that must not read the test files does not)."""
    train, val = extra_sources(config)
    if not train and val is None:
        return ExtraPeople(lfw)
    spec, loaded = config.preprocess(), {}

    def load(source: IdentitySource) -> LoadedSource:
        key = source.root.resolve()
        if key not in loaded:
            loaded[key] = load_source(source, spec, progress=config.progress)
            log(f"{source}: {loaded[key].dataset.summary(loaded[key].report)}")
        return loaded[key]

    tags: dict = {}

    def tag(source: IdentitySource) -> str:
        key = source.root.resolve()
        if key not in tags:
            base = source.name
            tags[key] = base if base not in tags.values() else f"{base}-{len(tags) + 1}"
        return tags[key]

    held: set[str] = set()
    parts: list[tuple[str, FaceDataset]] = []
    result = ExtraPeople(lfw)
    if val is not None:
        source = load(val)
        chosen = hold_out_people(source.dataset, config.extra_val_people, config.seed, str(val))
        held = set(chosen)
        sub = source.dataset.subset(chosen)
        parts.append((tag(val), sub))
        result.val_people = [f"{tag(val)}/{p}" for p in chosen]
        result.validation = {"source": str(val), "kind": val.kind, "root": str(val.root), "people": len(chosen),
                             "images": len(sub), "seed": config.seed}
        result.reports.append(source.report)
    lfw_names = {_lfw_name(n) for n in list_folders(lfw_images)} if train else set()
    for source in train:
        got = load(source)
        shares_val = val is not None and source.same_folder(val)
        people = [p for p in got.dataset.people if _lfw_name(p) not in lfw_names]
        named_as_lfw = len(got.dataset.people) - len(people)
        removed = len(held.intersection(people)) if shares_val else 0
        people = [p for p in people if not (shares_val and p in held)]
        if not people:
            raise CnnlabError(f"extra_train {source}: no people left to train on ({named_as_lfw} have an LFW "
                              f"person's name, {removed} are extra_val's held-out people)")
        sub = got.dataset.subset(people)
        counts = sub.images_per_person()
        parts.append((tag(source), sub))
        result.fit_people += [f"{tag(source)}/{p}" for p in people]
        result.sources.append({**got.record(), "tag": tag(source), "people": len(people),
                               "people_2plus": int((counts >= 2).sum()), "images": len(sub),
                               "held_out_people": removed, "named_as_lfw_people": named_as_lfw})
        if not shares_val:
            result.reports.append(got.report)
        if named_as_lfw:
            log(f"{source}: left out {named_as_lfw} people named as LFW people (LFW's evaluation stays untouched)")
    result.dataset = merge_datasets(lfw, parts)
    return result


def training_record(lfw_root: str, lfw_fit_people: Sequence[str], dataset: FaceDataset,
                    extra: ExtraPeople) -> dict:
    """metrics.json's `training_data`: what the run trained on, per source and in all."""
    lfw_rows = dataset.indices_of_people(lfw_fit_people)
    lfw_counts = np.bincount(dataset.labels[lfw_rows], minlength=dataset.num_people)
    sources = [{"source": "lfw", "kind": "lfw", "root": lfw_root, "people": len(lfw_fit_people),
                "people_2plus": int((lfw_counts >= 2).sum()), "images": int(len(lfw_rows))}, *extra.sources]
    return {"sources": sources, "people": sum(s["people"] for s in sources),
            "images": sum(s["images"] for s in sources)}


def merged_report(lfw: DecodeReport, extra: ExtraPeople) -> DecodeReport:
    """LFW's and the extra sources' skipped and fallback files in one report (bad_files.json)."""
    reports = [lfw, *extra.reports]
    return DecodeReport(bad=[b for r in reports for b in r.bad], total=sum(r.total for r in reports),
                        fallback=[f for r in reports for f in r.fallback])


def extra_metrics(config: FaceTrainConfig, trained: TrainedVerifier, extra: ExtraPeople) -> dict:
    """metrics.json's keys about the choice of epoch and the second validation set:
    `selected_on` and `selection_auc` (what the kept epoch maximised: the tuner's objective too),
    and `extra_validation` (extra_val's record, its scores at the kept epoch at LFW's calibrated
    threshold, its retrieval, and its AUC, accuracy and precision@1 per epoch), when the run has one."""
    out = {"selected_on": config.select_on, "selection_auc": trained.validation.auc}
    if config.select_on != "lfw":
        out["selection_auc"] = float(trained.history[trained.best_epoch - 1][f"val_{SELECT_ON[config.select_on]}"])
    if extra.validation is not None and trained.extra_validation is not None:
        per_epoch = [{"epoch": row["epoch"], "auc": row["val_extra_auc"], "acc": row["val_extra_acc"],
                      "precision_at_1": row["val_extra_p1"]}
                     for row in trained.history if "val_extra_auc" in row]
        out["extra_validation"] = {**extra.validation, **trained.extra_validation, "per_epoch": per_epoch}
    return out
