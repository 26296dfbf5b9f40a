"""Move a model's threshold to a target population: `cnnlab faces calibrate MODEL FOLDER`.

A model ranks faces it never trained on well (AUC) long before its LFW-chosen threshold decides
well there: on AT&T, 66% of different-person pairs fall inside the LFW threshold. Calibration
keeps the embeddings and picks a new threshold on labelled pairs of the people the model will
meet (an identity folder, `person/image`): every same-person pair and seeded different-person
pairs, as `faces score` draws them.

Two objectives:
- `far` (default, target 1e-3): the threshold that accepts the most same-person pairs while at
  most that share of different-person pairs falls within it. With n different-person pairs
  the smallest rate they can show is 1/n; below that the threshold accepts none of them and the
  record says the target could not be measured (`far_limited`).
- `accuracy`: the best accuracy on these pairs (`cnnlab.metrics.verification.best_threshold`).

The new model file is the old one with `extra["threshold"]` replaced and `extra["calibration"]`
saying where it came from (folder fingerprint, people, pairs, objective, rates met, the threshold
it replaced). The weights and face step are untouched, so the model fingerprint, and every gallery
index built with the original, stay valid.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.data.cache import file_sha256
from cnnlab.errors import CnnlabError
from cnnlab.io import load_torch_file, save_torch_atomic
from cnnlab.metrics.verification import accuracy_at, best_threshold, threshold_at_far
from cnnlab.verifier.folder import DEFAULT_FAR, FolderEmbeddings, embed_identity_folder, pair_distances

if TYPE_CHECKING:
    from cnnlab.verifier.api import FaceVerifier

OBJECTIVES = ("far", "accuracy")


def split_people(people: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `n` people drawn with `seed`, rows of everyone else): people-disjoint."""
    names = sorted(set(people))
    if not 2 <= n <= len(names) - 2:
        raise CnnlabError(f"--calibrate-people must leave at least 2 people on each side: the folder has "
                          f"{len(names)} people with readable images, got {n}")
    chosen = set(np.random.default_rng(seed).choice(names, size=n, replace=False).tolist())
    inside = np.array([p in chosen for p in people], dtype=bool)
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def calibrate_embedded(verifier: "FaceVerifier", embedded: FolderEmbeddings, rows: np.ndarray | None = None, *,
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
    if limited:
        record["note"] = (f"{counts['mismatched']} different-person pairs cannot show a false-accept rate of "
                          f"{far:g} (the smallest they show is 1/{counts['mismatched']} = "
                          f"{1 / counts['mismatched']:.2g}): the threshold accepts none of them")
    return record


def calibrate(verifier: "FaceVerifier", folder: str | Path, *, objective: str = "far", far: float = DEFAULT_FAR,
              negatives: int | None = None, seed: int = 0, progress: bool | None = None) -> dict:
    """The calibration record of a whole identity folder (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise CnnlabError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not 0 < far < 1:
        raise CnnlabError(f"--far must be in (0, 1), got {far}")
    embedded = embed_identity_folder(verifier, folder, progress=progress)
    record = calibrate_embedded(verifier, embedded, objective=objective, far=far, negatives=negatives, seed=seed)
    record["folder_fingerprint"] = folder_fingerprint(embedded)
    record["skipped"] = len(embedded.skipped)
    return record


def folder_fingerprint(embedded: FolderEmbeddings) -> str:
    """SHA-256 over the used images' names and bytes: which photos chose the threshold."""
    h = hashlib.sha256()
    for f in sorted(embedded.files, key=lambda f: f.name):
        h.update(f"{f.name}\0{file_sha256(f.path)}\n".encode())
    return h.hexdigest()[:16]


def write_calibrated_model(source: str | Path, out: str | Path, record: dict) -> Path:
    """A copy of the model file `source` whose threshold is `record["threshold"]` and whose
    `extra["calibration"]` is `record`; `source` itself is never changed."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise CnnlabError(f"--out {out} is the model being calibrated; write the calibrated model to a new file")
    blob = load_torch_file(source, "model file")
    if not isinstance(blob, dict) or blob.get("kind") != "cnnlab.siamese":
        raise CnnlabError(f"{source} is not a cnnlab Siamese model file")
    extra = dict(blob.get("extra") or {})
    extra["threshold"] = float(record["threshold"])
    extra["calibration"] = {k: v for k, v in record.items() if k != "threshold"}
    save_torch_atomic({**blob, "extra": extra}, out)
    return out


def describe_calibration(extra: dict) -> str:
    """One line saying where a model's threshold comes from."""
    c = extra.get("calibration")
    if not isinstance(c, dict):
        return "the model's own (chosen on its validation people when it was trained)"
    goal = (f"false-accept rate {c.get('far_target'):g}" if c.get("objective") == "far" and c.get("far_target")
            else "best accuracy")
    return (f"calibrated on {c.get('folder')} ({c.get('people')} people, {c.get('pairs', {}).get('matched')} "
            f"same-person + {c.get('pairs', {}).get('mismatched')} different-person pairs) for {goal}, "
            f"on {c.get('date')}; replaced {c.get('replaced')}")
