"""Move a model's threshold to a target population: `cnnlab faces calibrate MODEL FOLDER`.

A model ranks faces it never trained on well (AUC) long before its LFW-chosen threshold decides
well there (on AT&T most different-person pairs fall inside the LFW threshold: docs/verifier.md,
"Calibrate on your own people first"). Calibration keeps the embeddings and picks a new
threshold on labelled pairs of the people the model will meet (an identity folder,
`person/image`): every same-person pair and seeded different-person pairs, as `faces score`
draws them.

Two objectives:
- `far` (default, target 1e-3): the threshold that accepts the most same-person pairs while at
  most that share of different-person pairs falls within it. With n different-person pairs
  the smallest rate they can show is 1/n; below that the threshold accepts none of them and the
  record says the target could not be measured (`far_limited`). The rate carries over to other
  people only when enough pairs of people show it (impostor distances cluster by the pair of
  people): below `folder.MIN_FAR_PEOPLE_PAIRS` the record's note says how many people would.
- `accuracy`: the best accuracy on these pairs (`cnnlab.metrics.verification.best_threshold`).

The new model file is the old one with `extra["threshold"]` replaced and `extra["calibration"]`
saying where it came from (folder fingerprint, people, pairs, objective, rates met, the threshold
it replaced). The weights and face step are untouched, so the model fingerprint, and every gallery
index built with the original, stay valid.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_torch_file, save_torch_atomic
from cnnlab.data.cache import file_sha256
from cnnlab.verifier.folder import DEFAULT_FAR, OBJECTIVES, FolderEmbeddings, calibrate_embedded, embed_identity_folder
from cnnlab.verifier.model import EmbeddingModel
from cnnlab.verifier.tally import FileTally


def calibrate(verifier: EmbeddingModel, folder: str | Path, *, objective: str = "far", far: float = DEFAULT_FAR,
              negatives: int | None = None, seed: int = 0, progress: bool | None = None) -> tuple[dict, FileTally]:
    """(the calibration record of a whole identity folder (see the module docstring), every file
    under the folder accounted for). The record holds the counts (`files`), not the paths: it
    goes into the model file, which may be served elsewhere."""
    if objective not in OBJECTIVES:
        raise CnnlabError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not 0 < far < 1:
        raise CnnlabError(f"--far must be in (0, 1), got {far}")
    embedded = embed_identity_folder(verifier, folder, progress=progress)
    record = calibrate_embedded(verifier, embedded, objective=objective, far=far, negatives=negatives, seed=seed)
    record["folder_fingerprint"] = folder_fingerprint(embedded)
    record["skipped"] = len(embedded.skipped)
    record["files"] = embedded.tally.counts()
    return record, embedded.tally


def folder_fingerprint(embedded: FolderEmbeddings) -> str:
    """SHA-256 over the used images' names and bytes: which photos chose the threshold."""
    h = hashlib.sha256()
    for f in sorted(embedded.files, key=lambda f: f.name):
        h.update(f"{f.name}\0{file_sha256(f.path)}\n".encode())
    return h.hexdigest()[:16]


def check_calibrated_output(source: str | Path, out: str | Path) -> None:
    """Refuse to write the calibrated model over the model being calibrated (checked by the CLI
    before any image is embedded, and again when writing)."""
    if Path(out).resolve() == Path(source).resolve():
        raise CnnlabError(f"--out {out} is the model being calibrated; write the calibrated model to a new file")


def write_calibrated_model(source: str | Path, out: str | Path, record: dict) -> Path:
    """A copy of the model file `source` whose threshold is `record["threshold"]` and whose
    `extra["calibration"]` is `record`; `source` itself is never changed."""
    source, out = Path(source), Path(out)
    check_calibrated_output(source, out)
    blob = load_torch_file(source, "model file")
    if not isinstance(blob, dict) or blob.get("kind") != "cnnlab.siamese":
        raise CnnlabError(f"{source} is not a cnnlab Siamese model file")
    extra = dict(blob.get("extra") or {})
    extra["threshold"] = float(record["threshold"])
    extra["calibration"] = {k: v for k, v in record.items() if k != "threshold"}
    save_torch_atomic({**blob, "extra": extra}, out)
    return out
