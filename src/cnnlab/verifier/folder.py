"""Score a trained face verifier on an identity folder it never trained on.

LFW's numbers say how a model does on LFW; a user's own people (or a small public set such as
the AT&T faces) may look nothing like it. This scores the saved model as it would be used:

    scores = score_identity_folder(FaceVerifier.load("runs/faces-view1"), "att-faces")
    scores["at_model_threshold"]["accuracy"], scores["auc"]

Every image under `<folder>/<person>/`, at any depth (albums of that person), is embedded once,
through the model's own face step (`embed_files`, as an index build does). Every file is
accounted for (`cnnlab.verifier.tally`): files that cannot be decoded, images where the face
step finds no face, files that are not images and images directly in `<folder>` (no person)
are left out and listed, never fatal. Pairs are every same-person pair and, by default,
as many different-person pairs drawn at random without replacement, so the two classes weigh
alike. The headline accuracy is at the model's calibrated threshold (chosen on LFW, never on
these pairs): that is the accuracy a user of `faces verify` would get here. The best threshold
on these pairs is reported too, but only as an upper bound: it is chosen by looking at the very
labels it is scored against.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.data.pairs import sample_pairs
from cnnlab.metric_learning.distances import create_distance
from cnnlab.metrics.verification import accuracy_at, best_threshold, evaluate, threshold_at_far
from cnnlab.verifier.index import embed_file_batches, scan_gallery
from cnnlab.verifier.model import EmbeddingModel
from cnnlab.verifier.tally import NO_PERSON, FileTally

DEFAULT_FAR = 1e-3
OBJECTIVES = ("far", "accuracy")   # how `calibrate_embedded` chooses a threshold
# Different-person distances cluster by the pair of people (a look-alike pair sits far inside
# the others), so a false-accept rate is read from pairs of people, not pairs of images. The rule
# that fits the AT&T measurements (docs/results/faces.md, "Calibrating on your own people"):
# target x pairs of people >= 2.
MIN_FAR_PEOPLE_PAIRS = 2.0
BEST_THRESHOLD_NOTE = ("upper bound: the threshold is chosen on these same pairs, peeking at their labels; "
                       "the accuracy at the model's threshold is the honest one")


@dataclass
class FolderEmbeddings:
    """Every usable image of an identity folder, embedded once by the model's face step."""
    folder: Path
    embeddings: np.ndarray          # N x D
    people: list[str]               # N person names
    files: list                     # N GalleryFile
    tally: FileTally                # every file under the folder: used, or left out and why

    @property
    def skipped(self) -> list[dict]:
        """[{"path", "kind", "reason"}] of every file under the folder that was not used."""
        return [item.to_dict() for item in self.tally.left_out]

    @property
    def unlabelled(self) -> int:
        """Images directly in the folder (no person): left out."""
        return self.tally.count(NO_PERSON)


def embed_identity_folder(verifier: EmbeddingModel, folder: str | Path, *, batch_size: int = 64,
                          progress: bool | None = None) -> FolderEmbeddings:
    """Embed every image under `folder/<person>/` (see the module docstring): at least two
    people with usable images, or a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CnnlabError(f"{folder} is a file: expected a folder of one folder per person"
                          if folder.exists() else f"identity folder not found: {folder}")
    scan = scan_gallery(folder)
    tally = scan.tally()
    for f in scan.images:
        if f.person is None:
            tally.add(f.path, NO_PERSON, f"directly in {folder}, not in a person's folder")
    files = [f for f in scan.images if f.person is not None]
    _need_two_people({f.person for f in files}, folder)
    embeddings, ok, left_out = embed_file_batches(verifier, files, batch_size=batch_size, progress=progress)
    tally.left_out += left_out
    tally.used = len(ok)
    people = [f.person for f in ok]
    _need_two_people(set(people), folder, readable=True)
    return FolderEmbeddings(folder, embeddings, people, ok, tally)


def pair_distances(verifier: EmbeddingModel, embedded: FolderEmbeddings, rows: np.ndarray | None = None, *,
                   negatives: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(distances, same, pair counts) over the images `rows` (default all): every same-person
    pair and `negatives` seeded different-person pairs (default as many as same-person pairs)."""
    rows = np.arange(len(embedded.people)) if rows is None else np.asarray(rows, np.int64)
    people = [embedded.people[r] for r in rows]
    first, second, same, available = _pairs(people, negatives, seed)
    if not same.any():
        raise CnnlabError(f"no same-person pair in {embedded.folder}: every person has fewer than 2 readable images")
    distance = create_distance(verifier.distance_name)  # the very distance `verifier.distance` uses
    z = embedded.embeddings[rows]
    with torch.no_grad():
        d = distance.paired(torch.from_numpy(z[first]), torch.from_numpy(z[second]))
    matched = int(same.sum())
    counts = {"matched": matched, "mismatched": int(same.size - matched), "mismatched_available": available,
              "seed": int(seed)}
    return d.double().numpy(), same, counts


