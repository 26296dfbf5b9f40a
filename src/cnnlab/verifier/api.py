"""`FaceVerifier`: a trained face model as one object, for Python callers, the CLI and the
HTTP service alike.

    verifier = FaceVerifier.load("runs/faces-view1")          # or .../model.pt
    verifier.verify("a.jpg", "b.jpg")      # VerifyResult(distance, threshold, same, ...)
    verifier.embed(["a.jpg", pil_image, uint8_array])          # N x D float32
    verifier.identify("q.jpg", GalleryIndex.open("gallery-index"), k=5)

Everything the model needs to see a face the way it was trained (the face step, the input
side, the distance, the calibrated threshold) is read from model.pt; callers pass images only.
Embedding is serialised by a lock: one model object can serve concurrent threads (the HTTP
service's workers) without two batches competing for the same cores.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlab.core import runfiles
from cnnlab.core.errors import CnnlabError
from cnnlab.metric_learning.distances import DISTANCES, create_distance
from cnnlab.metrics.retrieval import clamp_k
from cnnlab.models.utils import in_batches
from cnnlab.verifier.images import (
    DEFAULT_MAX_PIXELS,
    FacePreprocessing,
    ImageInput,
    is_batch,
    prepare_faces,
    preprocessing_from_extra,
)
from cnnlab.verifier.runtime import create_runtime, default_batch_size

if TYPE_CHECKING:
    from cnnlab.verifier.index import GalleryIndex

MODEL_FILE = runfiles.MODEL


@dataclass(frozen=True)
class VerifyResult:
    """One comparison: `same` is `distance <= threshold`. `faces` are the two preprocessed
    faces (S x S x 3 uint8) that were embedded, for showing what was compared."""
    distance: float
    threshold: float
    same: bool
    distance_name: str
    faces: tuple[np.ndarray, np.ndarray] = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"distance": self.distance, "threshold": self.threshold, "same": self.same,
                "distance_name": self.distance_name}


@dataclass(frozen=True)
class Match:
    """A gallery entry found for a query: `same` says whether it is within the threshold."""
    rank: int
    distance: float
    name: str
    person: str | None
    path: str
    same: bool | None

    def to_dict(self) -> dict:
        # `within_threshold`, not "same": it is the threshold's decision on a distance, not an
        # identity (a stranger can fall within it; the gallery's person may be someone else).
        return {"rank": self.rank, "distance": self.distance, "name": self.name, "person": self.person,
                "path": self.path, "within_threshold": self.same}


def model_fingerprint(model: torch.nn.Module, face: FacePreprocessing) -> str:
    """Hash of the weights, the architecture and the face step: two models that would embed an
    image differently never share one, so an index can tell which model built it."""
    h = hashlib.sha256()
    h.update(json.dumps({"config": model.config.to_dict(), "preprocess": face.spec()},
                        sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def resolve_model_path(path: str | Path) -> Path:
    """A run directory means its model.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise CnnlabError(f"{path} holds no {MODEL_FILE} (expected a `cnnlab faces train` run directory)")
        return path / MODEL_FILE
    return path