def score_identity_folder(verifier: EmbeddingModel, folder: str | Path, *, negatives: int | None = None,
                          seed: int = 0, batch_size: int = 64, progress: bool | None = None,
                          calibrate_people: int | None = None, objective: str = "far",
                          far: float = DEFAULT_FAR) -> dict:
    """Verification metrics of `verifier` on `folder/<person>/<image>` (see the module docstring).

    `negatives`: how many different-person pairs (default: as many as same-person pairs; never
    more than exist). `seed` fixes which ones (`numpy.random.default_rng(seed)`), so two runs
    score the same pairs. `batch_size`: files decoded and embedded per step, which bounds
    memory and paces the progress bar (`progress`: None = on a terminal, as `cnnlab.core.progress`).
    Images directly in `folder` belong to no one and are left out (counted as `unlabelled`).
    `files` counts every file under the folder (seen = used + no_face + unreadable + not_image
    + no_person) and `skipped` lists each one not used, with its kind and reason.

    `calibrate_people=N`: the honest estimate of what `calibrate` buys. N people (drawn with
    `seed`) calibrate a threshold (`objective`, `far` as in `calibrate`); every score is then
    taken on the other people only, and `at_calibrated_threshold` says how that threshold does
    on them.
    """
    if negatives is not None and int(negatives) < 1:
        raise CnnlabError(f"negatives must be >= 1, got {negatives}")
    if int(seed) < 0:
        raise CnnlabError(f"seed must be >= 0, got {seed}")
    embedded = embed_identity_folder(verifier, folder, batch_size=batch_size, progress=progress)
    rows, calibration = None, None
    if calibrate_people is not None:
        calibrate_rows, rows = split_people(embedded.people, calibrate_people, seed)
        calibration = calibrate_embedded(verifier, embedded, calibrate_rows, objective=objective, far=far,
                                         negatives=negatives, seed=seed)
    d, same, counts = pair_distances(verifier, embedded, rows, negatives=negatives, seed=seed)
    scored_people = embedded.people if rows is None else [embedded.people[r] for r in rows]
    threshold = verifier.threshold if verifier.has_threshold else None
    metrics = evaluate(d, same, threshold=threshold)
    best, best_accuracy = best_threshold(d, same)
    result = {
        "folder": str(embedded.folder), "model": str(verifier.source), "distance": verifier.distance_name,
        "images": len(scored_people), "people": len(set(scored_people)), "unlabelled": embedded.unlabelled,
        "files": embedded.tally.counts(), "skipped": embedded.skipped, "pairs": counts,
        # None when the model file holds no calibrated threshold: then only the curve is honest.
        "at_model_threshold": metrics.to_dict() if threshold is not None else None,
        "auc": metrics.auc, "eer": metrics.eer, "tar_at_far": dict(metrics.tar_at_far),
        "best_threshold": best, "best_threshold_accuracy": best_accuracy,
        "best_threshold_note": BEST_THRESHOLD_NOTE,
    }
    if calibration is not None:
        t = calibration["threshold"]
        result["calibration"] = calibration
        result["at_calibrated_threshold"] = {
            "threshold": t, "accuracy": accuracy_at(d, same, t), "far": float(np.mean(d[~same] <= t)),
            "tar": float(np.mean(d[same] <= t)),
            "note": f"threshold chosen on {calibration['people']} other people of this folder (people-disjoint)"}
    return result


def _need_two_people(people: set, folder: Path, readable: bool = False) -> None:
    if len(people) < 2:
        who = "person" if len(people) == 1 else "people"
        what = f"{who} with readable images" if readable else f"{who} (one folder of images per person)"
        raise CnnlabError(f"{folder} holds {len(people)} {what}; scoring needs at least 2")


def _pairs(people: list[str], negatives: int | None, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(first, second, same, different pairs available): row indices into `people` of every
    same-person pair (i < j), then seeded different-person pairs drawn the way the evaluation
    pairs of training are (`cnnlab.data.pairs.sample_pairs`: two people, then one image each)."""
    labels = np.unique(np.asarray(people, dtype=object), return_inverse=True)[1].astype(np.int64)
    counts = np.bincount(labels)
    available = int((len(labels) ** 2 - (counts ** 2).sum()) // 2)
    first, second = [], []
    for person in np.flatnonzero(counts >= 2):
        rows = np.flatnonzero(labels == person)
        i, j = np.triu_indices(len(rows), k=1)
        first.append(rows[i])
        second.append(rows[j])
    pos_first = np.concatenate(first) if first else np.zeros(0, np.int64)
    pos_second = np.concatenate(second) if second else np.zeros(0, np.int64)
    wanted = len(pos_first) if negatives is None else int(negatives)
    neg_first, neg_second, _ = sample_pairs(labels, 0, min(wanted, available), seed=seed)
    same = np.r_[np.ones(len(pos_first), bool), np.zeros(len(neg_first), bool)]
    return np.r_[pos_first, neg_first].astype(np.int64), np.r_[pos_second, neg_second].astype(np.int64), same, available


# ---------------------------------------------------------------------------- calibration on a folder
def split_people(people: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `n` people drawn with `seed`, rows of everyone else): people-disjoint."""
    names = sorted(set(people))
    if not 2 <= n <= len(names) - 2:
        raise CnnlabError(f"--calibrate-people must leave at least 2 people on each side: the folder has "
                          f"{len(names)} people with readable images, got {n}")
    chosen = set(np.random.default_rng(seed).choice(names, size=n, replace=False).tolist())
    inside = np.array([p in chosen for p in people], dtype=bool)
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def calibrate_embedded(verifier: EmbeddingModel, embedded: FolderEmbeddings, rows: np.ndarray | None = None, *,
                       objective: str = "far", far: float = DEFAULT_FAR, negatives: int | None = None,
                       seed: int = 0) -> dict:
    """The calibration record of the images `rows` (default all) of an embedded folder."""
    if objective not in OBJECTIVES:
        raise CnnlabError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    d, same, counts = pair_distances(verifier, embedded, rows, negatives=negatives, seed=seed)
    limited = False
    if objective == "far":
        threshold, _, limited = threshold_at_far(d, same, far)
    else:
        threshold, _ = best_threshold(d, same)
    people = embedded.people if rows is None else [embedded.people[r] for r in rows]
    record = {
        "threshold": float(threshold), "objective": objective, "far_target": far if objective == "far" else None,
        "far": float(np.mean(d[~same] <= threshold)), "tar": float(np.mean(d[same] <= threshold)),
        "accuracy": accuracy_at(d, same, threshold), "far_limited": bool(limited),
        "folder": str(embedded.folder), "people": len(set(people)), "images": len(people),
        "pairs": counts, "replaced": verifier.threshold if verifier.has_threshold else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    n = record["people"]
    record["people_pairs"] = n * (n - 1) // 2
    notes = []
    if limited:
        notes.append(f"{counts['mismatched']} different-person pairs cannot show a false-accept rate of "
                     f"{far:g} (the smallest they show is 1/{counts['mismatched']} = "
                     f"{1 / counts['mismatched']:.2g}): the threshold accepts none of them")
    if objective == "far" and far * record["people_pairs"] < MIN_FAR_PEOPLE_PAIRS:
        needed = people_for_far(far)
        notes.append(f"a false-accept rate of {far:g} read from {n} people ({record['people_pairs']} pairs of people) "
                     f"can come out several times higher or lower on other people; about {needed} people pin it")
    if notes:
        record["note"] = "; ".join(notes)
    return record


def people_for_far(far: float) -> int:
    """The fewest people whose pairs of people give `far` x pairs >= MIN_FAR_PEOPLE_PAIRS."""
    n = 2
    while far * n * (n - 1) / 2 < MIN_FAR_PEOPLE_PAIRS:
        n += 1
    return n