class FaceVerifier:
    """A loaded face model with its preprocessing, distance and calibrated threshold."""

    def __init__(self, model: torch.nn.Module, extra: dict, *, source: str | Path = "model",
                 runtime: str = "auto", batch_size: int | None = None, threshold: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, log: Callable[[str], None] | None = None):
        self.model = model.eval()
        self.extra = dict(extra)
        self.source = Path(source)
        self.face = preprocessing_from_extra(self.extra, source)
        self.distance_name = DISTANCES.canonical(self.extra.get("distance", "euclidean"))
        self._distance = create_distance(self.distance_name)
        stored = self.extra.get("threshold")
        self._threshold = float(threshold) if threshold is not None else (None if stored is None else float(stored))
        self.max_pixels = max_pixels
        self.fingerprint = model_fingerprint(model, self.face)
        self.runtime = create_runtime(runtime, model, fingerprint=self.fingerprint, input_size=self.input_size,
                                      log=log)
        self.batch_size = int(batch_size or default_batch_size(self.runtime, self.device))
        if self.batch_size < 1:
            raise CnnlabError(f"batch_size must be >= 1, got {self.batch_size}")
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir_or_model_pt: str | Path, device: str = "auto", **options: Any) -> FaceVerifier:
        """From a run directory or its model.pt; `device="auto"` is CUDA when present.
        Options: runtime ("auto", "onnxruntime", "torch", "torch-channels-last"), batch_size,
        threshold (overrides the calibrated one), max_pixels, log."""
        from cnnlab.core.env import resolve_device
        from cnnlab.models.siamese import load_model
        path = resolve_model_path(run_dir_or_model_pt)
        model, extra = load_model(path, resolve_device(device))
        return cls(model, extra, source=path, **options)

    # ------------------------------------------------------------------ what the model is
    @property
    def device(self) -> torch.device:
        from cnnlab.models.utils import module_device
        return module_device(self.model)

    @property
    def input_size(self) -> int:
        return int(self.face.size)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.embedding_dim)

    @property
    def threshold(self) -> float:
        """The calibrated threshold saved with the model (or the one given to `load`)."""
        if self._threshold is None:
            raise CnnlabError(f"{self.source} holds no calibrated threshold; pass threshold=...")
        return self._threshold

    @property
    def has_threshold(self) -> bool:
        return self._threshold is not None

    @property
    def threshold_source(self) -> str:
        """Where the threshold in force comes from: given to `load`, a `faces calibrate` run
        (folder, people, objective), or the model's own LFW validation calibration."""
        if self._threshold is not None and self._threshold != self.extra.get("threshold"):
            return "given by the caller (overrides the model's)"
        return describe_calibration(self.extra)

    def describe(self) -> dict:
        return {"model": str(self.source), "fingerprint": self.fingerprint, "preprocess": self.face.spec(),
                "input_size": self.input_size, "embedding_dim": self.embedding_dim,
                "distance": self.distance_name, "threshold": self._threshold,
                "threshold_source": self.threshold_source, "calibration": self.extra.get("calibration"),
                "runtime": self.runtime.name, "device": str(self.device)}

    # ------------------------------------------------------------------ embeddings
    def prepare(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """N x S x S x 3 uint8 faces, exactly what `embed` feeds the network."""
        batch = list(images) if is_batch(images) else [images]
        return prepare_faces(batch, self.face, max_pixels=self.max_pixels)

    def embed_faces(self, faces: np.ndarray) -> np.ndarray:
        """N x D float32 embeddings of prepared faces (`prepare`'s output), in batches."""
        if faces.ndim != 4 or faces.shape[1:] != (self.input_size, self.input_size, 3) or faces.dtype != np.uint8:
            raise CnnlabError(f"expected N x {self.input_size} x {self.input_size} x 3 uint8 faces, "
                              f"got {faces.dtype} {faces.shape}")
        with self._lock:
            out = in_batches(lambda s: self.runtime(faces[s]), len(faces), self.batch_size,
                             empty=np.zeros((0, self.embedding_dim), np.float32))
        return out.astype(np.float32, copy=False)

    def embed(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Embeddings of paths, bytes, PIL images or uint8 arrays: N x D for a list (or a 4-D
        array), D for a single image."""
        z = self.embed_faces(self.prepare(images))
        return z if is_batch(images) else z[0]

    # ------------------------------------------------------------------ comparisons
    def _pair(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
        za = torch.as_tensor(np.asarray(a, np.float32)).reshape(1, -1)
        zb = torch.as_tensor(np.asarray(b, np.float32)).reshape(1, -1)
        return float(self._distance.paired(za, zb)[0])

    def distance(self, a: ImageInput, b: ImageInput) -> float:
        """The model's distance between two images (or two embeddings: 1-D float arrays)."""
        def embedding(x):
            if isinstance(x, np.ndarray) and x.ndim == 1 and np.issubdtype(x.dtype, np.floating):
                return x
            return self.embed(x)
        return self._pair(embedding(a), embedding(b))

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> VerifyResult:
        """Same person? Distance between the two faces against the calibrated threshold."""
        limit = self.threshold if threshold is None else float(threshold)
        faces = self.prepare([a, b])
        z = self.embed_faces(faces)
        d = self._pair(z[0], z[1])
        return VerifyResult(distance=d, threshold=limit, same=d <= limit, distance_name=self.distance_name,
                            faces=(faces[0], faces[1]))

    def identify(self, image: ImageInput, index: GalleryIndex, k: int = 5,
                 backend: str = "auto") -> list[Match]:
        """The k gallery entries nearest to one image, nearest first (the whole gallery, ranked,
        when it holds fewer than k)."""
        return self.identify_all([image], index, k, backend)[0]

    def identify_all(self, images: Sequence[ImageInput], index: GalleryIndex, k: int = 5,
                     backend: str = "auto") -> list[list[Match]]:
        """`identify` for several images: the index is checked against this model once, before
        any image is embedded."""
        index.check_model(self)
        return self._matches(self.embed(list(images)), index, k, backend)

    def search(self, embeddings: np.ndarray, index: GalleryIndex, k: int = 5,
               backend: str = "auto") -> list[list[Match]]:
        """`identify` for query embeddings (Q x D): one list of matches per query."""
        index.check_model(self)
        return self._matches(embeddings, index, k, backend)

    def _matches(self, embeddings: np.ndarray, index: GalleryIndex, k: int, backend: str) -> list[list[Match]]:
        k = clamp_k(k, index.count)
        if k == 0:  # an empty gallery
            return [[] for _ in range(len(embeddings))]
        distances, rows = index.nearest(embeddings, k, backend=backend)
        limit = self._threshold
        return [[Match(rank=r + 1, distance=float(d), name=index.names[i], person=index.people[i],
                       path=index.paths[i], same=None if limit is None else bool(d <= limit))
                 for r, (d, i) in enumerate(zip(dq.tolist(), iq.tolist()))]
                for dq, iq in zip(distances, rows)]


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
